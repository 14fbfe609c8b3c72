"""`/v1/ingest/raw?fallback=`: the session gets its fallback vendors; a bad list closes the
connection with the reason and creates nothing."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from ingesttest_support import KEY, Running, wait_eos
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from producer.ingest.raw_protocol import Rejected, apply_config, config_from_query
from voxq.keys import Keys
from voxq.sessions import get_meta

pytestmark = pytest.mark.timeout(60)


def test_fallback_from_query_and_first_message() -> None:
    assert config_from_query({"fallback": ["aws, local"]}).spec().fallback == ("aws", "local")
    cfg = apply_config(config_from_query({}), {"fallback": ["voxq-ws"]})
    assert cfg.spec().fallback == ("voxq-ws",)
    with pytest.raises(Rejected, match="fallback"):
        apply_config(config_from_query({}), {"fallback": 3})


async def test_fallback_reaches_the_session(gateway: Running, r: aioredis.Redis,
                                            keys: Keys) -> None:
    url = gateway.url("raw", f"key={KEY}&session=fbq&format=s16&fallback=voxq-ws,deepgram")
    async with connect(url) as ws:
        await ws.send(b"\0\0" * 1600)
        await ws.send("Done")
        with pytest.raises(ConnectionClosed):
            while True:
                await ws.recv()
    await wait_eos(r, keys, "fbq")
    assert (await get_meta(r, keys, "fbq")).fallback == ("voxq-ws", "deepgram")


async def test_unknown_fallback_closes_and_creates_nothing(gateway: Running, r: aioredis.Redis,
                                                          keys: Keys) -> None:
    async with connect(gateway.url("raw", f"key={KEY}&session=fbx&fallback=aws,bogus")) as ws:
        with pytest.raises(ConnectionClosed):
            await ws.send(b"\0\0\0\0")
            await ws.recv()
    assert ws.close_code == 1008 and "bogus" in (ws.close_reason or ""), ws.close_reason
    assert not await r.exists(keys.meta("fbx"))
