"""`volcengine` and `volcengine-v3` speech: Volcengine (Doubao) TTS over its binary WebSockets
(``docs/protocols/volcengine.md``, "v1 TTS" and §3 there), framed by :mod:`workers.vendors.volcengine.frames`.

v1 (``/api/v1/tts/ws_binary``, vendor ``volcengine``): handshake with ``Authorization: Bearer;
TOKEN`` → one gzip JSON full client request (``operation: submit``, ``encoding: mp3``) →
audio-only responses with positive sequences, the last one negative → close. One synthesis per
connection (the notes disagree on reuse, so none is attempted). Error frames carry a 30xx code.
Text is at most 1024 UTF-8 bytes per request (the vendor advises under 300 characters).

v3 (``/api/v3/tts/bidirection``, vendor ``volcengine-v3``): handshake with ``X-Api-App-Key`` +
``X-Api-Access-Key`` (or ``X-Api-Key``) and ``X-Api-Resource-Id`` → StartConnection (1) →
ConnectionStarted (50) → StartSession (100, speaker and audio parameters) → SessionStarted (150)
→ TaskRequest (200, the text) → FinishSession (102) → TTSSentenceStart/End (350/351, skipped)
and TTSResponse (352, audio) → SessionFinished (152) → FinishConnection (2) → ConnectionFinished
(52). Failures are ConnectionFailed (51) / SessionFailed (153) with ``status_code`` and
``message``, or error frames; retryable or not by code.

Secrets: the token / API key travel only in handshake headers (v1 sends the documented
placeholder ``"access_token"`` as ``app.token``, never the real one); they are redacted from the
websockets library's debug log and from error text.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
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
    VendorAuthError,
    VendorError,
    VendorRejected,
    VendorRetryable,
)
from workers.vendors.redaction import vendor_text, websocket_logger
from workers.vendors.volcengine import frames
from workers.vendors.volcengine.frames import Event, Frame, MessageType

log = logging.getLogger(__name__)

__all__ = ["VolcengineTtsSynthesizer", "VolcengineV3Synthesizer", "classify_v1", "classify_v3",
           "resource_for", "v1_request", "v3_session"]

MAX_SERVER_FRAME = 8 << 20
MAX_AUDIO_BYTES = 64 << 20
_SECRET_HEADERS = frozenset({"authorization", "x-api-access-key", "x-api-key"})

V1_RETRYABLE = frozenset({3003, 3005, 3006, 3030, 3031, 3032, 3040})
V3_AUTH = frozenset({45000010, 45000030})
V3_RETRYABLE = frozenset({45000292, 55000001, 55000031})
V3_OK = 20000000


_WS_LOG = websocket_logger(__name__, _SECRET_HEADERS)


def _clean(text: str, secrets: tuple[str, ...]) -> str:
    """One bounded line of vendor text with any echoed secret removed."""
    return vendor_text(text, secrets)


def classify_v1(code: int, message: str) -> type[VendorError]:
    """Error class of a v1 error frame (§2.6): auth by its documented message, retryable 30xx."""
    lowered = message.lower()
    if "grant" in lowered or "access denied" in lowered or "authenticate" in lowered:
        return VendorAuthError
    if code in V1_RETRYABLE or "concurrency" in lowered:
        return VendorRetryable
    return VendorRejected


def classify_v3(code: int, message: str) -> type[VendorError]:
    """Error class of a v3 status code (§3.5): auth, retryable (quota, busy, server), rejected."""
    lowered = message.lower()
    if code in V3_AUTH:
        return VendorAuthError
    if "mismatch" in lowered or "permission" in lowered:
        return VendorRejected
    if code in V3_RETRYABLE or "concurrency" in lowered or (
            55000000 <= code <= 55999999):
        return VendorRetryable
    return VendorRejected


def handshake_error(vendor: str, status: int, body: bytes, secrets: tuple[str, ...]) -> VendorError:
    """Map a refused upgrade (HTTP status and body) to a VendorError."""
    text, code = frames.refusal_detail(body)
    detail = _clean(text, secrets)
    message = f"HTTP {status} at the WebSocket handshake" + (f": {detail}" if detail else "")
    if status in (401, 403) or code in V3_AUTH:
        return VendorAuthError(message, vendor=vendor, code=code or status)
    if status in (408, 429) or status >= 500:
        return VendorRetryable(message, vendor=vendor, code=code or status)
    return VendorRejected(message, vendor=vendor, code=code or status)


def v1_request(request: SynthesisRequest, *, app_id: str, cluster: str, reqid: str) -> dict[str, Any]:
    """The v1 request JSON (§2.3): mp3, ``submit``, ratios straight from the request."""
    return {
        "app": {"appid": app_id, "token": "access_token", "cluster": cluster},
        "user": {"uid": "voxq"},
        "audio": {"voice_type": request.voice, "encoding": "mp3", "rate": request.sample_rate,
                  "speed_ratio": round(request.speed, 3), "volume_ratio": round(request.volume, 3),
                  "pitch_ratio": round(request.pitch, 3)},
        "request": {"reqid": reqid, "text": request.text, "text_type": "plain",
                    "operation": "submit"},
    }


def resource_for(voice: str) -> str:
    """The v3 resource id a speaker family needs: ``_uranus_`` → 2.0, the rest → 1.0."""
    return "seed-tts-2.0" if "_uranus_" in voice else "seed-tts-1.0"


def _rate(ratio: float) -> int:
    """A speed/volume ratio as v3's [-50, 100] (100 = 2×, -50 = 0.5×)."""
    return max(-50, min(100, round((ratio - 1.0) * 100)))


