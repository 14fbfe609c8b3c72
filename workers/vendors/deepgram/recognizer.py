"""`deepgram`: Deepgram live streaming (``/v1/listen``) over one WebSocket per session.

Audio goes out as the worker sends it (binary linear16 frames, never empty: an empty frame
would end the stream); a two-channel session is one connection with ``channels=2`` and
``multichannel=true`` (Deepgram transcribes each channel and says which in ``channel_index``).
``Results`` become partials (``is_final: false``) and finals (each final covers the audio since
the previous one). During a pause a ``KeepAlive`` text message goes out every
``keepalive_after`` seconds (Deepgram closes with NET-0001 after 10 s without a frame); if no
audio at all was sent yet, 100 ms of silence goes first instead (KeepAlive alone may not hold
a stream that never had audio) and is removed from result times. At the end ``Finalize`` then
``CloseStream``: the last finals and ``Metadata`` come back and the service closes with 1000.
``finalize()`` flushes Deepgram's buffer mid-session.

Secrets: the key (``Authorization: Token``) or JWT (``Authorization: Bearer``) comes from
Settings (SecretStr) and is redacted from the websockets library's debug lines and errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar
from urllib.parse import urlsplit

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
)
from workers.vendors.deepgram import protocol as dg
from workers.vendors.redaction import websocket_logger

log = logging.getLogger(__name__)

__all__ = ["DeepgramRecognizer"]

MAX_SERVER_FRAME = 1 << 20


_WS_LOG = websocket_logger(__name__, ("authorization", "sec-websocket-protocol"))


class DeepgramRecognizer(Recognizer):
    """Deepgram live streaming: one connection per session, multichannel for two channels."""

    name: ClassVar[str] = "deepgram"
    options_model: ClassVar[type[BaseModel]] = dg.DeepgramOptions
    #: Deepgram's documented ceiling is 1.25x real time
    max_replay_speed: ClassVar[float] = 1.25
    replay_burst_seconds: ClassVar[float] = 1.0

    # Tunables; class attributes so tests (and instances) can shrink them.
    keepalive_after: float = 4.0  # the docs say every 3-5 s; the service waits 10 s
    lead_in_seconds: float = 0.1  # silence sent when a keep-alive is due before any audio
    open_timeout: float = 10.0
    close_timeout: float = 2.0
    drain_timeout: float = 30.0
    report_wait: float = 5.0  # how long send() lets results() report a failure first

    def __init__(self, config: RecognizerConfig, settings: Settings):
        super().__init__(config, settings)
        opts = config.options
        assert isinstance(opts, dg.DeepgramOptions)
        self.options = opts
        self._ws: ClientConnection | None = None
        self._queue: asyncio.Queue[Transcript | VendorError | None] = asyncio.Queue()
        self._lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._failure: VendorError | None = None
        self._error_text: str | None = None
        self._last_sent = time.monotonic()
        self._audio_sent = False
        self._lead_in = 0.0
        self._sent_frames = 0  # sample frames sent, lead-in included
        self._metadata: dg.Metadata | None = None
        self._frame_bytes = 2 * config.channels
        self._carry = b""
        self._ended = False  # CloseStream sent
        self._done = False
        self._closed = False
        self._secrets: tuple[str, ...] = ()
        self.request_id: str | None = None
        self._reported = asyncio.Event()  # results() has raised the session's failure

    @classmethod
    def validate_options(cls, language: str, rate: int, channels: int,
                         options: Mapping[str, Any]) -> BaseModel:
        """Check options, language and channels at session creation; set multichannel."""
        parsed = super().validate_options(language, rate, channels, options)
        assert isinstance(parsed, dg.DeepgramOptions)
        if channels not in (1, 2):
            raise VendorOptionError(f"{cls.name}: {channels} channels; 1 or 2 are supported")
        if not dg.valid_language(language):
            raise VendorOptionError(f"{cls.name}: language {language!r} is not a BCP-47 tag "
                                    "such as en or en-US (or multi)")
        if parsed.multichannel is False and channels == 2:
            raise VendorOptionError(f"{cls.name}: a 2-channel session needs multichannel (each "
                                    "channel is transcribed on its own)")
        if parsed.multichannel and channels == 1:
            raise VendorOptionError(f"{cls.name}: multichannel needs a 2-channel session")
        return parsed.model_copy(update={"multichannel": channels == 2})

    # --- connection --------------------------------------------------------------------------

    def _auth(self) -> dict[str, str]:
        """The Authorization header: the JWT (Bearer) if configured, else the key (Token)."""
        s = self.settings
        jwt = s.deepgram_access_token.get_secret_value() if s.deepgram_access_token else ""
        key = s.deepgram_api_key.get_secret_value() if s.deepgram_api_key else ""
        self._secrets = tuple(x for x in (jwt, key) if x)
        if jwt:
            return {"Authorization": f"Bearer {jwt}"}
        if key:
            return {"Authorization": f"Token {key}"}
        raise VendorAuthError("Deepgram credentials are missing: set DEEPGRAM_API_KEY (or "
                              "DEEPGRAM_ACCESS_TOKEN) in the worker's environment",
                              vendor=self.name)

    def _where(self) -> str:
        parts = urlsplit(self.settings.deepgram_url)
        return f"{parts.scheme}://{parts.hostname}{parts.path}"

    async def start(self) -> None:
        """Open the stream and start the reader and the keep-alive timer."""
        headers = self._auth()
        base = self.settings.deepgram_url
        if urlsplit(base).scheme not in ("ws", "wss"):
            raise VendorRejected(f"invalid Deepgram URL {self._where()!r}: needs ws:// or wss://",
                                 vendor=self.name)
        c = self.config
        url = dg.build_url(base, dg.query_params(c.language, c.rate, c.channels, self.options))
        try:
            self._ws = await connect(url, additional_headers=headers, compression=None,
                                     open_timeout=self.open_timeout,
                                     close_timeout=self.close_timeout, max_size=MAX_SERVER_FRAME,
                                     logger=_WS_LOG, user_agent_header=f"voxq/{__version__}")
        except InvalidStatus as e:
            r = e.response
            raise dg.handshake_error(r.status_code, r.headers, bytes(r.body or b""),
                                     self._secrets) from None
        except InvalidURI:
            raise VendorRejected(f"invalid Deepgram URL {self._where()!r}",
                                 vendor=self.name) from None
        except InvalidHandshake as e:
            raise VendorRetryable(f"WebSocket handshake with {self._where()} failed: "
                                  f"{type(e).__name__}", vendor=self.name) from None
        except (OSError, TimeoutError) as e:
            raise VendorRetryable(f"cannot connect to {self._where()}: {e or type(e).__name__}",
                                  vendor=self.name) from None
        self.request_id = self._ws.response.headers.get("dg-request-id") \
            if self._ws.response is not None else None
        self._last_sent = time.monotonic()
        self._reader = asyncio.create_task(self._read(), name="deepgram-read")
        self._keepalive = asyncio.create_task(self._keep_alive(), name="deepgram-keepalive")

    @contextlib.asynccontextmanager
    async def _failures(self) -> AsyncIterator[None]:
        """Raise a failure from the audio side only after results() raised it (or a moment
        passed), so every final queued before it reaches the worker first."""
        try:
            yield
        except VendorError:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reported.wait(), self.report_wait)
            raise

    def _live(self) -> ClientConnection:
        if self._failure is not None:
            raise self._failure
        if self._ws is None or self._closed:
            raise VendorRetryable("the recognizer is not open", vendor=self.name)
        return self._ws

    async def _transmit(self, frame: bytes | str) -> None:
        """Send one message; a closed socket raises the reader's verdict."""
        ws = self._live()
        try:
            await ws.send(frame)
        except ConnectionClosed:
            if self._reader is not None and not self._reader.done():
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(self._reader), self.close_timeout)
            raise (self._failure or VendorRetryable("the connection closed while sending",
                                                    vendor=self.name)) from None
        self._last_sent = time.monotonic()

    # --- audio in ----------------------------------------------------------------------------

    async def send(self, pcm: bytes) -> None:
        """One binary frame of whole sample frames (never an empty one)."""
        data = self._carry + pcm
        whole = len(data) // self._frame_bytes * self._frame_bytes
        self._carry = data[whole:]
        if not whole:
            return
        async with self._lock, self._failures():
            await self._transmit(data[:whole])
            self._audio_sent = True
            self._sent_frames += whole // self._frame_bytes

    async def finalize(self) -> None:
        """Ask Deepgram to finalise what it has buffered now (``Finalize``)."""
        async with self._lock, self._failures():
            await self._transmit(dg.FINALIZE)

    async def finish(self) -> None:
        """``Finalize`` then ``CloseStream``; results() ends when the service closes."""
        async with self._lock, self._failures():
            if self._ended:
                return
            self._ended = True
            await self._transmit(dg.FINALIZE)
            await self._transmit(dg.CLOSE_STREAM)

    async def _keep_alive(self) -> None:
        """During a pause, a KeepAlive (or, before any audio, a little silence) every
        ``keepalive_after`` seconds."""
        while not (self._ended or self._closed):
            wait = self._last_sent + self.keepalive_after - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            async with self._lock:
                if self._ended or self._closed:
                    return
                if time.monotonic() - self._last_sent < self.keepalive_after:
                    continue
                try:
                    if self._audio_sent:
                        await self._transmit(dg.KEEPALIVE)
                    else:
                        frames = max(1, round(self.lead_in_seconds * self.config.rate))
                        await self._transmit(bytes(frames * self._frame_bytes))
                        self._lead_in = frames / self.config.rate
                        self._audio_sent = True
                        self._sent_frames += frames
                except VendorError:
                    return  # the reader, send() and results() report it

    # --- results out ---------------------------------------------------------------------------

    async def _read(self) -> None:
        """Decode the service's messages until it closes."""
        assert self._ws is not None
        ws = self._ws
        try:
            while True:
                try:
                    if self._ended:
                        frame = await asyncio.wait_for(ws.recv(), self.drain_timeout)
                    else:
                        frame = await ws.recv()
                except TimeoutError:
                    raise VendorRetryable(
                        f"the service did not close the stream within {self.drain_timeout:g} s "
                        "of CloseStream", vendor=self.name) from None
                except ConnectionClosed as e:
                    code = e.rcvd.code if e.rcvd is not None else None
                    if self._ended and code == 1000:
                        self._check_complete()
                        self._done = True
                        self._queue.put_nowait(None)
                        return
                    raise dg.close_error(code, e.rcvd.reason if e.rcvd is not None else "",
                                         self._error_text, self._secrets) from None
                try:
                    msg = dg.decode_server(frame)
                except dg.ProtocolError as e:
                    raise VendorRetryable(f"malformed message from the service: {e}",
                                          vendor=self.name) from None
                if isinstance(msg, dg.Results):
                    t = dg.to_transcript(msg, self.config.channels, self._lead_in)
                    if t is not None:
                        self._queue.put_nowait(t)
                elif isinstance(msg, dg.Metadata):
                    self._metadata = msg
                elif isinstance(msg, dg.ErrorMessage):
                    self._error_text = msg.text
        except VendorError as e:
            self._failure = e
            self._queue.put_nowait(e)

    def _check_complete(self) -> None:
        """A clean close after CloseStream counts only with the summary, and only if the summary
        says the service heard (about) all the audio sent: otherwise it ended on its own while
        the end of the audio was in flight."""
        if self._metadata is None:
            raise VendorRetryable("the service closed the stream without its summary (Metadata)",
                                  vendor=self.name, code=1000)
        sent = self._sent_frames / self.config.rate
        heard = self._metadata.duration
        if heard is not None and heard + 1.0 < sent:
            raise VendorRetryable(f"the service processed {heard:.1f} s of the {sent:.1f} s of "
                                  "audio sent", vendor=self.name, code=1000)

    async def results(self) -> AsyncIterator[Transcript]:
        """Results until the service closes the stream after CloseStream."""
        while True:
            item = await self._queue.get()
            if item is None:
                return
            if isinstance(item, VendorError):
                self._reported.set()
                raise item
            yield item

    async def close(self) -> None:
        """Stop the tasks and close the socket; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        tasks = [t for t in (self._keepalive, self._reader) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), self.close_timeout)
        self._reported.set()
        self._queue.put_nowait(None)
