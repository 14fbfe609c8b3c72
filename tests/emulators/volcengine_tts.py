"""A strict local emulator of Volcengine's TTS WebSockets: v1 binary (``/api/v1/tts/ws_binary``)
and v3 bidirectional (``/api/v3/tts/bidirection``), for tests.

A real WebSocket server on a free loopback port answering what ``docs/protocols/volcengine.md``,
"Emulator checklist" (and §1-§3 there), says (checklist numbers below). Its frame reader and writer are its own
(``struct``/``gzip``), independent of ``workers.vendors.volcengine.frames``, so the client codec
is checked against a second reading of the protocol.

v1, one synthesis per connection (the notes' two statements conflict; this emulator closes after
each synthesis, #17). Every problem is one error frame (``11 F0 10 00``, uint32 code, uint32 size,
UTF-8 message) and a close:
  * ``Authorization`` missing or not ``Bearer;TOKEN`` / ``Bearer; TOKEN`` with a known token →
    the upgrade is accepted and the first request answered with 3001 ``authenticate request:
    load grant: requested grant not found`` (#6, the recommended emulation);
  * a text frame, fewer than 4 bytes, version or header size ≠ 1, payload size ≠ the bytes left,
    bad gzip, not UTF-8 JSON, message type ≠ full client request or flags ≠ 0 → 3001 (#1-#4, #7);
  * missing ``app.appid`` (or an unknown one), ``app.token``, ``app.cluster``, ``user.uid``,
    ``audio.voice_type``, ``request.reqid``, ``request.text``, ``request.operation``; operation
    ∉ {submit, query}; encoding ∉ {wav, pcm, ogg_opus, mp3}; wav with submit; rate ∉ {8000,
    16000, 24000}; speed/volume/pitch ratio ∉ [0.1, 3] → 3001 (#8-#10); unknown cluster → 3001
    ``Fail to feed text, reason Init Engine Instance failed`` (#13);
  * text empty or without a letter/digit → 3011 ``illegal input text!``; over 1024 UTF-8 bytes →
    3010 (#11, #12); unknown voice → 3050 (#13); a reqid already used on this emulator → 3006
    (#14); a second request on the connection → 3001 (#15); more than ``config.max_concurrent``
    syntheses → 3003 ``quota exceeded for types: concurrency`` (#16).
Success (#17): audio-only frames ``11 B1 00 00`` + sequence 1..n + size + MP3 bytes, then
``11 B3 00 00`` + sequence −(n+1) + size 0; ``query`` gets one final frame with all the audio.

v3. Handshake (#18): no ``X-Api-Resource-Id`` → HTTP 400 ``get resource id empty``; no app key
(``X-Api-App-Key`` or ``X-Api-App-Id``) and no ``X-Api-Key`` → 400 ``app key not found in header or
query``; app key without access key → 400 ``no token or access_key was found from the header or
query`` [statuses U]; wrong credentials → 401 ``{"header":{"code":45000010,...}}``; a resource id
other than seed-tts-1.0(-concurr)/seed-tts-2.0 → 403 45000030 [U]. After the upgrade:
  * a frame without the event flag, or any framing defect → error frame 45000000 and close (#19);
  * first event not StartConnection → ConnectionFailed (51) 45000000 (#20);
  * StartSession before ConnectionStarted, during a session, or with an empty id; Task/Finish/
    Cancel for another session → SessionFailed (153) 45000001 (#21, #22);
  * StartSession without ``req_params.speaker``/``audio_params``, namespace ≠
    ``BidirectionalTTS``, format ∉ {mp3, ogg_opus, pcm, wav}, sample_rate ∉ {8000, 16000,
    22050, 24000, 32000, 44100, 48000}, speech/loudness rate ∉ [-50, 100], post_process.pitch ∉
    [-12, 12] → 45000001 (#23, #24); a speaker outside the resource's family → 55000000
    ``resource ID is mismatched with speaker related resource``; an unknown speaker → 45000000
    ``speaker permission denied`` [U]; a TaskRequest over 1024 UTF-8 bytes → 40402003 [U];
    FinishSession with no text → 45000001 [U].
Success (#25): ConnectionStarted with a connection id; SessionStarted; at FinishSession, per
sentence TTSSentenceStart (350) → TTSResponse (352) audio → TTSSentenceEnd (351); then
SessionFinished ``{"status_code":20000000,"message":"ok"}``; FinishConnection → ConnectionFinished.

Audio: a real MP3 tone (:mod:`tests.emulators.tts_audio`), 20 ms per word character of the text
divided by the speed (v1 ``speed_ratio``; v3 ``1 + speech_rate/100``), each voice its own
frequency. Fault knobs: ``emulator.faults``, one :class:`Fault` per new connection: refuse the
handshake with an HTTP status, answer an error code (v1 error frame, v3 SessionFailed) instead
of or after N audio frames, or drop the TCP connection after N audio frames.
v1 frame shapes the reference client accepts (:class:`EmulatorConfig`): a bare ACK
``11 B0 00 00`` before the audio, a gzipped frontend response (type 0xC), the last audio frame
flagged ``0b0010`` (sequence still present) instead of ``0b0011``, gzipped error messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import re
import struct
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
from voxq.settings import Settings

APP_ID = "7300000002"
ACCESS_TOKEN = "volcTtsEmulatorAccessToken-0001"
API_KEY = "volc-tts-emulator-api-key-0001"
V1_PATH = "/api/v1/tts/ws_binary"
V3_PATH = "/api/v3/tts/bidirection"
V1_VOICES = frozenset({"BV001_streaming", "BV002_streaming", "BV700_streaming", "BV701_streaming",
                       "BV406_streaming", "BV407_streaming", "zh_female_cancan_mars_bigtts",
                       "zh_female_shuangkuaisisi_moon_bigtts", "zh_male_wennuanahu_moon_bigtts"})
V3_SPEAKERS = {"zh_female_shuangkuaisisi_moon_bigtts": "1.0", "zh_female_cancan_mars_bigtts": "1.0",
               "zh_male_wennuanahu_moon_bigtts": "1.0", "zh_female_vv_uranus_bigtts": "2.0"}
V3_RESOURCES = {"seed-tts-1.0": "1.0", "seed-tts-1.0-concurr": "1.0", "seed-tts-2.0": "2.0"}
CLUSTERS = frozenset({"volcano_tts", "volcano_icl", "volcano_icl_concurr"})
V1_RATES = frozenset({8000, 16000, 24000})
V3_RATES = frozenset({8000, 16000, 22050, 24000, 32000, 44100, 48000})
MAX_TEXT_BYTES = 1024
GRANT_NOT_FOUND = "authenticate request: load grant: requested grant not found"
_WORD = re.compile(r"\w")
_SENTENCE = re.compile(r"[^。！？.!?]+[。！？.!?]*")
_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")

# v3 events
START_CONNECTION, FINISH_CONNECTION = 1, 2
CONNECTION_STARTED, CONNECTION_FAILED, CONNECTION_FINISHED = 50, 51, 52
START_SESSION, CANCEL_SESSION, FINISH_SESSION = 100, 101, 102
SESSION_STARTED, SESSION_CANCELED, SESSION_FINISHED, SESSION_FAILED = 150, 151, 152, 153
TASK_REQUEST = 200
SENTENCE_START, SENTENCE_END, TTS_RESPONSE = 350, 351, 352
_NO_ID = {START_CONNECTION, FINISH_CONNECTION}


@dataclass
class EmulatorConfig:
    """The emulated account and its limits."""

    app_id: str = APP_ID
    access_token: str = ACCESS_TOKEN
    api_key: str = API_KEY
    max_concurrent: int = 16
    chunk_bytes: int = 2048
    delay: float = 0.0
    # v1 frame shapes (all accepted by the vendor's reference client)
    ack_first: bool = False  # a header-only ACK ``11 B0 00 00`` before the audio
    frontend_first: bool = False  # a gzipped JSON frontend response (type 0xC) before the audio
    last_flags: int = 0b0011  # 0b0010: the last audio frame flagged "last", sequence still there
    gzip_errors: bool = False  # error messages gzipped (compression nibble 1)


@dataclass
class Fault:
    """One injected misbehaviour, consumed by the next connection."""

    kind: Literal["http", "error", "drop"] = "error"
    status: int = 503
    code: int = 3005
    message: str = "backend busy"
    after_chunks: int = 0


@dataclass
class SynthLog:
    """One synthesis (v1 request or v3 session) as the emulator saw it."""

    request: dict[str, Any]
    text: str = ""
    speed: float = 1.0
    audio_seconds: float = 0.0
    chunks: int = 0
    error: tuple[int, str] | None = None
    finished: bool = False


@dataclass
class ConnLog:
    """One connection: version, handshake headers, syntheses, how it ended."""

    version: Literal["v1", "v3", "?"]
    path: str
    headers: dict[str, str]
    http_status: int = 101
    fault: Fault | None = None
    syntheses: list[SynthLog] = field(default_factory=list)
    error: tuple[int, str] | None = None
    ws: ServerConnection | None = None
    closed: bool = False


class _Closed(Exception):
    """The connection is over."""


class _Bad(Exception):
    """A client frame the emulator refuses."""


@dataclass
class ClientFrame:
    """A client frame as this emulator reads it."""

    type: int
    flags: int
    serialization: int
    compression: int
    event: int | None
    session_id: str | None
    payload: bytes

    def json(self) -> Any:
        """The payload as JSON; _Bad otherwise."""
        try:
            return json.loads(self.payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise _Bad("payload is not UTF-8 JSON") from None


def parse_client_frame(data: bytes) -> ClientFrame:
    """Parse one client frame strictly (§1); _Bad says what is wrong."""
    if len(data) < 4:
        raise _Bad(f"frame of {len(data)} bytes is shorter than the header")
    b0, b1, b2 = data[0], data[1], data[2]
    if b0 >> 4 != 1 or b0 & 0x0F != 1:
        raise _Bad(f"unsupported version/header size byte {b0:#04x}")
    kind, flags = b1 >> 4, b1 & 0x0F
    pos = 4
    event: int | None = None
    session_id: str | None = None
    if flags & 0b1011:
        raise _Bad(f"flags {flags:04b} are not allowed in a client request")
    if flags & 0b0100:
        if len(data) < pos + 4:
            raise _Bad("frame ends inside the event")
        (event,) = _I32.unpack_from(data, pos)
        pos += 4
        if event not in _NO_ID:
            if len(data) < pos + 4:
                raise _Bad("frame ends inside the session id length")
            (n,) = _U32.unpack_from(data, pos)
            pos += 4
            if len(data) < pos + n or n > 1024:
                raise _Bad("bad session id length")
            try:
                session_id = data[pos:pos + n].decode("utf-8")
            except UnicodeDecodeError:
                raise _Bad("session id is not UTF-8") from None
            pos += n
    if len(data) < pos + 4:
        raise _Bad("frame ends inside the payload size")
    (size,) = _U32.unpack_from(data, pos)
    pos += 4
    if size != len(data) - pos:
        raise _Bad(f"payload size {size} but {len(data) - pos} bytes follow")
    payload = data[pos:]
    if b2 & 0x0F == 1:
        try:
            payload = gzip.decompress(payload)
        except (OSError, EOFError, ValueError) as e:
            raise _Bad(f"payload is not valid gzip: {e}") from None
    elif b2 & 0x0F != 0:
        raise _Bad(f"unsupported compression {b2 & 0x0F}")
    return ClientFrame(kind, flags, b2 >> 4, b2 & 0x0F, event, session_id, payload)


def error_frame(code: int, message: str, *, gzipped: bool = False) -> bytes:
    """``11 F0 10 00`` + code + size + UTF-8 message (``11 F0 11 00`` and gzip if ``gzipped``)."""
    raw = message.encode("utf-8")
    if gzipped:
        raw = gzip.compress(raw)
    return (bytes((0x11, 0xF0, 0x11 if gzipped else 0x10, 0x00)) + _U32.pack(code)
            + _U32.pack(len(raw)) + raw)


def v1_audio_frame(sequence: int, audio: bytes, last_flags: int = 0b0011) -> bytes:
    """An audio-only response: ``11 B1`` for a positive sequence, ``11 B3`` (or ``last_flags``)
    for the last; the sequence is there either way."""
    flags = 0b0001 if sequence > 0 else last_flags
    return bytes((0x11, 0xB0 | flags, 0x00, 0x00)) + _I32.pack(sequence) + _U32.pack(len(audio)) + audio


V1_ACK = bytes((0x11, 0xB0, 0x00, 0x00))
"""The header-only ACK of the v1 service."""


def v1_frontend_frame(document: Any) -> bytes:
    """A frontend response: ``11 C0 11 00`` + size + gzipped JSON."""
    raw = gzip.compress(json.dumps(document).encode("utf-8"))
    return bytes((0x11, 0xC0, 0x11, 0x00)) + _U32.pack(len(raw)) + raw


def v3_frame(event: int, ident: str, payload: bytes, *, audio: bool = False) -> bytes:
    """A v3 server frame: ``11 94 10 00`` (JSON) or ``11 B4 00 00`` (audio), event, id, payload."""
    head = bytes((0x11, 0xB4, 0x00, 0x00)) if audio else bytes((0x11, 0x94, 0x10, 0x00))
    raw = ident.encode("utf-8")
    return head + _I32.pack(event) + _U32.pack(len(raw)) + raw + _U32.pack(len(payload)) + payload


def _ratio_ok(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0.1 <= value <= 3


class VolcengineTtsEmulator:
    """The emulator; ``async with VolcengineTtsEmulator() as volc:``."""

    def __init__(self, config: EmulatorConfig | None = None):
        self.config = config or EmulatorConfig()
        self.faults: deque[Fault] = deque()
        self.connections: list[ConnLog] = []
        self.used_reqids: set[str] = set()
        self.active = 0
        self.peak = 0
        self.port = 0
        self._pending: dict[ServerConnection, ConnLog] = {}
        self._stack: contextlib.AsyncExitStack | None = None
        self._server: Server | None = None

    @property
    def v1_url(self) -> str:
        """The endpoint for VOXQ_VOLCENGINE_TTS_URL."""
        return f"ws://{LOOPBACK}:{self.port}{V1_PATH}"

    @property
    def v3_url(self) -> str:
        """The endpoint for VOXQ_VOLCENGINE_TTS_V3_URL."""
        return f"ws://{LOOPBACK}:{self.port}{V3_PATH}"

    @property
    def syntheses(self) -> list[SynthLog]:
        """Every synthesis of every connection, in order."""
        return [s for c in self.connections for s in c.syntheses]

    def configure(self, settings: Settings, **changes: Any) -> Settings:
        """``settings`` pointed at this emulator with its credentials."""
        update: dict[str, Any] = {
            "volcengine_app_id": self.config.app_id,
            "volcengine_access_token": SecretStr(self.config.access_token),
            "volcengine_api_key": None, "volcengine_tts_url": self.v1_url,
            "volcengine_tts_v3_url": self.v3_url, "volcengine_tts_resource_id": None}
        update.update(changes)
        return settings.model_copy(update=update)

    def env(self) -> dict[str, str]:
        """Environment variables pointing a worker process at this emulator."""
        return {"VOLCENGINE_APP_ID": self.config.app_id,
                "VOLCENGINE_ACCESS_TOKEN": self.config.access_token,
                "VOXQ_VOLCENGINE_TTS_URL": self.v1_url, "VOXQ_VOLCENGINE_TTS_V3_URL": self.v3_url}

    async def __aenter__(self) -> VolcengineTtsEmulator:
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

    # --- handshake --------------------------------------------------------------------------

    @staticmethod
    def _refuse(connection: ServerConnection, status: int, body: str) -> Response:
        response = connection.respond(status, body)
        if body.startswith("{"):
            headers = Headers([(k, v) for k, v in response.headers.raw_items()
                               if k.lower() != "content-type"])
            headers["Content-Type"] = "application/json"
            response.headers = headers
        return response

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        version: Literal["v1", "v3", "?"] = {V1_PATH: "v1", V3_PATH: "v3"}.get(path, "?")  # type: ignore[assignment]
        log = ConnLog(version=version, path=path, headers=dict(request.headers.raw_items()))
        self.connections.append(log)
        log.fault = self.faults.popleft() if self.faults else None
        if version == "?":
            log.http_status = 404
            return self._refuse(connection, 404, "Not Found")
        if log.fault is not None and log.fault.kind == "http":
            log.http_status = log.fault.status
            return self._refuse(connection, log.fault.status, log.fault.message)
        if version == "v3":
            refusal = self._v3_handshake(request.headers)
            if refusal is not None:
                log.http_status = refusal[0]
                return self._refuse(connection, *refusal)
        self._pending[connection] = log
        return None

    def _v3_handshake(self, h: Headers) -> tuple[int, str] | None:
        resource = h.get("X-Api-Resource-Id")
        if not resource:
            return 400, "get resource id empty"
        app = h.get("X-Api-App-Key") or h.get("X-Api-App-Id")
        key = h.get("X-Api-Key")
        grant = json.dumps({"header": {"code": 45000010, "message":
                                       "load grant: requested grant not found in SaaS storage"}})
        if key is not None:
            if key != self.config.api_key:
                return 401, grant
        elif not app:
            return 400, "app key not found in header or query"
        elif not h.get("X-Api-Access-Key"):
            return 400, "no token or access_key was found from the header or query"
        elif app != self.config.app_id or h.get("X-Api-Access-Key") != self.config.access_token:
            return 401, grant
        if resource not in V3_RESOURCES:
            return 403, json.dumps({"header": {"code": 45000030,
                                               "message": "requested resource not granted"}})
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        log = self._pending.pop(ws)
        log.ws = ws
        try:
            if log.version == "v1":
                await _V1(self, ws, log).serve()
            else:
                await _V3(self, ws, log).serve()
        except _Closed:
            pass
        finally:
            log.closed = True

    def audio(self, text: str, rate: int, speed: float, voice: str, voices: Any) -> tuple[float, bytes]:
        """(seconds, MP3) of the emulated speech."""
        seconds = speech_seconds(text, speed)
        freq = 300.0 + 20.0 * (sorted(voices).index(voice) % 30)
        return seconds, mp3_tone(seconds, rate, freq)


class _V1:
    """One v1 connection."""

    def __init__(self, emu: VolcengineTtsEmulator, ws: ServerConnection, log: ConnLog):
        self.emu, self.cfg, self.ws, self.log = emu, emu.config, ws, log
        self.busy = False

    async def fail(self, code: int, message: str) -> NoReturn:
        self.log.error = (code, message)
        if self.log.syntheses:
            self.log.syntheses[-1].error = (code, message)
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(error_frame(code, message, gzipped=self.cfg.gzip_errors))
            await self.ws.close(1000)
        raise _Closed

    def _authorized(self) -> bool:
        auth = self.log.headers.get("Authorization") or self.log.headers.get("authorization") or ""
        if not auth.startswith("Bearer;"):
            return False
        return auth[len("Bearer;"):].strip() == self.cfg.access_token

    async def serve(self) -> None:
        while True:
            try:
                raw = await self.ws.recv()
            except ConnectionClosed:
                raise _Closed from None
            if not self._authorized():
                await self.fail(3001, GRANT_NOT_FOUND)
            if isinstance(raw, str):
                await self.fail(3001, "text frames are not accepted")
            if self.busy or self.log.syntheses:
                await self.fail(3001, "only one request per connection")
            try:
                frame = parse_client_frame(raw)
                if frame.type != 0b0001 or frame.flags != 0:
                    raise _Bad(f"message type {frame.type:04b} flags {frame.flags:04b}")
                body = frame.json()
            except _Bad as e:
                await self.fail(3001, f"invalid request: {e}")
            await self._request(body)

    async def _request(self, body: Any) -> None:
        synth = SynthLog(request=body if isinstance(body, dict) else {})
        self.log.syntheses.append(synth)
        if not isinstance(body, dict):
            await self.fail(3001, "invalid request: body is not an object")
        app, user = body.get("app") or {}, body.get("user") or {}
        audio, req = body.get("audio") or {}, body.get("request") or {}
        for where, obj, name in (("app", app, "appid"), ("app", app, "token"),
                                 ("app", app, "cluster"), ("user", user, "uid"),
                                 ("audio", audio, "voice_type"), ("request", req, "reqid"),
                                 ("request", req, "text"), ("request", req, "operation")):
            if not isinstance(obj, dict) or not isinstance(obj.get(name), str) or (
                    name != "text" and not obj[name]):
                await self.fail(3001, f"invalid request: {where}.{name} is missing")
        if app["appid"] != self.cfg.app_id:
            await self.fail(3001, GRANT_NOT_FOUND)
        if req["operation"] not in ("submit", "query"):
            await self.fail(3001, f"invalid operation: {req['operation']}")
        encoding = audio.get("encoding", "pcm")
        if encoding not in ("wav", "pcm", "ogg_opus", "mp3"):
            await self.fail(3001, f"invalid encoding: {encoding}")
        if encoding == "wav" and req["operation"] == "submit":
            await self.fail(3001, "wav cannot be streamed")
        if encoding != "mp3":
            await self.fail(3001, f"this emulator only produces mp3, not {encoding}")
        rate = audio.get("rate", 24000)
        if rate not in V1_RATES or isinstance(rate, bool):
            await self.fail(3001, f"invalid rate: {rate}")
        for name in ("speed_ratio", "volume_ratio", "pitch_ratio"):
            if name in audio and not _ratio_ok(audio[name]):
                await self.fail(3001, f"invalid {name}: {audio[name]}")
        if app["cluster"] not in CLUSTERS:
            await self.fail(3001, "Fail to feed text, reason Init Engine Instance failed")
        text = req["text"]
        if not _WORD.search(text):
            await self.fail(3011, "illegal input text!")
        if len(text.encode("utf-8")) > MAX_TEXT_BYTES:
            await self.fail(3010, "text too long")
        if audio["voice_type"] not in V1_VOICES:
            await self.fail(3050, f"voice_type {audio['voice_type']} does not exist")
        if req["reqid"] in self.emu.used_reqids:
            await self.fail(3006, "reqid already used")
        self.emu.used_reqids.add(req["reqid"])
        if self.emu.active >= self.cfg.max_concurrent:
            await self.fail(3003, "quota exceeded for types: concurrency")
        fault = self.log.fault
        if fault is not None and fault.kind == "error" and fault.after_chunks == 0:
            await self.fail(fault.code, fault.message)
        self.emu.active += 1
        self.emu.peak = max(self.emu.peak, self.emu.active)
        self.busy = True
        try:
            await self._answer(synth, text, rate, float(audio.get("speed_ratio", 1.0)),
                               audio["voice_type"], req["operation"])
        finally:
            self.emu.active -= 1
            self.busy = False

    async def _answer(self, synth: SynthLog, text: str, rate: int, speed: float, voice: str,
                      operation: str) -> None:
        if self.cfg.delay:
            await asyncio.sleep(self.cfg.delay)
        synth.text, synth.speed = text, speed
        seconds, mp3 = await asyncio.to_thread(self.emu.audio, text, rate, speed, voice, V1_VOICES)
        synth.audio_seconds = seconds
        if self.cfg.ack_first:
            await self.ws.send(V1_ACK)
        if self.cfg.frontend_first:
            await self.ws.send(v1_frontend_frame({"phonemes": [], "text": text}))
        last = self.cfg.last_flags
        if operation == "query":
            await self.ws.send(v1_audio_frame(-1, mp3, last))
        else:
            size = self.cfg.chunk_bytes
            chunks = [mp3[i:i + size] for i in range(0, len(mp3), size)]
            fault = self.log.fault
            for n, chunk in enumerate(chunks, 1):
                if fault is not None and n - 1 >= fault.after_chunks:
                    if fault.kind == "drop":
                        self.ws.transport.abort()
                        raise _Closed
                    if fault.kind == "error":
                        await self.fail(fault.code, fault.message)
                await self.ws.send(v1_audio_frame(n, chunk))
                synth.chunks += 1
            await self.ws.send(v1_audio_frame(-(len(chunks) + 1), b"", last))
        synth.finished = True
        with contextlib.suppress(ConnectionClosed):
            await self.ws.close(1000)
        raise _Closed


class _V3:
    """One v3 connection."""

    def __init__(self, emu: VolcengineTtsEmulator, ws: ServerConnection, log: ConnLog):
        self.emu, self.cfg, self.ws, self.log = emu, emu.config, ws, log
        self.connection_id = ""
        self.session: str | None = None
        self.synth: SynthLog | None = None
        self.texts: list[str] = []
        headers = {k.lower(): v for k, v in log.headers.items()}
        self.resource = V3_RESOURCES.get(headers.get("x-api-resource-id", ""), "")

    async def _send(self, frame: bytes) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(frame)

    async def fatal(self, code: int, message: str) -> NoReturn:
        self.log.error = (code, message)
        await self._send(error_frame(code, message))
        with contextlib.suppress(ConnectionClosed):
            await self.ws.close(1000)
        raise _Closed

    async def session_failed(self, code: int, message: str, session_id: str) -> NoReturn:
        self.log.error = (code, message)
        if self.synth is not None:
            self.synth.error = (code, message)
        body = json.dumps({"status_code": code, "message": message}).encode()
        await self._send(v3_frame(SESSION_FAILED, session_id, body))
        with contextlib.suppress(ConnectionClosed):
            await self.ws.close(1000)
        raise _Closed

    async def serve(self) -> None:
        while True:
            try:
                raw = await self.ws.recv()
            except ConnectionClosed:
                raise _Closed from None
            if isinstance(raw, str):
                await self.fatal(45000000, "text frames are not accepted")
            try:
                frame = parse_client_frame(raw)
                if frame.type != 0b0001 or frame.event is None:
                    raise _Bad("client frames must be full client requests with an event")
                body = frame.json()
            except _Bad as e:
                await self.fatal(45000000, f"payload unmarshal: {e}")
            await self._event(frame, body)

    async def _event(self, frame: ClientFrame, body: Any) -> None:
        event, sid = frame.event, frame.session_id or ""
        if not self.connection_id:
            if event != START_CONNECTION:
                body_failed = json.dumps({"status_code": 45000000,
                                          "message": "StartConnection expected"}).encode()
                await self._send(v3_frame(CONNECTION_FAILED, "", body_failed))
                with contextlib.suppress(ConnectionClosed):
                    await self.ws.close(1000)
                raise _Closed
            self.connection_id = uuid.uuid4().hex
            await self._send(v3_frame(CONNECTION_STARTED, self.connection_id, b"{}"))
            return
        if event == FINISH_CONNECTION:
            await self._send(v3_frame(CONNECTION_FINISHED, self.connection_id, b"{}"))
            with contextlib.suppress(ConnectionClosed):
                await self.ws.close(1000)
            raise _Closed
        if event == START_SESSION:
            await self._start_session(sid, body)
            return
        if event not in (TASK_REQUEST, FINISH_SESSION, CANCEL_SESSION):
            await self.fatal(45000000, f"unknown event {event}")
        if self.session is None or sid != self.session:
            await self.session_failed(45000001, "session id does not match the active session", sid)
        assert self.synth is not None
        if event == CANCEL_SESSION:
            await self._send(v3_frame(SESSION_CANCELED, sid, b"{}"))
            self.session, self.synth, self.texts = None, None, []
        elif event == TASK_REQUEST:
            text = (body.get("req_params") or {}).get("text") if isinstance(body, dict) else None
            if not isinstance(text, str):
                await self.session_failed(45000001, "req_params.text is missing", sid)
            if len(text.encode("utf-8")) > MAX_TEXT_BYTES:
                await self.session_failed(40402003, "TTSExceededTextLimit:exceed max limit", sid)
            self.texts.append(text)
        else:
            await self._finish_session(sid)

    async def _start_session(self, sid: str, body: Any) -> None:
        if self.session is not None or not sid:
            await self.session_failed(45000001, "a session is active or the session id is empty", sid)
        self.session = sid
        self.synth = SynthLog(request=body if isinstance(body, dict) else {})
        self.log.syntheses.append(self.synth)
        self.texts = []
        if not isinstance(body, dict) or body.get("namespace") != "BidirectionalTTS":
            await self.session_failed(45000001, "namespace must be BidirectionalTTS", sid)
        params = body.get("req_params")
        if not isinstance(params, dict) or not isinstance(params.get("speaker"), str) \
                or not isinstance(params.get("audio_params"), dict):
            await self.session_failed(45000001, "req_params.speaker and audio_params are required", sid)
        speaker, ap = params["speaker"], params["audio_params"]
        if speaker not in V3_SPEAKERS:
            await self.session_failed(45000000, "speaker permission denied: get resource id: "
                                      "access denied", sid)
        if V3_SPEAKERS[speaker] != self.resource:
            await self.session_failed(55000000, "resource ID is mismatched with speaker related "
                                      "resource", sid)
        fmt = ap.get("format", "mp3")
        if fmt not in ("mp3", "ogg_opus", "pcm", "wav"):
            await self.session_failed(45000001, f"unsupported format {fmt}", sid)
        if fmt != "mp3":
            await self.session_failed(45000001, f"this emulator only produces mp3, not {fmt}", sid)
        rate = ap.get("sample_rate", 24000)
        if rate not in V3_RATES or isinstance(rate, bool):
            await self.session_failed(45000001, f"unsupported sample_rate {rate}", sid)
        for name in ("speech_rate", "loudness_rate"):
            value = ap.get(name, 0)
            if not isinstance(value, int) or isinstance(value, bool) or not -50 <= value <= 100:
                await self.session_failed(45000001, f"{name} {value!r} is out of [-50, 100]", sid)
        additions = params.get("additions")
        if additions is not None:
            try:
                doc = json.loads(additions) if isinstance(additions, str) else None
            except ValueError:
                doc = None
            if not isinstance(doc, dict):
                await self.session_failed(45000001, "additions must be a JSON string", sid)
            pitch = (doc.get("post_process") or {}).get("pitch", 0)
            if not isinstance(pitch, int) or not -12 <= pitch <= 12:
                await self.session_failed(45000001, f"post_process.pitch {pitch!r} is out of [-12, 12]", sid)
        fault = self.log.fault
        if fault is not None and fault.kind == "error" and fault.after_chunks == 0:
            await self.session_failed(fault.code, fault.message, sid)
        await self._send(v3_frame(SESSION_STARTED, sid, b"{}"))

    async def _finish_session(self, sid: str) -> None:
        assert self.synth is not None
        text = "".join(self.texts)
        if not _WORD.search(text):
            await self.session_failed(45000001, "no text to synthesise", sid)
        ap = self.synth.request["req_params"]["audio_params"]
        speed = 1.0 + ap.get("speech_rate", 0) / 100
        speaker = self.synth.request["req_params"]["speaker"]
        if self.cfg.delay:
            await asyncio.sleep(self.cfg.delay)
        self.synth.text, self.synth.speed = text, speed
        seconds, mp3 = await asyncio.to_thread(self.emu.audio, text, ap.get("sample_rate", 24000),
                                               speed, speaker, V3_SPEAKERS)
        self.synth.audio_seconds = seconds
        size = self.cfg.chunk_bytes
        chunks = [mp3[i:i + size] for i in range(0, len(mp3), size)]
        sentences = _SENTENCE.findall(text) or [text]
        per = max(1, -(-len(chunks) // len(sentences)))
        fault = self.log.fault
        sent = 0
        for index, sentence in enumerate(sentences):
            info = json.dumps({"res_params": {"text": sentence}}, ensure_ascii=False).encode()
            await self._send(v3_frame(SENTENCE_START, sid, info))
            for chunk in chunks[index * per:(index + 1) * per]:
                if fault is not None and sent >= fault.after_chunks:
                    if fault.kind == "drop":
                        self.ws.transport.abort()
                        raise _Closed
                    if fault.kind == "error":
                        await self.session_failed(fault.code, fault.message, sid)
                await self._send(v3_frame(TTS_RESPONSE, sid, chunk, audio=True))
                sent += 1
            await self._send(v3_frame(SENTENCE_END, sid, info))
        self.synth.chunks = sent
        for chunk in chunks[len(sentences) * per:]:
            await self._send(v3_frame(TTS_RESPONSE, sid, chunk, audio=True))
        await self._send(v3_frame(SESSION_FINISHED, sid, json.dumps(
            {"status_code": 20000000, "message": "ok"}).encode()))
        self.synth.finished = True
        self.session, self.synth, self.texts = None, None, []
