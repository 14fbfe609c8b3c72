"""AssemblyAI legacy real-time (v2) wire protocol: URL, messages (pure; no sockets). What a
session may ask for is the core's contract (``voxq.stt_offers.assemblyai_v2``).

Client → server: audio as ``{"audio_data": "<base64>"}`` text frames (what the original SDKs
sent; raw binary frames are the newer alternative) of 100-2000 ms each, and the control
objects ``{"terminate_session": true}``, ``{"force_end_utterance": true}`` and
``{"end_utterance_silence_threshold": ms}``. Server → client (discriminator ``message_type``):
``SessionBegins``, ``PartialTranscript``, ``FinalTranscript``, ``SessionInformation``,
``SessionTerminated``, and ``{"error": "..."}`` before an error close.
Facts: ``docs/protocols/assemblyai.md``, "v2 server messages" and the rest of Part B.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from voxq.records import Transcript, Word
from voxq.stt_offers.assemblyai_v2 import AssemblyAIV2Options

__all__ = [
    "FORCE_END_UTTERANCE",
    "TERMINATE",
    "AssemblyAIV2Options",
    "ErrorMessage",
    "Ignored",
    "ProtocolError",
    "SessionBegins",
    "SessionTerminated",
    "Utterance",
    "decode_server",
    "encode_audio",
    "query_params",
    "silence_threshold",
    "to_transcript",
]

TERMINATE = '{"terminate_session":true}'
FORCE_END_UTTERANCE = '{"force_end_utterance":true}'
MIN_CHUNK_S, MAX_CHUNK_S = 0.1, 2.0


class ProtocolError(ValueError):
    """A server frame that is not valid v2 protocol."""


def query_params(rate: int, options: AssemblyAIV2Options,
                 token: str | None = None) -> list[tuple[str, str]]:
    """The connection's query; ``word_boost`` as a JSON list, ``token`` last if given."""
    params: list[tuple[str, str]] = [("sample_rate", str(rate)), ("encoding", "pcm_s16le")]
    if options.word_boost:
        params.append(("word_boost", json.dumps(list(options.word_boost))))
    if options.disable_partial_transcripts:
        params.append(("disable_partial_transcripts", "true"))
    if options.enable_extra_session_information:
        params.append(("enable_extra_session_information", "true"))
    if token is not None:
        params.append(("token", token))
    return params


def encode_audio(pcm: bytes) -> str:
    """One JSON audio message."""
    return '{"audio_data":"' + base64.b64encode(pcm).decode("ascii") + '"}'


def silence_threshold(ms: int) -> str:
    """The message that sets the end-of-utterance silence (0-20000 ms)."""
    if not 0 <= ms <= 20_000:
        raise ValueError("end_utterance_silence_threshold must be 0-20000 ms")
    return json.dumps({"end_utterance_silence_threshold": ms}, separators=(",", ":"))


# --- server messages -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionBegins:
    """The session opened."""

    session_id: str
    expires_at: str


@dataclass(frozen=True, slots=True)
class V2Word:
    """One word, times in ms of the audio sent on the connection."""

    text: str
    start_ms: float
    end_ms: float
    confidence: float | None


@dataclass(frozen=True, slots=True)
class Utterance:
    """A PartialTranscript or FinalTranscript."""

    final: bool
    text: str
    audio_start_ms: float
    audio_end_ms: float
    words: tuple[V2Word, ...]


@dataclass(frozen=True, slots=True)
class SessionTerminated:
    """The last message after terminate_session."""


@dataclass(frozen=True, slots=True)
class ErrorMessage:
    """``{"error": "..."}`` (a close usually follows)."""

    text: str


@dataclass(frozen=True, slots=True)
class Ignored:
    """SessionInformation and anything newer."""

    type: str


ServerMessage = SessionBegins | Utterance | SessionTerminated | ErrorMessage | Ignored


def _number(d: Mapping[str, Any], key: str, required: bool = True) -> float | None:
    v = d.get(key)
    if v is None and not required:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ProtocolError(f"{key!r} must be a finite number")
    return float(v)


def _word(w: Any) -> V2Word:
    if not isinstance(w, dict):
        raise ProtocolError("a word must be an object")
    text = w.get("text", "")
    if not isinstance(text, str):
        raise ProtocolError("a word's text must be a string")
    start, end = _number(w, "start"), _number(w, "end")
    assert start is not None and end is not None
    return V2Word(text, start, end, _number(w, "confidence", required=False))


def decode_server(frame: str | bytes) -> ServerMessage:
    """Parse one server frame; ProtocolError for anything that is not a v2 message."""
    if isinstance(frame, bytes):
        raise ProtocolError("the service sent a binary frame")
    try:
        d = json.loads(frame)
    except (ValueError, RecursionError) as e:
        raise ProtocolError(f"the service sent invalid JSON: {e}") from None
    if not isinstance(d, dict):
        raise ProtocolError("a server message must be a JSON object")
    kind = d.get("message_type")
    if kind is None and "error" in d:
        return ErrorMessage(str(d["error"]))
    if not isinstance(kind, str):
        raise ProtocolError("a server message needs a string 'message_type'")
    if kind == "SessionBegins":
        return SessionBegins(str(d.get("session_id", "")), str(d.get("expires_at", "")))
    if kind in ("PartialTranscript", "FinalTranscript"):
        text = d.get("text", "")
        words = d.get("words", [])
        words = [] if words is None else words
        if not isinstance(text, str) or not isinstance(words, list):
            raise ProtocolError("a transcript needs string text and a list of words")
        start, end = _number(d, "audio_start"), _number(d, "audio_end")
        assert start is not None and end is not None
        return Utterance(final=kind == "FinalTranscript", text=text, audio_start_ms=start,
                         audio_end_ms=end, words=tuple(_word(w) for w in words))
    if kind == "SessionTerminated":
        return SessionTerminated()
    return Ignored(kind)


def to_transcript(u: Utterance, channel: int,
                  to_seconds: Callable[[float], float] = lambda ms: ms / 1000.0
                  ) -> Transcript | None:
    """A voxq Transcript of one utterance (None when it says nothing)."""
    text = u.text.strip()
    if not text:
        return None
    words = tuple(Word(w.text, to_seconds(w.start_ms), to_seconds(w.end_ms), w.confidence)
                  for w in u.words if w.text)
    if words:
        start, end = words[0].start, max(w.end for w in words)
    else:
        start, end = to_seconds(u.audio_start_ms), to_seconds(u.audio_end_ms)
    return Transcript(text=text, is_final=u.final, start=start, end=end, channel=channel,
                      words=words)
