"""`volcengine` streaming recognition: the Doubao big-model streaming ASR (``sauc``) over its
binary WebSocket protocol (``shared/protocols/volcengine.md`` §4).

One WebSocket per channel (the service's results carry no channel, so a two-channel call is
two mono streams whose results are tagged 0 and 1). Each stream: handshake with the
``X-Api-*`` headers → a gzip JSON full client request → the server's first response → 200 ms
audio-only requests (16 kHz s16le mono; the worker resamples) → the last packet (empty, last
flag, negative sequence when sequences are on) → the final response (last flag) → close.

No audio for a while (a producer pause, a hold) would earn ``45000081`` (timed out waiting
for a packet): after ``keepalive_after`` seconds without audio the adapter sends
``keepalive_seconds`` of digital silence; that silence is in the vendor's timeline but not the
session's, so result times are mapped back. Error frames end the session with the vendor's
code and message, retryable or not by code (§4.6).

Secrets: the access token / API key travel only in handshake headers; they are redacted from
the websockets library's debug log and from any handshake error body.
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
from workers.vendors.redaction import vendor_text, websocket_logger
from workers.vendors.volcengine import frames, sauc
from workers.vendors.volcengine.sauc import VolcengineOptions

log = logging.getLogger(__name__)

__all__ = ["VolcengineRecognizer", "frame_error", "handshake_error"]

VENDOR = "volcengine"
MAX_SERVER_FRAME = 4 << 20
"""Largest WebSocket message accepted from the service (responses are a few KB)."""
_SECRET_HEADERS = frozenset({"x-api-access-key", "x-api-key", "authorization"})


_WS_LOG = websocket_logger(__name__, _SECRET_HEADERS)


def _clean(text: str, secrets: tuple[str, ...]) -> str:
    """One bounded line of vendor text with any echoed secret removed."""
    return vendor_text(text, secrets)


def frame_error(code: int, message: str, secrets: tuple[str, ...] = ()) -> VendorError:
    """The VendorError of an error frame: retryable, auth or rejected by its code."""
    text = _clean(message, secrets) or "(no message)"
    kind = sauc.classify(code)
    cls = {"retryable": VendorRetryable, "auth": VendorAuthError}.get(kind, VendorRejected)
    return cls(text, vendor=VENDOR, code=code)


def handshake_error(status: int, body: bytes, secrets: tuple[str, ...] = ()) -> VendorError:
    """Map a refused upgrade (HTTP status and body) to a VendorError."""
    raw = body.decode("utf-8", errors="replace")
    text, code = raw, None
    with contextlib.suppress(ValueError):
        doc = json.loads(raw)
        head = doc.get("header", doc) if isinstance(doc, dict) else None
        if isinstance(head, dict):
            if isinstance(head.get("message"), str):
                text = head["message"]
            if isinstance(head.get("code"), int):
                code = head["code"]
    detail = _clean(text, secrets)
    message = f"HTTP {status} at the WebSocket handshake" + (f": {detail}" if detail else "")
    if status in (401, 403) or (code is not None and sauc.classify(code) == "auth"):
        return VendorAuthError(message, vendor=VENDOR, code=code or status)
    if status in (408, 429) or status >= 500:
        return VendorRetryable(message, vendor=VENDOR, code=code or status)
    return VendorRejected(message, vendor=VENDOR, code=code or status)


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
class _Stream:
    """One WebSocket = one mono recognition stream of one channel."""

    channel: int
    ws: ClientConnection
    sequence: int = 1  # the full client request is 1
    audio_bytes: int = 0
    ended: bool = False  # the last packet was sent
    done: bool = False  # the last response arrived
    failure: VendorError | None = None
    reader: asyncio.Task[None] | None = None
    final_end: int = -1  # ms end of the last definite utterance reported
    finals: int = 0
    last_partial: tuple[str, int, int] | None = None


class VolcengineRecognizer(Recognizer):
    """Volcengine big-model streaming ASR, one binary-protocol WebSocket per channel."""

    name: ClassVar[str] = VENDOR
    options_model: ClassVar[type[BaseModel]] = VolcengineOptions

    # Tunables; class attributes so tests (and instances) can shrink them.
    chunk_seconds: float = 0.2  # audio per packet (the docs' best value for bigmodel)
    min_send_seconds: float = 0.2  # smaller leftovers wait for more audio (or the keep-alive)
    keepalive_after: float = 4.0  # seconds without audio before silence is sent
    keepalive_seconds: float = 0.2  # silence per keep-alive packet
    use_sequence: bool = True  # number packets (the vendor demo's way) or not (the doc table's)
    compress: bool = True  # gzip requests (the vendor demo's way)
    open_timeout: float = 10.0
    close_timeout: float = 2.0
    drain_timeout: float = 30.0  # after the last packet, wait this long for the last response

    def __init__(self, config: RecognizerConfig, settings: Settings):
        """A recognizer for one session; nothing is opened until start()."""
        super().__init__(config, settings)
        self._streams: list[_Stream] = []
        self._timeline = _Timeline(sauc.RATE)
        self._results: asyncio.Queue[Transcript | VendorError | None] = asyncio.Queue()
        self._lock = asyncio.Lock()
        self._buf = bytearray()
        self._last_audio = time.monotonic()
        self._keepalive: asyncio.Task[None] | None = None
        self._finished = False
        self._closed = False
        self._open_readers = 0
        self._secrets: tuple[str, ...] = ()
        self._language: str | None = None

    @property
    def input_rate(self) -> int:
        """The service takes 16 kHz only; the worker resamples."""
        return sauc.RATE

    @classmethod
    def validate_options(cls, language: str, rate: int, channels: int,
                         options: Mapping[str, Any]) -> BaseModel:
        """Check options and the language for the chosen mode when the session is created."""
        parsed = super().validate_options(language, rate, channels, options)
        assert isinstance(parsed, VolcengineOptions)
        try:
            sauc.stream_language(language, parsed.mode)
        except ValueError as e:
            raise VendorOptionError(f"{VENDOR}: {e}") from None
        if channels not in (1, 2):
            raise VendorOptionError(f"{VENDOR}: {channels} channels; 1 or 2 are supported")
        return parsed

    # --- connection ------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        """Handshake headers (§4.2); VendorAuthError naming the variables when none are set."""
        s = self.settings
        token = s.volcengine_access_token.get_secret_value() if s.volcengine_access_token else ""
        key = s.volcengine_api_key.get_secret_value() if s.volcengine_api_key else ""
        self._secrets = tuple(x for x in (token, key) if x)
        headers = {"X-Api-Resource-Id": s.volcengine_asr_resource_id,
                   "X-Api-Connect-Id": str(uuid.uuid4())}
        if s.volcengine_app_id and token:
            headers["X-Api-App-Key"] = s.volcengine_app_id
            headers["X-Api-Access-Key"] = token
        elif key:
            headers["X-Api-Key"] = key
        else:
            raise VendorAuthError(
                "Volcengine credentials are missing: set VOLCENGINE_APP_ID and "
                "VOLCENGINE_ACCESS_TOKEN (or VOLCENGINE_API_KEY) in the worker's environment",
                vendor=self.name)
        return headers

    async def _open(self, channel: int) -> _Stream:
        """Connect, send the full client request and read the server's first response."""
        options = self.config.options
        assert isinstance(options, VolcengineOptions)
        url = sauc.endpoint(self.settings.volcengine_asr_url, options.mode)
        try:
            ws = await connect(url, additional_headers=self._headers(), compression=None,
                               open_timeout=self.open_timeout, ping_interval=None,
                               close_timeout=self.close_timeout, max_size=MAX_SERVER_FRAME,
                               logger=_WS_LOG, user_agent_header=f"voxq/{__version__}")
        except InvalidStatus as e:
            r = e.response
            raise handshake_error(r.status_code, bytes(r.body or b""), self._secrets) from None
        except InvalidURI:
            raise VendorRejected(f"invalid endpoint {url!r} (VOXQ_VOLCENGINE_ASR_URL)",
                                 vendor=self.name) from None
        except InvalidHandshake as e:
            raise VendorRetryable(f"WebSocket handshake failed: {_clean(str(e), self._secrets)}",
                                  vendor=self.name) from None
        except (OSError, TimeoutError) as e:
            raise VendorRetryable(f"cannot connect: {e or type(e).__name__}",
                                  vendor=self.name) from None
        stream = _Stream(channel=channel, ws=ws)
        body = sauc.request_body(options, uid=self.config.session_id, language=self._language)
        try:
            with contextlib.suppress(ConnectionClosed):  # an error frame may be waiting
                await ws.send(frames.full_client_request(
                    body, sequence=stream.sequence if self.use_sequence else None,
                    compress=self.compress))
            raw = await asyncio.wait_for(ws.recv(), self.open_timeout)
            first = self._decode(raw)
        except VendorError:
            await self._abandon(ws)
            raise
        except (ConnectionClosed, TimeoutError) as e:
            await self._abandon(ws)
            raise VendorRetryable(f"no answer to the full client request ({type(e).__name__})",
                                  vendor=self.name) from None
        if first.type is frames.MessageType.ERROR:
            await self._abandon(ws)
            raise frame_error(first.error_code or 0, first.error_message, self._secrets)
        if first.type is not frames.MessageType.FULL_SERVER_RESPONSE:
            await self._abandon(ws)
            raise VendorRetryable(f"unexpected first frame {first.type.name}", vendor=self.name)
        return stream

    async def _abandon(self, ws: ClientConnection) -> None:
        """Close a socket, bounded in time, ignoring errors (it is being given up)."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), self.close_timeout)

    def _decode(self, raw: str | bytes) -> frames.Frame:
        """One server message as a frame; garbage is a retryable protocol failure."""
        if isinstance(raw, str):
            raise VendorRetryable("the service sent a text frame; it only sends binary frames",
                                  vendor=self.name)
        try:
            return frames.decode(raw, max_payload=MAX_SERVER_FRAME)
        except frames.FrameError as e:
            raise VendorRetryable(f"undecodable frame from the service: {e}",
                                  vendor=self.name) from None

    async def start(self) -> None:
        """Open one stream per channel (all or none) and start the keep-alive timer."""
        options = self.config.options
        assert isinstance(options, VolcengineOptions)
        self._language = sauc.stream_language(self.config.language, options.mode)
        opened = await asyncio.gather(*(self._open(c) for c in range(self.config.channels)),
                                      return_exceptions=True)
        failures = [o for o in opened if isinstance(o, BaseException)]
        streams = [o for o in opened if isinstance(o, _Stream)]
        if failures:
            for s in streams:
                await self._abandon(s.ws)
            raise failures[0]
        self._streams = streams
        self._open_readers = len(streams)
        for s in streams:
            s.reader = asyncio.create_task(self._read(s), name=f"volcengine-read-{s.channel}")
        self._last_audio = time.monotonic()
        self._keepalive = asyncio.create_task(self._keep_alive(), name="volcengine-keepalive")
        log.debug("session %s: %d Volcengine stream(s) open", self.config.session_id, len(streams))

    # --- audio in --------------------------------------------------------------------------------

    def _check(self) -> None:
        """Raise the first stream failure (or a closed recognizer) before sending."""
        if self._closed or not self._streams:
            raise VendorRetryable("the recognizer is not open", vendor=self.name)
        for s in self._streams:
            if s.failure is not None:
                raise s.failure

    async def _transmit(self, stream: _Stream, data: bytes) -> None:
        """Send one frame; a closed socket raises the stream's error (its reader's verdict)."""
        try:
            await stream.ws.send(data)
        except ConnectionClosed:
            if stream.reader is not None and not stream.reader.done():
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(stream.reader), self.close_timeout)
            raise (stream.failure or VendorRetryable("the connection closed while sending audio",
                                                     vendor=self.name)) from None

    async def _send_packet(self, pcm: bytes, keepalive: bool = False, last: bool = False) -> None:
        """One audio-only request per stream with this slice of interleaved PCM."""
        n = self.config.channels
        frames_n = len(pcm) // (2 * n)
        x = np.frombuffer(pcm, "<i2")[: frames_n * n].reshape(frames_n, n)
        for s in self._streams:
            mono = x[:, s.channel].tobytes()
            seq: int | None = None
            if self.use_sequence:
                s.sequence += 1
                seq = -s.sequence if last else s.sequence
            await self._transmit(s, frames.audio_only_request(mono, sequence=seq, last=last,
                                                              compress=self.compress))
            s.audio_bytes += len(mono)
            if last:
                s.ended = True
        self._timeline.add(frames_n, keepalive)
        self._last_audio = time.monotonic()

    async def _drain(self, everything: bool) -> None:
        """Send buffered audio in ``chunk_seconds`` packets; hold a short tail unless asked."""
        frame_bytes = 2 * self.config.channels
        chunk = max(1, round(self.chunk_seconds * sauc.RATE)) * frame_bytes
        least = max(1, round(self.min_send_seconds * sauc.RATE)) * frame_bytes
        while True:
            whole = len(self._buf) // frame_bytes * frame_bytes
            if whole == 0 or (whole < least and not everything):
                return
            size = min(whole, chunk)
            piece = bytes(self._buf[:size])
            del self._buf[:size]
            await self._send_packet(piece)

    async def send(self, pcm: bytes) -> None:
        """Queue interleaved s16le PCM at 16 kHz; packets of ``chunk_seconds`` go out."""
        if not pcm:
            return
        async with self._lock:
            self._check()
            self._buf += pcm
            await self._drain(everything=False)

    async def finish(self) -> None:
        """Send what is buffered and the last packet; results() ends after the last response."""
        async with self._lock:
            if self._finished:
                return
            self._finished = True
            self._check()
            await self._drain(everything=True)
            self._buf.clear()  # at most a partial sample frame
            if self._timeline.frames == 0:  # the service refuses a stream with no audio
                await self._send_packet(self._silence(), keepalive=True)
            await self._send_packet(b"", last=True)

    def _silence(self) -> bytes:
        """Digital silence of ``keepalive_seconds`` for every channel, interleaved."""
        return bytes(max(1, round(self.keepalive_seconds * sauc.RATE)) * 2 * self.config.channels)

    async def _keep_alive(self) -> None:
        """While no audio flows, send a little silence before the service's packet timeout."""
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
                        await self._send_packet(self._silence(), keepalive=True)
                except VendorError:
                    return  # the readers, send() and results() report it

    # --- results out -----------------------------------------------------------------------------

    async def _read(self, stream: _Stream) -> None:
        """Turn one stream's responses into results until its last response or a failure."""
        try:
            while not stream.done:
                try:
                    if stream.ended:
                        raw = await asyncio.wait_for(stream.ws.recv(), self.drain_timeout)
                    else:
                        raw = await stream.ws.recv()
                except TimeoutError:
                    raise VendorRetryable(f"no last response within {self.drain_timeout:g} s of "
                                          "the last packet", vendor=self.name) from None
                except ConnectionClosed as e:
                    code = e.rcvd.code if e.rcvd is not None else 1006
                    raise VendorRetryable(f"the connection closed before the last response "
                                          f"(code {code})", vendor=self.name) from None
                frame = self._decode(raw)
                if frame.type is frames.MessageType.ERROR:
                    raise frame_error(frame.error_code or 0, frame.error_message, self._secrets)
                if frame.type is not frames.MessageType.FULL_SERVER_RESPONSE:
                    continue  # nothing else is documented for ASR; ignore rather than fail
                try:
                    response = sauc.response_of(frame.json())
                except (frames.FrameError, sauc.ProtocolError) as e:
                    raise VendorRetryable(f"malformed response from the service: {e}",
                                          vendor=self.name) from None
                for t in self._transcripts(stream, response, frame.is_last):
                    self._results.put_nowait(t)
                if frame.is_last:
                    stream.done = True
        except VendorError as e:
            stream.failure = e
            self._results.put_nowait(e)
        finally:
            if stream.failure is not None:
                await self._abandon(stream.ws)
            self._open_readers -= 1
            if self._open_readers == 0:
                self._results.put_nowait(None)

    def _transcripts(self, stream: _Stream, response: sauc.Response, last: bool
                     ) -> list[Transcript]:
        """New finals (definite utterances not yet reported) and the open partials."""
        out: list[Transcript] = []
        tl = self._timeline
        partial_index = 0
        for u in response.utterances:
            definite = u.definite or last
            if definite and u.end_ms <= stream.final_end:
                continue  # reported by an earlier response (full result mode repeats them)
            if not u.text.strip() and not u.words:
                continue
            words = tuple(Word(text=w, start=tl.to_session(s), end=tl.to_session(e))
                          for w, s, e in u.words)
            if definite:
                rid = f"ch{stream.channel}-{stream.finals}"
                stream.final_end = u.end_ms
                stream.finals += 1
                stream.last_partial = None
            else:
                key = (u.text, u.start_ms, u.end_ms)
                if partial_index == 0 and key == stream.last_partial:
                    continue  # the bigmodel mode answers every packet, changed or not
                if partial_index == 0:
                    stream.last_partial = key
                rid = f"ch{stream.channel}-{stream.finals + partial_index}"
                partial_index += 1
            out.append(Transcript(text=u.text.strip(), is_final=definite,
                                  start=tl.to_session(u.start_ms), end=tl.to_session(u.end_ms),
                                  channel=stream.channel, words=words, result_id=rid))
        return out

    async def results(self) -> AsyncIterator[Transcript]:
        """Results of every channel as they arrive; raises the first stream failure."""
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
        tasks = [t for t in (self._keepalive, *(s.reader for s in self._streams)) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for s in self._streams:
            await self._abandon(s.ws)
        self._results.put_nowait(None)

