"""`/v1/ingest/file`: a client sends an encoded file's bytes (WAV, FLAC, OGG, MP3) in frames of
any size, then ``Done``; the gateway decodes as the bytes arrive and publishes as it goes. The
decoder runs on a thread behind a bounded buffer: when Redis or the decoder is slower than the
client, the gateway stops reading the socket."""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

import numpy as np
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from producer.ingest.core import (
    CloseCode,
    Dialect,
    Gateway,
    IngestSession,
    RateGate,
    Rejected,
    SessionSpec,
)
from producer.ingest.file_decode import Container, StreamFile, decode_blocks, sniff
from producer.ingest.raw import ready_message
from producer.ingest.raw_protocol import END_BINARY, TextKind, config_from_query, parse_text
from producer.ingest.results import follow
from producer.ingest.session_guard import guarded
from voxq.aio import cancel_and_wait
from voxq.audio import Converter
from voxq.records import MAX_RATE, MIN_RATE

Feed = Callable[[bytes], Awaitable[None]]
End = Callable[[], Awaitable[None]]
QUEUE_PIECES = 16  # frames a streamed FLAC may have waiting for the decoder


class FileConnection:
    """One upload: the socket side feeds bytes, a decoder thread publishes PCM."""

    def __init__(self, ws: ServerConnection, gw: Gateway, query: Mapping[str, list[str]]):
        self.ws, self.gw, self.query = ws, gw, query
        self.cfg = config_from_query(query)
        self.sess: IngestSession | None = None
        self.loop = asyncio.get_running_loop()
        self.dead = threading.Event()  # the decoder stopped: feeding must not block
        self.follower: asyncio.Task[None] | None = None
        self.converter: Converter | None = None

    # --- decoder thread side ------------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def on_open(self, rate: int, channels: int) -> None:
        """The header is read: open the session at the asked (or the file's own) format."""
        want_rate = self.cfg.rate if "rate" in self.query else \
            (rate if MIN_RATE <= rate <= MAX_RATE else 16000)
        want_ch = self.cfg.channels if "channels" in self.query else min(channels, 2)
        self.converter = Converter(rate, want_rate, want_ch)
        self._call(self._open(want_rate, want_ch))

    def on_block(self, block: np.ndarray) -> None:
        """Publish one decoded block (waits while the publisher's buffer is full)."""
        assert self.converter is not None
        self._call(self._send(self.converter.process(block)))

    def decode(self, source: int | StreamFile) -> None:
        try:
            decode_blocks(source, self.on_open, self.on_block)
            if self.converter is not None:
                tail = self.converter.process(np.zeros((0, 1), np.float32), last=True)
                self._call(self._send(tail))
        finally:
            self.dead.set()

    async def _open(self, rate: int, channels: int) -> None:
        sess = IngestSession(self.gw, Dialect.FILE)
        await sess.open(SessionSpec(self.cfg.session, rate, channels, self.cfg.vendor,
                                    self.cfg.language, self.cfg.options))
        self.sess = sess
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(ready_message(sess))
        if self.cfg.results:
            self.follower = asyncio.create_task(follow(self.gw, sess.session_id, self.ws.send))

    async def _send(self, pcm: bytes) -> None:
        assert self.sess is not None
        await self.sess.send(pcm, self.loop.time())

    # --- socket side --------------------------------------------------------------------------

    async def run(self) -> None:
        head = b""
        while len(head) < 12:
            msg = await self.ws.recv()
            if isinstance(msg, str) or msg == END_BINARY:
                if isinstance(msg, str) and parse_text(msg)[0] is not TextKind.END:
                    raise Rejected("send the file's bytes, then Done", CloseCode.UNSUPPORTED)
                raise Rejected("the file ended before its header", CloseCode.INVALID, "audio")
            head += msg
        container = sniff(head)
        if container is Container.FLAC:
            pieces: queue.Queue[bytes | None] = queue.Queue(QUEUE_PIECES)
            decoder = asyncio.create_task(asyncio.to_thread(self.decode, StreamFile(pieces)))
            feed, end = self._queue_feed(pieces), self._queue_end(pieces)
        else:
            rfd, wfd = os.pipe()
            decoder = asyncio.create_task(asyncio.to_thread(self.decode, rfd))
            feed, end = self._pipe_feed(wfd), self._pipe_end(wfd)
        try:
            gate = RateGate(self.gw.settings.ingest_max_bytes_per_second)
            await feed(head)
            while True:
                msg = await self.ws.recv()
                if wait := gate.delay(len(msg), self.loop.time()):
                    await asyncio.sleep(wait)  # over the per-connection rate
                if isinstance(msg, str):
                    if parse_text(msg)[0] is TextKind.END:
                        break
                    raise Rejected("text frames other than Done are not understood here",
                                   CloseCode.UNSUPPORTED)
                if msg == END_BINARY:
                    break
                if decoder.done():
                    break  # the decoder stopped early (its error is raised below)
                await feed(msg)
        finally:
            await end()
            await asyncio.wait({decoder})
            if container is not Container.FLAC:
                os.close(rfd)
        decoder.result()  # Rejected if the file could not be decoded
        if self.sess is None:
            raise Rejected("the file holds no audio", CloseCode.INVALID, "audio")
        await self.sess.close()
        if self.follower is not None:
            await self.follower
        await self.ws.close(1000, "end of file")

    def _pipe_feed(self, wfd: int) -> Feed:
        def write_all(data: bytes) -> None:
            view = memoryview(data)
            while view:
                try:
                    view = view[os.write(wfd, view):]
                except BrokenPipeError:  # the decoder is gone
                    return

        async def feed(data: bytes) -> None:
            await asyncio.to_thread(write_all, data)
        return feed

    def _pipe_end(self, wfd: int) -> End:
        async def end() -> None:
            with contextlib.suppress(OSError):
                os.close(wfd)
        return end

    def _queue_feed(self, pieces: queue.Queue[bytes | None]) -> Feed:
        def put(data: bytes | None) -> None:
            while not self.dead.is_set():
                try:
                    pieces.put(data, timeout=0.2)
                    return
                except queue.Full:
                    continue

        async def feed(data: bytes) -> None:
            await asyncio.to_thread(put, data)
        self._put: Callable[[bytes | None], None] = put
        return feed

    def _queue_end(self, pieces: queue.Queue[bytes | None]) -> End:
        async def end() -> None:
            await asyncio.to_thread(self._put, None)
        return end


async def handle_file(ws: ServerConnection, gw: Gateway, query: Mapping[str, list[str]]) -> None:
    """Serve one file upload."""
    conn: FileConnection | None = None
    async with guarded(ws, Dialect.FILE, lambda: conn.sess if conn else None):
        conn = FileConnection(ws, gw, query)
        try:
            await conn.run()
        finally:
            if conn.follower is not None and not conn.follower.done():
                await cancel_and_wait([conn.follower])
