"""One stalled shard (its primary SIGSTOPped, as under a network stall) holds back only the
worker's commands for that shard: batched writes and the claim refresh's epoch reads on the
other primaries go on answering."""

from __future__ import annotations

import asyncio
import os
import signal

import redis.asyncio as aioredis

from tests.cluster.clustertest_support import sids_on_every_primary
from tests.support import create
from voxq.aio import within
from voxq.keys import Keys
from voxq.redis_cluster import RedisClusterServer
from workers.ownership import Ownership

# The stall lasts well under the cluster's 1 s node timeout: no failover, just a silent primary.


async def test_a_stalled_shard_holds_back_only_its_own_commands(
        cluster: RedisClusterServer, cr: aioredis.Redis, keys: Keys) -> None:
    sids = sids_on_every_primary(cluster, "stall", keys)
    for sid in sids:
        await create(cr, keys, sid)
    own = Ownership(cr, keys, "w-stall")
    try:
        epochs = {sid: await own.claim(sid) for sid in sids}
        assert await own.epochs_within(sids, timeout=2.0) == epochs
        stuck = sids[0]
        stalled = cluster.primary_of_key(keys.meta(stuck))
        healthy = [s for s in sids if s != stuck]
        assert stalled.server.proc is not None
        os.kill(stalled.server.proc.pid, signal.SIGSTOP)
        try:
            # a write for the stalled shard is in flight (and stays there) ...
            blocked = asyncio.ensure_future(own.batcher.execute(
                "HSET", keys.meta(stuck), "probe", "1"))
            await asyncio.sleep(0.05)
            # ... while two refresh rounds of epoch reads answer for every other shard
            for _ in range(2):
                got = await own.epochs_within(sids, timeout=0.25)
                assert got == {s: epochs[s] for s in healthy}
            # and writes to the healthy shards complete while it is still stalled (the bound
            # only keeps a blocked write from hanging the test)
            for s in healthy:
                assert await within(
                    own.batcher.execute("HSET", keys.meta(s), "probe", "1"), 30) == 1
            assert not blocked.done()
        finally:
            os.kill(stalled.server.proc.pid, signal.SIGCONT)
        assert await within(blocked, 15) == 1  # the shard answers once it resumes
        assert await own.epochs_within(sids, timeout=2.0) == epochs
    finally:
        await own.aclose()
