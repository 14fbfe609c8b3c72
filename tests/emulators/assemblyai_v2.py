"""A strict local emulator of AssemblyAI's legacy real-time API (v2), for tests.

A real WebSocket server on a free loopback port (``/v2/realtime/ws``) and a small HTTP server
for ``POST /v2/realtime/token``, answering what ``docs/protocols/assemblyai.md``, "v2 emulator checklist", says
the service answers (numbers: its v2 emulator checklist). v2 reports problems with a close
code only (no error frame), except ``{"error": "Client sent audio too fast"}`` before 4029:

  * #2 auth first: ``Authorization: <key>`` (raw) or ``?token=`` of an unused token minted
    here → else 4001 ``Not Authorized``;
  * #1 ``sample_rate`` missing, not an integer or ≤ 0 → 4000; #3 ``word_boost`` not a JSON list
    of strings (or longer than 2500 characters) → 4104; an unknown ``encoding`` → 4101 [U];
  * #10 more than ``max_concurrent`` open sessions → 4102;
  * #4 audio messages (binary, or base64 in ``{"audio_data"}``) under 100 ms → 4032, over
    2000 ms → 4033; odd byte counts are buffered;
  * #5 audio more than ``too_fast_seconds`` ahead of real time → error frame + 4029;
  * #6 no audio for ``idle_timeout`` (60 s) → 4031; #11 past ``max_session_seconds`` → 4008;
  * #7-#9 a text frame that is not JSON → 4100; JSON that is not exactly one of
    ``audio_data`` (valid base64), ``terminate_session: true``, ``force_end_utterance: true``,
    ``end_utterance_silence_threshold`` (integer 0-20000) → 4101;
  * #12 ``terminate_session`` → the open utterance's final, ``SessionInformation`` (with
    ``enable_extra_session_information``), ``SessionTerminated``, close 1000.

Recognition (``tests.emulators.tone_words``): tones are words; an utterance ends after
``end_utterance_silence_threshold`` ms of quiet (default 700) or on ``force_end_utterance``.
While it grows, every audio message that changed it gets a ``PartialTranscript`` (lower case,
``tone500 tone1200``; none with ``disable_partial_transcripts``); its end a ``FinalTranscript``
(``Tone500 tone1200.``, ``punctuated`` and ``text_formatted`` true). Times are integer ms.

Fault knobs: ``emulator.faults`` is a queue of :class:`Fault`, one per new connection.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, NoReturn
from urllib.parse import parse_qsl, urlsplit

import numpy as np
from pydantic import SecretStr
from websockets.asyncio.server import Server, ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tests.emulators.common import LOOPBACK, serve_loopback
from tests.emulators.tone_words import ToneSegmenter, ToneWord
from voxq.aio import within
from voxq.settings import Settings

API_KEY = "aai-v2-emulator-key-fedcba9876543210"
PATH = "/v2/realtime/ws"
TOKEN_PATH = "/v2/realtime/token"
REASONS = {
    4000: "Sample rate must be a positive integer", 4001: "Not Authorized",
    4008: "Session Expired", 4029: "Client sent audio too fast",
    4031: "Session idle for too long", 4032: "Audio duration is too short",
    4033: "Audio duration is too long", 4100: "Endpoint received invalid JSON",
    4101: "Endpoint received a message with an invalid schema",
    4102: "This account has exceeded the number of allowed streams",
    4104: "Could not parse word boost parameter",
}
_CONTROL = ("audio_data", "terminate_session", "force_end_utterance",
            "end_utterance_silence_threshold")


@dataclass
class V2Config:
    """Limits and behaviour; tests change fields before (or between) connections."""

    keys: set[str] = field(default_factory=lambda: {API_KEY})
    idle_timeout: float = 60.0
    too_fast_seconds: float = 5.0  # [U] how far ahead of real time audio may get
    max_session_seconds: float = 3600.0  # [U] the value behind expires_at
    max_concurrent: int = 100
    default_silence_ms: int = 700
    silence_rms: float = 500.0
    word_gap: float = 0.05


@dataclass
class Fault:
    """A misbehaviour for one connection: ``http`` refuses the upgrade with ``status``;
    ``close`` closes with ``code`` (an ``{"error"}`` frame first when ``message``) after
    ``after_chunks`` audio messages; ``abort`` drops the TCP connection after ``after_chunks``."""

    kind: Literal["http", "close", "abort"]
    after_chunks: int = 0
    code: int = 4029
    message: str | None = None
    status: int = 503


@dataclass(eq=False)
class V2Session:
    """What happened on one connection."""

    index: int
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    auth: str | None = None
    fault: Fault | None = None
    http_status: int | None = None
    audio: bytearray = field(default_factory=bytearray)
    chunk_ms: list[float] = field(default_factory=list)
    json_audio: int = 0  # audio messages sent as base64 JSON
    binary_audio: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)  # control messages
    sent: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    terminated: bool = False
    ws: ServerConnection | None = None

    @property
    def finals(self) -> list[dict[str, Any]]:
        """FinalTranscripts sent."""
        return [m for m in self.sent if m.get("message_type") == "FinalTranscript"]


class _Closed(Exception):
    """The connection is over."""


class TokenServer:
    """``POST /v2/realtime/token`` over plain HTTP/1.1 (the WebSocket server only takes GET)."""

    def __init__(self, emulator: AssemblyAIV2Emulator):
        self.emulator = emulator
        self.port = 0
        self.requests: list[dict[str, Any]] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen on a free loopback port."""
        self._server = await asyncio.start_server(self._serve, LOOPBACK, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await within(reader.readuntil(b"\r\n\r\n"), 5)
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip()
                       for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
            status, doc = self._answer(method, urlsplit(target).path, headers, body)
            payload = json.dumps(doc).encode()
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                         + payload)
            await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ValueError, ConnectionError):
            pass
        finally:
            writer.close()

    def _answer(self, method: str, path: str, headers: dict[str, str],
                body: bytes) -> tuple[int, dict[str, Any]]:
        self.requests.append({"method": method, "path": path, "body": body.decode(errors="replace")})
        if path != TOKEN_PATH:
            return 404, {"error": "Not found"}
        if method != "POST":
            return 405, {"error": "Method not allowed"}
        if headers.get("authorization") not in self.emulator.config.keys:
            return 401, {"error": "Authentication error, API token missing/invalid"}
        try:
            expires = json.loads(body)["expires_in"]
        except (ValueError, KeyError, TypeError):
            expires = None
        if isinstance(expires, bool) or not isinstance(expires, int) or not 60 <= expires <= 360_000:
            return 400, {"error": "expires_in must be an integer between 60 and 360000"}
        return 200, {"token": self.emulator.mint()}


