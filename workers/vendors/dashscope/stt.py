"""`dashscope` streaming recognition: Paraformer real-time over DashScope's inference WebSocket
(``docs/protocols/dashscope.md``, "Paraformer session limits"; also §1-§2 there).

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

import contextlib
import json
import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import ClassVar

from websockets.exceptions import ConnectionClosed

from voxq.aio import within
from voxq.settings import Settings
from voxq.stt_offers.dashscope import DashScopeOptions
from workers.vendors.base import (
    RecognizerConfig,
    Transcript,
    VendorAuthError,
    VendorError,
    VendorRejected,
    VendorRetryable,
)
from workers.vendors.dashscope import protocol
from workers.vendors.dashscope.settings import DashScopeSettings
from workers.vendors.redaction import vendor_text
from workers.vendors.ws_stt import Endpoint, Frame, Link, SessionLimits, WebSocketRecognizer, where_of

log = logging.getLogger(__name__)

__all__ = ["DashScopeRecognizer", "handshake_error", "task_error"]

VENDOR = "dashscope"
_NO_SPEECH = "NO_INPUT_AUDIO_ERROR"


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


class DashScopeRecognizer(WebSocketRecognizer):
    """Paraformer real-time ASR, one DashScope task (and WebSocket) per channel."""

    name: ClassVar[str] = VENDOR
    #: no maximum task length is stated; 23 s without audio fails the task
    limits: ClassVar[SessionLimits] = SessionLimits(max_silence=23.0)
    multichannel: ClassVar[bool] = False  # Paraformer takes mono audio only
    time_digits: ClassVar[int] = 4
    audio_before_end: ClassVar[bool] = True  # a task with no audio at all is refused

    # Tunables; class attributes so tests (and instances) can shrink them.
    chunk_seconds: float | None = 0.1  # audio per binary frame (the docs' recommendation)
    min_send_seconds: float = 0.1  # smaller leftovers wait for more audio (or the keep-alive)
    keepalive_after: float = 5.0  # seconds without audio before silence is sent (limit: 23 s)
    keepalive_seconds: float = 0.1  # silence per keep-alive frame
    ping_interval: float | None = None
    drain_timeout: float = 30.0  # after finish-task, wait this long for task-finished

    def __init__(self, config: RecognizerConfig, settings: Settings):
        """A recognizer for one session; nothing is opened until start()."""
        options = config.options
        assert isinstance(options, DashScopeOptions)
        self.options = options
        self._rate = protocol.model_rate(options.model) or config.rate
        super().__init__(config, settings)

    @property
    def input_rate(self) -> int:
        """The model's rate (8 kHz or 16 kHz models) or the session's (v2 takes any rate)."""
        return self._rate

    # --- hooks -----------------------------------------------------------------------------------

    async def endpoint(self, channel: int | None) -> Endpoint:
        """The inference endpoint with the key (§1.2); VendorAuthError naming the variable when
        the key is unset."""
        conf = DashScopeSettings.of(self.settings)
        headers, self._secrets = conf.headers()
        url = conf.url
        return Endpoint(url=url, where=where_of(url), headers=headers)

    def _parse(self, raw: str | bytes) -> protocol.Event:
        """One server message as an event; garbage is a retryable protocol failure."""
        try:
            return protocol.parse_event(raw)
        except protocol.ProtocolError as e:
            raise VendorRetryable(f"unexpected message from the service: {e}",
                                  vendor=self.name) from None

    async def greet(self, link: Link) -> None:
        """Send run-task and wait for task-started."""
        task_id = uuid.uuid4().hex
        link.notes.update(task_id=task_id, state=protocol.SentenceState())
        hints = protocol.session_hints(self.config.language, self.options)
        with contextlib.suppress(ConnectionClosed):  # a task-failed may be waiting
            await link.ws.send(protocol.run_task(task_id, self.options, sample_rate=self._rate,
                                                 language_hints=hints))
        try:
            while True:
                event = self._parse(await within(link.ws.recv(), self.open_timeout))
                if event.kind == "task-failed":
                    raise task_error(event.error_code, event.error_message, self._secrets)
                if event.kind == "task-started":
                    return
                if event.kind == "task-finished":
                    raise VendorRetryable("the task finished before it started",
                                          vendor=self.name)
        except (ConnectionClosed, TimeoutError) as e:
            raise VendorRetryable(f"no task-started after run-task ({type(e).__name__})",
                                  vendor=self.name) from None

    def end_frames(self, link: Link) -> Sequence[Frame]:
        """finish-task: the remaining results, then task-finished."""
        return (protocol.finish_task(link.notes["task_id"]),)

    def decode(self, link: Link, frame: Frame) -> Iterable[Transcript]:
        """A sentence becomes a Transcript; task-failed fails the session (no speech at the end
        of a channel is fine); task-finished ends the task."""
        event = self._parse(frame)
        if event.task_id and event.task_id != link.notes["task_id"]:
            raise VendorRetryable(f"event {event.kind} for another task", vendor=self.name)
        channel = link.channel or 0
        if event.kind == "task-failed":
            if link.ended and event.error_code == _NO_SPEECH:
                log.info("session %s: channel %d had no speech", self.config.session_id, channel)
                link.done = True
                return ()
            raise task_error(event.error_code, event.error_message, self._secrets)
        if event.kind == "task-finished":
            link.done = True
        if event.sentence is None:
            return ()
        t = protocol.to_transcript(event.sentence, link.notes["state"], channel)
        return () if t is None else (t,)

    def closed(self, link: Link, code: int | None, reason: str) -> VendorError | None:
        """Every close before task-finished is retried."""
        return VendorRetryable(f"the connection closed before task-finished (code {code or 1006})",
                               vendor=self.name)

    def handshake_error(self, status: int, headers: Mapping[str, str], body: bytes) -> VendorError:
        """DashScope's JSON or text body."""
        return handshake_error(status, body, self._secrets)
