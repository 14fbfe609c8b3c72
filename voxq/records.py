"""Record codecs for what travels on the bus: session meta, audio chunks, transcript segments.

Redis hands back bytes; these functions turn stream entries and hashes into typed values and
back, and reject malformed records with MalformedRecord (an InvalidInput) instead of crashing
the reader.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from voxq.errors import InvalidAudio, InvalidInput, MalformedRecord
from voxq.keys import validate_session_id

MIN_RATE, MAX_RATE = 8000, 48000
MIN_CHUNK_MS, MAX_CHUNK_MS = 20, 200
LANGUAGE_RE_DOC = "a BCP-47 style code such as en-US"
CHECKPOINT_RE = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
TENANT_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
WEBHOOK_URL_RE = re.compile(r"https?://[^\s]+", re.IGNORECASE)


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


def _text(v: object) -> str:
    """A hash field or value as text; bytes that are not UTF-8 are shown, not raised."""
    if isinstance(v, bytes | bytearray | memoryview):
        return bytes(v).decode(errors="replace")
    return str(v)


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
    bad_chunks: int = 0  # audio entries the worker could not use (counted, never silent)
    webhook: str = ""  # the producer's URL for this session's end events ("" for none)
    webhook_finals: bool = False  # the session's webhook also gets each final (transcript.final)
    tenant: str = ""  # the creating key's tenant ("": from before tenants, the default tenant)

    def __post_init__(self) -> None:
        validate_session_id(self.session_id)
        if CHECKPOINT_RE.fullmatch(self.checkpoint) is None:
            raise InvalidInput(f"malformed session meta: checkpoint {self.checkpoint[:40]!r} is "
                               "not a stream entry id")
        if not isinstance(self.options, dict):
            raise InvalidInput(f"options must be a JSON object, not {type(self.options).__name__}")
        if self.webhook and (len(self.webhook) > 2000 or not WEBHOOK_URL_RE.fullmatch(
                self.webhook)):
            raise InvalidInput("webhook must be an http:// or https:// URL of at most 2000 "
                               "characters")
        if self.tenant and not TENANT_RE.fullmatch(self.tenant):
            raise InvalidInput(f"invalid tenant {self.tenant[:60]!r}: use 1-64 characters from "
                               "A-Z a-z 0-9 . _ -")
        if self.webhook_finals and not self.webhook:
            raise InvalidInput("webhook finals need a webhook URL")
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
        for name in ("created", "audio_seconds", "updated"):
            if not math.isfinite(getattr(self, name)):
                raise InvalidInput(f"{name} must be a finite number")

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
            "bad_chunks": str(self.bad_chunks),
            **({"webhook": self.webhook} if self.webhook else {}),
            **({"webhook_finals": "1"} if self.webhook_finals else {}),
            **({"tenant": self.tenant} if self.tenant else {}),
        }

    @classmethod
    def from_hash(cls, h: Mapping[Any, Any], sid: str | None = None) -> SessionMeta:
        """Parse a meta hash as HGETALL returns it; MalformedRecord if it is malformed, or if
        ``sid`` is given and the hash's ``id`` is another session's."""
        if not h:
            raise MalformedRecord("empty session meta")
        d = {_text(k): _text(v) for k, v in h.items()}
        if "id" not in d:
            raise MalformedRecord("malformed session meta: the record has no id field")
        if sid is not None and d["id"] != sid:
            raise MalformedRecord(f"malformed session meta: the record of {sid!r} names "
                                  f"{d['id'][:60]!r}")
        try:
            options = json.loads(d.get("options") or "{}")
        except (ValueError, RecursionError) as e:
            raise MalformedRecord(f"malformed session meta: options are not JSON ({e})") from e
        if not isinstance(options, dict):
            raise MalformedRecord("malformed session meta: options must be a JSON object, not "
                                  f"{type(options).__name__}")

        def num(name: str, kind: type[int] | type[float], default: str) -> Any:
            raw = d.get(name) or default
            try:
                return kind(raw)
            except ValueError:
                raise MalformedRecord(f"malformed session meta: {name} {raw[:40]!r} is not "
                                      f"a{'n integer' if kind is int else ' number'}") from None

        try:
            status = Status(d.get("status", "created"))
        except ValueError:
            raise MalformedRecord(f"malformed session meta: unknown status "
                                  f"{d['status'][:40]!r}") from None
        try:
            return cls(
                session_id=d["id"],
                vendor=d.get("vendor", "local"),
                language=d.get("language", "en-US"),
                rate=num("rate", int, "16000"),
                channels=num("channels", int, "1"),
                chunk_ms=num("chunk_ms", int, "100"),
                created=num("created", float, "0"),
                status=status,
                options=options,
                error=d.get("error", ""),
                owner=d.get("owner", ""),
                epoch=num("epoch", int, "0"),
                checkpoint=d.get("checkpoint", "0-0"),
                finals=num("finals", int, "0"),
                audio_seconds=num("audio_seconds", float, "0"),
                updated=num("updated", float, "0"),
                bad_chunks=num("bad_chunks", int, "0"),
                webhook=d.get("webhook", ""),
                webhook_finals=d.get("webhook_finals", "") == "1",
                tenant=d.get("tenant", ""),
            )
        except MalformedRecord:
            raise
        except (ValueError, TypeError) as e:  # a field the dataclass itself refuses
            raise MalformedRecord(f"malformed session meta: {e}") from e

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


def encode_chunk(seq: int, pcm: bytes | memoryview,
                 max_bytes: int | None = None) -> dict[str, bytes | str]:
    """Fields for the XADD of one audio chunk; InvalidAudio for a chunk larger than
    ``max_bytes`` (a session's ``max_chunk_bytes``: workers refuse larger ones)."""
    if max_bytes is not None and len(pcm) > max_bytes:
        raise InvalidAudio(f"a chunk of {len(pcm)} bytes is larger than the {max_bytes} bytes "
                           "of 200 ms of the session's audio")
    return {"seq": str(seq), "pcm": bytes(pcm)}


def encode_eos(seq: int) -> dict[str, str]:
    """Fields for the XADD of the end-of-stream entry."""
    return {"seq": str(seq), "eos": "1"}


def decode_chunk(fields: Mapping[Any, Any]) -> Chunk:
    """Parse an audio stream entry; MalformedRecord if it is neither a chunk nor the end marker."""
    seq_raw = _field(fields, "seq")
    try:
        seq = int(seq_raw)
    except (TypeError, ValueError) as e:
        raise MalformedRecord(f"audio entry without a valid seq: {seq_raw!r}"[:200]) from e
    if _field(fields, "eos") is not None:
        return Chunk(seq=seq, eos=True)
    pcm = _field(fields, "pcm")
    if not isinstance(pcm, bytes | bytearray):
        raise MalformedRecord(f"audio entry {seq} has no pcm field")
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
    """Parse a partial or final stream entry; MalformedRecord if it is malformed."""
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
    except (TypeError, ValueError, IndexError, KeyError, RecursionError) as e:
        raise MalformedRecord(f"malformed transcript entry: {e}") from e
