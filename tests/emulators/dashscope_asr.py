"""A strict local emulator of DashScope's inference WebSocket for Paraformer real-time ASR.

A real WebSocket server (``websockets.asyncio.server``) on a free loopback port that answers
what ``docs/protocols/dashscope.md``, "Emulator checklist", says the service answers (numbers below):

Handshake, before the upgrade:
  * path other than ``/api-ws/v1/inference`` (trailing ``/`` allowed) → HTTP 404 (#1);
  * ``Authorization`` missing, not ``Bearer`` (scheme case-insensitive) or an unknown key →
    HTTP 401 with ``{"code":"InvalidApiKey","message":"Invalid API-key provided."}`` (#2; the
    body is the notes' suggestion, [UNVERIFIED]).

After the upgrade every problem is one ``task-failed`` (``error_code``/``error_message`` in the
header, ``attributes: {}``, payload ``{}``) then a 1000 close:
  * text frames that are not a ``{"header", "payload"}`` JSON object, unknown actions, a second
    ``run-task`` while one runs, empty or reused ``task_id``, ``streaming`` ≠ ``duplex``, a
    task other than audio/asr/recognition, missing ``payload.input``/``payload.model`` (the
    documented messages), ``format``/``sample_rate`` missing or wrong (per model: 8k models
    need 8000, v1 16000), ``max_sentence_silence`` ∉ [200, 6000], ``language_hints`` not a list
    of known codes, ``heartbeat`` not a bool, ``continue-task`` on an ASR task, ``finish-task``
    for another task or with ``payload.input`` ≠ ``{}`` → ``InvalidParameter`` (#3-#11);
    unknown model → ``ModelNotFound`` / ``Model can not be found.``; unknown
    ``vocabulary_id`` or ``asr_phrase`` resource → ``NotFound``. Unknown parameter keys are
    accepted (the SDK forwards arbitrary kwargs);
  * binary audio with no running task, or before ``task-started`` was sent
    (``config.task_started_delay`` makes that window visible), or a frame over
    ``config.max_frame_bytes`` → ``InvalidParameter`` (#7, #12, #13);
  * an odd number of PCM bytes over the task → ``NO_VALID_AUDIO_ERROR`` at ``finish-task`` (#14);
  * ``format: "wav"``: the stream is a WAV file, header included (as the official samples send
    it, ``docs/protocols/dashscope.md``): only the samples of its ``data`` chunk are audio;
    a stream that does not start with a RIFF/WAVE header, or whose ``fmt`` is not 16-bit mono
    PCM at the task's rate → ``NO_VALID_AUDIO_ERROR`` (#14), as is a task finished before its
    ``data`` chunk began;
  * no binary frame for ``config.no_audio_timeout`` (23 s) while a task runs → ``CLIENT_ERROR``
    / ``request timeout after 23 seconds.`` (#15); with ``heartbeat`` off, only digital silence
    for ``config.silence_timeout`` (60 s) → ``RequestTimeOut`` / ``Response timeout!`` (#17,
    code [UNVERIFIED]); no task for ``config.idle_timeout`` (60 s) → close, no event (#18).

Recognition, per task, is the AWS emulator's tone code (:class:`ToneChannel`: 10 ms blocks,
RMS ≥ 500 is loud, < 50 ms gaps join a word, < 300 ms gaps join a sentence, a word is named
``tone<f rounded to 100 Hz>``), so tests can assert exact text and times: every binary frame
that extends an open sentence gets a partial (``sentence_end: false``, ``end_time: null``,
``usage: null``); 300 ms of quiet (or ``finish-task``) gets the final (text = the words joined
by spaces + ``.``, the last word's ``punctuation`` = ``.``, ``usage: {"duration": s}``). A
vocabulary in ``config.vocabularies`` renames words (``tone500`` → ``hello``), proving the id
reached the task. With ``heartbeat`` on, every ``config.heartbeat_every`` seconds of audio
without a result a heartbeat result is sent (its cadence is [UNVERIFIED] in the notes).
After ``finish-task``: remaining finals, ``task-finished``; the connection stays reusable.

Fault knobs: ``emulator.faults`` is a queue of :class:`Fault`, one per new connection: refuse
the handshake with an HTTP status, answer ``task-failed`` (any code) after N audio frames, or
drop the TCP connection after N audio frames. Every connection is recorded in
``emulator.connections`` (headers, each task's run-task, audio, results, failure).
"""

from __future__ import annotations

import contextlib
import json
import math
import struct
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn
from urllib.parse import urlsplit

