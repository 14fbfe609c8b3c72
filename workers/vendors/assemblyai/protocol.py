"""AssemblyAI Universal Streaming (v3) wire protocol: URL, messages (pure; no sockets). What a
session may ask for is the core's contract (``voxq.stt_offers.assemblyai``).

Client → server: binary frames of raw pcm_s16le (50-1000 ms each) and JSON text frames
``Terminate``, ``ForceEndpoint``, ``KeepAlive``, ``UpdateConfiguration``. Server → client:
``Begin`` once, ``Turn`` repeatedly (the same ``turn_order`` repeats as words arrive; the one
with ``end_of_turn`` closes the turn, and with ``format_turns`` a formatted copy may follow),
``Termination`` last, ``Error`` before an error close; others are tolerated and ignored.
Facts: ``docs/protocols/assemblyai.md``, "v3 server messages" and the rest of Part A.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlencode

from voxq.records import Transcript, Word
from voxq.stt_offers.assemblyai import AssemblyAIOptions

__all__ = [
    "FORCE_ENDPOINT",
    "KEEPALIVE",
    "TERMINATE",
    "AssemblyAIOptions",
    "Begin",
    "ErrorMessage",
    "Ignored",
    "ProtocolError",
    "Termination",
    "Turn",
    "TurnAssembler",
    "TurnWord",
    "WarningMessage",
    "build_url",
    "decode_server",
    "query_params",
    "speech_model_for",
    "update_configuration",
]

TERMINATE = '{"type":"Terminate"}'
FORCE_ENDPOINT = '{"type":"ForceEndpoint"}'
KEEPALIVE = '{"type":"KeepAlive"}'
MIN_CHUNK_S, MAX_CHUNK_S = 0.05, 1.0
_UPDATABLE = frozenset({"end_of_turn_confidence_threshold", "min_turn_silence", "max_turn_silence",
                        "vad_threshold", "format_turns", "keyterms_prompt", "prompt",
                        "filter_profanity"})


class ProtocolError(ValueError):
    """A server frame that is not valid v3 protocol."""


def speech_model_for(language: str, options: AssemblyAIOptions) -> str:
    """The model to ask for: the explicit one, else English or multilingual by language."""
    if options.speech_model:
        return str(options.speech_model)
    english = language.strip().lower().split("-")[0] == "en"
    return "universal-streaming-english" if english else "universal-streaming-multilingual"


def _flag(value: bool) -> str:
    return "true" if value else "false"


def query_params(language: str, rate: int, options: AssemblyAIOptions,
                 token: str | None = None) -> list[tuple[str, str]]:
    """The connection's query (lowercase booleans, lists as JSON), ``token`` last if given."""
    o = options
    params: list[tuple[str, str]] = [
        ("sample_rate", str(rate)), ("encoding", "pcm_s16le"),
        ("speech_model", speech_model_for(language, o)), ("format_turns", _flag(o.format_turns)),
    ]
    numbers: dict[str, float | int | None] = {
        "end_of_turn_confidence_threshold": o.end_of_turn_confidence_threshold,
        "min_turn_silence": o.min_turn_silence, "max_turn_silence": o.max_turn_silence,
        "vad_threshold": o.vad_threshold, "inactivity_timeout": o.inactivity_timeout,
        "max_speakers": o.max_speakers,
    }
    params += [(k, str(v)) for k, v in numbers.items() if v is not None]
    if o.keyterms_prompt:
        params.append(("keyterms_prompt", json.dumps(list(o.keyterms_prompt))))
    if o.prompt is not None:
        params.append(("prompt", o.prompt))
    for name in ("language_detection", "speaker_labels", "filter_profanity"):
        if getattr(o, name):
            params.append((name, "true"))
    if token is not None:
        params.append(("token", token))
    return params


def build_url(base: str, params: list[tuple[str, str]]) -> str:
    """``base`` with ``params`` appended as a form-encoded query."""
    return f"{base}{'&' if '?' in base else '?'}{urlencode(params)}"


