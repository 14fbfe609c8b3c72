"""Alibaba DashScope inference WebSocket, Paraformer real-time ASR side: the client
instructions (``run-task``, ``finish-task``), the server events and error classification.
Pure, no sockets (``docs/protocols/dashscope.md``, "Paraformer real-time recognition"; also §1, §5).
The options, models and languages a session may ask for are the core's contract
(``voxq.stt_offers.dashscope``).

Every JSON message is ``{"header": {...}, "payload": {...}}`` in a text frame; audio goes in
binary frames with no framing of its own. Server events: ``task-started``,
``result-generated`` (one sentence, partial until ``sentence_end``; heartbeats to skip),
``task-finished``, ``task-failed`` (code and message in the *header*).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from voxq.records import Transcript
from voxq.records import Word as TranscriptWord
from voxq.stt_offers.dashscope import (
    DEFAULT_MODEL,
    LANGUAGE_HINTS,
    MODELS,
    V2_MODELS,
    DashScopeOptions,
    model_rate,
    session_hints,
)

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_URL",
    "LANGUAGE_HINTS",
    "MODELS",
    "DashScopeOptions",
    "Event",
    "ProtocolError",
    "Sentence",
    "SentenceState",
    "Word",
    "classify",
    "finish_task",
    "model_rate",
    "parse_event",
    "run_task",
    "session_hints",
    "to_transcript",
    "valid_task_id",
]

DEFAULT_URL = "wss://dashscope.aliyuncs.com/api-ws/v1/inference"

_RETRYABLE = frozenset({
    "CLIENT_ERROR", "RequestTimeOut", "ClientDisconnect", "Throttling", "Throttling.RateQuota",
    "Throttling.AllocationQuota", "Throttling.BurstRate", "InternalError", "InternalError.Algo",
    "SystemError", "ModelServingError", "ModelUnavailable",
})
_AUTH = frozenset({"InvalidApiKey", "AccessDenied", "Model.AccessDenied", "Workspace.AccessDenied",
                   "AccessDenied.Unpurchased"})


class ProtocolError(ValueError):
    """A server message that is not a documented DashScope event."""


def _dumps(doc: Any) -> str:
    """JSON as the SDK sends it: non-ASCII as UTF-8, no escapes."""
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


def run_task(task_id: str, options: DashScopeOptions, *, sample_rate: int,
             language_hints: list[str] | None) -> str:
    """The ``run-task`` instruction of one PCM recognition task (§2.3)."""
    params: dict[str, Any] = {"format": "pcm", "sample_rate": sample_rate}
    for name in ("vocabulary_id", "disfluency_removal_enabled", "semantic_punctuation_enabled",
                 "max_sentence_silence", "multi_threshold_mode_enabled",
                 "punctuation_prediction_enabled", "inverse_text_normalization_enabled"):
        value = getattr(options, name)
        if value is not None:
            params[name] = value
    if language_hints:
        params["language_hints"] = language_hints
    if options.model in V2_MODELS:
        params["heartbeat"] = options.heartbeat
    payload: dict[str, Any] = {"task_group": "audio", "task": "asr", "function": "recognition",
                               "model": options.model, "parameters": params, "input": {}}
    if options.phrase_id is not None:
        payload["resources"] = [{"resource_id": options.phrase_id, "resource_type": "asr_phrase"}]
    return _dumps({"header": {"action": "run-task", "task_id": task_id, "streaming": "duplex"},
                   "payload": payload})


def finish_task(task_id: str) -> str:
    """The ``finish-task`` instruction (§2.5): ``payload.input`` is exactly ``{}``."""
    return _dumps({"header": {"action": "finish-task", "task_id": task_id, "streaming": "duplex"},
                   "payload": {"input": {}}})


@dataclass(frozen=True, slots=True)
class Word:
    """One word of a sentence; times in ms of the task's audio."""

    text: str
    begin_ms: int
    end_ms: int
    punctuation: str = ""


@dataclass(frozen=True, slots=True)
class Sentence:
    """``payload.output.sentence`` of a result-generated event."""

    text: str
    begin_ms: int
    end_ms: int | None
    sentence_end: bool
    heartbeat: bool
    words: tuple[Word, ...] = ()

    @property
    def is_final(self) -> bool:
        """Final when ``sentence_end`` says so (or, as the SDK reads it, an end time is set)."""
        return self.sentence_end


@dataclass(frozen=True, slots=True)
class Event:
    """One server event; ``sentence`` on result-generated, ``error_*`` on task-failed."""

    kind: Literal["task-started", "result-generated", "task-finished", "task-failed"]
    task_id: str
    sentence: Sentence | None = None
    error_code: str = ""
    error_message: str = ""