def v3_session(request: SynthesisRequest, *, text: str | None = None) -> dict[str, Any]:
    """StartSession (no text) or TaskRequest (with text) JSON (§3.4)."""
    params: dict[str, Any] = {
        "speaker": request.voice,
        "audio_params": {"format": "mp3", "sample_rate": request.sample_rate,
                         "speech_rate": _rate(request.speed), "loudness_rate": _rate(request.volume)},
    }
    if request.pitch != 1.0:
        semitones = max(-12, min(12, round(12 * math.log2(request.pitch))))
        params["additions"] = json.dumps({"post_process": {"pitch": semitones}})
    if text is not None:
        params["text"] = text
    return {"user": {"uid": "voxq"}, "event": Event.TASK_REQUEST if text is not None
            else Event.START_SESSION, "namespace": "BidirectionalTTS", "req_params": params}


class _VolcengineBase(OfferedSynthesizer):
    """What v1 and v3 share: connecting, decoding, bounded reads. Voices, rates, the text limit
    (UTF-8 bytes too) and the refusals are the core's offer (``voxq.tts_offers``)."""

    open_timeout: ClassVar[float] = 10.0
    close_timeout: ClassVar[float] = 2.0

    def __init__(self, settings: Settings):
        super().__init__(settings)
        self._secrets: tuple[str, ...] = ()

    async def _connect(self, url: str, headers: dict[str, str], setting: str) -> ClientConnection:
        try:
            return await connect(url, additional_headers=headers, compression=None,
                                 open_timeout=self.open_timeout, ping_interval=None,
                                 close_timeout=self.close_timeout, max_size=MAX_SERVER_FRAME,
                                 logger=_WS_LOG, user_agent_header=f"voxq/{__version__}")
        except InvalidStatus as e:
            r = e.response
            raise handshake_error(self.name, r.status_code, bytes(r.body or b""), self._secrets) from None
        except InvalidURI:
            raise VendorRejected(f"invalid endpoint {url!r} ({setting})", vendor=self.name) from None
        except InvalidHandshake as e:
            raise VendorRetryable(f"WebSocket handshake failed: {type(e).__name__}",
                                  vendor=self.name) from None
        except (OSError, TimeoutError) as e:
            raise VendorRetryable(f"cannot connect: {e or type(e).__name__}", vendor=self.name) from None

    async def _recv(self, ws: ClientConnection,
                    dialect: frames.Dialect = frames.Dialect.STANDARD) -> Frame:
        """The next server frame; a text frame or garbage is a retryable protocol failure."""
        try:
            raw = await ws.recv()
        except ConnectionClosed as e:
            code = e.rcvd.code if e.rcvd else "no close frame"
            raise VendorRetryable(f"the connection closed before the audio ended ({code})",
                                  vendor=self.name) from None
        if isinstance(raw, str):
            raise VendorRetryable(f"the service sent a text frame: {_clean(raw, self._secrets)}",
                                  vendor=self.name)
        try:
            return frames.decode(raw, max_payload=MAX_SERVER_FRAME, dialect=dialect)
        except frames.FrameError as e:
            raise VendorRetryable(f"undecodable frame from the service: {e}", vendor=self.name) from None

    async def _close(self, ws: ClientConnection) -> None:
        with contextlib.suppress(Exception):
            await within(ws.close(), self.close_timeout)


