"""What both AssemblyAI generations share once a socket is open: one connection per channel,
auth, re-chunking, keep-alive, the reader and the mapping of closes to errors.

AssemblyAI takes mono audio only, so a two-channel session runs one connection per channel
(the channels are split here) and tags each connection's results with its channel. Audio is
re-cut to ``chunk_seconds`` messages inside the generation's per-message bounds; a tail shorter
than the minimum waits for more audio and is padded with silence only at the very end (or, in
v2, when silence has to be sent to keep the session alive). Silence the adapter inserts is
recorded per connection and removed from result times, so times are always seconds of the
audio the worker sent.

Secrets (API key, tokens) are SecretStr in Settings; they go out only in the Authorization
header or the ``token`` query parameter, and are redacted from the websockets library's debug
log lines and from every error message.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from voxq import __version__
from voxq.settings import Settings
from workers.vendors.assemblyai.codes import TOKEN_QUERY, close_error, http_error
from workers.vendors.assemblyai.protocol_v3 import build_url
from workers.vendors.assemblyai.tokens import mint_token
from workers.vendors.base import (
    Recognizer,
    RecognizerConfig,
    Transcript,
    VendorAuthError,
    VendorError,
    VendorRejected,
    VendorRetryable,
)
from workers.vendors.redaction import websocket_logger

log = logging.getLogger(__name__)

MAX_SERVER_FRAME = 1 << 20
"""Largest message accepted from the service (Turns are a few KB)."""


WS_LOG = websocket_logger("workers.vendors.assemblyai",
                          ("authorization", "sec-websocket-protocol"), (TOKEN_QUERY,))


@dataclass(eq=False)
class Connection:
    """One vendor connection: one channel of the session and its place in that channel's audio."""

    channel: int
    ws: ClientConnection
    rate: int
    buf: bytearray = field(default_factory=bytearray)
    frames: int = 0  # frames sent, inserted silence included
    inserted: list[list[int]] = field(default_factory=list)  # [at frame, n frames] of padding
    last_sent: float = field(default_factory=time.monotonic)
    reader: asyncio.Task[None] | None = None
    ended: bool = False  # the end-of-session message was sent
    done: bool = False  # the service confirmed the end
    failure: VendorError | None = None
    error_text: str | None = None  # text of the last error frame
    state: Any = None  # the generation's per-connection result state

    def to_seconds(self, ms: float) -> float:
        """A vendor time (ms of the audio on this connection) → seconds of the session's audio."""
        v = max(0, round(ms * self.rate / 1000))
        shift = 0
        for at, n in self.inserted:
            if v >= at + n:
                shift += n
            elif v > at:
                shift += v - at
            else:
                break
        return (v - shift) / self.rate


