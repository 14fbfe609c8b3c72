"""A strict local emulator of AssemblyAI Universal Streaming (v3), for tests.

A real WebSocket server on a free loopback port (``/v3/ws``) plus the temporary-token endpoint
(``GET /v3/token``) on the same port, answering what ``docs/protocols/assemblyai.md``, "v3 emulator checklist",
says the service answers (the numbers are its emulator checklist):

  * auth (#1, #2): ``Authorization: <key>`` (raw, no scheme) or ``?token=`` of a token this
    emulator minted, unexpired and unused; otherwise an ``Error`` frame and close 1008
    ``Unauthorized Connection: …`` (``auth_failure="http"`` refuses the upgrade with 401 instead,
    the other path the notes leave open). A token's ``max_session_duration_seconds`` is enforced
    (3008);
  * parameters (#3): ``sample_rate`` a positive integer, ``encoding`` and ``speech_model`` known
    (the model is required: the current reference marks it so), booleans ``true``/``false`` (any
    case, as the SDK's ``True`` works), numbers in range, ``keyterms_prompt`` a JSON list of
    strings; violations → 3006 ``Invalid …``; unknown names are ignored (and recorded);
  * text frames (#4-#6): not JSON → 3006 ``Invalid JSON: …``; JSON but not an object →
    ``Invalid Message: …``; unknown or missing ``type`` → ``Invalid Message Type: …``;
    ``UpdateConfiguration`` with an unknown field or a bad value → ``Invalid Message: …``;
  * audio (#7, #8, #12): binary frames of 50-1000 ms (the minimum applies to every chunk,
    the last one too, unless ``min_applies_to_last`` is off) → else 3007 ``Input duration
    violation``; faster than ``realtime_factor`` × real time beyond ``burst_seconds`` → 3007
    ``Audio Transmission Rate Exceeded``; odd byte counts are buffered;
  * limits (#9-#11): session older than ``max_session_seconds`` → 3008; more than
    ``max_sessions_per_minute`` new sessions → 3009; with ``inactivity_timeout`` set, no audio
    or KeepAlive for that long ends the session (``Termination`` + 1000 by default, the close
    the notes leave open; or ``inactivity_error``);
  * ``Terminate`` (#13): the open turn's last Turns, ``Termination``, close 1000;
  * every error is an ``Error`` frame then a close with the same code; a reason over 123 bytes
    becomes ``See Error message for details`` (#15). ``legacy_codes`` switches to the pre-2026
    numbering (3005 for 3006-3008, 1008 for 3009).

Recognition (``tests.emulators.tone_words``): tones are words; a turn ends after
``min_turn_silence`` ms of quiet (default 400) or on ForceEndpoint / Terminate. While a turn
grows, every audio message that changed it gets a Turn (``end_of_turn: false``; the last word
``word_is_final: false`` while it may still grow and left out of ``transcript``); the end of
turn is a Turn with ``end_of_turn: true`` and the raw text (``tone500 tone1200``), followed,
with ``format_turns=true``, by a formatted copy (``Tone500 tone1200.``) — or, with
``format_mode="every"`` (the 2026 doc), every Turn is formatted and there is no copy
(``"never"``: nothing is formatted, whatever is asked). Word times are integer ms. With
``speaker_labels`` turns carry ``speaker_label`` (``A`` below 1000 Hz, ``B`` above, by the first
word) and final words ``speaker``.

Fault knobs: ``emulator.faults`` is a queue of :class:`Fault`, one per new connection.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
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

API_KEY = "aai-emulator-key-0123456789abcdef"
PATH = "/v3/ws"
TOKEN_PATH = "/v3/token"
MODELS = frozenset({"universal-streaming-english", "universal-streaming-multilingual", "u3-rt-pro",
                    "whisper-rt", "universal-3-5-pro", "u3-rt-pro-beta-1"})
ENCODINGS = {"pcm_s16le": 2, "pcm_mulaw": 1}
MISSING_AUTH = "Unauthorized Connection: Missing Authorization header"
SESSION_EXPIRED = "Session Expired: Maximum session duration exceeded"
TOO_MANY = "Unauthorized Connection: Too many concurrent sessions"
CANCELLED = "Session Cancelled: An error occurred"
SEE_ERROR = "See Error message for details"
_BOOLS = ("format_turns", "language_detection", "speaker_labels", "filter_profanity")
_RANGES: dict[str, tuple[type, float, float]] = {
    "end_of_turn_confidence_threshold": (float, 0.0, 1.0), "vad_threshold": (float, 0.0, 1.0),
    "min_turn_silence": (int, 0, 60_000), "max_turn_silence": (int, 0, 60_000),
    "min_end_of_turn_silence_when_confident": (int, 0, 60_000),
    "inactivity_timeout": (int, 5, 3600), "max_speakers": (int, 1, 10),
}
_UPDATABLE = {"end_of_turn_confidence_threshold", "min_turn_silence", "max_turn_silence",
              "vad_threshold", "format_turns", "keyterms_prompt", "prompt", "filter_profanity"}
KNOWN_PARAMS = frozenset({"sample_rate", "encoding", "speech_model", "token", "keyterms_prompt",
                          "prompt", "language", *_BOOLS, *_RANGES})


def duration_violation(ms: float) -> str:
    """The 3007 text for a chunk of ``ms`` milliseconds."""
    return f"Input duration violation: {ms:g} ms. Expected between 50 and 1000 ms"


def rate_exceeded(audio: float, elapsed: float) -> str:
    """The 3007 text for audio sent faster than real time."""
    return f"Audio Transmission Rate Exceeded: Received {audio:.1f} sec. audio in {elapsed:.1f} sec"


@dataclass
class V3Config:
    """Limits and behaviour; tests change fields before (or between) connections."""

    keys: set[str] = field(default_factory=lambda: {API_KEY})
    auth_failure: Literal["frame", "http"] = "frame"
    legacy_codes: bool = False
    format_mode: Literal["separate", "every", "never"] = "separate"
    require_speech_model: bool = True
    min_applies_to_last: bool = True
    realtime_factor: float | None = 1.0
    burst_seconds: float = 2.0
    max_session_seconds: float = 10_800.0
    max_sessions_per_minute: int | None = None
    inactivity_error: tuple[int, str] | None = None  # None: Termination + 1000
    inactivity_seconds: float | None = None  # replaces inactivity_timeout's value (tests)
    default_min_turn_silence: int = 400
    silence_rms: float = 500.0
    word_gap: float = 0.05


@dataclass
class Fault:
    """A misbehaviour for one connection: ``http`` refuses the upgrade with ``status``;
    ``error`` sends an Error frame and closes with ``code`` after ``after_chunks`` audio messages;
    ``abort`` drops the TCP connection (no close frame) after ``after_chunks``; ``terminate``
    ends the session (Termination + 1000) after ``after_chunks``."""

    kind: Literal["http", "error", "abort", "terminate"]
    after_chunks: int = 0
    code: int = 3005
    message: str = CANCELLED
    status: int = 503


@dataclass
class Token:
    """A minted temporary token."""

    expires: float
    max_session: float
    used: bool = False


@dataclass(eq=False)
class V3Session:
    """What happened on one connection."""

    index: int
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    auth: str | None = None  # "key" or "token"
    ignored_params: list[str] = field(default_factory=list)
    fault: Fault | None = None
    http_status: int | None = None
    audio: bytearray = field(default_factory=bytearray)
    chunk_ms: list[float] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)  # control messages
    sent: list[dict[str, Any]] = field(default_factory=list)
    error: tuple[int, str] | None = None
    close_code: int | None = None
    terminated: bool = False
    ws: ServerConnection | None = None

    @property
    def turns(self) -> list[dict[str, Any]]:
        """Turn messages sent."""
        return [m for m in self.sent if m.get("type") == "Turn"]

    @property
    def keepalives(self) -> int:
        """KeepAlive messages received."""
        return sum(1 for m in self.received if m.get("type") == "KeepAlive")


class _Closed(Exception):
    """The connection is over."""


class _Conn:
    """Per-connection recognition state."""

    def __init__(self, rate: int, bps: int, min_turn_silence: int, format_turns: bool,
                 speakers: bool, cfg: V3Config):
        self.rate = rate
        self.bps = bps
        self.seg = ToneSegmenter(rate, min_turn_silence / 1000, cfg.silence_rms, cfg.word_gap)
        self.format_turns = format_turns
        self.speakers = speakers
        self.turn_order = 0
        self.carry = b""


def _formatted(names: list[str], end: bool) -> str:
    text = " ".join(names)
    text = text[:1].upper() + text[1:]
    return text + "." if end and text else text


class AssemblyAIV3Emulator:
    """The emulator server; ``async with`` starts it on a free loopback port."""

    def __init__(self, config: V3Config | None = None):
        self.config = config or V3Config()
        self.faults: deque[Fault] = deque()
        self.sessions: list[V3Session] = []
        self.tokens: dict[str, Token] = {}
        self.token_requests: list[dict[str, str]] = []
        self.port = 0
        self._opened: deque[float] = deque()
        self._pending: dict[ServerConnection, V3Session] = {}
        self._server: Server | None = None
        self._stack: contextlib.AsyncExitStack | None = None

    @property
    def url(self) -> str:
        """The WebSocket URL (VOXQ_ASSEMBLYAI_URL)."""
        return f"ws://{LOOPBACK}:{self.port}{PATH}"

    @property
    def token_url(self) -> str:
        """The temporary-token URL (VOXQ_ASSEMBLYAI_TOKEN_URL)."""
        return f"http://{LOOPBACK}:{self.port}{TOKEN_PATH}"

    def configure(self, settings: Settings, **changes: Any) -> Settings:
        """``settings`` pointed at this emulator with its (fake) key."""
        update: dict[str, Any] = {"assemblyai_api_key": SecretStr(API_KEY),
                                  "assemblyai_token": None, "assemblyai_temporary_tokens": False,
                                  "assemblyai_url": self.url, "assemblyai_token_url": self.token_url}
        update.update(changes)
        return settings.model_copy(update=update)

    def mint(self, expires_in: float = 60.0, max_session: float = 10_800.0) -> str:
        """A token as the token endpoint would mint it (for tests that hand one over)."""
        token = f"tmp-{uuid.uuid4().hex}"
        self.tokens[token] = Token(time.monotonic() + expires_in, max_session)
        return token

    async def __aenter__(self) -> AssemblyAIV3Emulator:
        self._stack = contextlib.AsyncExitStack()
        self._server, self.port = await self._stack.enter_async_context(serve_loopback(
            self._handler, self._process_request, max_size=1 << 20, max_queue=None,
            close_timeout=2))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._stack is not None
        for s in self.sessions:
            if s.ws is not None and s.close_code is None:
                s.ws.transport.abort()
        await self._stack.aclose()

    # --- HTTP: token endpoint and handshake ------------------------------------------------------

    @staticmethod
    def _json(connection: ServerConnection, status: int, doc: dict[str, Any]) -> Response:
        response = connection.respond(status, json.dumps(doc))
        headers = Headers([(k, v) for k, v in response.headers.raw_items()
                           if k.lower() != "content-type"])
        headers["Content-Type"] = "application/json"
        response.headers = headers
        return response

    def _token_endpoint(self, connection: ServerConnection, request: Request) -> Response:
        """``GET /v3/token?expires_in_seconds=1..600[&max_session_duration_seconds=60..10800]``."""
        query = dict(parse_qsl(urlsplit(request.path).query, keep_blank_values=True))
        self.token_requests.append(query)
        if request.headers.get("Authorization") not in self.config.keys:
            return self._json(connection, 401, {"error": "Invalid API key"})
        try:
            expires = int(query["expires_in_seconds"])
            max_session = int(query.get("max_session_duration_seconds", "10800"))
        except (KeyError, ValueError):
            return self._json(connection, 400, {"error": "expires_in_seconds must be an integer"})
        if not 1 <= expires <= 600 or not 60 <= max_session <= 10_800:
            return self._json(connection, 400, {"error": "expires_in_seconds must be 1-600 and "
                                                         "max_session_duration_seconds 60-10800"})
        return self._json(connection, 200, {"token": self.mint(expires, max_session),
                                            "expires_in_seconds": expires})

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        if parts.path == TOKEN_PATH:
            return self._token_endpoint(connection, request)
        session = V3Session(index=len(self.sessions))
        self.sessions.append(session)
        session.fault = self.faults.popleft() if self.faults else None
        if parts.path != PATH:
            session.http_status = 404
            return self._json(connection, 404, {"error": "Not Found"})
        if session.fault is not None and session.fault.kind == "http":
            session.http_status = session.fault.status
            return self._json(connection, session.fault.status, {"error": session.fault.message})
        session.params = dict(parse_qsl(parts.query, keep_blank_values=True))
        session.headers = {k.lower(): v for k, v in request.headers.raw_items()}
        if self.config.auth_failure == "http" and self._auth(session)[0] is not None:
            session.http_status = 401
            return self._json(connection, 401, {"error": "Invalid API key"})
        self._pending[connection] = session
        return None

    def _auth(self, session: V3Session) -> tuple[str | None, float]:
        """(failure text or None, the session's maximum duration)."""
        header = session.headers.get("authorization")
        if header is not None and header in self.config.keys:
            session.auth = "key"
            return None, self.config.max_session_seconds
        token_text = session.params.get("token") or header
        token = self.tokens.get(token_text or "")
        if token is None:
            return MISSING_AUTH, 0.0
        if token.used:
            return "Unauthorized Connection: Token already used", 0.0
        if time.monotonic() > token.expires:
            return "Unauthorized Connection: Token expired", 0.0
        token.used = True
        session.auth = "token"
        return None, min(token.max_session, self.config.max_session_seconds)

    # --- after the upgrade -----------------------------------------------------------------------

    def _code(self, code: int) -> int:
        if self.config.legacy_codes:
            return {3006: 3005, 3007: 3005, 3008: 3005, 3009: 1008}.get(code, code)
        return code

    async def _send(self, ws: ServerConnection, s: V3Session, doc: dict[str, Any]) -> None:
        s.sent.append(doc)
        try:
            await ws.send(json.dumps(doc))
        except ConnectionClosed:
            raise _Closed from None

    async def _fail(self, ws: ServerConnection, s: V3Session, code: int, text: str) -> NoReturn:
        """An Error frame, then a close with the same code (§A6)."""
        code = self._code(code)
        s.error = (code, text)
        reason = text if len(text.encode()) <= 123 else SEE_ERROR
        with contextlib.suppress(ConnectionClosed):
            await ws.send(json.dumps({"type": "Error", "error_code": code, "error": text}))
            await ws.close(code, reason)
        s.close_code = code
        raise _Closed

    async def _end(self, ws: ServerConnection, s: V3Session, c: _Conn | None,
                   audio_seconds: float, opened: float) -> NoReturn:
        """Last turns, Termination, close 1000."""
        if c is not None:
            await self._close_turn(ws, s, c, c.seg.take())
        await self._send(ws, s, {"type": "Termination", "audio_duration_seconds": round(audio_seconds),
                                 "session_duration_seconds": round(time.monotonic() - opened)})
        s.terminated = True
        s.close_code = 1000
        with contextlib.suppress(ConnectionClosed):
            await ws.close(1000)
        raise _Closed

    async def _handler(self, ws: ServerConnection) -> None:
        session = self._pending.pop(ws)
        session.ws = ws
        try:
            await self._serve(ws, session)
        except _Closed:
            pass
        except ConnectionClosed:
            pass

    def _check_params(self, p: dict[str, str]) -> str | None:
        """The first invalid parameter (§A2), as the service's ``Invalid …`` text."""
        encoding = p.get("encoding", "pcm_s16le")
        if encoding not in ENCODINGS:
            return f"Invalid encoding: {encoding}"
        rate = p.get("sample_rate")
        if rate is None or not rate.isdigit() or int(rate) <= 0:
            return f"Invalid sample_rate: {rate}"
        model = p.get("speech_model")
        if (model is None and self.config.require_speech_model) or (
                model is not None and model not in MODELS):
            return f"Invalid speech_model: {model}"
        for name in _BOOLS:
            if name in p and p[name].lower() not in ("true", "false"):
                return f"Invalid {name}: {p[name]}"
        for name, (kind, lo, hi) in _RANGES.items():
            if name not in p:
                continue
            try:
                value = kind(p[name])
            except ValueError:
                return f"Invalid {name}: {p[name]}"
            if not lo <= value <= hi:
                return f"Invalid {name}: {p[name]} (expected {lo:g}-{hi:g})"
        if "keyterms_prompt" in p:
            try:
                terms = json.loads(p["keyterms_prompt"])
            except ValueError:
                terms = None
            if not isinstance(terms, list) or not all(isinstance(t, str) for t in terms):
                return f"Invalid keyterms_prompt: {p['keyterms_prompt']}"
        return None

    async def _serve(self, ws: ServerConnection, s: V3Session) -> None:
        cfg = self.config
        opened = time.monotonic()
        problem, max_session = self._auth(s)
        if problem is not None:
            await self._fail(ws, s, 1008, problem)
        now = time.monotonic()
        while self._opened and now - self._opened[0] > 60:
            self._opened.popleft()
        self._opened.append(now)
        if cfg.max_sessions_per_minute is not None and len(self._opened) > cfg.max_sessions_per_minute:
            await self._fail(ws, s, 3009, TOO_MANY)
        problem = self._check_params(s.params)
        if problem is not None:
            await self._fail(ws, s, 3006, problem)
        s.ignored_params = [k for k in s.params if k not in KNOWN_PARAMS]
        p = s.params
        rate = int(p["sample_rate"])
        bps = ENCODINGS[p.get("encoding", "pcm_s16le")]
        min_silence = int(p.get("min_turn_silence", p.get("min_end_of_turn_silence_when_confident",
                                                          cfg.default_min_turn_silence)))
        c = _Conn(rate, bps, min_silence, p.get("format_turns", "false").lower() == "true",
                  p.get("speaker_labels", "false").lower() == "true", cfg)
        inactivity = float(p["inactivity_timeout"]) if "inactivity_timeout" in p else None
        if inactivity is not None and cfg.inactivity_seconds is not None:
            inactivity = cfg.inactivity_seconds
        begin: dict[str, Any] = {"type": "Begin", "id": str(uuid.uuid4()),
                                 "expires_at": int(time.time() + max_session)}
        if "speech_model" in p:
            begin["configuration"] = {"model": p["speech_model"], "api_version": "1.0.0"}
        await self._send(ws, s, begin)
        first_audio: float | None = None
        last_activity = time.monotonic()
        pending_short: float | None = None
        chunks = 0
        await self._apply_fault(ws, s, c, chunks, opened)
        while True:
            timeout = None
            if inactivity is not None:
                timeout = max(0.0, last_activity + inactivity - time.monotonic())
            remaining = max(0.0, opened + max_session - time.monotonic())
            try:
                limit = remaining if timeout is None else min(timeout, remaining)
                frame = await within(ws.recv(), limit)
            except TimeoutError:
                if time.monotonic() >= opened + max_session:
                    await self._fail(ws, s, 3008, SESSION_EXPIRED)
                if cfg.inactivity_error is not None:
                    await self._fail(ws, s, *cfg.inactivity_error)
                await self._end(ws, s, c, len(s.audio) / (rate * bps), opened)
            except ConnectionClosed:
                raise _Closed from None
            now = time.monotonic()
            if isinstance(frame, bytes):
                if pending_short is not None:
                    await self._fail(ws, s, 3007, duration_violation(pending_short))
                ms = round(len(frame) / (rate * bps) * 1000, 1)
                if ms > 1000 or (ms < 50 and cfg.min_applies_to_last):
                    await self._fail(ws, s, 3007, duration_violation(ms))
                if ms < 50:
                    pending_short = ms
                first_audio = first_audio if first_audio is not None else now
                s.audio += frame
                s.chunk_ms.append(ms)
                chunks += 1
                audio_s = len(s.audio) / (rate * bps)
                if cfg.realtime_factor is not None and \
                        audio_s > (now - first_audio) * cfg.realtime_factor + cfg.burst_seconds:
                    await self._fail(ws, s, 3007, rate_exceeded(audio_s, now - first_audio))
                last_activity = now
                await self._audio(ws, s, c, frame)
                await self._apply_fault(ws, s, c, chunks, opened)
                continue
            msg = await self._control(ws, s, frame)
            kind = msg["type"]
            if kind == "Terminate":
                await self._end(ws, s, c, len(s.audio) / (rate * bps), opened)
            elif kind == "KeepAlive":
                last_activity = now
            elif kind == "ForceEndpoint":
                await self._close_turn(ws, s, c, c.seg.take())
            elif kind == "UpdateConfiguration":
                if "min_turn_silence" in msg:
                    c.seg.utterance_gap = msg["min_turn_silence"] / 1000
                if "format_turns" in msg:
                    c.format_turns = bool(msg["format_turns"])

    async def _control(self, ws: ServerConnection, s: V3Session, frame: str) -> dict[str, Any]:
        """Parse a text frame as the service does (#4-#6); the message or an error close."""
        try:
            msg = json.loads(frame)
        except ValueError:
            await self._fail(ws, s, 3006, f"Invalid JSON: {frame[:200]}")
        if not isinstance(msg, dict):
            await self._fail(ws, s, 3006, f"Invalid Message: {frame[:200]}")
        kind = msg.get("type")
        if kind not in ("Terminate", "ForceEndpoint", "KeepAlive", "UpdateConfiguration"):
            await self._fail(ws, s, 3006, f"Invalid Message Type: {kind if kind else frame[:200]}")
        if kind == "UpdateConfiguration":
            fields = {k: v for k, v in msg.items() if k != "type"}
            bad = [k for k in fields if k not in _UPDATABLE]
            for name, (typ, lo, hi) in _RANGES.items():
                v = fields.get(name)
                if name in fields and (isinstance(v, bool) or not isinstance(v, int | float)
                                       or (typ is int and not isinstance(v, int))
                                       or not lo <= v <= hi):
                    bad.append(name)
            if "format_turns" in fields and not isinstance(fields["format_turns"], bool):
                bad.append("format_turns")
            if bad:
                await self._fail(ws, s, 3006, f"Invalid Message: {frame[:200]}")
        elif len(msg) != 1:
            await self._fail(ws, s, 3006, f"Invalid Message: {frame[:200]}")
        s.received.append(msg)
        return msg

    async def _apply_fault(self, ws: ServerConnection, s: V3Session, c: _Conn, chunks: int,
                           opened: float) -> None:
        fault = s.fault
        if fault is None or fault.kind == "http" or chunks != fault.after_chunks:
            return
        if fault.kind == "abort":
            s.error = (1006, "TCP connection dropped without a close frame")
            s.close_code = 1006
            ws.transport.abort()
            raise _Closed
        if fault.kind == "terminate":
            await self._end(ws, s, None, len(s.audio) / (c.rate * c.bps), opened)
        await self._fail(ws, s, fault.code, fault.message)

    # --- recognition -----------------------------------------------------------------------------

    async def _audio(self, ws: ServerConnection, s: V3Session, c: _Conn, frame: bytes) -> None:
        if c.bps == 1:  # µ-law: the tone code only reads PCM; treat it as silence
            return
        data = c.carry + frame
        whole = len(data) // 2 * 2
        c.carry = data[whole:]
        closed, changed = c.seg.feed(np.frombuffer(data[:whole], "<i2"))
        for words in closed:
            await self._close_turn(ws, s, c, words)
        if changed:
            await self._send(ws, s, self._turn(c, c.seg.words, end=False,
                                               open_word=c.seg.word_open()))

    def _turn(self, c: _Conn, words: list[ToneWord], end: bool, open_word: bool = False,
              formatted: bool = False) -> dict[str, Any]:
        every = self.config.format_mode == "every" and c.format_turns
        formatted = formatted and self.config.format_mode != "never"
        names = [w.text for w in words]
        final_names = names[:-1] if open_word else names
        out_words = []
        for i, w in enumerate(words):
            final = end or i < len(words) - 1 or not open_word
            d: dict[str, Any] = {"start": round(w.start_s * 1000), "end": round(w.end_s * 1000),
                                 "text": w.text, "confidence": w.confidence,
                                 "word_is_final": final}
            if c.speakers and final:
                d["speaker"] = "AB"[w.speaker]
            out_words.append(d)
        fmt = formatted or every
        turn: dict[str, Any] = {
            "type": "Turn", "turn_order": c.turn_order, "turn_is_formatted": fmt,
            "end_of_turn": end,
            "transcript": _formatted(final_names, end) if fmt else " ".join(final_names),
            "end_of_turn_confidence": 1.0 if end else 0.0, "words": out_words,
            "utterance": _formatted(names, True) if end and not formatted else "",
        }
        if c.speakers and words:
            turn["speaker_label"] = "AB"[words[0].speaker]
        return turn

    async def _close_turn(self, ws: ServerConnection, s: V3Session, c: _Conn,
                          words: list[ToneWord]) -> None:
        if not words:
            return
        await self._send(ws, s, self._turn(c, words, end=True))
        if c.format_turns and self.config.format_mode == "separate":
            await self._send(ws, s, self._turn(c, words, end=True, formatted=True))
        c.turn_order += 1
