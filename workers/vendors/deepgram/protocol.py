"""Deepgram live streaming (``/v1/listen``) wire protocol: URL, messages, closes (pure; no
sockets). What a session may ask for is the core's contract (``voxq.stt_offers.deepgram``).

Client → server: binary frames of linear16 PCM (interleaved for ``channels=2``; never empty,
an empty frame ends the stream) and JSON text frames ``KeepAlive``, ``Finalize``,
``CloseStream``. Server → client: ``Results`` (``is_final`` for a window that will not change,
``speech_final`` at an endpoint), ``Metadata`` last, ``UtteranceEnd`` / ``SpeechStarted`` with
their options, and errors as close frames (``DATA-0000`` 1008, ``NET-0000`` / ``NET-0001``
1011) or HTTP statuses at the upgrade. Facts: ``docs/protocols/deepgram.md``, "Session limits and close codes".
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from voxq.records import Transcript, Word
from voxq.stt_offers.deepgram import DeepgramOptions
from workers.vendors.base import VendorAuthError, VendorError, VendorRejected, VendorRetryable
from workers.vendors.redaction import vendor_text

__all__ = [
    "CLOSE_STREAM",
    "FINALIZE",
    "KEEPALIVE",
    "DeepgramOptions",
    "ErrorMessage",
    "Ignored",
    "Metadata",
    "ProtocolError",
    "Results",
    "close_error",
    "decode_server",
    "handshake_error",
    "query_params",
    "to_transcript",
]

KEEPALIVE = '{"type":"KeepAlive"}'
FINALIZE = '{"type":"Finalize"}'
CLOSE_STREAM = '{"type":"CloseStream"}'


class ProtocolError(ValueError):
    """A server frame that is not valid Deepgram protocol."""


def _flag(value: bool) -> str:
    return "true" if value else "false"


def query_params(language: str, rate: int, channels: int,
                 options: DeepgramOptions) -> list[tuple[str, str]]:
    """The connection's query: lowercase booleans, list options as repeated keys."""
    o = options
    params: list[tuple[str, str]] = [
        ("model", o.model), ("language", language), ("encoding", "linear16"),
        ("sample_rate", str(rate)), ("channels", str(channels)),
    ]
    if o.multichannel:
        params.append(("multichannel", "true"))
    params += [("interim_results", _flag(o.interim_results)), ("punctuate", _flag(o.punctuate))]
    if o.smart_format:
        params.append(("smart_format", "true"))
    if o.endpointing is not None:
        params.append(("endpointing", "false" if o.endpointing is False else str(o.endpointing)))
    if o.utterance_end_ms is not None:
        params.append(("utterance_end_ms", str(o.utterance_end_ms)))
    for name in ("vad_events", "diarize"):
        if getattr(o, name):
            params.append((name, "true"))
    if o.diarize_model is not None:
        params.append(("diarize_model", o.diarize_model))
    for name in ("numerals", "profanity_filter", "filler_words", "dictation", "mip_opt_out"):
        value = getattr(o, name)
        if value is not None:
            params.append((name, _flag(value)))
    for name in ("keyterm", "keywords", "search", "replace", "redact", "tag"):
        params += [(name, v) for v in getattr(o, name) or ()]
    return params


def build_url(base: str, params: list[tuple[str, str]]) -> str:
    """``base`` with ``params`` appended as a form-encoded query."""
    return f"{base}{'&' if '?' in base else '?'}{urlencode(params)}"


# --- server messages -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DgWord:
    """One word of a Results message (times in seconds of the stream)."""

    word: str
    punctuated: str | None
    start: float
    end: float
    confidence: float | None
    speaker: int | None


@dataclass(frozen=True, slots=True)
class Results:
    """A ``Results`` message (the first alternative)."""

    channel: int
    start: float
    duration: float
    is_final: bool
    speech_final: bool
    from_finalize: bool
    transcript: str
    words: tuple[DgWord, ...]


@dataclass(frozen=True, slots=True)
class Metadata:
    """The summary sent last."""

    request_id: str
    duration: float | None


@dataclass(frozen=True, slots=True)
class ErrorMessage:
    """An ``Error`` message (older servers; a close follows)."""

    text: str


@dataclass(frozen=True, slots=True)
class Ignored:
    """UtteranceEnd, SpeechStarted, a start-of-stream object, and anything newer."""

    type: str


ServerMessage = Results | Metadata | ErrorMessage | Ignored