class AssemblyAIV2Emulator:
    """The emulator servers; ``async with`` starts them on free loopback ports."""

    def __init__(self, config: V2Config | None = None):
        self.config = config or V2Config()
        self.faults: deque[Fault] = deque()
        self.sessions: list[V2Session] = []
        self.tokens: dict[str, bool] = {}  # token → used
        self.token_server = TokenServer(self)
        self.port = 0
        self._active = 0
        self._pending: dict[ServerConnection, V2Session] = {}
        self._server: Server | None = None
        self._stack: contextlib.AsyncExitStack | None = None

    @property
    def url(self) -> str:
        """The WebSocket URL (VOXQ_ASSEMBLYAI_V2_URL)."""
        return f"ws://{LOOPBACK}:{self.port}{PATH}"

    @property
    def token_url(self) -> str:
        """The token URL (VOXQ_ASSEMBLYAI_V2_TOKEN_URL)."""
        return f"http://{LOOPBACK}:{self.token_server.port}{TOKEN_PATH}"

    def configure(self, settings: Settings, **changes: Any) -> Settings:
        """``settings`` pointed at this emulator with its (fake) key."""
        update: dict[str, Any] = {"assemblyai_api_key": SecretStr(API_KEY),
                                  "assemblyai_token": None, "assemblyai_temporary_tokens": False,
                                  "assemblyai_v2_url": self.url,
                                  "assemblyai_v2_token_url": self.token_url}
        update.update(changes)
        return settings.model_copy(update=update)

    def mint(self) -> str:
        """A fresh single-use token."""
        token = f"v2tmp-{uuid.uuid4().hex}"
        self.tokens[token] = False
        return token

    async def __aenter__(self) -> AssemblyAIV2Emulator:
        self._stack = contextlib.AsyncExitStack()
        self._server, self.port = await self._stack.enter_async_context(serve_loopback(
            self._handler, self._process_request, max_size=1 << 20, max_queue=None,
            close_timeout=2))
        await self.token_server.start()
        self._stack.push_async_callback(self.token_server.stop)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._stack is not None
        for s in self.sessions:
            if s.ws is not None and s.close_code is None:
                s.ws.transport.abort()
        await self._stack.aclose()

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        session = V2Session(index=len(self.sessions))
        self.sessions.append(session)
        session.fault = self.faults.popleft() if self.faults else None
        status = 404 if parts.path != PATH else (
            session.fault.status if session.fault is not None and session.fault.kind == "http"
            else None)
        if status is not None:
            session.http_status = status
            response = connection.respond(status, json.dumps({"error": "refused"}))
            response.headers = Headers([(k, v) for k, v in response.headers.raw_items()
                                        if k.lower() != "content-type"]
                                       + [("Content-Type", "application/json")])
            return response
        session.params = dict(parse_qsl(parts.query, keep_blank_values=True))
        session.headers = {k.lower(): v for k, v in request.headers.raw_items()}
        self._pending[connection] = session
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        session = self._pending.pop(ws)
        session.ws = ws
        self._active += 1
        try:
            await self._serve(ws, session)
        except (_Closed, ConnectionClosed):
            pass
        finally:
            self._active -= 1

    async def _send(self, ws: ServerConnection, s: V2Session, doc: dict[str, Any]) -> None:
        s.sent.append(doc)
        try:
            await ws.send(json.dumps(doc))
        except ConnectionClosed:
            raise _Closed from None

    async def _close(self, ws: ServerConnection, s: V2Session, code: int,
                     error: str | None = None) -> NoReturn:
        if error is not None:
            with contextlib.suppress(_Closed):
                await self._send(ws, s, {"error": error})
        s.close_code = code
        with contextlib.suppress(ConnectionClosed):
            await ws.close(code, REASONS.get(code, ""))
        raise _Closed

    def _authorized(self, s: V2Session) -> bool:
        if s.headers.get("authorization") in self.config.keys:
            s.auth = "key"
            return True
        token = s.params.get("token", "")
        if token in self.tokens and not self.tokens[token]:
            self.tokens[token] = True
            s.auth = "token"
            return True
        return False

    async def _serve(self, ws: ServerConnection, s: V2Session) -> None:
        cfg = self.config
        p = s.params
        if not self._authorized(s):
            await self._close(ws, s, 4001)
        rate_text = p.get("sample_rate", "")
        if not rate_text.isdigit() or int(rate_text) <= 0:
            await self._close(ws, s, 4000)
        if "word_boost" in p:
            try:
                boost = json.loads(p["word_boost"])
            except ValueError:
                boost = None
            if (not isinstance(boost, list) or not all(isinstance(b, str) for b in boost)
                    or len(p["word_boost"]) > 2500):
                await self._close(ws, s, 4104)
        if p.get("encoding", "pcm_s16le") not in ("pcm_s16le", "pcm_mulaw"):
            await self._close(ws, s, 4101)
        if self._active > cfg.max_concurrent:
            await self._close(ws, s, 4102)
        rate = int(rate_text)
        bps = 1 if p.get("encoding") == "pcm_mulaw" else 2
        partials = p.get("disable_partial_transcripts", "false").lower() != "true"
        info = p.get("enable_extra_session_information", "false").lower() == "true"
        opened = time.monotonic()
        expires = datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=cfg.max_session_seconds)
        await self._send(ws, s, {"message_type": "SessionBegins", "session_id": str(uuid.uuid4()),
                                 "expires_at": expires.isoformat()})
        seg = ToneSegmenter(rate, cfg.default_silence_ms / 1000, cfg.silence_rms, cfg.word_gap)
        state = {"window": 0.0, "carry": b""}
        last_audio = opened
        first_audio: float | None = None
        chunks = 0
        await self._apply_fault(ws, s, chunks)
        while True:
            deadline = min(last_audio + cfg.idle_timeout, opened + cfg.max_session_seconds)
            try:
                frame = await within(ws.recv(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                await self._close(ws, s, 4008 if time.monotonic() >= opened + cfg.max_session_seconds
                                  else 4031)
            except ConnectionClosed:
                raise _Closed from None
            audio: bytes | None = None
            if isinstance(frame, bytes):
                audio = frame
                s.binary_audio += 1
            else:
                msg = await self._control(ws, s, frame)
                if "audio_data" in msg:
                    audio = base64.b64decode(msg["audio_data"])
                    s.json_audio += 1
                elif "terminate_session" in msg:
                    await self._final(ws, s, seg, state, seg.take())
                    if info:
                        await self._send(ws, s, {"message_type": "SessionInformation",
                                                 "audio_duration_seconds": len(s.audio) / (rate * bps)})
                    await self._send(ws, s, {"message_type": "SessionTerminated"})
                    s.terminated = True
                    s.close_code = 1000
                    with contextlib.suppress(ConnectionClosed):
                        await ws.close(1000)
                    raise _Closed
                elif "force_end_utterance" in msg:
                    await self._final(ws, s, seg, state, seg.take())
                else:
                    seg.utterance_gap = msg["end_utterance_silence_threshold"] / 1000
            if audio is None:
                continue
            now = time.monotonic()
            ms = round(len(audio) / (rate * bps) * 1000, 1)
            if ms < 100:
                await self._close(ws, s, 4032)
            if ms > 2000:
                await self._close(ws, s, 4033)
            first_audio = first_audio if first_audio is not None else now
            last_audio = now
            s.audio += audio
            s.chunk_ms.append(ms)
            chunks += 1
            if len(s.audio) / (rate * bps) - (now - first_audio) > cfg.too_fast_seconds:
                await self._close(ws, s, 4029, REASONS[4029])
            if bps == 2:
                data = state["carry"] + audio  # type: ignore[operator]
                whole = len(data) // 2 * 2
                state["carry"] = data[whole:]
                closed, changed = seg.feed(np.frombuffer(data[:whole], "<i2"))
                for words in closed:
                    await self._final(ws, s, seg, state, words)
                if changed and partials:
                    await self._send(ws, s, self._utterance(seg.words, state, seg.seconds, False))
            await self._apply_fault(ws, s, chunks)

    async def _control(self, ws: ServerConnection, s: V2Session, frame: str) -> dict[str, Any]:
        """A text frame checked against the four client schemas (#7-#9)."""
        try:
            msg = json.loads(frame)
        except ValueError:
            await self._close(ws, s, 4100)
        if not isinstance(msg, dict) or len(msg) != 1 or next(iter(msg)) not in _CONTROL:
            await self._close(ws, s, 4101)
        key, value = next(iter(msg.items()))
        if key == "audio_data":
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, TypeError, ValueError):
                await self._close(ws, s, 4101)
        elif key in ("terminate_session", "force_end_utterance"):
            if value is not True:
                await self._close(ws, s, 4101)
        elif isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 20_000:
            await self._close(ws, s, 4101)
        if key != "audio_data":
            s.received.append(msg)
        return msg

    async def _apply_fault(self, ws: ServerConnection, s: V2Session, chunks: int) -> None:
        fault = s.fault
        if fault is None or fault.kind == "http" or chunks != fault.after_chunks:
            return
        if fault.kind == "abort":
            s.close_code = 1006
            ws.transport.abort()
            raise _Closed
        await self._close(ws, s, fault.code, fault.message)

    @staticmethod
    def _utterance(words: list[ToneWord], state: dict[str, Any], now: float,
                   final: bool) -> dict[str, Any]:
        names = [w.text for w in words]
        text = " ".join(names)
        if final:
            text = text[:1].upper() + text[1:] + "."
        doc: dict[str, Any] = {
            "message_type": "FinalTranscript" if final else "PartialTranscript",
            "created": datetime.now(UTC).replace(tzinfo=None).isoformat(),
            "audio_start": round(state["window"] * 1000), "audio_end": round(now * 1000),
            "confidence": round(sum(w.confidence for w in words) / len(words), 4),
            "text": text,
            "words": [{"start": round(w.start_s * 1000), "end": round(w.end_s * 1000),
                       "confidence": w.confidence, "text": w.text} for w in words],
        }
        if final:
            doc.update(punctuated=True, text_formatted=True)
        return doc

    async def _final(self, ws: ServerConnection, s: V2Session, seg: ToneSegmenter,
                     state: dict[str, Any], words: list[ToneWord]) -> None:
        if not words:
            return
        await self._send(ws, s, self._utterance(words, state, seg.seconds, True))
        state["window"] = seg.seconds
