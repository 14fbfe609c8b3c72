"""Record codecs for what travels on the bus: session meta, audio chunks, transcript segments.

Redis hands back bytes; these functions turn stream entries and hashes into typed values and
back, and reject malformed records with InvalidInput instead of crashing the reader.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from voxq.errors import InvalidInput
from voxq.keys import validate_session_id

MIN_RATE, MAX_RATE = 8000, 48000
MIN_CHUNK_MS, MAX_CHUNK_MS = 20, 200
LANGUAGE_RE_DOC = "a BCP-47 style code such as en-US"


class Status(StrEnum):
    """Where a session is in its lifecycle."""

    CREATED = "created"
    ACTIVE = "active"
    FINISHED = "finished"
    FAILED = "failed"
    ABANDONED = "abandoned"

    @property
    def terminal(self) -> bool:
        """True once nothing more will be written to the session."""
        return self in (Status.FINISHED, Status.FAILED, Status.ABANDONED)


def _s(v: object) -> str:
    return bytes(v).decode() if isinstance(v, bytes | bytearray | memoryview) else str(v)


def _field(m: Mapping[Any, Any], name: str) -> Any:
    """Look a field up whether the mapping has str or bytes keys."""
    if name in m:
        return m[name]
    return m.get(name.encode())


@dataclass(frozen=True, slots=True)
class SessionMeta:
    """The declared format and state of one session (the ``meta`` hash)."""

    session_id: str
    vendor: str = "local"
    language: str = "en-US"
    rate: int = 16000
    channels: int = 1
    chunk_ms: int = 100
    created: float = 0.0
    status: Status = Status.CREATED
    options: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    owner: str = ""
    epoch: int = 0
    checkpoint: str = "0-0"
    finals: int = 0
    audio_seconds: float = 0.0
    updated: float = 0.0

    def __post_init__(self) -> None:
        validate_session_id(self.session_id)
        if not (MIN_RATE <= self.rate <= MAX_RATE):
            raise InvalidInput(f"sample rate {self.rate} Hz is outside {MIN_RATE}-{MAX_RATE} Hz")
        if self.channels not in (1, 2):
            raise InvalidInput(f"channels must be 1 or 2, not {self.channels}")
        if not (MIN_CHUNK_MS <= self.chunk_ms <= MAX_CHUNK_MS):
            raise InvalidInput(
                f"chunk duration {self.chunk_ms} ms is outside {MIN_CHUNK_MS}-{MAX_CHUNK_MS} ms"
            )
        if not self.vendor or len(self.vendor) > 64:
            raise InvalidInput("vendor name must be 1-64 characters")
        if not self.language or len(self.language) > 35:
            raise InvalidInput(f"language must be {LANGUAGE_RE_DOC}")

    @property
    def bytes_per_second(self) -> int:
        """PCM bytes of one second of this session's audio."""
        return self.rate * self.channels * 2

    @property
    def max_chunk_bytes(self) -> int:
        """Largest chunk accepted: 200 ms of audio."""
        return self.bytes_per_second * MAX_CHUNK_MS // 1000

    def to_hash(self) -> dict[str, str]:
        """Fields for HSET."""
        return {
            "id": self.session_id,
            "vendor": self.vendor,
            "language": self.language,
            "rate": str(self.rate),
            "channels": str(self.channels),
            "chunk_ms": str(self.chunk_ms),
            "created": repr(self.created),
            "status": self.status.value,
            "options": json.dumps(self.options, separators=(",", ":"), sort_keys=True),
            "error": self.error,
            "owner": self.owner,
            "epoch": str(self.epoch),
            "checkpoint": self.checkpoint,
            "finals": str(self.finals),
            "audio_seconds": repr(self.audio_seconds),
            "updated": repr(self.updated),
        }

    @classmethod
    def from_hash(cls, h: Mapping[Any, Any]) -> SessionMeta:
        """Parse a meta hash as HGETALL returns it; InvalidInput if it is malformed."""
        if not h:
            raise InvalidInput("empty session meta")
        d = {_s(k): _s(v) for k, v in h.items()}
        try:
            return cls(
                session_id=d["id"],
                vendor=d.get("vendor", "local"),
                language=d.get("language", "en-US"),
                rate=int(d.get("rate", 16000)),
                channels=int(d.get("channels", 1)),
                chunk_ms=int(d.get("chunk_ms", 100)),
                created=float(d.get("created", 0.0)),
                status=Status(d.get("status", "created")),
                options=json.loads(d.get("options") or "{}"),
                error=d.get("error", ""),
                owner=d.get("owner", ""),
                epoch=int(d.get("epoch", 0)),
                checkpoint=d.get("checkpoint", "0-0"),
                finals=int(d.get("finals", 0)),
                audio_seconds=float(d.get("audio_seconds", 0.0)),
                updated=float(d.get("updated", 0.0)),
            )
        except (KeyError, ValueError, TypeError) as e:
            raise InvalidInput(f"malformed session meta: {e}") from e

    def with_(self, **changes: Any) -> SessionMeta:
        """A copy with some fields changed."""
        return replace(self, **changes)