import numpy as np
from pydantic import SecretStr
from websockets.asyncio.server import Server, ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tests.emulators.aws_transcribe import ResultOptions, ToneChannel
from tests.emulators.common import LOOPBACK, serve_loopback
from voxq.aio import within
from voxq.settings import Settings

API_KEY = "sk-voxqemulator0000000000000001"
PATH = "/api-ws/v1/inference"
MODEL_RATES: dict[str, int | None] = {
    "paraformer-realtime-v2": None, "paraformer-realtime-8k-v2": 8000,
    "paraformer-realtime-v1": 16000, "paraformer-realtime-8k-v1": 8000,
}
FORMATS = frozenset({"pcm", "wav", "mp3", "opus", "speex", "aac", "amr"})
MAX_WAV_HEADER = 64 * 1024  # header bytes before the data chunk the emulator accepts


def wav_data_offset(head: bytes, rate: int) -> int | None:
    """Where the samples of a WAV stream start (None: header not complete yet); ValueError if
    it is no RIFF/WAVE stream or not 16-bit mono PCM at ``rate``."""
    if len(head) >= 12 and (head[:4] != b"RIFF" or head[8:12] != b"WAVE"):
        raise ValueError("wav audio without a RIFF header")
    pos, fmt_ok = 12, False
    while len(head) >= pos + 8:
        chunk, size = head[pos:pos + 4], struct.unpack("<I", head[pos + 4:pos + 8])[0]
        if chunk == b"data":
            if not fmt_ok:
                raise ValueError("wav data before its fmt chunk")
            return pos + 8
        if len(head) < pos + 8 + size:
            return None
        if chunk == b"fmt ":
            if size < 16:
                raise ValueError("wav fmt chunk too short")
            kind, channels, fmt_rate = struct.unpack("<HHI", head[pos + 8:pos + 16])
            bits = struct.unpack("<H", head[pos + 22:pos + 24])[0]
            if kind != 1 or bits != 16 or channels != 1:
                raise ValueError("wav must hold 16-bit mono PCM")
            if fmt_rate != rate:
                raise ValueError(f"wav rate {fmt_rate} differs from sample_rate {rate}")
            fmt_ok = True
        pos += 8 + size + (size & 1)
    return None
HINTS = frozenset({"zh", "en", "ja", "yue", "ko", "de", "fr", "ru"})
VOCABULARY = "vocab-voxq-0001"
PHRASE = "phrase-voxq-0001"

INVALID_PAYLOAD = "Invalid payload data"
MISSING_INPUT = "Missing required parameter 'payload.input'! Please follow the protocol!"
MISSING_MODEL = "Missing required parameter 'payload.model'! Please follow the protocol!"
MODEL_NOT_FOUND = "Model can not be found."
SILENCE_TIMEOUT = "Response timeout!"


def timeout_message(seconds: float) -> str:
    """The documented no-audio timeout text for ``seconds`` (23 → the doc's exact string)."""
    return f"request timeout after {seconds:g} seconds."


TASK_TOO_LONG = "The task exceeded its maximum duration."


@dataclass
class EmulatorConfig:
    """Limits and behaviour; tests change fields before (or between) connections."""

    api_keys: set[str] = field(default_factory=lambda: {API_KEY})
    no_audio_timeout: float = 23.0
    #: a task that has received more audio than this fails (a task-length limit, shortened to
    #: seconds by the rolling tests; DashScope states none)
    max_task_seconds: float | None = None
    silence_timeout: float = 60.0
    idle_timeout: float = 60.0
    max_frame_bytes: int = 1 << 20
    task_started_delay: float = 0.0
    heartbeat_every: float = 1.0
    vocabularies: dict[str, dict[str, str]] = field(
        default_factory=lambda: {VOCABULARY: {"tone500": "hello"}})
    phrases: set[str] = field(default_factory=lambda: {PHRASE})
    silence_rms: float = 500.0
    word_gap: float = 0.05
    utterance_gap: float = 0.3


@dataclass
class Fault:
    """A misbehaviour for one connection: ``http`` refuses the handshake with ``status``;
    ``task-failed`` answers ``code``/``message`` after ``after_frames`` audio frames; ``abort``
    drops the TCP connection (no close frame) after ``after_frames`` audio frames."""

    kind: Literal["http", "task-failed", "abort"]
    after_frames: int = 0
    status: int = 503
    code: str = "InternalError"
    message: str = "Internal server error!"


