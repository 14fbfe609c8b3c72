"""Bounds of the gateway against a real Redis: message size, sessions per process, and
backpressure (when Redis stops taking writes the gateway stops reading, never buffers more)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest
import redis.asyncio as aioredis
from ingesttest_support import KEY, Running, gateway_settings, pcm_of, running, wait_eos
from prometheus_client import REGISTRY
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from voxq.embedded_redis import RedisServer
from voxq.keys import Keys
from voxq.redis_conn import connect as redis_connect
from voxq.settings import Settings

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def small(settings: Settings) -> AsyncIterator[Running]:
    s = gateway_settings(settings, ingest_max_message_bytes=4096, ingest_max_sessions=1)
    async with running(s) as g:
        yield g


async def test_oversized_message_closes_1009(small: Running) -> None:
    async with connect(small.url("raw", f"key={KEY}&format=s16"), max_size=None) as ws:
        await ws.send(bytes(8192))
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert ws.close_code == 1009


async def test_sessions_per_process_are_bounded(small: Running, r: aioredis.Redis,
                                                keys: Keys) -> None:
    async with connect(small.url("raw", f"key={KEY}&format=s16&session=one")) as ws:
        await ws.send(bytes(3200))
        await ws.recv()  # ready: the one session this process may hold
        with pytest.raises(InvalidStatus) as e:
            async with connect(small.url("raw", f"key={KEY}&format=s16&session=two")):
                pass
        assert e.value.response.status_code == 503
        await ws.send("Done")
    await wait_eos(r, keys, "one")
    assert not await r.exists(keys.meta("two"))


async def test_a_stalled_redis_stops_reading_the_socket(prefix: str) -> None:
    with RedisServer() as own:
        settings = Settings(redis_url=own.url, prefix=prefix, producer_buffer_chunks=4)
        keys = Keys(prefix)
        pcm = np.arange(200 * 1600, dtype="<i2").tobytes()  # 200 chunks of 100 ms
        admin = redis_connect(own.url)

        def frames() -> float:
            return REGISTRY.get_sample_value("voxq_ingest_frames_total", {"dialect": "raw"}) or 0.0

        try:
            async with running(gateway_settings(settings)) as g:
                async with connect(g.url("raw", f"key={KEY}&format=s16&session=bp")) as ws:
                    await ws.send(pcm[:3200])
                    await ws.recv()  # ready: the session exists
                    await admin.execute_command("CLIENT", "PAUSE", "4000", "WRITE")
                    before = frames()

                    async def push() -> None:
                        for i in range(3200, len(pcm), 3200):
                            await ws.send(pcm[i:i + 3200])
                        await ws.send("Done")

                    pusher = asyncio.create_task(push())
                    await asyncio.sleep(2.0)
                    read_while_paused = frames() - before
                    # buffer (4) + one send waiting + websockets' queue: nowhere near 199
                    assert read_while_paused <= 4 + 1 + 4 + 4, read_while_paused
                    await admin.execute_command("CLIENT", "UNPAUSE")
                    async with asyncio.timeout(60):
                        await pusher
                async with redis_connect(own.url) as r:
                    assert pcm_of(await wait_eos(r, keys, "bp")) == pcm
        finally:
            await admin.aclose()