def _ms(value: Any, what: str) -> int:
    """A non-negative time in ms; ProtocolError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or value < 0:
        raise ProtocolError(f"{what} must be a non-negative number of ms, not {value!r}")
    return round(value)


def _sentence(doc: Any) -> Sentence | None:
    """``payload.output.sentence`` of an event payload, or None when it has none."""
    output = doc.get("output") if isinstance(doc, dict) else None
    if not isinstance(output, dict) or output.get("sentence") is None:
        return None
    s = output["sentence"]
    if not isinstance(s, dict):
        raise ProtocolError("output.sentence is not an object")
    if s.get("heartbeat") is True:
        return Sentence("", 0, None, False, True)
    text = s.get("text", "")
    if not isinstance(text, str):
        raise ProtocolError("sentence.text is not a string")
    words = []
    for w in s.get("words") or []:
        if not isinstance(w, dict) or not isinstance(w.get("text", ""), str):
            raise ProtocolError("malformed word")
        punct = w.get("punctuation") or ""
        words.append(Word(w.get("text", ""), _ms(w.get("begin_time"), "word begin_time"),
                          _ms(w.get("end_time"), "word end_time"),
                          punct if isinstance(punct, str) else ""))
    end = s.get("end_time")
    end_ms = None if end is None else _ms(end, "end_time")
    final = bool(s.get("sentence_end")) or (s.get("sentence_end") is None and end_ms is not None)
    return Sentence(text, _ms(s.get("begin_time", 0), "begin_time"), end_ms, final, False,
                    tuple(words))


def parse_event(text: str | bytes) -> Event:
    """Parse one server text frame into an Event; ProtocolError for anything else."""
    if isinstance(text, bytes):
        raise ProtocolError("the server sent a binary frame to a recognition task")
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise ProtocolError(f"invalid JSON: {e}") from None
    header = doc.get("header") if isinstance(doc, dict) else None
    if not isinstance(header, dict):
        raise ProtocolError("message without a header object")
    kind = header.get("event")
    task_id = header.get("task_id")
    if not isinstance(task_id, str):
        task_id = ""
    payload = doc.get("payload") or {}
    if kind == "task-failed":
        return Event("task-failed", task_id, error_code=str(header.get("error_code") or ""),
                     error_message=str(header.get("error_message") or ""))
    if kind in ("task-started", "task-finished"):
        return Event(kind, task_id, sentence=_sentence(payload))
    if kind == "result-generated":
        return Event("result-generated", task_id, sentence=_sentence(payload))
    raise ProtocolError(f"unknown event {kind!r}")


def classify(code: str) -> Literal["retryable", "auth", "rejected"]:
    """Whether a new task can get past a task-failed ``error_code`` (§5)."""
    if code in _RETRYABLE:
        return "retryable"
    if code in _AUTH:
        return "auth"
    return "rejected"


_TASK_ID_RE = re.compile(r"^[0-9a-fA-F]{32}$|^[0-9a-fA-F-]{36}$")


def valid_task_id(task_id: str) -> bool:
    """A 32-hex or 36-char hyphenated UUID, the two forms the service accepts."""
    return bool(_TASK_ID_RE.match(task_id))


@dataclass
class SentenceState:
    """What mapping one task's sentences remembers: finals so far and the last partial."""

    finals: int = 0
    last_partial: tuple[str, int] | None = None


def to_transcript(s: Sentence, state: SentenceState, channel: int) -> Transcript | None:
    """A Transcript of a sentence, times in seconds of the task's audio (None for heartbeats,
    empty or unchanged partials); the result id follows the sentence."""
    if s.heartbeat or (not s.text.strip() and not s.words):
        return None
    end_ms = s.end_ms
    if end_ms is None:
        end_ms = max([s.begin_ms, *(w.end_ms for w in s.words)])
    rid = f"ch{channel}-{state.finals}"
    if s.is_final:
        state.finals += 1
        state.last_partial = None
    else:
        key = (s.text, end_ms)
        if key == state.last_partial:
            return None
        state.last_partial = key
    words = tuple(TranscriptWord(text=w.text, start=w.begin_ms / 1000, end=w.end_ms / 1000)
                  for w in s.words if w.text)
    return Transcript(text=s.text.strip(), is_final=s.is_final, start=s.begin_ms / 1000,
                      end=end_ms / 1000, channel=channel, words=words, result_id=rid)