@dataclass(eq=False)
class TaskLog:
    """What one task received and answered."""

    task_id: str
    run_task: dict[str, Any]
    model: str = ""
    rate: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    audio: bytearray = field(default_factory=bytearray)
    frame_sizes: list[int] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)  # payload.output.sentence
    heartbeats: int = 0
    failure: tuple[str, str] | None = None
    finished: bool = False

    @property
    def finals(self) -> list[dict[str, Any]]:
        """Final sentences sent."""
        return [s for s in self.results if s["sentence_end"]]


@dataclass(eq=False)
class ConnLog:
    """What happened on one connection."""

    index: int
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    fault: Fault | None = None
    http_status: int | None = None
    tasks: list[TaskLog] = field(default_factory=list)
    failure: tuple[str, str] | None = None
    frames: int = 0  # audio frames received on the connection
    closed: bool = False
    ws: ServerConnection | None = None


class _Closed(Exception):
    """The connection is over (task-failed sent, idle close, or client gone)."""


def _ms(seconds: float) -> int:
    """Seconds to integer ms."""
    return round(seconds * 1000)


def sentence_of(result: dict[str, Any], vocabulary: dict[str, str]) -> dict[str, Any]:
    """A Paraformer sentence from one tone-code result (AWS-shaped, see ToneChannel)."""
    final = not result["IsPartial"]
    items = [i for i in result["Alternatives"][0]["Items"] if i["Type"] == "pronunciation"]
    words = [{"begin_time": _ms(i["StartTime"]), "end_time": _ms(i["EndTime"]),
              "text": vocabulary.get(i["Content"], i["Content"]), "punctuation": ""}
             for i in items]
    text = " ".join(w["text"] for w in words)
    if final and words:
        words[-1]["punctuation"] = "."
        text += "."
    return {"begin_time": _ms(result["StartTime"]),
            "end_time": _ms(result["EndTime"]) if final else None, "text": text,
            "heartbeat": False, "sentence_end": final, "words": words}


class DashScopeEmulator:
    """The emulator server; ``async with`` starts it on a free loopback port."""

    def __init__(self, config: EmulatorConfig | None = None):
        """An emulator with ``config`` (defaults: the service's limits)."""
        self.config = config or EmulatorConfig()
        self.faults: deque[Fault] = deque()
        self.connections: list[ConnLog] = []
        self.active: list[ConnLog] = []
        self.port = 0
        self._pending: dict[ServerConnection, ConnLog] = {}
        self._server: Server | None = None
        self._stack: contextlib.AsyncExitStack | None = None

    @property
    def url(self) -> str:
        """The endpoint to put in ``dashscope_url`` (VOXQ_DASHSCOPE_URL)."""
        return f"ws://{LOOPBACK}:{self.port}{PATH}"

    @property
    def tasks(self) -> list[TaskLog]:
        """Every task of every connection, in order."""
        return [t for c in self.connections for t in c.tasks]

    def configure(self, settings: Settings, **changes: Any) -> Settings:
        """``settings`` pointed at this emulator with its (fake) key."""
        update: dict[str, Any] = {"dashscope_api_key": SecretStr(API_KEY),
                                  "dashscope_url": self.url, "dashscope_workspace": None}
        update.update(changes)
        return settings.model_copy(update=update)

    async def __aenter__(self) -> DashScopeEmulator:
        """Start serving on a free loopback port."""
        self._stack = contextlib.AsyncExitStack()
        self._server, self.port = await self._stack.enter_async_context(serve_loopback(
            self._handler, self._process_request, max_size=self.config.max_frame_bytes + 1,
            max_queue=None, close_timeout=2))
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Drop live connections and stop serving."""
        assert self._stack is not None
        for log in list(self.active):
            if log.ws is not None:
                log.ws.transport.abort()
        await self._stack.aclose()

    # --- handshake -------------------------------------------------------------------------------

    @staticmethod
    def _json_response(connection: ServerConnection, status: int, code: str,
                       message: str) -> Response:
        """An HTTP refusal with a DashScope-style JSON body."""
        body = json.dumps({"code": code, "message": message, "request_id": str(uuid.uuid4())})
        response = connection.respond(status, body)
        headers = Headers([(k, v) for k, v in response.headers.raw_items()
                           if k.lower() != "content-type"])
        headers["Content-Type"] = "application/json"
        response.headers = headers
        return response

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Route, apply handshake faults and check the bearer key before the upgrade."""
        parts = urlsplit(request.path)
        log = ConnLog(index=len(self.connections), path=parts.path,
                      headers={k: v for k, v in request.headers.raw_items()})
        self.connections.append(log)
        log.fault = self.faults.popleft() if self.faults else None
        if parts.path not in (PATH, PATH + "/"):
            log.http_status = 404
            return self._json_response(connection, 404, "NotFound", "Not Found")
        if log.fault is not None and log.fault.kind == "http":
            log.http_status = log.fault.status
            return self._json_response(connection, log.fault.status, log.fault.code,
                                       log.fault.message)
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or key.strip() not in self.config.api_keys:
            log.http_status = 401
            return self._json_response(connection, 401, "InvalidApiKey",
                                       "Invalid API-key provided.")
        self._pending[connection] = log
        return None

    # --- after the upgrade -----------------------------------------------------------------------

    async def _handler(self, ws: ServerConnection) -> None:
        """Serve one upgraded connection and record its end."""
        log = self._pending.pop(ws)
        log.ws = ws
        self.active.append(log)
        try:
            await _Connection(self, ws, log).serve()
        except _Closed:
            pass
        finally:
            log.closed = True
            self.active.remove(log)


