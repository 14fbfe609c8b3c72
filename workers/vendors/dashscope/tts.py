"""`dashscope` speech: CosyVoice streaming TTS over DashScope's inference WebSocket
(``docs/protocols/dashscope.md``, "CosyVoice streaming synthesis"; also §1 and §5 there).

One task per call: handshake (``Authorization: Bearer KEY``) → ``run-task`` (task ``tts``,
function ``SpeechSynthesizer``, ``streaming: duplex``, ``input: {}``, the voice and audio
parameters) → ``task-started`` → one ``continue-task`` with the text → ``finish-task`` → binary
frames (consecutive pieces of one MP3 stream, concatenated in arrival order) and per-sentence
``result-generated`` events (skipped) → ``task-finished``. ``task-failed`` ends the call with the
service's code and message, retryable or not by code (§5, shared with the recognizer). The model
(VOXQ_DASHSCOPE_TTS_MODEL, default ``cosyvoice-v2``) decides the voice list (the core's offer,
``voxq.tts_offers``): v2 voices end in ``_v2``; mixing them up is the service's error 418.

Secrets: the API key travels only in the handshake header; it is redacted from the websockets
library's debug log and from any error text.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import uuid
from typing import Any, ClassVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from voxq import __version__
from voxq.aio import within
from voxq.settings import Settings
from workers.vendors.base import (
    OfferedSynthesizer,
    SynthesisRequest,
    VendorRejected,
    VendorRetryable,
)
from workers.vendors.dashscope.settings import DashScopeSettings
from workers.vendors.dashscope.stt import handshake_error, task_error
from workers.vendors.redaction import websocket_logger

log = logging.getLogger(__name__)

__all__ = ["CosyVoiceSynthesizer", "continue_task", "finish_task", "run_task"]

VENDOR = "dashscope"
MAX_AUDIO_BYTES = 64 << 20
"""Most audio one call may return (a bound against a runaway stream)."""
_SECRET_HEADERS = frozenset({"authorization"})


_WS_LOG = websocket_logger(__name__, _SECRET_HEADERS)


def _dumps(doc: Any) -> str:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


def run_task(task_id: str, model: str, request: SynthesisRequest) -> str:
    """The ``run-task`` instruction of one synthesis (§3.2): parameters, and ``input: {}``."""
    params = {"text_type": "PlainText", "voice": request.voice, "format": "mp3",
              "sample_rate": request.sample_rate,
              "volume": max(0, min(100, round(50 * request.volume))),
              "rate": round(request.speed, 3), "pitch": round(request.pitch, 3)}
    return _dumps({"header": {"action": "run-task", "task_id": task_id, "streaming": "duplex"},
                   "payload": {"task_group": "audio", "task": "tts", "function": "SpeechSynthesizer",
                               "model": model, "parameters": params, "input": {}}})


def continue_task(task_id: str, text: str) -> str:
    """A ``continue-task`` carrying text (§3.3)."""
    return _dumps({"header": {"action": "continue-task", "task_id": task_id, "streaming": "duplex"},
                   "payload": {"input": {"text": text}}})


def finish_task(task_id: str) -> str:
    """The ``finish-task`` instruction: ``payload.input`` is exactly ``{}`` (§3.4)."""
    return _dumps({"header": {"action": "finish-task", "task_id": task_id, "streaming": "duplex"},
                   "payload": {"input": {}}})


class CosyVoiceSynthesizer(OfferedSynthesizer):
    """DashScope CosyVoice, one task (and one WebSocket) per piece of text; voices (by model),
    rates and the text limit are the core's offer (``voxq.tts_offers``)."""

    name = "dashscope"
    open_timeout: ClassVar[float] = 10.0
    close_timeout: ClassVar[float] = 2.0

    def __init__(self, settings: Settings):
        super().__init__(settings)
        self.model = DashScopeSettings.of(settings).tts_model
        self._secrets: tuple[str, ...] = ()

    def _headers(self) -> dict[str, str]:
        headers, self._secrets = DashScopeSettings.of(self.settings).headers()
        return headers

    async def _connect(self) -> ClientConnection:
        url = DashScopeSettings.of(self.settings).url
        try:
            return await connect(url, additional_headers=self._headers(), compression=None,
                                 open_timeout=self.open_timeout, ping_interval=None,
                                 close_timeout=self.close_timeout, max_size=4 << 20,
                                 logger=_WS_LOG, user_agent_header=f"voxq/{__version__}")
        except InvalidStatus as e:
            r = e.response
            raise handshake_error(r.status_code, bytes(r.body or b""), self._secrets) from None
        except InvalidURI:
            raise VendorRejected(f"invalid endpoint {url!r} (VOXQ_DASHSCOPE_URL)",
                                 vendor=VENDOR) from None
        except InvalidHandshake as e:
            raise VendorRetryable(f"WebSocket handshake failed: {type(e).__name__}",
                                  vendor=VENDOR) from None
        except (OSError, TimeoutError) as e:
            raise VendorRetryable(f"cannot connect: {e or type(e).__name__}", vendor=VENDOR) from None

    def _event(self, raw: str, task_id: str) -> tuple[str, dict[str, Any]]:
        """(event name, header) of a server text frame; garbage is a retryable protocol failure."""
        try:
            doc = json.loads(raw)
            header = doc["header"]
            event = header["event"]
        except (ValueError, KeyError, TypeError):
            raise VendorRetryable("the service sent a message that is not a DashScope event",
                                  vendor=VENDOR) from None
        if not isinstance(header, dict) or not isinstance(event, str):
            raise VendorRetryable("the service sent a malformed event header", vendor=VENDOR)
        if event == "task-failed":
            raise task_error(str(header.get("error_code") or ""),
                             str(header.get("error_message") or ""), self._secrets)
        if header.get("task_id") not in (None, task_id):
            raise VendorRetryable(f"event {event} for another task", vendor=VENDOR)
        return event, header

    async def synthesize(self, request: SynthesisRequest) -> bytes:
        """MP3 of ``request.text`` (within the offer's text limit, Han counted twice)."""
        if request.voice is not None and request.voice not in self.voices():
            raise VendorRejected(f"voice {request.voice!r} is not a {self.model} voice", vendor=VENDOR)
        if not request.voice:
            request = dataclasses.replace(request, voice=self.voices()[0])
        ws = await self._connect()
        task_id = uuid.uuid4().hex
        audio = bytearray()
        try:
            await ws.send(run_task(task_id, self.model, request))
            started = False
            async for message in ws:
                if isinstance(message, bytes):
                    if not started:
                        raise VendorRetryable("audio before task-started", vendor=VENDOR)
                    audio += message
                    if len(audio) > MAX_AUDIO_BYTES:
                        raise VendorRetryable(f"more than {MAX_AUDIO_BYTES} bytes of audio",
                                              vendor=VENDOR)
                    continue
                event, _ = self._event(message, task_id)
                if event == "task-started" and not started:
                    started = True
                    await ws.send(continue_task(task_id, request.text))
                    await ws.send(finish_task(task_id))
                elif event == "task-finished":
                    if not started:
                        raise VendorRetryable("task-finished before task-started", vendor=VENDOR)
                    break
                elif event != "result-generated":
                    raise VendorRetryable(f"unexpected event {event!r}", vendor=VENDOR)
            else:
                raise VendorRetryable("the service closed the connection before task-finished",
                                      vendor=VENDOR)
        except ConnectionClosed as e:
            code = e.rcvd.code if e.rcvd else "no close frame"
            raise VendorRetryable(f"connection lost during the task ({code})", vendor=VENDOR) from None
        finally:
            with contextlib.suppress(Exception):
                await within(ws.close(), self.close_timeout)
        if not audio:
            raise VendorRetryable("task-finished without audio", vendor=VENDOR)
        return bytes(audio)
