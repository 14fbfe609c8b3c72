"""A strict local emulator of Volcengine's big-model streaming ASR (``sauc``) WebSocket.

A real WebSocket server on a free loopback port that answers what
``docs/protocols/volcengine.md``, "Emulator checklist" (and §4 there), says the service answers (numbers below).
Its frame parser and writer are its own (``struct``, ``gzip``), independent of
``workers.vendors.volcengine.frames``, so the client codec is checked against a second reading
of the protocol rather than against itself.

Handshake, before the upgrade (#26):
  * path other than ``/api/v3/sauc/bigmodel``, ``…/bigmodel_async``, ``…/bigmodel_nostream`` →
    HTTP 404;
  * no known ``X-Api-App-Key`` + ``X-Api-Access-Key`` pair (and no known ``X-Api-Key``) → HTTP
    401 ``{"header":{"code":45000010,"message":"load grant: requested grant not found"}}``;
  * ``X-Api-Resource-Id`` missing or unknown → HTTP 400 ``resourceId … is not allowed``;
  * the answer carries ``X-Api-Connect-Id`` (echoed) and ``X-Tt-Logid``.

After the upgrade every problem is one error frame (``11 F0 10 00``, uint32 code, uint32 size,
JSON ``{"error": message}`` or, with ``config.error_json=False``, plain text), then a close:
  * text frames, frames shorter than 4 bytes, version ≠ 1, header size ≠ 1, a declared payload
    size ≠ the bytes left, bad gzip, an event flag, JSON that does not parse → 45000001 (#1-#4);
    the reserved byte is not checked (#5);
  * first frame not a full client request, a second full client request ("duplicate request"),
    audio after the last packet → 45000001 (#27, #30, #31);
  * missing ``audio.format`` or ``request.model_name``, ``model_name`` ≠ ``bigmodel``,
    ``result_type`` ∉ {full, single} → 45000001 (#28); ``format`` ∉ {pcm, wav, ogg, mp3}
    (``raw`` included), ``codec`` ∉ {raw, opus}, ogg without opus, ``rate`` ≠ 16000,
    ``bits`` ≠ 16, ``channel`` ∉ {1, 2} → 45000151 (#29);
  * sequences: flags 0011 with a non-negative or 0001 with a non-positive number → 45000001
    (#33); with ``config.strict_sequence`` every numbered frame must carry the next number
    (full request n, then n+1, …, the last packet −(its number)) → else 45000001 (#32);
  * odd PCM byte counts or a wav stream not starting ``RIFF…WAVE`` → 45000151 (#36); the last
    packet with no audio in the whole stream → 45000002 (#34); no packet for
    ``config.packet_timeout`` → 45000081 (#35); more than ``config.max_concurrent`` streams →
    55000031 (#37).

Recognition is the AWS emulator's tone code (:class:`ToneChannel`; 16 kHz, the channels of a
2-channel stream are mixed): an utterance is one or more ``tone<f>`` words, ``definite`` once
300 ms of quiet follow it (or at the last packet); its text is the words joined by spaces plus
``.``; times are ms. Cadence by mode (#38): ``bigmodel`` answers every packet, ``bigmodel_async``
only when the result changed, ``bigmodel_nostream`` every ``config.nostream_every`` seconds of
audio; all answer the full client request (an empty result) and the last packet (flags 0011,
negative sequence, every utterance definite), then close. ``result_type=full`` repeats every
utterance so far in each answer, ``single`` only those not yet sent as definite. Answers mirror
the client's compression. ``show_utterances`` false leaves only ``result.text``.

Fault knobs: ``emulator.faults``, one :class:`Fault` per new connection: refuse the handshake
with an HTTP status, answer an error code after N audio packets, or drop the TCP connection
after N audio packets. ``emulator.streams`` records every connection (headers, request, the
sequences and audio received, the answers sent, the error sent).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import struct
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

APP_ID = "7300000001"
ACCESS_TOKEN = "volcEmulatorAccessToken-0001"
API_KEY = "volc-emulator-api-key-0001"
BASE_PATH = "/api/v3/sauc"
MODES = {f"{BASE_PATH}/bigmodel": "bigmodel", f"{BASE_PATH}/bigmodel_async": "bigmodel_async",
         f"{BASE_PATH}/bigmodel_nostream": "bigmodel_nostream"}
RESOURCE_IDS = frozenset({"volc.bigasr.sauc.duration", "volc.bigasr.sauc.concurrent",
                          "volc.seedasr.sauc.duration", "volc.seedasr.sauc.concurrent"})
RATE = 16000

INVALID = 45000001
EMPTY_AUDIO = 45000002
PACKET_TIMEOUT = 45000081
BAD_FORMAT = 45000151
BUSY = 55000031
STREAM_TOO_LONG = 55000001
GRANT_NOT_FOUND = "load grant: requested grant not found"

_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")


@dataclass
class EmulatorConfig:
    """Limits and behaviour; tests change fields before (or between) connections."""

    credentials: dict[str, str] = field(default_factory=lambda: {APP_ID: ACCESS_TOKEN})
    api_keys: set[str] = field(default_factory=lambda: {API_KEY})
    resource_ids: frozenset[str] = RESOURCE_IDS
    packet_timeout: float = 10.0
    #: a stream that has received more audio than this fails (a stream-length limit, shortened
    #: to seconds by the rolling tests; Volcengine states none)
    max_stream_seconds: float | None = None
    strict_sequence: bool = True
    nostream_every: float = 15.0
    max_concurrent: int = 100
    error_json: bool = True
    silence_rms: float = 500.0
    word_gap: float = 0.05
    utterance_gap: float = 0.3


@dataclass
class Fault:
    """A misbehaviour for one connection: ``http`` refuses the handshake with ``status``;
    ``error`` answers ``code``/``message`` after ``after_packets`` audio packets; ``abort``
    drops the TCP connection (no close frame) after ``after_packets`` audio packets."""

    kind: Literal["http", "error", "abort"]
    after_packets: int = 0
    status: int = 503
    code: int = 55000000
    message: str = "internal server error"


@dataclass(frozen=True)
class ClientFrame:
    """A client frame as this emulator reads it."""

    type: int
    flags: int
    serialization: int
    compression: int
    sequence: int | None
    payload: bytes  # inflated


class FrameProblem(Exception):
    """A client frame this emulator refuses to parse (answered with 45000001)."""


def parse_client_frame(data: bytes) -> ClientFrame:
    """Parse one client frame strictly (§1, §4.3); FrameProblem says what is wrong."""
    if len(data) < 4:
        raise FrameProblem(f"frame of {len(data)} bytes is shorter than the 4-byte header")
    b0, b1, b2 = data[0], data[1], data[2]
    if b0 >> 4 != 1:
        raise FrameProblem(f"unsupported protocol version {b0 >> 4}")
    if b0 & 0x0F != 1:
        raise FrameProblem(f"unsupported header size {b0 & 0x0F}")
    kind, flags = b1 >> 4, b1 & 0x0F
    if flags & 0b1100:
        raise FrameProblem(f"unsupported flags {flags:04b}")
    pos = 4
    sequence = None
    if flags & 1:
        if len(data) < pos + 4:
            raise FrameProblem("frame ends inside the sequence")
        (sequence,) = _I32.unpack_from(data, pos)
        pos += 4
    if len(data) < pos + 4:
        raise FrameProblem("frame ends inside the payload size")
    (size,) = _U32.unpack_from(data, pos)
    pos += 4
    if size != len(data) - pos:
        raise FrameProblem(f"payload size {size} but {len(data) - pos} bytes follow")
    payload = data[pos:]
    compression = b2 & 0x0F
    if compression == 1:
        try:
            payload = gzip.decompress(payload)
        except (OSError, EOFError, ValueError) as e:
            raise FrameProblem(f"payload is not valid gzip: {e}") from None
    elif compression != 0:
        raise FrameProblem(f"unsupported compression {compression}")
    return ClientFrame(kind, flags, b2 >> 4, compression, sequence, payload)


def server_frame(kind: int, flags: int, payload: bytes, *, sequence: int | None = None,
                 code: int | None = None, gzip_payload: bool = False) -> bytes:
    """Build a server frame the way §4.5 shows them (JSON serialization)."""
    if gzip_payload:
        payload = gzip.compress(payload, mtime=0)
    head = bytes((0x11, (kind << 4) | flags, 0x10 | (1 if gzip_payload else 0), 0))
    fields = b""
    if code is not None:
        fields += _U32.pack(code)
    if sequence is not None:
        fields += _I32.pack(sequence)
    return head + fields + _U32.pack(len(payload)) + payload


def _ms(seconds: float) -> int:
    """Seconds to integer ms."""
    return round(seconds * 1000)


def utterance_of(result: dict[str, Any], definite: bool) -> dict[str, Any]:
    """A sauc utterance from one tone-code result (AWS-shaped, see ToneChannel)."""
    items = [i for i in result["Alternatives"][0]["Items"] if i["Type"] == "pronunciation"]
    words = [{"text": i["Content"], "start_time": _ms(i["StartTime"]),
              "end_time": _ms(i["EndTime"]), "blank_duration": 0} for i in items]
    text = " ".join(w["text"] for w in words) + ("." if definite else "")
    return {"definite": definite, "start_time": _ms(result["StartTime"]),
            "end_time": _ms(result["EndTime"]), "text": text, "words": words}


@dataclass(eq=False)
class StreamLog:
    """What happened on one connection."""

    index: int
    path: str
    mode: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    fault: Fault | None = None
    http_status: int | None = None
    request: dict[str, Any] | None = None
    compression: int = 0
    sequences: list[int | None] = field(default_factory=list)  # of every client frame
    audio: bytearray = field(default_factory=bytearray)
    packet_sizes: list[int] = field(default_factory=list)
    responses: list[dict[str, Any]] = field(default_factory=list)
    response_sequences: list[int] = field(default_factory=list)
    error: tuple[int, str] | None = None
    ended: bool = False
    closed: bool = False
    ws: ServerConnection | None = None

    @property
    def packets(self) -> int:
        """Audio-only packets received (the last one included)."""
        return len(self.packet_sizes)

    @property
    def definite(self) -> list[dict[str, Any]]:
        """Definite utterances sent, each once, in order."""
        seen: dict[tuple[int, int], dict[str, Any]] = {}
        for r in self.responses:
            for u in (r.get("result") or {}).get("utterances") or []:
                if u["definite"]:
                    seen[(u["start_time"], u["end_time"])] = u
        return list(seen.values())


class _Closed(Exception):
    """The connection is over (error sent, final sent, or client gone)."""


class VolcengineEmulator:
    """The emulator server; ``async with`` starts it on a free loopback port."""

    def __init__(self, config: EmulatorConfig | None = None):
        """An emulator with ``config`` (defaults: the service's limits)."""
        self.config = config or EmulatorConfig()
        self.faults: deque[Fault] = deque()
        self.streams: list[StreamLog] = []
        self.active: list[StreamLog] = []
        self.port = 0
        self._pending: dict[ServerConnection, StreamLog] = {}
        self._server: Server | None = None
        self._stack: contextlib.AsyncExitStack | None = None

    @property
    def url(self) -> str:
        """The base URL to put in ``volcengine_asr_url`` (VOXQ_VOLCENGINE_ASR_URL)."""
        return f"ws://{LOOPBACK}:{self.port}{BASE_PATH}"

    def configure(self, settings: Settings, **changes: Any) -> Settings:
        """``settings`` pointed at this emulator with its (fake) credentials."""
        update: dict[str, Any] = {
            "volcengine_app_id": APP_ID, "volcengine_access_token": SecretStr(ACCESS_TOKEN),
            "volcengine_api_key": None, "volcengine_asr_resource_id": "volc.bigasr.sauc.duration",
            "volcengine_asr_url": self.url}
        update.update(changes)
        return settings.model_copy(update=update)

    async def __aenter__(self) -> VolcengineEmulator:
        """Start serving on a free loopback port."""
        self._stack = contextlib.AsyncExitStack()
        self._server, self.port = await self._stack.enter_async_context(serve_loopback(
            self._handler, self._process_request, process_response=self._process_response,
            max_size=1 << 22, max_queue=None, close_timeout=2))
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
    def _refuse(connection: ServerConnection, status: int, code: int, message: str) -> Response:
        """An HTTP refusal with a v3-style JSON body."""
        response = connection.respond(status, json.dumps(
            {"header": {"code": code, "message": message}}))
        headers = Headers([(k, v) for k, v in response.headers.raw_items()
                           if k.lower() != "content-type"])
        headers["Content-Type"] = "application/json"
        headers["X-Tt-Logid"] = uuid.uuid4().hex.upper()
        response.headers = headers
        return response

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Route, apply handshake faults and check credentials and resource id."""
        parts = urlsplit(request.path)
        log = StreamLog(index=len(self.streams), path=parts.path,
                        headers={k: v for k, v in request.headers.raw_items()})
        self.streams.append(log)
        log.fault = self.faults.popleft() if self.faults else None
        if parts.path not in MODES:
            log.http_status = 404
            return self._refuse(connection, 404, INVALID, f"path {parts.path} not found")
        log.mode = MODES[parts.path]
        if log.fault is not None and log.fault.kind == "http":
            log.http_status = log.fault.status
            return self._refuse(connection, log.fault.status, log.fault.code, log.fault.message)
        h = request.headers
        app, token, key = h.get("X-Api-App-Key"), h.get("X-Api-Access-Key"), h.get("X-Api-Key")
        granted = (app is not None and token is not None
                   and self.config.credentials.get(app) == token) or \
                  (key is not None and key in self.config.api_keys)
        if not granted:
            log.http_status = 401
            return self._refuse(connection, 401, 45000010, GRANT_NOT_FOUND)
        resource = h.get("X-Api-Resource-Id")
        if resource not in self.config.resource_ids:
            log.http_status = 400
            return self._refuse(connection, 400, INVALID,
                                f"resourceId {resource or ''} is not allowed")
        self._pending[connection] = log
        return None

    def _process_response(self, connection: ServerConnection, request: Request,
                          response: Response) -> Response:
        """Echo X-Api-Connect-Id and add X-Tt-Logid, as the service does."""
        connect_id = request.headers.get("X-Api-Connect-Id")
        if connect_id:
            response.headers["X-Api-Connect-Id"] = connect_id
        response.headers["X-Tt-Logid"] = uuid.uuid4().hex.upper()
        return response

    async def _handler(self, ws: ServerConnection) -> None:
        """Serve one upgraded connection and record its end."""
        log = self._pending.pop(ws)
        log.ws = ws
        self.active.append(log)
        try:
            await _Stream(self, ws, log).serve()
        except _Closed:
            pass
        finally:
            log.closed = True
            self.active.remove(log)


class _Stream:
    """One connection's protocol state."""

    def __init__(self, emulator: VolcengineEmulator, ws: ServerConnection, log: StreamLog):
        """Fresh state for one connection."""
        self.emu = emulator
        self.cfg = emulator.config
        self.ws = ws
        self.log = log
        self.next_sequence = 0  # expected number of the next numbered frame
        self.server_sequence = 0
        self.channels = 1
        self.fmt = "pcm"
        self.result_type = "full"
        self.show_utterances = False
        self.recognizer: ToneChannel | None = None
        self.closed_utts: list[dict[str, Any]] = []
        self.open_utt: dict[str, Any] | None = None
        self.reported = 0  # definite utterances already sent (single mode)
        self.carry = b""
        self.since_answer = 0.0  # seconds of audio since the last nostream answer

    async def fail(self, code: int, message: str) -> NoReturn:
        """One error frame, then a close."""
        if self.log.error is None:
            self.log.error = (code, message)
            body = (json.dumps({"error": message}) if self.cfg.error_json else message).encode()
            with contextlib.suppress(ConnectionClosed):
                await self.ws.send(server_frame(0b1111, 0, body, code=code))
                await self.ws.close(1000)
        raise _Closed

    async def serve(self) -> None:
        """Read frames until the stream ends; enforce the packet timeout."""
        if len(self.emu.active) > self.cfg.max_concurrent:
            await self.fail(BUSY, "server busy: concurrency quota exceeded")
        first = True
        while True:
            try:
                data = await within(self.ws.recv(), self.cfg.packet_timeout)
            except TimeoutError:
                await self.fail(PACKET_TIMEOUT, f"wait for next packet timeout "
                                                f"({self.cfg.packet_timeout:g} s)")
            except ConnectionClosed:
                raise _Closed from None
            if isinstance(data, str):
                await self.fail(INVALID, "text frames are not part of the protocol")
            try:
                frame = parse_client_frame(data)
            except FrameProblem as e:
                await self.fail(INVALID, str(e))
            self.log.sequences.append(frame.sequence)
            await self._check_sequence(frame, first)
            if first:
                if frame.type != 0b0001:
                    await self.fail(INVALID, "the first frame must be a full client request")
                await self._request(frame)
                first = False
            elif frame.type == 0b0001:
                await self.fail(INVALID, "duplicate request: a second full client request")
            elif frame.type != 0b0010:
                await self.fail(INVALID, f"unexpected message type {frame.type:04b}")
            else:
                await self._packet(frame)

    async def _check_sequence(self, frame: ClientFrame, first: bool) -> None:
        """Apply the sign rules and, when strict, the numbering rule."""
        flags, seq = frame.flags, frame.sequence
        if flags == 0b0011 and seq is not None and seq >= 0:
            await self.fail(INVALID, f"the last packet's sequence must be negative, not {seq}")
        if flags == 0b0001 and seq is not None and seq <= 0:
            await self.fail(INVALID, f"sequence {seq} must be positive before the last packet")
        if first:
            self.next_sequence = (seq if seq is not None else 1) + 1
            return
        if seq is not None and self.cfg.strict_sequence:
            want = -self.next_sequence if flags & 0b0010 else self.next_sequence
            if seq != want:
                await self.fail(INVALID, f"sequence {seq} out of order, expected {want}")
        self.next_sequence += 1

    async def _request(self, frame: ClientFrame) -> None:
        """Validate the full client request and answer it."""
        try:
            doc = json.loads(frame.payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            await self.fail(INVALID, f"payload unmarshal: {e}")
        if not isinstance(doc, dict):
            await self.fail(INVALID, "payload unmarshal: not an object")
        self.log.request = doc
        self.log.compression = frame.compression
        audio = doc.get("audio") if isinstance(doc.get("audio"), dict) else None
        request = doc.get("request") if isinstance(doc.get("request"), dict) else None
        if audio is None or "format" not in audio:
            await self.fail(INVALID, "invalid request: audio.format is required")
        if request is None or "model_name" not in request:
            await self.fail(INVALID, "invalid request: request.model_name is required")
        if request["model_name"] != "bigmodel":
            await self.fail(INVALID, f"invalid request: unknown model_name "
                                     f"{request['model_name']!r}")
        result_type = request.get("result_type", "full")
        if result_type not in ("full", "single"):
            await self.fail(INVALID, f"invalid request: result_type {result_type!r}")
        fmt, codec = audio["format"], audio.get("codec", "raw")
        if fmt not in ("pcm", "wav", "ogg", "mp3"):
            await self.fail(BAD_FORMAT, f"unsupported format {fmt}")
        if codec not in ("raw", "opus") or (fmt == "ogg" and codec != "opus"):
            await self.fail(BAD_FORMAT, f"unsupported codec {codec} for format {fmt}")
        for name, allowed in (("rate", (RATE,)), ("bits", (16,)), ("channel", (1, 2))):
            value = audio.get(name, allowed[0])
            if isinstance(value, bool) or value not in allowed:
                await self.fail(BAD_FORMAT, f"unsupported {name} {value!r}")
        self.fmt = fmt
        self.channels = int(audio.get("channel", 1))
        self.result_type = result_type
        self.show_utterances = request.get("show_utterances") is True
        self.recognizer = ToneChannel(RATE, 0, self.log.index, ResultOptions(),
                                      self.cfg.silence_rms, self.cfg.word_gap,
                                      self.cfg.utterance_gap)
        await self._answer(last=False)

    async def _packet(self, frame: ClientFrame) -> None:
        """Check, record and recognise one audio-only request; answer per mode."""
        log = self.log
        if log.ended:
            await self.fail(INVALID, "audio after the last packet")
        last = bool(frame.flags & 0b0010)
        log.packet_sizes.append(len(frame.payload))
        fault = log.fault
        if fault is not None and fault.kind != "http" and log.packets >= fault.after_packets:
            if fault.kind == "abort":
                log.error = (0, "TCP connection dropped without a close frame")
                self.ws.transport.abort()
                raise _Closed
            await self.fail(fault.code, fault.message)
        if self.fmt == "wav" and not log.audio and frame.payload and \
                not (frame.payload[:4] == b"RIFF" and frame.payload[8:12] == b"WAVE"):
            await self.fail(BAD_FORMAT, "invalid wav header")
        if self.fmt == "pcm" and len(frame.payload) % 2:
            await self.fail(BAD_FORMAT, "pcm payload with an odd number of bytes")
        log.audio += frame.payload
        if self.cfg.max_stream_seconds is not None \
                and len(log.audio) / (2 * self.channels * RATE) > self.cfg.max_stream_seconds:
            await self.fail(STREAM_TOO_LONG, "stream exceeded its maximum duration")
        changed = self._recognise(frame.payload) if self.fmt == "pcm" else False
        if last:
            log.ended = True
            if not log.audio:
                await self.fail(EMPTY_AUDIO, "empty audio")
            await self._final()
        seconds = len(frame.payload) / (2 * self.channels * RATE)
        if log.mode == "bigmodel":
            await self._answer(last=False)
        elif log.mode == "bigmodel_async":
            if changed:
                await self._answer(last=False)
        else:
            self.since_answer += seconds
            if self.since_answer >= self.cfg.nostream_every:
                self.since_answer = 0.0
                await self._answer(last=False)

    def _recognise(self, pcm: bytes) -> bool:
        """Feed PCM to the tone code; True when an utterance opened, grew or closed."""
        assert self.recognizer is not None
        data = self.carry + pcm
        frame_bytes = 2 * self.channels
        whole = len(data) // frame_bytes * frame_bytes
        self.carry = data[whole:]
        x = np.frombuffer(data[:whole], "<i2").reshape(-1, self.channels)
        mono = x[:, 0] if self.channels == 1 else x.mean(axis=1).round().astype(np.int16)
        results = self.recognizer.feed(mono)
        self._apply(results)
        return bool(results)

    def _apply(self, results: list[dict[str, Any]]) -> None:
        """Fold tone-code results into the closed and open utterances."""
        for r in results:
            if r["IsPartial"]:
                self.open_utt = utterance_of(r, definite=False)
            else:
                self.closed_utts.append(utterance_of(r, definite=True))
                self.open_utt = None

    async def _final(self) -> None:
        """Flush, send the last answer and close."""
        assert self.recognizer is not None
        self._apply(self.recognizer.flush())
        await self._answer(last=True)
        with contextlib.suppress(ConnectionClosed):
            await self.ws.close(1000)
        raise _Closed

    async def _answer(self, last: bool) -> None:
        """One full server response with the current result."""
        utts = list(self.closed_utts if self.result_type == "full"
                    else self.closed_utts[self.reported:])
        if self.open_utt is not None:
            utts.append(self.open_utt)
        self.reported = len(self.closed_utts)
        result: dict[str, Any] = {"text": " ".join(u["text"] for u in utts)}
        if self.show_utterances:
            result["utterances"] = utts
        body = {"audio_info": {"duration": _ms(len(self.log.audio) / (2 * self.channels * RATE))},
                "result": result}
        self.server_sequence += 1
        seq = -self.server_sequence if last else self.server_sequence
        self.log.responses.append(body)
        self.log.response_sequences.append(seq)
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(server_frame(0b1001, 0b0011 if last else 0b0001,
                                            json.dumps(body, ensure_ascii=False).encode(),
                                            sequence=seq, gzip_payload=self.log.compression == 1))