def update_configuration(**fields: Any) -> str:
    """An ``UpdateConfiguration`` frame; only the fields the service lets a session change."""
    unknown = set(fields) - _UPDATABLE
    if unknown or not fields:
        raise ValueError(f"cannot update {sorted(unknown) or 'nothing'}; "
                         f"updatable: {sorted(_UPDATABLE)}")
    return json.dumps({"type": "UpdateConfiguration", **fields}, separators=(",", ":"))


# --- server messages -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Begin:
    """The session opened."""

    id: str
    expires_at: int | None
    model: str | None


@dataclass(frozen=True, slots=True)
class TurnWord:
    """One word of a Turn, times in ms of the audio sent on the connection."""

    text: str
    start_ms: float
    end_ms: float
    confidence: float | None
    final: bool
    speaker: str | None


@dataclass(frozen=True, slots=True)
class Turn:
    """One Turn message."""

    turn_order: int
    end_of_turn: bool
    formatted: bool
    transcript: str
    words: tuple[TurnWord, ...]
    speaker: str | None


@dataclass(frozen=True, slots=True)
class Termination:
    """The session ended (after Terminate, or on the service's own account)."""

    audio_seconds: float | None


@dataclass(frozen=True, slots=True)
class ErrorMessage:
    """An ``Error`` frame (a close with ``code`` follows)."""

    code: int | None
    text: str


@dataclass(frozen=True, slots=True)
class WarningMessage:
    """A ``Warning`` frame."""

    code: int | None
    text: str


@dataclass(frozen=True, slots=True)
class Ignored:
    """A message voxq has no use for (SpeechStarted, Heartbeat, SpeakerRevision, …)."""

    type: str


ServerMessage = Begin | Turn | Termination | ErrorMessage | WarningMessage | Ignored