class VolcengineTtsSynthesizer(_VolcengineBase):
    """Volcengine v1 binary WebSocket TTS, one connection per piece of text."""

    name = "volcengine"

    def _auth(self) -> tuple[str, dict[str, str]]:
        s = self.settings
        token = s.volcengine_access_token.get_secret_value() if s.volcengine_access_token else ""
        if not s.volcengine_app_id or not token:
            raise VendorAuthError("Volcengine v1 TTS needs VOLCENGINE_APP_ID and "
                                  "VOLCENGINE_ACCESS_TOKEN in the worker's environment",
                                  vendor=self.name)
        self._secrets = (token,)
        return s.volcengine_app_id, {"Authorization": f"Bearer; {token}"}

    async def synthesize(self, request: SynthesisRequest) -> bytes:
        """MP3 of ``request.text`` (≤ 1024 UTF-8 bytes)."""
        app_id, headers = self._auth()
        request = dataclasses.replace(request, voice=request.voice or self.voices()[0])
        body = v1_request(request, app_id=app_id, cluster=self.settings.volcengine_tts_cluster,
                          reqid=str(uuid.uuid4()))
        ws = await self._connect(self.settings.volcengine_tts_url, headers, "VOXQ_VOLCENGINE_TTS_URL")
        audio = bytearray()
        try:
            with contextlib.suppress(ConnectionClosed):  # an error frame may be waiting
                await ws.send(frames.full_client_request(body))
            while True:
                frame = await self._recv(ws, frames.Dialect.TTS_V1)
                if frame.type is MessageType.ERROR:
                    message = _clean(frame.error_message, self._secrets) or "(no message)"
                    code = frame.error_code or 0
                    raise classify_v1(code, message)(message, vendor=self.name, code=code)
                if frame.type is MessageType.AUDIO_ONLY_RESPONSE:
                    audio += frame.payload
                    if len(audio) > MAX_AUDIO_BYTES:
                        raise VendorRetryable("the service sent too much audio", vendor=self.name)
                    if frame.is_last:
                        break
                    continue
                # frontend responses (phoneme info), bare ACKs and deprecated full responses
                log.debug("volcengine v1: skipping %r", frame)
        finally:
            await self._close(ws)
        if not audio:
            raise VendorRetryable("the service ended the stream without audio", vendor=self.name)
        return bytes(audio)


