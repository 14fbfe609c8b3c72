"""`/v1/ingest/jambonz`: a jambonz ``listen`` connection (subprotocol ``audio.jambonz.org``):
one JSON preamble, then binary 16-bit PCM; a normal close ends the session."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosedOK

from producer.ingest.core import CloseCode, Dialect, Gateway, IngestSession, RateGate, Rejected
from producer.ingest.jambonz_protocol import parse_preamble
from producer.ingest.session_guard import guarded


async def handle_jambonz(ws: ServerConnection, gw: Gateway, query: Mapping[str, list[str]]) -> None:
    """Serve one jambonz listen connection."""
    sess: IngestSession | None = None
    async with guarded(ws, Dialect.JAMBONZ, lambda: sess):
        first = await ws.recv()
        if not isinstance(first, str):
            raise Rejected("audio before the JSON preamble", CloseCode.POLICY)
        pre = parse_preamble(first)
        sess = IngestSession(gw, Dialect.JAMBONZ)
        await sess.open(pre.spec())
        frame = 2 * pre.channels
        gate = RateGate(gw.settings.ingest_max_bytes_per_second)
        try:
            while True:
                msg = await ws.recv()
                now = time.monotonic()
                if isinstance(msg, str):
                    continue  # jambonz may send further JSON (e.g. DTMF events): nothing to publish
                if len(msg) % frame:
                    raise Rejected(f"a {len(msg)}-byte frame is not whole 16-bit frames of "
                                   f"{pre.channels} channel(s)", CloseCode.INVALID, "audio")
                await sess.send(msg, now)
                if wait := gate.delay(len(msg), now):
                    await asyncio.sleep(wait)
        except ConnectionClosedOK:
            await sess.close()  # the call ended: end of stream