class _Connection:
    """One client connection's protocol state."""

    def __init__(self, emulator: DashScopeEmulator, ws: ServerConnection, log: ConnLog):
        """Fresh state for one connection."""
        self.emu = emulator
        self.cfg = emulator.config
        self.ws = ws
        self.log = log
        self.task: TaskLog | None = None
        self.used_ids: set[str] = set()
        self.started_at: float | None = None  # when task-started was sent
        self.recognizer: ToneChannel | None = None
        self.carry = b""
        self.wav_head: bytearray | None = None  # a wav task's header bytes, until its data
        self.last_audio = time.monotonic()
        self.last_sound = time.monotonic()
        self.quiet_audio = 0.0  # seconds of audio since the last result or heartbeat
        self.heartbeat = False
        self.vocabulary: dict[str, str] = {}

    async def _send(self, event: str, payload: dict[str, Any], **header: Any) -> None:
        """Send one event of the current task (header with attributes: {})."""
        task_id = self.task.task_id if self.task is not None else ""
        doc = {"header": {"task_id": task_id, "event": event, **header, "attributes": {}},
               "payload": payload}
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(json.dumps(doc, ensure_ascii=False))

    async def fail(self, code: str, message: str) -> NoReturn:
        """task-failed, then close (the service closes after task-failed)."""
        if self.log.failure is None:
            self.log.failure = (code, message)
            if self.task is not None:
                self.task.failure = (code, message)
            await self._send("task-failed", {}, error_code=code, error_message=message)
            with contextlib.suppress(ConnectionClosed):
                await self.ws.close(1000)
        raise _Closed

    async def serve(self) -> None:
        """Read instructions and audio until the connection ends; enforce the timers."""
        while True:
            if self.task is None:
                timeout = self.cfg.idle_timeout
            else:
                timeout = self.cfg.no_audio_timeout - (time.monotonic() - self.last_audio)
            try:
                frame = await within(self.ws.recv(), max(timeout, 0.0))
            except TimeoutError:
                if self.task is None:
                    with contextlib.suppress(ConnectionClosed):
                        await self.ws.close(1000)
                    raise _Closed from None
                await self.fail("CLIENT_ERROR", timeout_message(self.cfg.no_audio_timeout))
            except ConnectionClosed:
                raise _Closed from None
            if isinstance(frame, str):
                await self._instruction(frame)
            else:
                await self._audio(frame)

    # --- instructions ----------------------------------------------------------------------------

    async def _instruction(self, text: str) -> None:
        """Validate and dispatch one text frame."""
        try:
            doc = json.loads(text)
        except ValueError:
            await self.fail("InvalidParameter", INVALID_PAYLOAD)
        if not isinstance(doc, dict) or not isinstance(doc.get("header"), dict) \
                or not isinstance(doc.get("payload"), dict):
            await self.fail("InvalidParameter", INVALID_PAYLOAD)
        header, payload = doc["header"], doc["payload"]
        action = header.get("action")
        if action == "run-task":
            await self._run_task(header, payload)
        elif action == "finish-task":
            await self._finish_task(header, payload)
        elif action == "continue-task":
            if self.task is None or header.get("task_id") != self.task.task_id:
                await self.fail("InvalidParameter", "continue-task for a task that is not running.")
            await self.fail("InvalidParameter", "continue-task is not part of a recognition task.")
        else:
            await self.fail("InvalidParameter", f"Unsupported action: {action!r}.")

    def _check_run_task(self, header: dict[str, Any], payload: dict[str, Any]
                        ) -> tuple[str, str] | None:
        """The (code, message) a run-task earns, or None when it is valid."""
        task_id = header.get("task_id")
        if not isinstance(task_id, str) or not task_id:
            return "InvalidParameter", "Missing required parameter 'header.task_id'!"
        if task_id in self.used_ids:
            return "InvalidParameter", f"Duplicate task_id {task_id!r} on this connection."
        if header.get("streaming") != "duplex":
            return "InvalidParameter", "Invalid streaming mode: expected 'duplex'."
        if (payload.get("task_group"), payload.get("task"), payload.get("function")) != \
                ("audio", "asr", "recognition"):
            return "InvalidParameter", "task can not be null"
        if "model" not in payload:
            return "InvalidParameter", MISSING_MODEL
        if payload["model"] not in MODEL_RATES:
            return "ModelNotFound", MODEL_NOT_FOUND
        if "input" not in payload:
            return "InvalidParameter", MISSING_INPUT
        if not isinstance(payload["input"], dict):
            return "InvalidParameter", INVALID_PAYLOAD
        params = payload.get("parameters")
        if not isinstance(params, dict):
            return "InvalidParameter", "Missing required parameter 'payload.parameters'!"
        if params.get("format") not in FORMATS:
            return "InvalidParameter", f"Invalid format {params.get('format')!r}."
        rate = params.get("sample_rate")
        if isinstance(rate, bool) or not isinstance(rate, int) or rate <= 0:
            return "InvalidParameter", f"Invalid sample_rate {rate!r}."
        need = MODEL_RATES[payload["model"]]
        if need is not None and rate != need:
            return "InvalidParameter", f"{payload['model']} only supports a sample_rate of {need}."
        silence = params.get("max_sentence_silence")
        if silence is not None and (isinstance(silence, bool) or not isinstance(silence, int)
                                    or not 200 <= silence <= 6000):
            return "InvalidParameter", "max_sentence_silence must be in [200, 6000]."
        hints = params.get("language_hints")
        if hints is not None and (not isinstance(hints, list) or not hints
                                  or any(h not in HINTS for h in hints)):
            return "InvalidParameter", f"Invalid language_hints {hints!r}."
        if "heartbeat" in params and not isinstance(params["heartbeat"], bool):
            return "InvalidParameter", "heartbeat must be a boolean."
        vocabulary = params.get("vocabulary_id")
        if vocabulary is not None and vocabulary not in self.cfg.vocabularies:
            return "NotFound", f"Vocabulary {vocabulary!r} not found."
        for resource in payload.get("resources") or []:
            if not isinstance(resource, dict) or resource.get("resource_type") != "asr_phrase" \
                    or resource.get("resource_id") not in self.cfg.phrases:
                return "NotFound", f"Resource {resource!r} not found."
        return None

    async def _run_task(self, header: dict[str, Any], payload: dict[str, Any]) -> None:
        """Start a task after checking its run-task; answer task-started."""
        if self.task is not None:
            await self.fail("InvalidParameter", "A task is already running on this connection.")
        problem = self._check_run_task(header, payload)
        if problem is not None:
            await self.fail(*problem)
        params = payload["parameters"]
        task = TaskLog(task_id=header["task_id"], run_task={"header": header, "payload": payload},
                       model=payload["model"], rate=params["sample_rate"], params=params)
        self.log.tasks.append(task)
        self.used_ids.add(task.task_id)
        self.task = task
        self.heartbeat = params.get("heartbeat") is True
        self.vocabulary = self.cfg.vocabularies.get(params.get("vocabulary_id") or "", {})
        self.recognizer = ToneChannel(task.rate, 0, len(self.emu.tasks), ResultOptions(),
                                      self.cfg.silence_rms, self.cfg.word_gap,
                                      self.cfg.utterance_gap)
        self.carry = b""
        self.wav_head = bytearray() if params.get("format") == "wav" else None
        self.quiet_audio = 0.0
        self.started_at = None
        if self.cfg.task_started_delay:  # anything arriving now came before task-started
            with contextlib.suppress(TimeoutError):
                try:
                    early = await within(self.ws.recv(), self.cfg.task_started_delay)
                except ConnectionClosed:
                    raise _Closed from None
                what = "Audio" if isinstance(early, bytes) else "An instruction"
                await self.fail("InvalidParameter", f"{what} received before task-started.")
        self.last_audio = self.last_sound = time.monotonic()
        await self._send("task-started", {})
        self.started_at = time.monotonic()

    async def _finish_task(self, header: dict[str, Any], payload: dict[str, Any]) -> None:
        """Flush the task's finals and answer task-finished."""
        task = self.task
        if task is None or header.get("task_id") != task.task_id:
            await self.fail("InvalidParameter", "finish-task for a task that is not running.")
        if payload.get("input") != {} or set(payload) - {"input"}:
            await self.fail("InvalidParameter", INVALID_PAYLOAD)
        if task.params.get("format") == "pcm" and len(task.audio) % 2:
            await self.fail("NO_VALID_AUDIO_ERROR", "Invalid audio: an odd number of PCM bytes.")
        if task.params.get("format") == "wav" and self.wav_head is not None:
            await self.fail("NO_VALID_AUDIO_ERROR", "Invalid audio: no wav data chunk.")
        assert self.recognizer is not None
        await self._results(self.recognizer.flush())
        task.finished = True
        await self._send("task-finished", {"output": {}, "usage": None})
        self.task = None
        self.recognizer = None

    # --- audio -----------------------------------------------------------------------------------

    async def _audio(self, frame: bytes) -> None:
        """Check, record and recognise one binary audio frame."""
        task = self.task
        if task is None:
            await self.fail("InvalidParameter", "Audio received while no task is running.")
        if self.started_at is None:
            await self.fail("InvalidParameter", "Audio received before task-started.")
        if len(frame) > self.cfg.max_frame_bytes:
            await self.fail("InvalidParameter", f"Audio frame of {len(frame)} bytes is too large.")
        now = time.monotonic()
        self.last_audio = now
        self.log.frames += 1
        task.audio += frame
        task.frame_sizes.append(len(frame))
        if self.cfg.max_task_seconds is not None \
                and len(task.audio) / 2 / task.rate > self.cfg.max_task_seconds:
            await self.fail("RequestTimeOut", TASK_TOO_LONG)
        fault = self.log.fault
        if fault is not None and fault.kind != "http" and self.log.frames >= fault.after_frames:
            if fault.kind == "abort":
                self.log.failure = ("<abort>", "TCP connection dropped without a close frame")
                self.ws.transport.abort()
                raise _Closed
            await self.fail(fault.code, fault.message)
        if self.wav_head is not None:
            frame = await self._wav_samples(frame, task.rate)
        data = self.carry + frame
        whole = len(data) // 2 * 2
        self.carry = data[whole:]
        samples = np.frombuffer(data[:whole], "<i2")
        if samples.any():
            self.last_sound = now
        elif not self.heartbeat and now - self.last_sound > self.cfg.silence_timeout:
            await self.fail("RequestTimeOut", SILENCE_TIMEOUT)
        assert self.recognizer is not None
        results = self.recognizer.feed(samples)
        if results:
            self.quiet_audio = 0.0
            await self._results(results)
            return
        self.quiet_audio += len(samples) / task.rate
        if self.heartbeat and self.quiet_audio >= self.cfg.heartbeat_every:
            self.quiet_audio = 0.0
            task.heartbeats += 1
            await self._send("result-generated", {"output": {"sentence": {
                "begin_time": 0, "end_time": None, "text": "", "heartbeat": True,
                "sentence_end": False, "sentence_id": 0, "words": []}}, "usage": None})

    async def _wav_samples(self, frame: bytes, rate: int) -> bytes:
        """The samples in ``frame`` of a WAV stream whose header is still being read."""
        assert self.wav_head is not None
        self.wav_head += frame
        try:
            start = wav_data_offset(bytes(self.wav_head), rate)
        except ValueError as e:
            await self.fail("NO_VALID_AUDIO_ERROR", f"Invalid audio: {e}.")
        if start is None:
            if len(self.wav_head) > MAX_WAV_HEADER:
                await self.fail("NO_VALID_AUDIO_ERROR", "Invalid audio: wav header too long.")
            return b""
        samples = bytes(self.wav_head[start:])
        self.wav_head = None
        return samples

    async def _results(self, results: list[dict[str, Any]]) -> None:
        """Send tone-code results as result-generated sentences."""
        task = self.task
        assert task is not None
        for r in results:
            sentence = sentence_of(r, self.vocabulary)
            task.results.append(sentence)
            usage = ({"duration": math.ceil(len(task.audio) / 2 / task.rate)}
                     if sentence["sentence_end"] else None)
            await self._send("result-generated", {"output": {"sentence": sentence},
                                                  "usage": usage})