class AssemblyAIRecognizerBase(Recognizer, abc.ABC):
    """One AssemblyAI session = one connection per channel; subclasses speak the generation."""

    generation: ClassVar[Literal["v3", "v2"]]
    min_chunk_seconds: ClassVar[float]
    max_chunk_seconds: ClassVar[float]
    #: the service wants audio at about real time; a short burst is tolerated
    max_replay_speed: ClassVar[float] = 1.0
    replay_burst_seconds: ClassVar[float] = 1.0

    # Tunables; class attributes so tests (and instances) can shrink them.
    chunk_seconds: float = 0.1
    keepalive_after: float = 5.0
    open_timeout: float = 10.0
    close_timeout: float = 2.0
    drain_timeout: float = 30.0  # after the end-of-session message, wait this long for the end
    report_wait: float = 5.0  # how long send() lets results() report a failure first

    def __init__(self, config: RecognizerConfig, settings: Settings):
        super().__init__(config, settings)
        self._conns: list[Connection] = []
        self._queue: asyncio.Queue[Transcript | VendorError | int | None] = asyncio.Queue()
        self._lock = asyncio.Lock()
        self._carry = b""
        self._keepalive: asyncio.Task[None] | None = None
        self._finished = False
        self._closed = False
        self._secrets: tuple[str, ...] = ()
        self._reported = asyncio.Event()  # results() has raised the session's failure

    # --- generation hooks ------------------------------------------------------------------------

    @abc.abstractmethod
    def _base_url(self) -> str:
        """The WebSocket URL without query."""

    @abc.abstractmethod
    def _token_url(self) -> str:
        """Where temporary tokens are minted."""

    @abc.abstractmethod
    def _params(self, token: str | None) -> list[tuple[str, str]]:
        """The connection's query parameters."""

    @abc.abstractmethod
    async def _opened(self, conn: Connection) -> None:
        """Wait for the session start and set up ``conn.state``; raise VendorError if refused."""

    @abc.abstractmethod
    def _audio_frame(self, pcm: bytes) -> bytes | str:
        """One audio message."""

    @abc.abstractmethod
    def _end_frame(self) -> str:
        """The end-of-session message."""

    @abc.abstractmethod
    def _handle(self, conn: Connection, frame: str | bytes) -> None:
        """Act on one server message (queue results, note errors, mark the end)."""

    @abc.abstractmethod
    async def _idle(self, conn: Connection) -> None:
        """Keep a connection that had nothing to send for ``keepalive_after`` seconds alive."""

    # --- connections -----------------------------------------------------------------------------

    @property
    def _min_frames(self) -> int:
        return math.ceil(self.min_chunk_seconds * self.config.rate)

    @property
    def _chunk_frames(self) -> int:
        frames = max(self._min_frames, round(self.chunk_seconds * self.config.rate))
        return min(frames, math.floor(self.max_chunk_seconds * self.config.rate))

    async def _auth(self) -> tuple[dict[str, str], str | None]:
        """Headers and token for one connection (a fresh token each time when minting)."""
        s = self.settings
        key = s.assemblyai_api_key.get_secret_value() if s.assemblyai_api_key else ""
        token = s.assemblyai_token.get_secret_value() if s.assemblyai_token else ""
        self._secrets = tuple(x for x in (*self._secrets, key, token) if x)
        if token:
            return {}, token
        if not key:
            raise VendorAuthError("AssemblyAI credentials are missing: set ASSEMBLYAI_API_KEY (or "
                                  "VOXQ_ASSEMBLYAI_TOKEN) in the worker's environment",
                                  vendor=self.name)
        if s.assemblyai_temporary_tokens:
            minted = await mint_token(self._token_url(), key, self.generation, self.name,
                                      timeout=self.open_timeout)
            self._secrets += (minted,)
            return {}, minted
        return {"Authorization": key}, None

    def _where(self) -> str:
        """The endpoint for messages: scheme, host and path, never a query."""
        parts = urlsplit(self._base_url())
        return f"{parts.scheme}://{parts.hostname}{parts.path}"

    async def _open(self, channel: int) -> Connection:
        """Open and start one connection; handshake and start failures become VendorErrors."""
        base = self._base_url()
        if urlsplit(base).scheme not in ("ws", "wss"):
            raise VendorRejected(f"invalid AssemblyAI URL {self._where()!r}: needs ws:// or wss://",
                                 vendor=self.name)
        headers, token = await self._auth()
        try:
            ws = await connect(build_url(base, self._params(token)), additional_headers=headers,
                               compression=None, open_timeout=self.open_timeout,
                               close_timeout=self.close_timeout, max_size=MAX_SERVER_FRAME,
                               logger=WS_LOG, user_agent_header=f"voxq/{__version__}")
        except InvalidStatus as e:
            raise http_error(self.name, e.response.status_code, bytes(e.response.body or b""),
                             self._secrets) from None
        except InvalidURI:
            raise VendorRejected(f"invalid AssemblyAI URL {self._where()!r}",
                                 vendor=self.name) from None
        except InvalidHandshake as e:
            raise VendorRetryable(f"WebSocket handshake with {self._where()} failed: "
                                  f"{type(e).__name__}", vendor=self.name) from None
        except (OSError, TimeoutError) as e:
            raise VendorRetryable(f"cannot connect to {self._where()}: {e or type(e).__name__}",
                                  vendor=self.name) from None
        conn = Connection(channel=channel, ws=ws, rate=self.config.rate)
        try:
            await self._opened(conn)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), self.close_timeout)
            raise
        conn.reader = asyncio.create_task(self._read(conn), name=f"{self.name}-read-{channel}")
        return conn

    async def _first_message(self, conn: Connection, decode: Any, error_type: type) -> Any:
        """The first message that is not an error frame, or the error the service closed with."""
        try:
            while True:
                frame = await asyncio.wait_for(conn.ws.recv(), self.open_timeout)
                msg = decode(frame)
                if isinstance(msg, error_type):
                    conn.error_text = str(getattr(msg, "text", ""))
                    continue
                return msg
        except ConnectionClosed as e:
            raise self._close_failure(conn, e) from None
        except TimeoutError:
            raise VendorRetryable(f"the service did not start the session within "
                                  f"{self.open_timeout:g} s", vendor=self.name) from None
        except ValueError as e:  # the generation's ProtocolError
            raise VendorRetryable(f"malformed first message from the service: {e}",
                                  vendor=self.name) from None

    def _close_failure(self, conn: Connection, e: ConnectionClosed) -> VendorError:
        code = e.rcvd.code if e.rcvd is not None else None
        reason = e.rcvd.reason if e.rcvd is not None else ""
        return close_error(self.name, code, reason, conn.error_text, self._secrets)

    @contextlib.asynccontextmanager
    async def _failures(self) -> AsyncIterator[None]:
        """Raise a session failure from send()/finish() only after results() raised it (or a
        moment passed): the worker writes each result before it asks for the next one, so every
        final that came before the failure is durable before the audio side gives up."""
        try:
            yield
        except VendorError:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reported.wait(), self.report_wait)
            raise

    def _live(self) -> list[Connection]:
        """The connections; raises the first failure, or if the recognizer is closed."""
        if self._closed or not self._conns:
            raise VendorRetryable("the recognizer is not open", vendor=self.name)
        for conn in self._conns:
            if conn.failure is not None:
                raise conn.failure
        return self._conns

    async def _failure_of(self, conn: Connection) -> VendorError:
        """Why a socket closed under a send: the reader's verdict, waited for briefly."""
        if conn.reader is not None and not conn.reader.done():
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(conn.reader), self.close_timeout)
        return conn.failure or VendorRetryable("the connection closed while sending",
                                               vendor=self.name)

    async def _transmit(self, conn: Connection, frame: bytes | str) -> None:
        """Send one message; a closed socket raises the connection's error."""
        try:
            await conn.ws.send(frame)
        except ConnectionClosed:
            raise await self._failure_of(conn) from None
        conn.last_sent = time.monotonic()

    async def _send_audio(self, conn: Connection, pcm: bytes, pad_frames: int = 0) -> None:
        """One audio message of ``pcm`` plus ``pad_frames`` of silence (recorded as inserted)."""
        real = len(pcm) // 2
        await self._transmit(conn, self._audio_frame(pcm + bytes(2 * pad_frames)))
        if pad_frames:
            conn.inserted.append([conn.frames + real, pad_frames])
        conn.frames += real + pad_frames

    async def _drain(self, conn: Connection) -> None:
        """Send whole chunks of the connection's buffer."""
        size = 2 * self._chunk_frames
        while len(conn.buf) >= size:
            piece = bytes(conn.buf[:size])
            del conn.buf[:size]
            await self._send_audio(conn, piece)

    async def _flush(self, conn: Connection, pad: bool) -> None:
        """Send what is buffered if it is long enough (or, with ``pad``, padded to the minimum)."""
        await self._drain(conn)
        tail = len(conn.buf) // 2
        if tail >= self._min_frames or (pad and tail):
            piece = bytes(conn.buf)
            conn.buf.clear()
            await self._send_audio(conn, piece, max(0, self._min_frames - tail))

    # --- Recognizer ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open one connection per channel (all or none) and start the keep-alive timer."""
        if self.config.channels > 1 and self.settings.assemblyai_token is not None:
            raise VendorRejected("VOXQ_ASSEMBLYAI_TOKEN is a single-use token but a two-channel "
                                 "session opens one connection per channel: set "
                                 "ASSEMBLYAI_API_KEY instead", vendor=self.name)
        opened = await asyncio.gather(*(self._open(c) for c in range(self.config.channels)),
                                      return_exceptions=True)
        conns = [c for c in opened if isinstance(c, Connection)]
        errors = [e for e in opened if isinstance(e, BaseException)]
        if errors:
            for conn in conns:
                await self._shut(conn)
            raise errors[0]
        self._conns = conns
        self._keepalive = asyncio.create_task(self._keep_alive(), name=f"{self.name}-keepalive")

    async def send(self, pcm: bytes) -> None:
        """Split the channels and send each in messages of ``chunk_seconds``."""
        if not pcm:
            return
        async with self._lock, self._failures():
            conns = self._live()
            channels = self.config.channels
            data = self._carry + pcm
            whole = len(data) // (2 * channels) * (2 * channels)
            self._carry = data[whole:]
            if channels == 1:
                conns[0].buf += data[:whole]
            else:
                frames = np.frombuffer(data[:whole], "<i2").reshape(-1, channels)
                for conn in conns:
                    conn.buf += frames[:, conn.channel].tobytes()
            for conn in conns:
                await self._drain(conn)

    async def finish(self) -> None:
        """Send what is buffered and the end-of-session message; results() ends after the last
        finals of every connection."""
        async with self._lock, self._failures():
            if self._finished:
                return
            self._finished = True
            for conn in self._live():
                await self._flush(conn, pad=True)
                conn.ended = True
                await self._transmit(conn, self._end_frame())

    async def _keep_alive(self) -> None:
        """Every connection that sent nothing for ``keepalive_after`` seconds gets kept alive."""
        while not (self._finished or self._closed):
            due = min(c.last_sent for c in self._conns) + self.keepalive_after
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            async with self._lock:
                if self._finished or self._closed:
                    return
                for conn in self._conns:
                    if conn.failure is not None or conn.ended:
                        return
                    if time.monotonic() - conn.last_sent >= self.keepalive_after:
                        try:
                            await self._idle(conn)
                        except VendorError:
                            return  # the reader, send() and results() report it

    async def _read(self, conn: Connection) -> None:
        """Handle one connection's messages until it ends or fails."""
        try:
            while True:
                try:
                    if conn.ended:
                        frame = await asyncio.wait_for(conn.ws.recv(), self.drain_timeout)
                    else:
                        frame = await conn.ws.recv()
                except TimeoutError:
                    raise VendorRetryable(
                        f"the service did not end the session within {self.drain_timeout:g} s "
                        "of the end of the audio", vendor=self.name) from None
                except ConnectionClosed as e:
                    if conn.ended and e.rcvd is not None and e.rcvd.code == 1000:
                        raise VendorRetryable("the service closed the session without confirming "
                                              "its end", vendor=self.name, code=1000) from None
                    raise self._close_failure(conn, e) from None
                try:
                    self._handle(conn, frame)
                except ValueError as e:  # the generation's ProtocolError
                    raise VendorRetryable(f"malformed message from the service: {e}",
                                          vendor=self.name) from None
                if conn.done:
                    return
        except VendorError as e:
            conn.failure = e
            self._queue.put_nowait(e)

    def _ended(self, conn: Connection) -> None:
        """The service confirmed the end of one connection."""
        if not conn.done:
            conn.done = True
            self._queue.put_nowait(conn.channel)

    async def results(self) -> AsyncIterator[Transcript]:
        """Results of every connection as they arrive, until each one has ended."""
        remaining = {c.channel for c in self._conns}
        while remaining:
            item = await self._queue.get()
            if item is None:
                return
            if isinstance(item, VendorError):
                self._reported.set()
                raise item
            if isinstance(item, int):
                remaining.discard(item)
                continue
            yield item

    async def _shut(self, conn: Connection) -> None:
        if conn.reader is not None:
            conn.reader.cancel()
            await asyncio.gather(conn.reader, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.ws.close(), self.close_timeout)

    async def close(self) -> None:
        """Stop the keep-alive and readers and close every socket; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._keepalive is not None:
            self._keepalive.cancel()
            await asyncio.gather(self._keepalive, return_exceptions=True)
        for conn in self._conns:
            await self._shut(conn)
        self._reported.set()
        self._queue.put_nowait(None)
