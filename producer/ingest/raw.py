"""`/v1/ingest/raw`: one connection of binary PCM frames becomes one session (seed tutorial,
sherpa-onnx, vosk and WhisperLive clients unchanged but for the URL); ``?results=1`` sends the
transcript back, ``?resume=1`` continues a session after a dropped connection."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Mapping

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from producer.ingest.core import CloseCode, Dialect, Gateway, IngestSession, RateGate, Rejected
from producer.ingest.raw_protocol import (
    END_BINARY,
    RawConfig,
    TextKind,
    apply_config,
    config_from_query,
    parse_text,
    to_bus_pcm,
)
from producer.ingest.results import follow
from producer.ingest.session_guard import guarded
from voxq.aio import cancel_and_wait


def ready_message(sess: IngestSession) -> str:
    """The first reply: the session and how many sample frames Redis already holds."""
    return json.dumps({"event": "ready", "session": sess.session_id,
                       "acked_samples": sess.acked_frames}, separators=(",", ":"))


class RawConnection:
    """State of one raw connection."""

    def __init__(self, ws: ServerConnection, gw: Gateway, query: Mapping[str, list[str]]):
        self.ws = ws
        self.gw = gw
        self.cfg: RawConfig = config_from_query(query)
        self.sess: IngestSession | None = None
        self.follower: asyncio.Task[None] | None = None

    async def start(self) -> IngestSession:
        """Open (or resume) the session, say ``ready``, start sending results if asked."""
        sess = IngestSession(self.gw, Dialect.RAW)
        await sess.open(self.cfg.spec(), resume=self.cfg.resume)
        self.sess = sess
        with contextlib.suppress(ConnectionClosed):  # frames it sent before leaving still count
            await self.ws.send(ready_message(sess))
        if self.cfg.results:
            self.follower = asyncio.create_task(follow(self.gw, sess.session_id, self.ws.send))
        return sess

    async def run(self) -> None:
        """Read frames until an end marker; then end the session (and finish sending results)."""
        gate = RateGate(self.gw.settings.ingest_max_bytes_per_second)
        sess = await self.start() if self.cfg.resume else None
        while True:
            msg = await self.ws.recv()
            now = time.monotonic()
            if isinstance(msg, str):
                kind, d = parse_text(msg)
                if kind is TextKind.END:
                    break
                if sess is not None:
                    raise Rejected("configuration must come before any audio", CloseCode.POLICY,
                                   "protocol")
                self.cfg = apply_config(self.cfg, d)
                sess = await self.start()
                continue
            if msg == END_BINARY:
                break
            pcm = to_bus_pcm(msg, self.cfg)
            if sess is None:
                sess = await self.start()
            await sess.send(pcm, now)
            if wait := gate.delay(len(msg), now):
                await asyncio.sleep(wait)
        if sess is None:
            sess = await self.start()
        await sess.close()
        if self.follower is not None:
            await self.follower
        await self.ws.close(1000, "end of stream")

    async def cleanup(self) -> None:
        """Stop sending results."""
        if self.follower is not None and not self.follower.done():
            await cancel_and_wait([self.follower])


async def handle_raw(ws: ServerConnection, gw: Gateway, query: Mapping[str, list[str]]) -> None:
    """Serve one raw connection."""
    conn: RawConnection | None = None

    def session() -> IngestSession | None:
        return conn.sess if conn is not None else None

    async with guarded(ws, Dialect.RAW, session):
        conn = RawConnection(ws, gw, query)
        try:
            await conn.run()
        finally:
            await conn.cleanup()
