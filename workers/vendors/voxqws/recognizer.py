"""`voxq-ws` recognizer: one WebSocket per session speaking workers.vendors.voxqws.protocol."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import ClassVar
from urllib.parse import urlencode

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.protocol import State

from voxq.settings import Settings
from workers.vendors.base import (
    Recognizer,
    RecognizerConfig,
    Transcript,
    VendorAuthError,
    VendorError,
    VendorRejected,
    VendorRetryable,
)
from workers.vendors.voxqws import protocol

KEEPALIVE_AFTER_S = 5.0
_MASKS = protocol.MaskSource()


def handshake_error(e: Exception, vendor: str) -> VendorError:
    """Map a failed WebSocket handshake to the error class that says whether to retry."""
    if isinstance(e, InvalidStatus):
        status = e.response.status_code
        body = e.response.body.decode(errors="replace")[:300] if e.response.body else ""
        msg = f"handshake refused: HTTP {status}{': ' + body if body else ''}"
        if status in (401, 403):
            return VendorAuthError(msg, vendor=vendor, code=status)
        if status == 429 or status >= 500:
            return VendorRetryable(msg, vendor=vendor, code=status)
        return VendorRejected(msg, vendor=vendor, code=status)
    return VendorRetryable(f"cannot connect: {e}", vendor=vendor)


class VoxqWsRecognizer(Recognizer):
    """Streams PCM to a voxq-ws server and yields its results."""

    name: ClassVar[str] = "voxq-ws"
    #: a server that stops answering pings (stalled, half-open socket) is dropped and retried
    ping_interval: ClassVar[float] = 5.0
    ping_timeout: ClassVar[float] = 10.0
    #: a server that never says done after finish is retried
    finish_timeout: ClassVar[float] = 30.0

    def __init__(self, config: RecognizerConfig, settings: Settings):
        super().__init__(config, settings)
        self._ws: ClientConnection | None = None
        self._queue: asyncio.Queue[Transcript | VendorError | None] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._last_send = time.monotonic()
        self._finished = False

    async def start(self) -> None:
        """Connect and wait for the server's ready message."""
        base = self.settings.voxqws_url
        if not base:
            raise VendorRejected("no server configured: set VOXQ_WS_URL", vendor=self.name)
        c = self.config
        url = f"{base}{'&' if '?' in base else '?'}" + urlencode(
            {"session": c.session_id, "rate": self.input_rate, "channels": c.channels,
             "language": c.language})
        headers = {}
        if self.settings.voxqws_key is not None:
            headers["Authorization"] = f"Bearer {self.settings.voxqws_key.get_secret_value()}"
        try:
            self._ws = await websockets.connect(url, additional_headers=headers,
                                                compression=None, open_timeout=10,
                                                max_size=2**20, ping_interval=self.ping_interval,
                                                ping_timeout=self.ping_timeout)
            first = protocol.decode_server(await asyncio.wait_for(self._ws.recv(), 10))
        except (InvalidHandshake, OSError, TimeoutError) as e:
            raise handshake_error(e, self.name) from e
        except ConnectionClosed as e:
            raise VendorRetryable(f"closed before ready: {e}", vendor=self.name) from e
        except protocol.ProtocolError as e:
            raise VendorRetryable(f"bad first message: {e}", vendor=self.name) from e
        if isinstance(first, protocol.ServerError):
            raise self._error(first)
        if first != "ready":
            raise VendorRetryable(f"expected ready, got {first!r}", vendor=self.name)
        self._tasks = [asyncio.create_task(self._receive()),
                       asyncio.create_task(self._keepalive())]

    def _error(self, e: protocol.ServerError) -> VendorError:
        cls = VendorRetryable if e.retryable else VendorRejected
        return cls(e.message, vendor=self.name, code=e.code)

    async def _receive(self) -> None:
        assert self._ws is not None
        try:
            async for raw in self._ws:
                msg = protocol.decode_server(raw)
                if isinstance(msg, Transcript):
                    self._queue.put_nowait(msg)
                elif isinstance(msg, protocol.ServerError):
                    self._queue.put_nowait(self._error(msg))
                    return
                elif msg == "done":
                    self._queue.put_nowait(None)
                    return
            self._queue.put_nowait(VendorRetryable("server closed the stream early",
                                                   vendor=self.name))
        except ConnectionClosed as e:
            self._queue.put_nowait(VendorRetryable(f"connection lost: {e}", vendor=self.name))
        except protocol.ProtocolError as e:
            self._queue.put_nowait(VendorRetryable(str(e), vendor=self.name))

    async def _keepalive(self) -> None:
        """Keep the session open through long silences (no audio sent); wakes only when a
        keepalive could be due, not on a fixed tick (thousands of sessions share a core)."""
        while not self._finished:
            await asyncio.sleep(max(0.5, KEEPALIVE_AFTER_S - (time.monotonic() - self._last_send)))
            if time.monotonic() - self._last_send >= KEEPALIVE_AFTER_S and self._ws:
                with contextlib.suppress(ConnectionClosed):
                    await self._ws.send(protocol.KEEPALIVE)
                    self._last_send = time.monotonic()

    async def send(self, pcm: bytes) -> None:
        """One binary frame of PCM."""
        assert self._ws is not None
        try:
            await self._ws.send(pcm)
        except ConnectionClosed as e:
            raise VendorRetryable(f"connection lost: {e}", vendor=self.name) from e
        self._last_send = time.monotonic()

    def send_nowait(self, pcm: bytes) -> bool:
        """One binary frame written straight to the socket when it is open, no fragmented
        message is being sent, nothing is queued in user space and no extension was
        negotiated; else False (``send`` then waits for room or raises the connection's
        error). The frame is built here, with a mask from a pooled strong random source, so
        a chunk costs one socket write and no per-frame getrandom call."""
        ws = self._ws
        if (ws is None or ws.protocol.state is not State.OPEN or ws.send_in_progress is not None
                or ws.protocol.extensions or ws.protocol.expect_continuation_frame
                or ws.transport.get_write_buffer_size()):
            return False
        ws.transport.write(protocol.client_binary_frame(pcm, _MASKS.next()))
        self._last_send = time.monotonic()
        return True

    async def finish(self) -> None:
        """Ask for the last finals."""
        assert self._ws is not None
        self._finished = True
        try:
            await self._ws.send(protocol.FINISH)
        except ConnectionClosed as e:
            raise VendorRetryable(f"connection lost: {e}", vendor=self.name) from e

    async def results(self) -> AsyncIterator[Transcript]:
        """Results until the server says done."""
        while True:
            if self._finished and self._queue.empty():
                try:
                    item = await asyncio.wait_for(self._queue.get(), self.finish_timeout)
                except TimeoutError:
                    raise VendorRetryable(f"no end of results {self.finish_timeout:g}s after "
                                          "finish", vendor=self.name) from None
            else:
                item = await self._queue.get()
            if item is None:
                return
            if isinstance(item, VendorError):
                raise item
            yield item

    async def close(self) -> None:
        """Close the socket and stop the helper tasks."""
        self._finished = True
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), 2)
        self._queue.put_nowait(None)