class VolcengineV3Synthesizer(_VolcengineBase):
    """Volcengine v3 bidirectional TTS, one connection and session per piece of text."""

    name = "volcengine-v3"

    def _headers(self, voice: str) -> dict[str, str]:
        s = self.settings
        token = s.volcengine_access_token.get_secret_value() if s.volcengine_access_token else ""
        key = s.volcengine_api_key.get_secret_value() if s.volcengine_api_key else ""
        headers = {"X-Api-Resource-Id": s.volcengine_tts_resource_id or resource_for(voice),
                   "X-Api-Connect-Id": str(uuid.uuid4())}
        if s.volcengine_app_id and token:
            headers["X-Api-App-Key"] = s.volcengine_app_id
            headers["X-Api-Access-Key"] = token
        elif key:
            headers["X-Api-Key"] = key
        else:
            raise VendorAuthError("Volcengine credentials are missing: set VOLCENGINE_APP_ID and "
                                  "VOLCENGINE_ACCESS_TOKEN (or VOLCENGINE_API_KEY) in the "
                                  "worker's environment", vendor=self.name)
        self._secrets = tuple(x for x in (token, key) if x)
        return headers

    def _failed(self, frame: Frame) -> VendorError:
        """The error of a ConnectionFailed / SessionFailed / error frame."""
        code = frame.error_code or 0
        message = frame.error_message
        if frame.type is not MessageType.ERROR:
            with contextlib.suppress(frames.FrameError):
                doc = frame.json()
                if isinstance(doc, dict):
                    code = int(doc.get("status_code") or 0)
                    message = str(doc.get("message") or "")
        text = _clean(message, self._secrets) or "(no message)"
        return classify_v3(code, text)(text, vendor=self.name, code=code or None)

    async def _send(self, ws: ClientConnection, event: Event, payload: Any,
                    session_id: str | None = None) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(
            payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        with contextlib.suppress(ConnectionClosed):  # the reason arrives as the next frame
            await ws.send(frames.encode(Frame(MessageType.FULL_CLIENT_REQUEST, body,
                                              frames.Serialization.JSON, frames.Compression.NONE,
                                              event=event, session_id=session_id)))

    async def _expect(self, ws: ClientConnection, wanted: Event) -> Frame:
        """Read until the ``wanted`` event; failures and error frames raise."""
        while True:
            frame = await self._recv(ws)
            if frame.type is MessageType.ERROR or frame.event in (
                    Event.CONNECTION_FAILED, Event.SESSION_FAILED):
                raise self._failed(frame)
            if frame.event == wanted:
                return frame
            log.debug("volcengine v3: skipping %r while waiting for %s", frame, wanted.name)

    async def synthesize(self, request: SynthesisRequest) -> bytes:
        """MP3 of ``request.text`` (≤ 1024 UTF-8 bytes)."""
        self.check_request(request)
        voice = request.voice or self.voices()[0]
        request = dataclasses.replace(request, voice=voice)
        ws = await self._connect(self.settings.volcengine_tts_v3_url, self._headers(voice),
                                 "VOXQ_VOLCENGINE_TTS_V3_URL")
        session_id = uuid.uuid4().hex
        audio = bytearray()
        try:
            await self._send(ws, Event.START_CONNECTION, b"{}")
            await self._expect(ws, Event.CONNECTION_STARTED)
            await self._send(ws, Event.START_SESSION, v3_session(request), session_id)
            await self._expect(ws, Event.SESSION_STARTED)
            await self._send(ws, Event.TASK_REQUEST, v3_session(request, text=request.text), session_id)
            await self._send(ws, Event.FINISH_SESSION, b"{}", session_id)
            while True:
                frame = await self._recv(ws)
                if frame.type is MessageType.ERROR or frame.event in (
                        Event.SESSION_FAILED, Event.CONNECTION_FAILED):
                    raise self._failed(frame)
                if frame.event == Event.TTS_RESPONSE:
                    if frame.session_id != session_id:
                        raise VendorRetryable("audio for another session", vendor=self.name)
                    audio += frame.payload
                    if len(audio) > MAX_AUDIO_BYTES:
                        raise VendorRetryable("the service sent too much audio", vendor=self.name)
                elif frame.event == Event.SESSION_FINISHED:
                    failed = self._failed(frame)
                    if failed.code not in (None, V3_OK):
                        raise failed
                    break
            await self._send(ws, Event.FINISH_CONNECTION, b"{}")
            with contextlib.suppress(VendorError, TimeoutError):
                await within(self._expect(ws, Event.CONNECTION_FINISHED), self.close_timeout)
        finally:
            await self._close(ws)
        if not audio:
            raise VendorRetryable("the session finished without audio", vendor=self.name)
        return bytes(audio)
