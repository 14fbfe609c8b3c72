"""Worker takeover on a Redis Cluster: SIGKILL the worker driving sessions on every primary; the
survivor takes them over from their checkpoints and every transcript is exact. Also pins the
worker fix it needed (the reader loads the slot map; the batcher re-reads it after a lost node)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.cluster.clustertest_support import (
    WorkerProcs,
    assert_exact,
    owner_changes,
    sids_on_every_primary,
    wait_finals,
)
from tests.emulators.watermark import WatermarkEmulator, watermark_pcm
from tests.support import create, publish
from voxq.aio import within
from voxq.keys import Keys
from voxq.redis_cluster import RedisClusterServer
from voxq.settings import Settings
from workers.transcriber import Transcriber

CLAIM_TIMEOUT = 2.0


@pytest.fixture
def emulator() -> Iterator[WatermarkEmulator]:
    with WatermarkEmulator() as emu:
        yield emu


@pytest.fixture
def workers(cenv: dict[str, str], emulator: WatermarkEmulator,
            tmp_path: Path) -> Iterator[WorkerProcs]:
    w = WorkerProcs({**cenv, "VOXQ_WS_URL": emulator.url,
                     "VOXQ_CLAIM_TIMEOUT_SECONDS": str(CLAIM_TIMEOUT)}, tmp_path)
    yield w
    w.stop_all()


async def test_sigkill_owner_on_a_cluster(cluster: RedisClusterServer, workers: WorkerProcs,
                                          cr: aioredis.Redis, keys: Keys) -> None:
    workers.start("ka", "kb")
    sids = sids_on_every_primary(cluster, "tk", keys)
    n = 80
    for sid in sids:
        await create(cr, keys, sid, vendor="voxq-ws")
    feeders = [asyncio.create_task(publish(cr, keys, sid, watermark_pcm(n), realtime=4))
               for sid in sids]
    await wait_finals(cr, keys, sids[0], 2)
    victim = (await cr.hget(keys.meta(sids[0]), "owner")).decode()
    workers.kill(victim)
    took = await owner_changes(cr, keys, sids[0], victim)
    await asyncio.gather(*feeders)
    for sid in sids:
        await assert_exact(cr, keys, sid, n)
        assert (await cr.hget(keys.meta(sid), "owner")).decode() != victim
    print(f"\ncluster: takeover {took:.2f}s after SIGKILL (claim timeout {CLAIM_TIMEOUT}s)")


async def test_cluster_worker_reads_audio_from_its_first_read(
        cluster: RedisClusterServer, csettings: Settings, cr: aioredis.Redis, keys: Keys,
        emulator: WatermarkEmulator) -> None:
    """A fresh worker on a cluster relays every chunk and finishes the session (its reader
    must load the slot map before it groups streams by node)."""
    w = Transcriber(csettings.model_copy(update={"voxqws_url": emulator.url}), cluster.url,
                    name="cw-first")
    stop = asyncio.Event()
    task = asyncio.create_task(w.run(stop))
    try:
        sid = sids_on_every_primary(cluster, "ns", keys)[0]
        await create(cr, keys, sid, vendor="voxq-ws")
        await publish(cr, keys, sid, watermark_pcm(20))
        await assert_exact(cr, keys, sid, 20)
        assert w.stats.statuses == {"finished": 1}
    finally:
        stop.set()
        await within(task, 30)


async def test_cluster_batcher_follows_a_failover(cluster: RedisClusterServer,
                                                               keys: Keys) -> None:
    from voxq.redis_conn import connect
    from workers.batcher import Batcher

    r = connect(cluster.url)
    await r.initialize()
    b = Batcher(r)
    try:
        key = keys.meta("batcher")
        await b.execute("SET", key, "1")
        primary = cluster.primary_of_key(key)
        cluster.kill(primary)
        await asyncio.to_thread(cluster.wait_promoted, primary)
        # only this batcher talks to the cluster: nothing else refreshes its slot map; a
        # batcher stuck on the dead node fails every try until the bound
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            try:
                assert await b.execute("GET", key) == b"1"
                return
            except RedisConnectionError:
                assert asyncio.get_running_loop().time() < deadline, "stuck on the dead node"
                await asyncio.sleep(0.2)
    finally:
        await b.aclose()
        await r.aclose()
