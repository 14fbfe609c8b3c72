"""`dashscope` streaming recognition: Paraformer real-time over DashScope's inference WebSocket
(``shared/protocols/dashscope.md`` §1-§2).

The protocol runs one task at a time per connection and Paraformer takes mono audio only, so a
two-channel call is two connections, one task each, whose results are tagged 0 and 1. Each:
handshake (``Authorization: Bearer KEY``) → ``run-task`` → wait for ``task-started`` → 100 ms
binary PCM frames → ``finish-task`` → remaining ``result-generated`` → ``task-finished``.
A sentence is final when ``sentence_end`` is true; heartbeat results are skipped.

Silence: the service fails a task that gets no audio for 23 s (``CLIENT_ERROR``) and, unless
``heartbeat`` is on, one that gets only silence for 60 s. The adapter asks for ``heartbeat``
(v2 models) and, after ``keepalive_after`` seconds without audio, sends ``keepalive_seconds``
of digital silence; that silence is in the vendor's timeline but not the session's, so result
times are mapped back. ``task-failed`` ends the session with the vendor's code and message,
retryable or not by code (§5).

Secrets: the API key travels only in the handshake header; it is redacted from the websockets
library's debug log and from any error text.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from voxq import __version__
from voxq.settings import Settings
from workers.vendors.base import (
    Recognizer,
    RecognizerConfig,
    Transcript,
    VendorAuthError,
    VendorError,
    VendorOptionError,
    VendorRejected,
    VendorRetryable,
    Word,
)
from workers.vendors.dashscope import protocol
from workers.vendors.dashscope.protocol import DashScopeOptions
from workers.vendors.redaction import vendor_text, websocket_logger

log = logging.getLogger(__name__)

__all__ = ["DashScopeRecognizer", "handshake_error", "task_error"]

VENDOR = "dashscope"
MAX_SERVER_FRAME = 1 << 20
"""Largest WebSocket message accepted from the service (events are a few KB)."""
_SECRET_HEADERS = frozenset({"authorization"})
_NO_SPEECH = "NO_INPUT_AUDIO_ERROR"


_WS_LOG = websocket_logger(__name__, _SECRET_HEADERS)


def _clean(text: str, secrets: tuple[str, ...]) -> str:
    """One bounded line of vendor text with any echoed secret removed."""
    return vendor_text(text, secrets)


def task_error(code: str, message: str, secrets: tuple[str, ...] = ()) -> VendorError:
    """The VendorError of a task-failed event: retryable, auth or rejected by its code."""
    text = _clean(message, secrets) or "(no message)"
    kind = protocol.classify(code)
    cls = {"retryable": VendorRetryable, "auth": VendorAuthError}.get(kind, VendorRejected)
    return cls(text, vendor=VENDOR, code=code or None)


def handshake_error(status: int, body: bytes, secrets: tuple[str, ...] = ()) -> VendorError:
    """Map a refused upgrade (HTTP status, DashScope JSON or text body) to a VendorError."""
    raw = body.decode("utf-8", errors="replace")
    text: str = raw
    code: str | int = status
    with contextlib.suppress(ValueError):
        doc = json.loads(raw)
        if isinstance(doc, dict):
            if isinstance(doc.get("message"), str):
                text = doc["message"]
            if isinstance(doc.get("code"), str) and doc["code"]:
                code = doc["code"]
    detail = _clean(text, secrets)
    message = f"HTTP {status} at the WebSocket handshake" + (f": {detail}" if detail else "")
    if status in (401, 403):
        return VendorAuthError(message, vendor=VENDOR, code=code)
    if status in (408, 429) or status >= 500:
        return VendorRetryable(message, vendor=VENDOR, code=code)
    return VendorRejected(message, vendor=VENDOR, code=code)


class _Timeline:
    """Frames sent per channel and where keep-alive silence went, to map vendor times back."""

    def __init__(self, rate: int) -> None:
        """Start with nothing sent."""
        self.rate = rate
        self.frames = 0
        self.inserted: list[list[int]] = []  # [at frame, n frames] of keep-alive silence

    def add(self, n: int, keepalive: bool = False) -> None:
        """Account ``n`` frames just sent (keep-alive silence or real audio)."""
        if keepalive:
            last = self.inserted[-1] if self.inserted else None
            if last is not None and last[0] + last[1] == self.frames:
                last[1] += n
            else:
                self.inserted.append([self.frames, n])
        self.frames += n

    def to_session(self, ms: int) -> float:
        """Session seconds of a vendor time in ms, with the keep-alive silence taken out."""
        v = max(0, round(ms * self.rate / 1000))
        shift = 0
        for at, n in self.inserted:
            if v >= at + n:
                shift += n
            elif v > at:
                shift += v - at
            else:
                break
        return round((v - shift) / self.rate, 4)


@dataclass(eq=False)
class _Task:
    """One WebSocket running one recognition task for one channel."""

    channel: int
    ws: ClientConnection
    task_id: str
    ended: bool = False  # finish-task was sent
    done: bool = False  # task-finished arrived
    failure: VendorError | None = None
    reader: asyncio.Task[None] | None = None
    finals: int = 0
    last_partial: tuple[str, int] | None = None


class DashScopeRecognizer(Recognizer):
    """Paraformer real-time ASR, one DashScope task (and WebSocket) per channel."""

    name: ClassVar[str] = VENDOR
    options_model: ClassVar[type[BaseModel]] = DashScopeOptions

    # Tunables; class attributes so tests (and instances) can shrink them.
    chunk_seconds: float = 0.1  # audio per binary frame (the docs' recommendation)
    min_send_seconds: float = 0.1  # smaller leftovers wait for more audio (or the keep-alive)
    keepalive_after: float = 5.0  # seconds without audio before silence is sent (limit: 23 s)
    keepalive_seconds: float = 0.1  # silence per keep-alive frame
    open_timeout: float = 10.0
    close_timeout: float = 2.0
    drain_timeout: float = 30.0  # after finish-task, wait this long for task-finished

    def __init__(self, config: RecognizerConfig, settings: Settings):
        """A recognizer for one session; nothing is opened until start()."""
        super().__init__(config, settings)
        options = config.options
        assert isinstance(options, DashScopeOptions)
        self.options = options
        self._rate = protocol.model_rate(options.model) or config.rate
        self._tasks: list[_Task] = []
        self._timeline = _Timeline(self._rate)
        self._results: asyncio.Queue[Transcript | VendorError | None] = asyncio.Queue()
        self._lock = asyncio.Lock()
        self._buf = bytearray()
        self._last_audio = time.monotonic()
        self._keepalive: asyncio.Task[None] | None = None
        self._finished = False
        self._closed = False
        self._open_readers = 0
        self._secrets: tuple[str, ...] = ()

    @property
    def input_rate(self) -> int:
        """The model's rate (8 kHz or 16 kHz models) or the session's (v2 takes any rate)."""
        return self._rate

    @classmethod
    def validate_options(cls, language: str, rate: int, channels: int,
                         options: Mapping[str, Any]) -> BaseModel:
        """Check options, the language and the rate for the chosen model at session creation."""
        parsed = super().validate_options(language, rate, channels, options)
        assert isinstance(parsed, DashScopeOptions)
        try:
            protocol.session_hints(language, parsed)
        except ValueError as e:
            raise VendorOptionError(f"{VENDOR}: {e}") from None
        need = protocol.model_rate(parsed.model)
        if need is not None and rate < need:
            raise VendorOptionError(f"{VENDOR}: {parsed.model} takes {need} Hz audio; a {rate} Hz "
                                    "session cannot supply it (use paraformer-realtime-v2)")
        if channels not in (1, 2):
            raise VendorOptionError(f"{VENDOR}: {channels} channels; 1 or 2 are supported")
        return parsed

    # --- connection ------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        """Handshake headers (§1.2); VendorAuthError naming the variable when the key is unset."""
        key = self.settings.dashscope_api_key
        secret = key.get_secret_value() if key is not None else ""
        if not secret:
            raise VendorAuthError("the DashScope API key is missing: set DASHSCOPE_API_KEY in the "
                                  "worker's environment", vendor=self.name)
        self._secrets = (secret,)
        headers = {"Authorization": f"Bearer {secret}"}
        if self.settings.dashscope_workspace:
            headers["X-DashScope-WorkSpace"] = self.settings.dashscope_workspace
        return headers

    async def _open(self, channel: int) -> _Task:
        """Connect, send run-task and wait for task-started."""
        url = self.settings.dashscope_url
        try:
            ws = await connect(url, additional_headers=self._headers(), compression=None,
                               open_timeout=self.open_timeout, ping_interval=None,
                               close_timeout=self.close_timeout, max_size=MAX_SERVER_FRAME,
                               logger=_WS_LOG, user_agent_header=f"voxq/{__version__}")
        except InvalidStatus as e:
            r = e.response
            raise handshake_error(r.status_code, bytes(r.body or b""), self._secrets) from None
        except InvalidURI:
            raise VendorRejected(f"invalid endpoint {url!r} (VOXQ_DASHSCOPE_URL)",
                                 vendor=self.name) from None
        except InvalidHandshake as e:
            raise VendorRetryable(f"WebSocket handshake failed: {_clean(str(e), self._secrets)}",
                                  vendor=self.name) from None
        except (OSError, TimeoutError) as e:
            raise VendorRetryable(f"cannot connect: {e or type(e).__name__}",
                                  vendor=self.name) from None
        task = _Task(channel=channel, ws=ws, task_id=uuid.uuid4().hex)
        hints = protocol.session_hints(self.config.language, self.options)
        try:
            with contextlib.suppress(ConnectionClosed):  # a task-failed may be waiting
                await ws.send(protocol.run_task(task.task_id, self.options,
                                                sample_rate=self._rate, language_hints=hints))
            while True:
                event = self._parse(await asyncio.wait_for(ws.recv(), self.open_timeout))
                if event.kind == "task-failed":
                    raise task_error(event.error_code, event.error_message, self._secrets)
                if event.kind == "task-started":
                    return task
                if event.kind == "task-finished":
                    raise VendorRetryable("the task finished before it started",
                                          vendor=self.name)
        except VendorError:
            await self._abandon(ws)
            raise
        except (ConnectionClosed, TimeoutError) as e:
            await self._abandon(ws)
            raise VendorRetryable(f"no task-started after run-task ({type(e).__name__})",
                                  vendor=self.name) from None

    async def _abandon(self, ws: ClientConnection) -> None:
        """Close a socket, bounded in time, ignoring errors (it is being given up)."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), self.close_timeout)

    def _parse(self, raw: str | bytes) -> protocol.Event:
        """One server message as an event; garbage is a retryable protocol failure."""
        try:
            return protocol.parse_event(raw)
        except protocol.ProtocolError as e:
            raise VendorRetryable(f"unexpected message from the service: {e}",
                                  vendor=self.name) from None

    async def start(self) -> None:
        """Start one task per channel (all or none) and the keep-alive timer."""
        opened = await asyncio.gather(*(self._open(c) for c in range(self.config.channels)),
                                      return_exceptions=True)
        failures = [o for o in opened if isinstance(o, BaseException)]
        tasks = [o for o in opened if isinstance(o, _Task)]
        if failures:
            for t in tasks:
                await self._abandon(t.ws)
            raise failures[0]
        self._tasks = tasks
        self._open_readers = len(tasks)
        for t in tasks:
            t.reader = asyncio.create_task(self._read(t), name=f"dashscope-read-{t.channel}")
        self._last_audio = time.monotonic()
        self._keepalive = asyncio.create_task(self._keep_alive(), name="dashscope-keepalive")
        log.debug("session %s: %d DashScope task(s) started (%s, %d Hz)", self.config.session_id,
                  len(tasks), self.options.model, self._rate)

    # --- audio in --------------------------------------------------------------------------------

    def _check(self) -> None:
        """Raise the first task failure (or a closed recognizer) before sending."""
        if self._closed or not self._tasks:
            raise VendorRetryable("the recognizer is not open", vendor=self.name)
        for t in self._tasks:
            if t.failure is not None:
                raise t.failure

    async def _transmit(self, task: _Task, data: bytes | str) -> None:
        """Send one message; a closed socket raises the task's error (its reader's verdict)."""
        try:
            await task.ws.send(data)
        except ConnectionClosed:
            if task.reader is not None and not task.reader.done():
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(task.reader), self.close_timeout)
            raise (task.failure or VendorRetryable("the connection closed while sending audio",
                                                   vendor=self.name)) from None

    async def _send_audio(self, pcm: bytes, keepalive: bool = False) -> None:
        """One binary frame per task with its channel of this slice of interleaved PCM."""
        n = self.config.channels
        frames_n = len(pcm) // (2 * n)
        if n == 1:
            await self._transmit(self._tasks[0], pcm[: frames_n * 2])
        else:
            x = np.frombuffer(pcm, "<i2")[: frames_n * n].reshape(frames_n, n)
            for t in self._tasks:
                await self._transmit(t, x[:, t.channel].tobytes())
        self._timeline.add(frames_n, keepalive)
        self._last_audio = time.monotonic()

    async def _drain(self, everything: bool) -> None:
        """Send buffered audio in ``chunk_seconds`` frames; hold a short tail unless asked."""
        frame_bytes = 2 * self.config.channels
        chunk = max(1, round(self.chunk_seconds * self._rate)) * frame_bytes
        least = max(1, round(self.min_send_seconds * self._rate)) * frame_bytes
        while True:
            whole = len(self._buf) // frame_bytes * frame_bytes
            if whole == 0 or (whole < least and not everything):
                return
            size = min(whole, chunk)
            piece = bytes(self._buf[:size])
            del self._buf[:size]
            await self._send_audio(piece)

    async def send(self, pcm: bytes) -> None:
        """Queue interleaved s16le PCM at ``input_rate``; 100 ms frames go out."""
        if not pcm:
            return
        async with self._lock:
            self._check()
            self._buf += pcm
            await self._drain(everything=False)

    async def finish(self) -> None:
        """Send what is buffered and finish-task; results() ends after every task-finished."""
        async with self._lock:
            if self._finished:
                return
            self._finished = True
            self._check()
            await self._drain(everything=True)
            self._buf.clear()  # at most a partial sample frame
            if self._timeline.frames == 0:  # a task with no audio at all is refused
                await self._send_audio(self._silence(), keepalive=True)
            for t in self._tasks:
                t.ended = True
                await self._transmit(t, protocol.finish_task(t.task_id))

    def _silence(self) -> bytes:
        """Digital silence of ``keepalive_seconds`` for every channel, interleaved."""
        return bytes(max(1, round(self.keepalive_seconds * self._rate)) * 2 * self.config.channels)

    async def _keep_alive(self) -> None:
        """While no audio flows, send a little silence well before the 23 s no-audio timeout."""
        while not (self._finished or self._closed):
            wait = self._last_audio + self.keepalive_after - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            async with self._lock:
                if self._finished or self._closed:
                    return
                if time.monotonic() - self._last_audio < self.keepalive_after:
                    continue
                try:
                    self._check()
                    if len(self._buf) >= 2 * self.config.channels:
                        await self._drain(everything=True)
                    else:
                        await self._send_audio(self._silence(), keepalive=True)
                except VendorError:
                    return  # the readers, send() and results() report it

    # --- results out -----------------------------------------------------------------------------

    async def _read(self, task: _Task) -> None:
        """Turn one task's events into results until task-finished or a failure."""
        try:
            while not task.done:
                try:
                    if task.ended:
                        raw = await asyncio.wait_for(task.ws.recv(), self.drain_timeout)
                    else:
                        raw = await task.ws.recv()
                except TimeoutError:
                    raise VendorRetryable(f"no task-finished within {self.drain_timeout:g} s of "
                                          "finish-task", vendor=self.name) from None
                except ConnectionClosed as e:
                    code = e.rcvd.code if e.rcvd is not None else 1006
                    raise VendorRetryable(f"the connection closed before task-finished "
                                          f"(code {code})", vendor=self.name) from None
                event = self._parse(raw)
                if event.task_id and event.task_id != task.task_id:
                    raise VendorRetryable(f"event {event.kind} for another task",
                                          vendor=self.name)
                if event.kind == "task-failed":
                    if task.ended and event.error_code == _NO_SPEECH:
                        log.info("session %s: channel %d had no speech", self.config.session_id,
                                 task.channel)
                        task.done = True
                        break
                    raise task_error(event.error_code, event.error_message, self._secrets)
                if event.sentence is not None:
                    t = self._transcript(task, event.sentence)
                    if t is not None:
                        self._results.put_nowait(t)
                if event.kind == "task-finished":
                    task.done = True
        except VendorError as e:
            task.failure = e
            self._results.put_nowait(e)
        finally:
            await self._abandon(task.ws)
            self._open_readers -= 1
            if self._open_readers == 0:
                self._results.put_nowait(None)

    def _transcript(self, task: _Task, s: protocol.Sentence) -> Transcript | None:
        """A Transcript of a sentence (None for heartbeats, empty or unchanged partials)."""
        if s.heartbeat or (not s.text.strip() and not s.words):
            return None
        tl = self._timeline
        end_ms = s.end_ms
        if end_ms is None:
            end_ms = max([s.begin_ms, *(w.end_ms for w in s.words)])
        rid = f"ch{task.channel}-{task.finals}"
        if s.is_final:
            task.finals += 1
            task.last_partial = None
        else:
            key = (s.text, end_ms)
            if key == task.last_partial:
                return None
            task.last_partial = key
        words = tuple(Word(text=w.text, start=tl.to_session(w.begin_ms), end=tl.to_session(w.end_ms))
                      for w in s.words if w.text)
        return Transcript(text=s.text.strip(), is_final=s.is_final, start=tl.to_session(s.begin_ms),
                          end=tl.to_session(end_ms), channel=task.channel, words=words,
                          result_id=rid)

    async def results(self) -> AsyncIterator[Transcript]:
        """Results of every channel as they arrive; raises the first task failure."""
        while True:
            item = await self._results.get()
            if item is None:
                return
            if isinstance(item, VendorError):
                raise item
            yield item

    async def close(self) -> None:
        """Stop the keep-alive and readers and close every socket; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        jobs = [t for t in (self._keepalive, *(k.reader for k in self._tasks)) if t is not None]
        for j in jobs:
            j.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        for k in self._tasks:
            await self._abandon(k.ws)
        self._results.put_nowait(None)
