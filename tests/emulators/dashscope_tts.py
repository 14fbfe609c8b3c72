"""A strict local emulator of DashScope's inference WebSocket for CosyVoice streaming TTS.

A real WebSocket server on a free loopback port answering what ``docs/protocols/dashscope.md``,
"Emulator checklist" (and §1, §3 there) says (numbers below are checklist items):

Handshake, before the upgrade: a path other than ``/api-ws/v1/inference`` (trailing ``/``
allowed) → HTTP 404 (#1); ``Authorization`` missing, not ``Bearer`` (case-insensitive) or an
unknown key → HTTP 401 ``{"code":"InvalidApiKey","message":"Invalid API-key provided."}`` (#2,
body [UNVERIFIED]).

After the upgrade every problem is one ``task-failed`` (code and message in the header,
``attributes: {}``, payload ``{}``) and a 1000 close:
  * not a ``{"header","payload"}`` JSON object, unknown action, ``run-task`` while a task runs,
    empty/reused/malformed ``task_id``, ``streaming`` ≠ ``duplex``, task group/task/function
    other than audio/tts/SpeechSynthesizer → ``InvalidParameter`` (#3-#6);
  * missing ``payload.model``/``payload.input`` → the documented ``Missing required parameter``
    messages; ``input`` ≠ ``{}`` → ``InvalidParameter``; unknown model → ``ModelNotFound``;
  * voice missing → ``Request voice is invalid!``; a voice the model does not have (a v1 voice on
    v2, or unknown) → ``[tts:]Engine return error code: 418``; ``text_type`` ≠ ``PlainText``,
    ``format`` ∉ {pcm, wav, mp3, opus} (``Default`` accepted), ``sample_rate`` not offered (0
    accepted), ``volume`` ∉ [0,100], ``rate``/``pitch`` ∉ [0.5,2], ``seed`` ∉ [0,65535] →
    ``InvalidParameter`` (#6); unknown parameter keys are accepted;
  * any instruction before ``task-started`` was sent (``config.task_started_delay`` widens that
    window), or with another ``task_id`` → ``InvalidParameter`` (#7, #8);
  * ``continue-task`` without ``input.text``, over 20 000 characters in one message or 200 000 in
    the task (Han characters count 2) → ``InvalidParameter`` (#10); ``finish-task`` with no text
    ever sent → ``Please ensure input text is valid.`` (#10b); ``finish-task`` input other than
    ``{}`` or the cancel directive → ``InvalidParameter`` (#11); any binary frame → ``InvalidParameter`` (#12);
  * nothing from the client for ``config.text_timeout`` (23 s) while a task runs → ``CLIENT_ERROR``
    ``request timeout after 23 seconds.`` (#16); no task for ``config.idle_timeout`` → close (#18).

Synthesis: the emulator only produces mp3 (other formats → ``InvalidParameter``, an emulator
limit). At ``finish-task`` the whole task's text becomes one MP3 tone (:mod:`tests.emulators.tts_audio`,
20 ms per word character / ``rate``), sent as binary chunks of ``config.chunk_bytes`` between a
``sentence-begin`` and a ``sentence-end`` result per sentence (the notes say only
"interleaved"), then ``task-finished``; the connection stays reusable (#21). Each voice has its
own tone frequency. Fault knobs: ``emulator.faults``, one :class:`Fault` per new connection:
refuse the handshake with a status, fail the task with any code after ``run-task``, or drop the
TCP connection after N audio chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import unicodedata
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn
from urllib.parse import urlsplit

from pydantic import SecretStr
from websockets.asyncio.server import Server, ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tests.emulators.common import LOOPBACK, serve_loopback
from tests.emulators.tts_audio import mp3_tone, speech_seconds
from voxq.aio import within
from voxq.settings import Settings

API_KEY = "sk-voxqttsemulator000000000000001"
PATH = "/api-ws/v1/inference"
MODEL_VOICES = {
    "cosyvoice-v1": frozenset({"longxiaochun", "longxiaoxia", "longwan", "longcheng", "longhua",
                               "longshu", "loongbella", "longyue", "longfei", "longjielidou",
                               "longtong", "longxiang", "loongstella"}),
    "cosyvoice-v2": frozenset({"longxiaochun_v2", "longxiaoxia_v2", "longwan_v2", "longcheng_v2",
                               "longhua_v2", "longshu_v2", "loongbella_v2"}),
}
RATES = frozenset({8000, 16000, 22050, 24000, 44100, 48000})
FORMATS = frozenset({"pcm", "wav", "mp3", "opus"})
MAX_MESSAGE_UNITS = 20_000
MAX_TASK_UNITS = 200_000
_TASK_ID = re.compile(r"^[0-9a-fA-F]{32}$|^[0-9a-fA-F-]{36}$")
_SENTENCE = re.compile(r"[^。！？.!?]+[。！？.!?]*")
INVALID_PAYLOAD = "Invalid payload data"


def text_units(text: str) -> int:
    """Characters as CosyVoice bills them: Han characters count 2, everything else 1."""
    return sum(2 if unicodedata.name(ch, "").startswith("CJK UNIFIED") else 1 for ch in text)


@dataclass
class EmulatorConfig:
    """The emulated account and timers."""

    api_keys: frozenset[str] = frozenset({API_KEY})
    text_timeout: float = 23.0
    idle_timeout: float = 60.0
    task_started_delay: float = 0.0
    chunk_bytes: int = 2048
    delay: float = 0.0


@dataclass
class Fault:
    """One injected misbehaviour, consumed by the next connection."""

    kind: Literal["http", "fail", "drop"] = "fail"
    status: int = 503
    code: str = "Throttling.RateQuota"
    message: str = "Requests rate limit exceeded, please try again later."
    after_chunks: int = 0


@dataclass
class TaskLog:
    """One task as the emulator saw it."""

    task_id: str
    run_task: dict[str, Any]
    texts: list[str] = field(default_factory=list)
    audio_seconds: float = 0.0
    audio_bytes: int = 0
    finished: bool = False
    failure: tuple[str, str] | None = None


@dataclass
class ConnLog:
    """One connection: handshake headers, tasks, how it ended."""

    index: int
    path: str
    headers: dict[str, str]
    http_status: int = 101
    fault: Fault | None = None
    tasks: list[TaskLog] = field(default_factory=list)
    failure: tuple[str, str] | None = None
    ws: ServerConnection | None = None
    closed: bool = False


class _Closed(Exception):
    """The connection is over."""


class DashScopeTtsEmulator:
    """The emulator; ``async with DashScopeTtsEmulator() as ds:``."""

    def __init__(self, config: EmulatorConfig | None = None):
        self.config = config or EmulatorConfig()
        self.faults: deque[Fault] = deque()
        self.connections: list[ConnLog] = []
        self.port = 0
        self._pending: dict[ServerConnection, ConnLog] = {}
        self._stack: contextlib.AsyncExitStack | None = None
        self._server: Server | None = None

    @property
    def url(self) -> str:
        """The endpoint to put in VOXQ_DASHSCOPE_URL."""
        return f"ws://{LOOPBACK}:{self.port}{PATH}"

    @property
    def tasks(self) -> list[TaskLog]:
        """Every task of every connection, in order."""
        return [t for c in self.connections for t in c.tasks]

    def configure(self, settings: Settings, **changes: Any) -> Settings:
        """``settings`` pointed at this emulator with its key."""
        update: dict[str, Any] = {"dashscope_api_key": SecretStr(API_KEY), "dashscope_url": self.url,
                                  "dashscope_workspace": None}
        update.update(changes)
        return settings.model_copy(update=update)

    def env(self) -> dict[str, str]:
        """Environment variables pointing a worker process at this emulator."""
        return {"DASHSCOPE_API_KEY": API_KEY, "VOXQ_DASHSCOPE_URL": self.url}

    async def __aenter__(self) -> DashScopeTtsEmulator:
        self._stack = contextlib.AsyncExitStack()
        self._server, self.port = await self._stack.enter_async_context(serve_loopback(
            self._handler, self._process_request, max_size=1 << 20, close_timeout=2))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._stack is not None
        for log in self.connections:
            if log.ws is not None and not log.closed:
                log.ws.transport.abort()
        await self._stack.aclose()

    @staticmethod
    def _refuse(connection: ServerConnection, status: int, code: str, message: str) -> Response:
        body = json.dumps({"code": code, "message": message, "request_id": str(uuid.uuid4())})
        response = connection.respond(status, body)
        headers = Headers([(k, v) for k, v in response.headers.raw_items()
                           if k.lower() != "content-type"])
        headers["Content-Type"] = "application/json"
        response.headers = headers
        return response

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        log = ConnLog(index=len(self.connections), path=parts.path,
                      headers=dict(request.headers.raw_items()))
        self.connections.append(log)
        log.fault = self.faults.popleft() if self.faults else None
        if parts.path not in (PATH, PATH + "/"):
            log.http_status = 404
            return self._refuse(connection, 404, "NotFound", "Not Found")
        if log.fault is not None and log.fault.kind == "http":
            log.http_status = log.fault.status
            return self._refuse(connection, log.fault.status, log.fault.code, log.fault.message)
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or key.strip() not in self.config.api_keys:
            log.http_status = 401
            return self._refuse(connection, 401, "InvalidApiKey", "Invalid API-key provided.")
        self._pending[connection] = log
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        log = self._pending.pop(ws)
        log.ws = ws
        try:
            await _Connection(self, ws, log).serve()
        except _Closed:
            pass
        finally:
            log.closed = True


class _Connection:
    """One client connection's protocol state."""

    def __init__(self, emulator: DashScopeTtsEmulator, ws: ServerConnection, log: ConnLog):
        self.emu = emulator
        self.cfg = emulator.config
        self.ws = ws
        self.log = log
        self.task: TaskLog | None = None
        self.started = False
        self.used: set[str] = set()
        self.units = 0

    async def _send(self, event: str, payload: dict[str, Any], **header: Any) -> None:
        task_id = self.task.task_id if self.task is not None else ""
        doc = {"header": {"task_id": task_id, "event": event, **header, "attributes": {}},
               "payload": payload}
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(json.dumps(doc, ensure_ascii=False))

    async def fail(self, code: str, message: str) -> NoReturn:
        """task-failed, then close."""
        self.log.failure = (code, message)
        if self.task is not None:
            self.task.failure = (code, message)
        await self._send("task-failed", {}, error_code=code, error_message=message)
        with contextlib.suppress(ConnectionClosed):
            await self.ws.close(1000)
        raise _Closed

    async def serve(self) -> None:
        while True:
            timeout = self.cfg.idle_timeout if self.task is None else self.cfg.text_timeout
            try:
                frame = await within(self.ws.recv(), timeout)
            except TimeoutError:
                if self.task is None:
                    with contextlib.suppress(ConnectionClosed):
                        await self.ws.close(1000)
                    raise _Closed from None
                await self.fail("CLIENT_ERROR",
                                f"request timeout after {self.cfg.text_timeout:g} seconds.")
            except ConnectionClosed:
                raise _Closed from None
            if isinstance(frame, bytes):
                await self.fail("InvalidParameter", "binary frames are not accepted by a tts task")
            await self._instruction(frame)

    async def _instruction(self, text: str) -> None:
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
            return
        if action not in ("continue-task", "finish-task"):
            await self.fail("InvalidParameter", f"unknown action {action!r}")
        if self.task is None or not self.started:
            await self.fail("InvalidParameter", "instruction before task-started")
        assert self.task is not None
        if header.get("task_id") != self.task.task_id:
            await self.fail("InvalidParameter", "task_id does not match the running task")
        if header.get("streaming") != "duplex":
            await self.fail("InvalidParameter", "streaming must be duplex")
        if action == "continue-task":
            await self._continue(payload)
        else:
            await self._finish(payload)

    async def _run_task(self, header: dict[str, Any], payload: dict[str, Any]) -> None:
        if self.task is not None:
            await self.fail("InvalidParameter", "a task is already running on this connection")
        task_id = header.get("task_id")
        if not isinstance(task_id, str) or not _TASK_ID.match(task_id) or task_id in self.used:
            await self.fail("InvalidParameter", "task_id is missing, malformed or reused")
        self.task = TaskLog(task_id=task_id, run_task={"header": header, "payload": payload})
        self.log.tasks.append(self.task)
        self.used.add(task_id)
        if header.get("streaming") != "duplex":
            await self.fail("InvalidParameter", "streaming must be duplex for cosyvoice")
        if (payload.get("task_group"), payload.get("task"), payload.get("function")) != (
                "audio", "tts", "SpeechSynthesizer"):
            await self.fail("InvalidParameter", "task can not be null")
        if "model" not in payload:
            await self.fail("InvalidParameter",
                            "Missing required parameter 'payload.model'! Please follow the protocol!")
        if "input" not in payload:
            await self.fail("InvalidParameter",
                            "Missing required parameter 'payload.input'! Please follow the protocol!")
        if payload["input"] != {}:
            await self.fail("InvalidParameter", "payload.input of run-task must be {}")
        model = payload["model"]
        if model not in MODEL_VOICES:
            await self.fail("ModelNotFound", "Model can not be found.")
        p = payload.get("parameters")
        if not isinstance(p, dict):
            await self.fail("InvalidParameter", "payload.parameters must be an object")
        voice = p.get("voice")
        if not isinstance(voice, str) or not voice:
            await self.fail("InvalidParameter", "Request voice is invalid!")
        if voice not in MODEL_VOICES[model]:
            await self.fail("InvalidParameter", "[tts:]Engine return error code: 418")
        if p.get("text_type") != "PlainText":
            await self.fail("InvalidParameter", "text_type must be PlainText")
        fmt = p.get("format", "mp3")
        if fmt not in FORMATS | {"Default"}:
            await self.fail("InvalidParameter", f"format {fmt!r} is not supported")
        if fmt not in ("mp3", "Default"):
            await self.fail("InvalidParameter", f"this emulator only produces mp3, not {fmt}")
        rate = p.get("sample_rate", 22050)
        if not isinstance(rate, int) or isinstance(rate, bool) or rate not in RATES | {0}:
            await self.fail("InvalidParameter", f"sample_rate {rate!r} is not supported")
        checks = (("volume", 0, 100, int), ("rate", 0.5, 2.0, float), ("pitch", 0.5, 2.0, float),
                  ("seed", 0, 65535, int))
        for name, lo, hi, kind in checks:
            if name in p:
                value = p[name]
                ok_type = isinstance(value, int) if kind is int else isinstance(value, int | float)
                if isinstance(value, bool) or not ok_type or not lo <= value <= hi:
                    await self.fail("InvalidParameter", f"{name} {value!r} is out of [{lo}, {hi}]")
        fault = self.log.fault
        if fault is not None and fault.kind == "fail":
            await self.fail(fault.code, fault.message)
        if self.cfg.task_started_delay:
            await asyncio.sleep(self.cfg.task_started_delay)
        await self._send("task-started", {})
        self.started = True
        self.units = 0

    async def _continue(self, payload: dict[str, Any]) -> None:
        assert self.task is not None
        given = payload.get("input")
        text = given.get("text") if isinstance(given, dict) else None
        if not isinstance(text, str):
            await self.fail("InvalidParameter", "continue-task needs payload.input.text")
        units = text_units(text)
        if units > MAX_MESSAGE_UNITS:
            await self.fail("InvalidParameter",
                            f"text of one message exceeds {MAX_MESSAGE_UNITS} characters")
        self.units += units
        if self.units > MAX_TASK_UNITS:
            await self.fail("InvalidParameter", f"text of the task exceeds {MAX_TASK_UNITS} characters")
        self.task.texts.append(text)

    async def _finish(self, payload: dict[str, Any]) -> None:
        assert self.task is not None
        if payload.get("input") not in ({}, {"directive": "cancel"}):
            await self.fail("InvalidParameter", "payload.input of finish-task must be {}")
        task = self.task
        if payload["input"] == {"directive": "cancel"}:
            await self._send("task-finished", {"output": {}})
            self.task, self.started = None, False
            return
        text = "".join(task.texts)
        if not text.strip():
            await self.fail("InvalidParameter", "Please ensure input text is valid.")
        params = task.run_task["payload"]["parameters"]
        rate = params.get("sample_rate") or 22050
        speed = float(params.get("rate", 1.0))
        voices = sorted(MODEL_VOICES[task.run_task["payload"]["model"]])
        freq = 300.0 + 25.0 * voices.index(params["voice"])
        if self.cfg.delay:
            await asyncio.sleep(self.cfg.delay)
        task.audio_seconds = speech_seconds(text, speed)
        audio = await asyncio.to_thread(mp3_tone, task.audio_seconds, rate, freq)
        chunks = [audio[i:i + self.cfg.chunk_bytes] for i in range(0, len(audio), self.cfg.chunk_bytes)]
        sentences = _SENTENCE.findall(text) or [text]
        per = max(1, -(-len(chunks) // len(sentences)))
        fault = self.log.fault
        sent = 0
        billed = 0
        for index, sentence in enumerate(sentences):
            mine = chunks[index * per:(index + 1) * per]
            await self._send("result-generated", {"output": {
                "type": "sentence-begin", "original_text": sentence,
                "sentence": {"index": index, "words": []}}})
            for chunk in mine:
                if fault is not None and fault.kind == "drop" and sent >= fault.after_chunks:
                    self.ws.transport.abort()
                    raise _Closed
                await self.ws.send(chunk)
                sent += 1
                task.audio_bytes += len(chunk)
            billed += text_units(sentence)
            await self._send("result-generated", {"output": {
                "type": "sentence-end", "original_text": sentence,
                "sentence": {"index": index, "words": []}}, "usage": {"characters": billed}})
        for chunk in chunks[len(sentences) * per:]:
            await self.ws.send(chunk)
            task.audio_bytes += len(chunk)
        await self._send("task-finished", {"output": {}})
        task.finished = True
        self.task, self.started = None, False
