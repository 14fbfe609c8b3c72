"""A strict local emulator of Deepgram live streaming (``/v1/listen``), for tests.

A real WebSocket server on a free loopback port that answers what ``docs/protocols/deepgram.md``, "Emulator checklist",
says the service answers (numbers: its emulator checklist):

Before the upgrade (HTTP errors carry ``dg-request-id`` and ``dg-error`` headers and a JSON
``{"err_code", "err_msg", "request_id"}`` body):
  * #1 ``Authorization: Token <key>`` (scheme in any case), ``Bearer <jwt>`` of a known token, or
    the ``token, <key>`` subprotocol (echoed as ``token``) → else 401 ``INVALID_AUTH``;
  * #2/#3 unknown ``model`` / ``encoding`` / ``language`` / ``diarize_model``, non-numeric
    ``sample_rate`` / ``channels`` / ``endpointing`` (ms or ``false``) / ``utterance_end_ms``,
    booleans not lowercase ``true``/``false`` (the SDK: "Deepgram's websocket endpoints expect
    lowercase"), ``encoding`` without ``sample_rate``, ``amr-nb``≠8000 / ``amr-wb``≠16000,
    unknown parameters (``reject_unknown_params``) → 400 ``INVALID_QUERY_PARAMETER``;
  * #5 more than ``max_concurrent`` open streams → 429 ``TOO_MANY_REQUESTS``.

After the upgrade (no message at open; errors are close frames):
  * #6 no binary or text frame for ``net0001_timeout`` (10 s) → ``Metadata`` then close 1011
    with the NET-0001 reason; a ``KeepAlive`` only counts once some audio has been received
    (``keepalive_needs_audio``, the notes' [U] rule taken strictly);
  * #7 without ``encoding`` the audio must be a container (RIFF/Ogg/fLaC/WebM/ID3) → else close
    1008 ``DATA-0000``; #8 a zero-length binary frame ends the stream like CloseStream;
  * #9 a text frame that is not JSON or has an unknown ``type`` → close 1008 DATA-0000
    (``bad_text="close"``) or ignored (``"ignore"``);
  * #11 the emulator records whether audio ever ran ahead of 1.25× real time (+ a burst);
  * ``Configure`` (``docs/protocols/deepgram.md``) changes ``features.numerals`` (a boolean) and,
    on Nova-3 models, replaces ``keyterms`` (a list of strings; ``null`` keeps them) while the
    stream keeps running; each gets exactly one ``ConfigureSuccess`` (with the keyterms in
    effect when they were replaced) or ``ConfigureFailure`` (the stream stays open);
  * #12 ``Finalize`` → finals for the buffered words with ``from_finalize: true``; #13
    ``CloseStream`` → the last finals, ``Metadata``, close 1000; #14 partial frames buffered.

Recognition (``tests.emulators.tone_words``): tones are words. Each channel (with
``multichannel=true``; else the channels are mixed) is segmented on its own; an utterance ends
after ``endpointing`` ms of quiet (Deepgram's default 10 ms; with ``endpointing=false`` after
``no_endpointing_gap`` and without ``speech_final``). With ``interim_results`` every audio
message that changed the open utterance gets an interim ``Results``; the end of an utterance is
a ``Results`` with ``is_final`` and ``speech_final``; its window starts where the previous final
ended. ``punctuate`` / ``smart_format`` capitalise the first word and end the transcript with
``.`` (``punctuated_word``); ``diarize`` gives words ``speaker`` 0 (< 1000 Hz) or 1;
``vad_events`` sends ``SpeechStarted``; ``utterance_end_ms`` (with ``interim_results``) sends
``UtteranceEnd`` after that much quiet following the last word.

Fault knobs: ``emulator.faults`` is a queue of :class:`Fault`, one per new connection.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, NoReturn
from urllib.parse import parse_qsl, urlsplit

import numpy as np
from pydantic import SecretStr
from websockets.asyncio.server import Server, ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tests.emulators.common import LOOPBACK, serve_loopback
from tests.emulators.tone_words import ToneSegmenter, ToneWord, downmix
from voxq.aio import within
from voxq.settings import Settings

API_KEY = "dg-emulator-key-00112233445566778899"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ2b3hxIn0.emulator-signature"
PATH = "/v1/listen"
MODELS = frozenset({
    "nova-3", "nova-3-general", "nova-3-medical", "nova-2", "nova-2-general", "nova-2-meeting",
    "nova-2-finance", "nova-2-conversationalai", "nova-2-voicemail", "nova-2-video",
    "nova-2-medical", "nova-2-drivethru", "nova-2-automotive", "nova", "nova-general",
    "nova-phonecall", "nova-medical", "enhanced", "enhanced-general", "enhanced-meeting",
    "enhanced-phonecall", "enhanced-finance", "base", "meeting", "phonecall", "finance",
    "conversationalai", "voicemail", "video",
})
ENCODINGS = frozenset({"linear16", "linear32", "flac", "alaw", "mulaw", "amr-nb", "amr-wb", "opus",
                       "ogg-opus", "speex", "g729"})
LANGUAGES = frozenset({"en", "en-US", "en-GB", "en-AU", "en-IN", "en-NZ", "es", "es-419", "fr",
                       "fr-CA", "de", "hi", "ja", "pt", "pt-BR", "it", "nl", "ko", "multi"})
BOOLS = frozenset({"multichannel", "interim_results", "punctuate", "smart_format", "vad_events",
                   "diarize", "numerals", "profanity_filter", "filler_words", "dictation",
                   "detect_entities", "mip_opt_out"})
OTHER_PARAMS = frozenset({"model", "encoding", "sample_rate", "channels", "endpointing",
                          "utterance_end_ms", "diarize_model", "language", "keyterm", "keywords",
                          "search", "replace", "redact", "tag", "extra", "callback",
                          "callback_method", "version"})
STREAM_TOO_LONG = "the stream exceeded its maximum duration"
NET0001 = ("Deepgram did not receive audio data or a text message within the timeout window. "
           "See https://dpgr.am/net0001")
NET0000 = ("Deepgram did not provide a response message within the timeout window. "
           "See https://dpgr.am/net0000")
DATA0000 = "DATA-0000: Deepgram could not decode the audio data. See https://dpgr.am/data0000"
_CONTAINERS = (b"RIFF", b"OggS", b"fLaC", b"\x1aE\xdf\xa3", b"ID3")


@dataclass
class DgConfig:
    """Limits and behaviour; tests change fields before (or between) connections."""

    keys: set[str] = field(default_factory=lambda: {API_KEY})
    jwts: set[str] = field(default_factory=lambda: {JWT})
    languages: frozenset[str] = LANGUAGES
    reject_unknown_params: bool = True
    max_concurrent: int = 50
    net0001_timeout: float = 10.0
    keepalive_needs_audio: bool = True
    bad_text: Literal["close", "ignore"] = "close"
    realtime_factor: float = 1.25
    burst_seconds: float = 2.0
    default_endpointing_ms: int = 10
    no_endpointing_gap: float = 1.0
    silence_rms: float = 500.0
    word_gap: float = 0.05
    #: a stream that has received more audio than this is closed 1011 (a session-length limit,
    #: shortened to seconds by the rolling tests; Deepgram documents none)
    max_stream_seconds: float | None = None


@dataclass
class Fault:
    """A misbehaviour for one connection: ``http`` refuses the upgrade with ``status`` /
    ``err_code`` / ``message``; ``close`` closes with ``code`` and ``message`` as the reason after
    ``after_frames`` audio frames; ``abort`` drops the TCP connection after ``after_frames``."""

    kind: Literal["http", "close", "abort"]
    after_frames: int = 0
    code: int = 1011
    message: str = NET0000
    status: int = 503
    err_code: str = "SERVICE_UNAVAILABLE"


@dataclass(eq=False)
class DgStream:
    """What happened on one connection."""

    index: int
    request_id: str
    params: list[tuple[str, str]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    auth: str | None = None  # "token", "bearer" or "subprotocol"
    fault: Fault | None = None
    http_status: int | None = None
    http_error: tuple[str, str] | None = None
    audio: bytearray = field(default_factory=bytearray)
    frame_sizes: list[int] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)  # control messages
    sent: list[dict[str, Any]] = field(default_factory=list)
    close: tuple[int, str] | None = None
    too_fast: bool = False
    numerals: bool | None = None  # set by Configure
    keyterms: list[str] | None = None  # set by Configure (Nova-3)
    ws: ServerConnection | None = None

    @property
    def query(self) -> dict[str, str]:
        """The parameters as a dict (the last value of a repeated key)."""
        return dict(self.params)

    @property
    def results(self) -> list[dict[str, Any]]:
        """Results messages sent."""
        return [m for m in self.sent if m.get("type") == "Results"]

    @property
    def finals(self) -> list[dict[str, Any]]:
        """Final Results sent."""
        return [m for m in self.results if m["is_final"]]


class _Closed(Exception):
    """The connection is over."""


@dataclass
class _Channel:
    seg: ToneSegmenter
    window: float = 0.0  # where the next final's window starts
    utterance_end_due: bool = False
    speech_started: bool = False


class DeepgramEmulator:
    """The emulator server; ``async with`` starts it on a free loopback port."""

    def __init__(self, config: DgConfig | None = None):
        self.config = config or DgConfig()
        self.faults: deque[Fault] = deque()
        self.streams: list[DgStream] = []
        self.port = 0
        self._active = 0
        self._pending: dict[ServerConnection, DgStream] = {}
        self._server: Server | None = None
        self._stack: contextlib.AsyncExitStack | None = None

    @property
    def url(self) -> str:
        """The WebSocket URL (VOXQ_DEEPGRAM_URL)."""
        return f"ws://{LOOPBACK}:{self.port}{PATH}"

    def configure(self, settings: Settings, **changes: Any) -> Settings:
        """``settings`` pointed at this emulator with its (fake) key."""
        update: dict[str, Any] = {"deepgram_api_key": SecretStr(API_KEY),
                                  "deepgram_access_token": None, "deepgram_url": self.url}
        update.update(changes)
        return settings.model_copy(update=update)

    async def __aenter__(self) -> DeepgramEmulator:
        self._stack = contextlib.AsyncExitStack()
        self._server, self.port = await self._stack.enter_async_context(serve_loopback(
            self._handler, self._process_request, process_response=self._process_response,
            select_subprotocol=self._select_subprotocol, max_size=1 << 20, max_queue=None,
            close_timeout=2))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._stack is not None
        for s in self.streams:
            if s.ws is not None and s.close is None:
                s.ws.transport.abort()
        await self._stack.aclose()

    # --- handshake -------------------------------------------------------------------------------

    @staticmethod
    def _select_subprotocol(connection: ServerConnection, offered: Any) -> str | None:
        return "token" if "token" in offered else None

    def _error(self, connection: ServerConnection, s: DgStream, status: int, code: str,
               message: str) -> Response:
        s.http_status, s.http_error = status, (code, message)
        body = json.dumps({"err_code": code, "err_msg": message, "request_id": s.request_id})
        response = connection.respond(status, body)
        headers = Headers([(k, v) for k, v in response.headers.raw_items()
                           if k.lower() != "content-type"])
        headers["Content-Type"] = "application/json"
        headers["dg-request-id"] = s.request_id
        headers["dg-error"] = message
        response.headers = headers
        return response

    def _authorized(self, s: DgStream) -> bool:
        header = s.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "token" and value in self.config.keys:
            s.auth = "token"
            return True
        if scheme.lower() == "bearer" and value in self.config.jwts:
            s.auth = "bearer"
            return True
        offered = [p.strip() for p in s.headers.get("sec-websocket-protocol", "").split(",")]
        if len(offered) == 2 and offered[0] == "token" and offered[1] in self.config.keys:
            s.auth = "subprotocol"
            return True
        return False

    def _check_params(self, s: DgStream) -> str | None:
        """The first invalid parameter, as a deserialisation message (§6, #2-#3)."""
        q = s.query
        for k, v in s.params:
            if k in BOOLS and v not in ("true", "false"):
                return f"invalid value for {k}: {v!r}, expected true or false"
            if self.config.reject_unknown_params and k not in BOOLS and k not in OTHER_PARAMS:
                return f"unknown field `{k}`"
        model = q.get("model")
        if model is not None and model not in MODELS:
            return f"No such model: {model}"
        if q.get("language", "en") not in self.config.languages:
            return f"No such language: {q['language']}"
        if q.get("diarize_model") not in (None, "v1", "latest"):
            return f"invalid diarize_model: {q['diarize_model']}"
        for k in ("sample_rate", "channels", "utterance_end_ms"):
            if k in q and not q[k].isdigit():
                return f"invalid value for {k}: {q[k]!r}"
        if "endpointing" in q and q["endpointing"] != "false" and not q["endpointing"].isdigit():
            return f"invalid value for endpointing: {q['endpointing']!r}"
        encoding = q.get("encoding")
        if encoding is not None:
            if encoding not in ENCODINGS:
                return f"unknown encoding: {encoding}"
            if "sample_rate" not in q:
                return "sample_rate is required with encoding"
            if (encoding, q["sample_rate"]) in (("amr-nb", "8000"), ("amr-wb", "16000")):
                pass
            elif encoding in ("amr-nb", "amr-wb"):
                return f"{encoding} needs sample_rate {'8000' if encoding == 'amr-nb' else '16000'}"
            if not 1 <= int(q.get("channels", "1")) <= 20 or int(q["sample_rate"]) <= 0:
                return "channels must be 1-20 and sample_rate positive"
        return None

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        s = DgStream(index=len(self.streams), request_id=str(uuid.uuid4()))
        self.streams.append(s)
        s.fault = self.faults.popleft() if self.faults else None
        if parts.path != PATH:
            return self._error(connection, s, 404, "NOT_FOUND", "Not found.")
        s.headers = {k.lower(): v for k, v in request.headers.raw_items()}
        if not self._authorized(s):
            return self._error(connection, s, 401, "INVALID_AUTH", "Invalid credentials.")
        if s.fault is not None and s.fault.kind == "http":
            return self._error(connection, s, s.fault.status, s.fault.err_code, s.fault.message)
        s.params = parse_qsl(parts.query, keep_blank_values=True)
        problem = self._check_params(s)
        if problem is not None:
            return self._error(connection, s, 400, "INVALID_QUERY_PARAMETER",
                               f"Failed to deserialize query parameters: {problem}")
        if self._active >= self.config.max_concurrent:
            return self._error(connection, s, 429, "TOO_MANY_REQUESTS",
                               "Too many requests. Please try again later")
        self._active += 1
        self._pending[connection] = s
        return None

    def _process_response(self, connection: ServerConnection, request: Request,
                          response: Response) -> Response:
        s = self._pending.get(connection)
        if s is not None and response.status_code == 101:
            response.headers["dg-request-id"] = s.request_id
        return response

    # --- after the upgrade -----------------------------------------------------------------------

    async def _handler(self, ws: ServerConnection) -> None:
        s = self._pending.pop(ws)
        s.ws = ws
        try:
            await self._serve(ws, s)
        except (_Closed, ConnectionClosed):
            pass
        finally:
            self._active -= 1

    async def _send(self, ws: ServerConnection, s: DgStream, doc: dict[str, Any]) -> None:
        s.sent.append(doc)
        try:
            await ws.send(json.dumps(doc))
        except ConnectionClosed:
            raise _Closed from None

    async def _close(self, ws: ServerConnection, s: DgStream, code: int, reason: str) -> NoReturn:
        s.close = (code, reason)
        with contextlib.suppress(ConnectionClosed):
            await ws.close(code, reason)
        raise _Closed

    def _metadata(self, s: DgStream, seconds: float, channels: int) -> dict[str, Any]:
        model = s.query.get("model", "nova-3")
        uid = str(uuid.uuid5(uuid.NAMESPACE_URL, model))
        doc: dict[str, Any] = {
            "type": "Metadata", "transaction_key": "deprecated", "request_id": s.request_id,
            "sha256": "incomplete",
            "created": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "duration": round(seconds, 6), "channels": channels if s.audio else 0,
        }
        if s.audio:
            doc["models"] = [uid]
            doc["model_info"] = {uid: {"name": f"general-{model}", "version": "2025-04-17.21547",
                                       "arch": model.split("-general")[0]}}
        return doc

    async def _serve(self, ws: ServerConnection, s: DgStream) -> None:
        cfg = self.config
        q = s.query
        encoding = q.get("encoding")
        rate = int(q.get("sample_rate", "16000"))
        channels = int(q.get("channels", "1")) if encoding else 1
        multi = q.get("multichannel") == "true"
        endpointing = q.get("endpointing", str(cfg.default_endpointing_ms))
        gap = cfg.no_endpointing_gap if endpointing == "false" else int(endpointing) / 1000
        chans = [_Channel(ToneSegmenter(rate, gap, cfg.silence_rms, cfg.word_gap))
                 for _ in range(channels if multi else 1)]
        carry = b""
        frame_bytes = 2 * channels
        last = time.monotonic()
        first_audio: float | None = None
        frames = 0
        seconds = 0.0
        while True:
            try:
                remaining = last + cfg.net0001_timeout - time.monotonic()
                frame = await within(ws.recv(), max(0.0, remaining))
            except TimeoutError:
                with contextlib.suppress(_Closed):
                    await self._send(ws, s, self._metadata(s, seconds, channels))
                await self._close(ws, s, 1011, NET0001)
            except ConnectionClosed:
                raise _Closed from None
            now = time.monotonic()
            if isinstance(frame, str):
                msg = await self._control(ws, s, frame)
                if msg is None:
                    continue
                kind = msg["type"]
                if kind == "KeepAlive":
                    if s.audio or not cfg.keepalive_needs_audio:
                        last = now
                    continue
                last = now
                if kind == "Configure":
                    await self._send(ws, s, self._configure(s, msg))
                    continue
                if kind == "Finalize":
                    only = msg.get("channel")
                    for c, ch in enumerate(chans):
                        if only is None or only == c:
                            await self._final(ws, s, ch, c, len(chans), ch.seg.take(), q,
                                              from_finalize=True, speech_final=False)
                    continue
                await self._end(ws, s, chans, q, seconds, channels)
            if isinstance(frame, bytes) and not frame:
                await self._end(ws, s, chans, q, seconds, channels)
            assert isinstance(frame, bytes)
            last = now
            first_audio = first_audio if first_audio is not None else now
            s.audio += frame
            s.frame_sizes.append(len(frame))
            frames += 1
            if encoding is None and not bytes(s.audio[:4]).startswith(_CONTAINERS):
                await self._close(ws, s, 1008, DATA0000)
            data = carry + frame
            whole = len(data) // frame_bytes * frame_bytes
            carry = data[whole:]
            seconds = len(s.audio) // frame_bytes / rate
            if cfg.max_stream_seconds is not None and seconds > cfg.max_stream_seconds:
                await self._close(ws, s, 1011, STREAM_TOO_LONG)
            if seconds > (now - first_audio) * cfg.realtime_factor + cfg.burst_seconds:
                s.too_fast = True
            if encoding == "linear16" and whole:
                x = np.frombuffer(data[:whole], "<i2").reshape(-1, channels)
                inputs = [x[:, c] for c in range(channels)] if multi else [
                    x[:, 0] if channels == 1 else downmix(x)]
                for c, (ch, samples) in enumerate(zip(chans, inputs, strict=True)):
                    await self._recognise(ws, s, ch, c, len(chans), samples, q, endpointing)
            await self._apply_fault(ws, s, frames)

    async def _control(self, ws: ServerConnection, s: DgStream, frame: str) -> dict[str, Any] | None:
        """A text frame: KeepAlive, Finalize or CloseStream (#9 for anything else)."""
        try:
            msg = json.loads(frame)
        except ValueError:
            msg = None
        ok = isinstance(msg, dict) and msg.get("type") in ("KeepAlive", "Finalize", "CloseStream",
                                                           "Configure")
        if ok and isinstance(msg, dict) and msg.get("type") == "Finalize" and "channel" in msg:
            ch = msg["channel"]
            ok = isinstance(ch, int) and not isinstance(ch, bool) and ch >= 0
        if not ok:
            if self.config.bad_text == "ignore":
                return None
            await self._close(ws, s, 1008, DATA0000)
        assert isinstance(msg, dict)
        s.received.append(msg)
        return msg

    @staticmethod
    def _configure(s: DgStream, msg: dict[str, Any]) -> dict[str, Any]:
        """Apply a Configure message; the one ConfigureSuccess or ConfigureFailure it gets."""
        def failure(why: str) -> dict[str, Any]:
            return {"type": "ConfigureFailure", "request_id": s.request_id, "description": why}

        features = msg.get("features")
        if features is not None and not isinstance(features, dict):
            return failure("features must be an object")
        numerals = (features or {}).get("numerals")
        if numerals is not None and not isinstance(numerals, bool):
            return failure("features.numerals must be a boolean")
        keyterms = msg.get("keyterms")
        if keyterms is not None:
            if not (isinstance(keyterms, list) and all(isinstance(k, str) for k in keyterms)):
                return failure("keyterms must be an array of strings")
            if not s.query.get("model", "nova-3").startswith("nova-3"):
                return failure("keyterms can be configured on Nova-3 models only")
        if numerals is not None:
            s.numerals = numerals
        out: dict[str, Any] = {"type": "ConfigureSuccess", "request_id": s.request_id}
        if keyterms is not None:
            s.keyterms = list(keyterms)
            out["keyterms"] = s.keyterms
        return out

    async def _end(self, ws: ServerConnection, s: DgStream, chans: list[_Channel],
                   q: dict[str, str], seconds: float, channels: int) -> NoReturn:
        """CloseStream (or an empty frame): last finals, Metadata, close 1000."""
        for c, ch in enumerate(chans):
            await self._final(ws, s, ch, c, len(chans), ch.seg.take(), q, from_finalize=False,
                              speech_final=True)
        await self._send(ws, s, self._metadata(s, seconds, channels))
        await self._close(ws, s, 1000, "")

    async def _apply_fault(self, ws: ServerConnection, s: DgStream, frames: int) -> None:
        fault = s.fault
        if fault is None or fault.kind == "http" or frames != fault.after_frames:
            return
        if fault.kind == "abort":
            s.close = (1006, "aborted")
            ws.transport.abort()
            raise _Closed
        await self._close(ws, s, fault.code, fault.message)

    # --- recognition -----------------------------------------------------------------------------

    async def _recognise(self, ws: ServerConnection, s: DgStream, ch: _Channel, c: int, n: int,
                         samples: np.ndarray, q: dict[str, str], endpointing: str) -> None:
        closed, changed = ch.seg.feed(samples)
        for words in closed:
            await self._speech_started(ws, s, ch, c, n, words, q)
            await self._final(ws, s, ch, c, n, words, q, from_finalize=False,
                              speech_final=endpointing != "false",
                              end=min(ch.seg.seconds, round(words[-1].end_s + ch.seg.utterance_gap, 4)))
        if changed:
            await self._speech_started(ws, s, ch, c, n, ch.seg.words, q)
        if changed and q.get("interim_results") == "true":
            await self._send(ws, s, self._results(s, ch.seg.words, c, n, ch.window,
                                                  ch.seg.seconds, q, final=False))
        if changed:
            ch.utterance_end_due = True
        if ("utterance_end_ms" in q and q.get("interim_results") == "true" and ch.utterance_end_due
                and ch.seg.quiet_seconds * 1000 >= int(q["utterance_end_ms"])):
            ch.utterance_end_due = False
            await self._send(ws, s, {"type": "UtteranceEnd", "channel": [c, n],
                                     "last_word_end": round(ch.seg.last_word_end * ch.seg.block
                                                            / ch.seg.rate, 4)})

    async def _speech_started(self, ws: ServerConnection, s: DgStream, ch: _Channel, c: int,
                              n: int, words: list[ToneWord], q: dict[str, str]) -> None:
        """``SpeechStarted`` once per utterance, with ``vad_events``."""
        if q.get("vad_events") == "true" and words and not ch.speech_started:
            ch.speech_started = True
            await self._send(ws, s, {"type": "SpeechStarted", "channel": [c, n],
                                     "timestamp": words[0].start_s})

    async def _final(self, ws: ServerConnection, s: DgStream, ch: _Channel, c: int, n: int,
                     words: list[ToneWord], q: dict[str, str], *, from_finalize: bool,
                     speech_final: bool, end: float | None = None) -> None:
        """A final Results whose window runs from the previous final to ``end`` (the endpoint,
        or everything received)."""
        ch.speech_started = False
        if not words:
            return
        end = ch.seg.seconds if end is None else end
        await self._send(ws, s, self._results(s, words, c, n, ch.window, end, q, final=True,
                                              speech_final=speech_final,
                                              from_finalize=from_finalize))
        ch.window = end

    def _results(self, s: DgStream, words: list[ToneWord], c: int, n: int, start: float,
                 end: float, q: dict[str, str], *, final: bool, speech_final: bool = False,
                 from_finalize: bool = False) -> dict[str, Any]:
        punct = q.get("punctuate") == "true" or q.get("smart_format") == "true"
        out = []
        for i, w in enumerate(words):
            d: dict[str, Any] = {"word": w.text, "start": w.start_s, "end": w.end_s,
                                 "confidence": w.confidence}
            if punct:
                p = w.text[:1].upper() + w.text[1:] if i == 0 else w.text
                d["punctuated_word"] = p + "." if i == len(words) - 1 and final else p
            if q.get("diarize") == "true":
                d["speaker"] = w.speaker
                d["speaker_confidence"] = 0.9
            out.append(d)
        transcript = " ".join(d.get("punctuated_word", d["word"]) for d in out)
        model = q.get("model", "nova-3")
        return {
            "type": "Results", "channel_index": [c, n], "duration": round(end - start, 4),
            "start": round(start, 4), "is_final": final, "speech_final": final and speech_final,
            "from_finalize": from_finalize,
            "channel": {"alternatives": [{
                "transcript": transcript,
                "confidence": round(sum(w.confidence for w in words) / len(words), 4),
                "words": out}]},
            "metadata": {"request_id": s.request_id,
                         "model_info": {"name": f"general-{model}", "version": "2025-04-17",
                                        "arch": model},
                         "model_uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, model))},
        }
