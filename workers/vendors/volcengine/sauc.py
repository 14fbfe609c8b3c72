"""Volcengine big-model streaming ASR (``sauc``): request JSON, response parsing and error
classification. Pure, no sockets (``docs/protocols/volcengine.md``, "sauc request JSON"; all of §4).
The options, modes and languages a session may ask for are the core's contract
(``voxq.stt_offers.volcengine``).

The request always asks for ``show_utterances`` (times and words need it). Responses are read
the same way in ``full`` and ``single`` result modes: each utterance is final once ``definite``
is true, and the session module drops definite utterances it already reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from voxq.records import Transcript
from voxq.records import Word as TranscriptWord
from voxq.stt_offers.volcengine import MODES, VolcengineOptions, stream_language

__all__ = [
    "DEFAULT_RESOURCE_ID",
    "DEFAULT_URL",
    "MODES",
    "RATE",
    "RESOURCE_IDS",
    "ProtocolError",
    "Response",
    "StreamState",
    "Utterance",
    "VolcengineOptions",
    "classify",
    "endpoint",
    "request_body",
    "response_of",
    "stream_language",
    "to_transcripts",
]

DEFAULT_URL = "wss://openspeech.bytedance.com/api/v3/sauc"
"""Base of the three endpoints; the mode's path segment is appended."""
RESOURCE_IDS = ("volc.bigasr.sauc.duration", "volc.bigasr.sauc.concurrent",
                "volc.seedasr.sauc.duration", "volc.seedasr.sauc.concurrent")
DEFAULT_RESOURCE_ID = RESOURCE_IDS[0]
RATE = 16000
"""The only sample rate the service accepts (16-bit mono PCM)."""
SUCCESS = 20000000

_RETRYABLE_CODES = frozenset({45000081, 45000292, 55000031})
_AUTH_CODES = frozenset({45000010, 45000030})


class ProtocolError(ValueError):
    """A server response that does not have the documented shape."""


def endpoint(base: str, mode: str) -> str:
    """The URL of ``mode``: ``base`` with the mode's segment (a trailing mode segment is replaced)."""
    url = base.rstrip("/")
    head, _, tail = url.rpartition("/")
    if tail in MODES and head:
        url = head
    return f"{url}/{mode}"


def request_body(options: VolcengineOptions, *, uid: str, language: str | None) -> dict[str, Any]:
    """The full client request JSON of one mono 16 kHz PCM stream."""
    audio: dict[str, Any] = {"format": "pcm", "codec": "raw", "rate": RATE, "bits": 16,
                             "channel": 1}
    if language:
        audio["language"] = language
    request: dict[str, Any] = {"model_name": "bigmodel", "show_utterances": True,
                               "result_type": options.result_type}
    for name in ("enable_itn", "enable_punc", "enable_ddc", "enable_nonstream", "end_window_size",
                 "force_to_speech_time", "vad_segment_duration", "enable_accelerate_text",
                 "accelerate_score", "output_zh_variant", "sensitive_words_filter"):
        value = getattr(options, name)
        if value is not None:
            request[name] = value
    corpus = {name: getattr(options, name) for name in
              ("boosting_table_id", "boosting_table_name", "correct_table_id",
               "correct_table_name", "context") if getattr(options, name) is not None}
    if corpus:
        request["corpus"] = corpus
    return {"user": {"uid": options.uid or uid}, "audio": audio, "request": request}


@dataclass(frozen=True, slots=True)
class Utterance:
    """One utterance of a response; times in ms of the stream's audio."""

    text: str
    start_ms: int
    end_ms: int
    definite: bool
    words: tuple[tuple[str, int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Response:
    """A full server response's content."""

    text: str
    utterances: tuple[Utterance, ...]
    duration_ms: int | None


def _ms(value: Any, what: str) -> int:
    """A non-negative time in ms; ProtocolError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or value < 0:
        raise ProtocolError(f"{what} must be a non-negative number of ms, not {value!r}")
    return round(value)


def response_of(doc: Any) -> Response:
    """Parse a full server response JSON (``result`` as an object, or a list of them)."""
    if not isinstance(doc, dict):
        raise ProtocolError("response is not a JSON object")
    info = doc.get("audio_info")
    duration = None
    if isinstance(info, dict) and info.get("duration") is not None:
        duration = _ms(info["duration"], "audio_info.duration")
    result = doc.get("result")
    if result is None:
        return Response("", (), duration)
    results = result if isinstance(result, list) else [result]
    texts: list[str] = []
    utterances: list[Utterance] = []
    for item in results:
        if not isinstance(item, dict):
            raise ProtocolError("result is not an object")
        text = item.get("text", "")
        if not isinstance(text, str):
            raise ProtocolError("result.text is not a string")
        texts.append(text)
        raw = item.get("utterances") or []
        if not isinstance(raw, list):
            raise ProtocolError("result.utterances is not a list")
        for u in raw:
            if not isinstance(u, dict) or not isinstance(u.get("text", ""), str):
                raise ProtocolError("malformed utterance")
            words = []
            for w in u.get("words") or []:
                if not isinstance(w, dict) or not isinstance(w.get("text", ""), str):
                    raise ProtocolError("malformed word")
                words.append((w.get("text", ""), _ms(w.get("start_time"), "word start_time"),
                              _ms(w.get("end_time"), "word end_time")))
            utterances.append(Utterance(u.get("text", ""), _ms(u.get("start_time"), "start_time"),
                                        _ms(u.get("end_time"), "end_time"),
                                        bool(u.get("definite")), tuple(words)))
    return Response("".join(texts), tuple(utterances), duration)


def classify(code: int) -> Literal["retryable", "auth", "rejected"]:
    """Whether a new connection can get past an error code (§4.6; 550xxxxx are server-side)."""
    if code in _AUTH_CODES:
        return "auth"
    if code in _RETRYABLE_CODES or 55000000 <= code <= 55999999:
        return "retryable"
    return "rejected"


@dataclass
class StreamState:
    """What mapping one stream's responses remembers: the end of the last final reported
    (ms), finals so far and the last partial."""

    final_end: int = -1
    finals: int = 0
    last_partial: tuple[str, int, int] | None = None


def to_transcripts(response: Response, state: StreamState, channel: int, last: bool
                   ) -> list[Transcript]:
    """New finals (definite utterances not yet reported) and the open partials, times in
    seconds of the stream's audio; the last response makes the open utterance final."""
    out: list[Transcript] = []
    partial_index = 0
    for u in response.utterances:
        definite = u.definite or last
        if definite and u.end_ms <= state.final_end:
            continue  # reported by an earlier response (full result mode repeats them)
        if not u.text.strip() and not u.words:
            continue
        words = tuple(TranscriptWord(text=w, start=s / 1000, end=e / 1000) for w, s, e in u.words)
        if definite:
            rid = f"ch{channel}-{state.finals}"
            state.final_end = u.end_ms
            state.finals += 1
            state.last_partial = None
        else:
            key = (u.text, u.start_ms, u.end_ms)
            if partial_index == 0 and key == state.last_partial:
                continue  # the bigmodel mode answers every packet, changed or not
            if partial_index == 0:
                state.last_partial = key
            rid = f"ch{channel}-{state.finals + partial_index}"
            partial_index += 1
        out.append(Transcript(text=u.text.strip(), is_final=definite, start=u.start_ms / 1000,
                              end=u.end_ms / 1000, channel=channel, words=words, result_id=rid))
    return out