def _num(d: Mapping[str, Any], key: str, default: float | None = None) -> float | None:
    v = d.get(key, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ProtocolError(f"{key!r} must be a finite number")
    return float(v)


def _word(w: Any) -> DgWord:
    if not isinstance(w, dict):
        raise ProtocolError("a word must be an object")
    text, punct = w.get("word", ""), w.get("punctuated_word")
    if not isinstance(text, str) or not (punct is None or isinstance(punct, str)):
        raise ProtocolError("word and punctuated_word must be strings")
    start, end = _num(w, "start"), _num(w, "end")
    if start is None or end is None:
        raise ProtocolError("a word needs start and end")
    spk = w.get("speaker")
    if spk is not None and (isinstance(spk, bool) or not isinstance(spk, int)):
        raise ProtocolError("a word's speaker must be an integer")
    return DgWord(text, punct, start, end, _num(w, "confidence"), spk)


def _results(d: Mapping[str, Any]) -> Results:
    index = d.get("channel_index", [0, 1])
    if (not isinstance(index, list) or not index or isinstance(index[0], bool)
            or not isinstance(index[0], int) or index[0] < 0):
        raise ProtocolError("'channel_index' must be [channel, channels]")
    channel = d.get("channel")
    alternatives = channel.get("alternatives") if isinstance(channel, dict) else None
    if not isinstance(alternatives, list):
        raise ProtocolError("'channel.alternatives' must be a list")
    transcript: str = ""
    words: tuple[DgWord, ...] = ()
    if alternatives:
        alt = alternatives[0]
        if not isinstance(alt, dict):
            raise ProtocolError("an alternative must be an object")
        transcript = alt.get("transcript", "")
        raw_words = alt.get("words", [])
        raw_words = [] if raw_words is None else raw_words
        if not isinstance(transcript, str) or not isinstance(raw_words, list):
            raise ProtocolError("an alternative needs a string transcript and a list of words")
        words = tuple(_word(w) for w in raw_words)
    return Results(channel=index[0], start=_num(d, "start", 0.0) or 0.0,
                   duration=_num(d, "duration", 0.0) or 0.0, is_final=bool(d.get("is_final")),
                   speech_final=bool(d.get("speech_final")),
                   from_finalize=bool(d.get("from_finalize")), transcript=transcript,
                   words=words)


def decode_server(frame: str | bytes) -> ServerMessage:
    """Parse one server frame; ProtocolError for anything that is not a Deepgram message."""
    if isinstance(frame, bytes):
        raise ProtocolError("the service sent a binary frame")
    try:
        d = json.loads(frame)
    except (ValueError, RecursionError) as e:
        raise ProtocolError(f"the service sent invalid JSON: {e}") from None
    if not isinstance(d, dict):
        raise ProtocolError("a server message must be a JSON object")
    kind = d.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("a server message needs a string 'type'")
    if kind == "Results":
        return _results(d)
    if kind == "Metadata":
        return Metadata(str(d.get("request_id", "")), _num(d, "duration"))
    if kind == "Error":
        parts = [str(d[k]) for k in ("variant", "description", "message") if d.get(k)]
        return ErrorMessage(": ".join(parts) or "error")
    return Ignored(kind)


def to_transcript(r: Results, channels: int, lead_in: float = 0.0) -> Transcript | None:
    """A voxq Transcript of one Results message (None when it says nothing).

    ``lead_in`` is silence the adapter sent before the session's audio (removed from times).
    """
    text = r.transcript.strip()
    if not text:
        return None

    def t(x: float) -> float:
        return max(0.0, round(x - lead_in, 6))

    words = tuple(Word(text=w.punctuated or w.word, start=t(w.start), end=t(w.end),
                       confidence=w.confidence,
                       speaker=None if w.speaker is None else str(w.speaker))
                  for w in r.words if w.word or w.punctuated)
    if words:
        start, end = words[0].start, max(w.end for w in words)
    else:
        start, end = t(r.start), t(r.start + r.duration)
    speakers = {w.speaker for w in words}
    return Transcript(text=text, is_final=r.is_final, start=start, end=end,
                      channel=min(r.channel, channels - 1),
                      speaker=speakers.pop() if len(speakers) == 1 else None, words=words)


# --- errors ------------------------------------------------------------------------------------


def clean(text: str, secrets: tuple[str, ...] = ()) -> str:
    """One bounded line of vendor text with any echoed secret replaced by ``***``."""
    return vendor_text(text, secrets)


def close_error(code: int | None, reason: str, error_text: str | None = None,
                secrets: tuple[str, ...] = (), vendor: str = "deepgram") -> VendorError:
    """The error for a close the client did not ask for: DATA-0000 (1008) is the audio and is
    not retried; NET-0000 / NET-0001 (1011) and dropped connections are."""
    text = clean(reason or error_text or "", secrets)
    if error_text and reason and error_text not in reason:
        text = clean(f"{reason} ({error_text})", secrets)
    if code is None or code == 1006:
        return VendorRetryable("the connection dropped without a close frame"
                               + (f": {text}" if text else ""), vendor=vendor, code=1006)
    if code == 1000:
        return VendorRetryable("the service closed the stream before the end of the audio"
                               + (f": {text}" if text else ""), vendor=vendor, code=code)
    message = text or f"closed with code {code}"
    if code in (1002, 1003, 1007, 1008, 1009, 1010) or 4000 <= code <= 4999:
        return VendorRejected(message, vendor=vendor, code=code)
    return VendorRetryable(message, vendor=vendor, code=code)


def handshake_error(status: int, headers: Mapping[str, str], body: bytes,
                    secrets: tuple[str, ...] = (), vendor: str = "deepgram") -> VendorError:
    """The error for an HTTP answer to the upgrade: 401/403 auth, 429/5xx retryable, else not."""
    raw = body.decode("utf-8", errors="replace")
    text = headers.get("dg-error") or raw
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        code = doc.get("err_code") or doc.get("category")
        msg = doc.get("err_msg") or doc.get("message")
        if isinstance(msg, str):
            text = f"{code}: {msg}" if isinstance(code, str) and code else msg
    detail = clean(text, secrets)
    request_id = headers.get("dg-request-id")
    message = (f"HTTP {status} at the WebSocket handshake" + (f": {detail}" if detail else "")
               + (f" (dg-request-id {clean(request_id)})" if request_id else ""))
    if status in (401, 403):
        return VendorAuthError(message, vendor=vendor, code=status)
    if status in (408, 425, 429) or status >= 500:
        return VendorRetryable(message, vendor=vendor, code=status)
    return VendorRejected(message, vendor=vendor, code=status)