# --- audio chunks -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Chunk:
    """One audio stream entry: PCM bytes with their sequence number, or the end marker."""

    seq: int
    pcm: bytes = b""
    eos: bool = False


def encode_chunk(seq: int, pcm: bytes | memoryview) -> dict[str, bytes | str]:
    """Fields for the XADD of one audio chunk."""
    return {"seq": str(seq), "pcm": bytes(pcm)}


def encode_eos(seq: int) -> dict[str, str]:
    """Fields for the XADD of the end-of-stream entry."""
    return {"seq": str(seq), "eos": "1"}


def decode_chunk(fields: Mapping[Any, Any]) -> Chunk:
    """Parse an audio stream entry; InvalidInput if it is neither a chunk nor the end marker."""
    seq_raw = _field(fields, "seq")
    try:
        seq = int(seq_raw)
    except (TypeError, ValueError) as e:
        raise InvalidInput(f"audio entry without a valid seq: {seq_raw!r}") from e
    if _field(fields, "eos") is not None:
        return Chunk(seq=seq, eos=True)
    pcm = _field(fields, "pcm")
    if not isinstance(pcm, bytes | bytearray):
        raise InvalidInput(f"audio entry {seq} has no pcm field")
    return Chunk(seq=seq, pcm=bytes(pcm))


# --- transcript segments ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Word:
    """One recognised word with times in seconds from session start."""

    text: str
    start: float
    end: float
    confidence: float | None = None
    speaker: str | None = None


@dataclass(frozen=True, slots=True)
class Transcript:
    """A recognition result: partial (may change) or final (durable), on one channel."""

    text: str
    is_final: bool
    start: float
    end: float
    channel: int = 0
    speaker: str | None = None
    words: tuple[Word, ...] = ()
    result_id: str | None = None
    seq: int | None = None  # index of a final within the session, set when written

    def shifted(self, seconds: float) -> Transcript:
        """The same result with every time moved by ``seconds`` (vendor roll-over re-basing)."""
        return replace(
            self,
            start=self.start + seconds,
            end=self.end + seconds,
            words=tuple(replace(w, start=w.start + seconds, end=w.end + seconds)
                        for w in self.words),
        )


def _num(x: float) -> float:
    return round(x, 3)


def encode_transcript(t: Transcript) -> dict[str, str]:
    """Fields for the XADD of a partial or final result."""
    f: dict[str, str] = {
        "text": t.text,
        "start": repr(_num(t.start)),
        "end": repr(_num(t.end)),
        "ch": str(t.channel),
        "final": "1" if t.is_final else "0",
    }
    if t.speaker is not None:
        f["spk"] = t.speaker
    if t.words:
        f["words"] = json.dumps(
            [[w.text, _num(w.start), _num(w.end), w.confidence, w.speaker] for w in t.words],
            separators=(",", ":"),
        )
    if t.result_id is not None:
        f["rid"] = t.result_id
    if t.seq is not None:
        f["seq"] = str(t.seq)
    return f


def decode_transcript(fields: Mapping[Any, Any]) -> Transcript:
    """Parse a partial or final stream entry."""
    try:
        words_raw = _field(fields, "words")
        words = tuple(
            Word(text=str(w[0]), start=float(w[1]), end=float(w[2]),
                 confidence=None if w[3] is None else float(w[3]),
                 speaker=None if w[4] is None else str(w[4]))
            for w in (json.loads(words_raw) if words_raw else [])
        )
        spk = _field(fields, "spk")
        rid = _field(fields, "rid")
        seq = _field(fields, "seq")
        start = float(_field(fields, "start"))
        end = float(_field(fields, "end"))
        if not (math.isfinite(start) and math.isfinite(end)):
            raise ValueError("non-finite time")
        return Transcript(
            text=_s(_field(fields, "text")),
            is_final=_s(_field(fields, "final") or b"0") == "1",
            start=start,
            end=end,
            channel=int(_field(fields, "ch") or 0),
            speaker=None if spk is None else _s(spk),
            words=words,
            result_id=None if rid is None else _s(rid),
            seq=None if seq is None else int(seq),
        )
    except (TypeError, ValueError, IndexError, KeyError, json.JSONDecodeError) as e:
        raise InvalidInput(f"malformed transcript entry: {e}") from e