def _number(d: Mapping[str, Any], key: str, default: float | None = None) -> float | None:
    v = d.get(key, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ProtocolError(f"{key!r} must be a finite number")
    return float(v)


def _int(d: Mapping[str, Any], key: str) -> int | None:
    v = d.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise ProtocolError(f"{key!r} must be an integer")
    return v


def _str(d: Mapping[str, Any], key: str) -> str:
    v = d.get(key, "")
    if v is None:
        return ""
    if not isinstance(v, str):
        raise ProtocolError(f"{key!r} must be a string")
    return v


def _opt_str(d: Mapping[str, Any], key: str) -> str | None:
    v = d.get(key)
    if v is None:
        return None
    if not isinstance(v, str | int) or isinstance(v, bool):
        raise ProtocolError(f"{key!r} must be a string")
    return str(v)


def _word(w: Any) -> TurnWord:
    if not isinstance(w, dict):
        raise ProtocolError("a word must be an object")
    start, end = _number(w, "start"), _number(w, "end")
    if start is None or end is None:
        raise ProtocolError("a word needs start and end")
    return TurnWord(text=_str(w, "text"), start_ms=start, end_ms=end,
                    confidence=_number(w, "confidence"),
                    final=bool(w.get("word_is_final", True)), speaker=_opt_str(w, "speaker"))


def decode_server(frame: str | bytes) -> ServerMessage:
    """Parse one server frame; ProtocolError for anything that is not a v3 message."""
    if isinstance(frame, bytes):
        raise ProtocolError("the service sent a binary frame")
    try:
        d = json.loads(frame)
    except (ValueError, RecursionError) as e:
        raise ProtocolError(f"the service sent invalid JSON: {e}") from None
    if not isinstance(d, dict):
        raise ProtocolError("a server message must be a JSON object")
    kind = d.get("type")
    if kind is None and "error" in d:  # legacy shape, no type
        return ErrorMessage(None, str(d["error"]))
    if not isinstance(kind, str):
        raise ProtocolError("a server message needs a string 'type'")
    if kind == "Begin":
        config = d.get("configuration")
        model = config.get("model") if isinstance(config, dict) else None
        return Begin(id=_str(d, "id"), expires_at=_int(d, "expires_at"),
                     model=model if isinstance(model, str) else None)
    if kind == "Turn":
        order = _int(d, "turn_order")
        if order is None or order < 0:
            raise ProtocolError("a Turn needs a non-negative turn_order")
        words = d.get("words", [])
        words = [] if words is None else words
        if not isinstance(words, list):
            raise ProtocolError("'words' must be a list")
        label = _opt_str(d, "speaker_label")
        return Turn(turn_order=order, end_of_turn=bool(d.get("end_of_turn")),
                    formatted=bool(d.get("turn_is_formatted")), transcript=_str(d, "transcript"),
                    words=tuple(_word(w) for w in words), speaker=label)
    if kind == "Termination":
        return Termination(_number(d, "audio_duration_seconds"))
    if kind == "Error":
        return ErrorMessage(_int(d, "error_code"), _str(d, "error"))
    if kind == "Warning":
        return WarningMessage(_int(d, "warning_code"), _str(d, "warning"))
    return Ignored(kind)


# --- turns → transcripts -------------------------------------------------------------------------


class TurnAssembler:
    """Turns of one connection → voxq Transcripts: partials while a turn grows, one final per turn.

    With ``format_turns`` the unformatted end-of-turn message is held (shown as a partial) until
    its formatted copy arrives; if the service formats every Turn (the 2026 behaviour) the
    formatted end of turn is final at once; if no formatted copy comes (the next turn starts,
    or Termination), the held one becomes the final. A turn is finalised once, whatever follows.
    """

    def __init__(self, channel: int, format_turns: bool,
                 to_seconds: Callable[[float], float] = lambda ms: ms / 1000.0):
        self.channel = channel
        self.format_turns = format_turns
        self.to_seconds = to_seconds
        self._held: Transcript | None = None
        self._held_order = -1
        self._done_order = -1  # highest turn_order finalised

    def _transcript(self, turn: Turn, final: bool) -> Transcript | None:
        words = tuple(
            Word(text=w.text, start=self.to_seconds(w.start_ms), end=self.to_seconds(w.end_ms),
                 confidence=w.confidence, speaker=w.speaker or turn.speaker)
            for w in turn.words if w.text
        )
        if final:
            text = turn.transcript.strip()
        else:  # the finalized words plus the newest, still changing ones
            tail = " ".join(w.text for w in turn.words if not w.final and w.text)
            text = " ".join(x for x in (turn.transcript.strip(), tail) if x)
        if not text:
            return None
        if words:
            start, end = words[0].start, max(w.end for w in words)
        else:
            start = end = 0.0
        return Transcript(text=text, is_final=final, start=start, end=end, channel=self.channel,
                          speaker=turn.speaker, words=words,
                          result_id=f"{self.channel}-{turn.turn_order}")

    def _release(self) -> list[Transcript]:
        held, self._held = self._held, None
        if held is None:
            return []
        self._done_order = max(self._done_order, self._held_order)
        return [held]

    def feed(self, turn: Turn) -> list[Transcript]:
        """The transcripts one Turn yields (possibly none)."""
        out: list[Transcript] = []
        if self._held is not None and turn.turn_order != self._held_order:
            out += self._release()
        if turn.turn_order <= self._done_order:
            return out  # a late copy of a finalised turn
        if not turn.end_of_turn:
            t = self._transcript(turn, final=False)
            return out + ([t] if t else [])
        if turn.formatted or not self.format_turns:
            held, self._held = self._held, None
            self._done_order = turn.turn_order
            t = self._transcript(turn, final=True)
            if t is not None and not t.words and held is not None:  # times from the raw copy
                t = replace(t, start=held.start, end=held.end, words=held.words)
            return out + ([t] if t else [])
        held = self._transcript(turn, final=True)
        if held is None:
            self._done_order = turn.turn_order
            return out
        self._held, self._held_order = held, turn.turn_order
        return [*out, replace(held, is_final=False)]

    def flush(self) -> list[Transcript]:
        """End of the session: a held end of turn becomes final."""
        return self._release()
