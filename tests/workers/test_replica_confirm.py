"""VOXQ_WAIT_REPLICAS on the worker: a session's final status is confirmed on a replica before
its control entry is acknowledged; while the replica lags the entry stays pending and is
acknowledged later (by whoever takes it over), so a failover cannot leave a session that is
neither finished nor owned."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import redis

from tests.emulators.watermark import WatermarkEmulator, watermark_pcm
from tests.support import create, publish, wait_finished
from voxq.aio import within
from voxq.embedded_redis import RedisServer
from voxq.keys import TRANSCRIBERS_GROUP, Keys
from voxq.redis_conn import connect
from voxq.settings import Settings
from workers.transcriber import Transcriber


def wait_linked(replica: redis.Redis, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while replica.info("replication").get("master_link_status") != "up":
        assert time.monotonic() < deadline, "replica never linked"
        time.sleep(0.05)


async def test_status_reaches_the_replica_before_the_ack(prefix: str) -> None:
    keys = Keys(prefix)
    with RedisServer() as primary, \
            RedisServer(extra_args=("--replicaof", "127.0.0.1", str(primary.port))) as replica, \
            WatermarkEmulator() as emu:
        rep = redis.Redis.from_url(replica.url, decode_responses=True)
        wait_linked(rep)
        settings = Settings(redis_url=primary.url, prefix=prefix, wait_replicas=1,
                            wait_timeout_ms=300, voxqws_url=emu.url, claim_timeout_seconds=1.0)
        w = Transcriber(settings, primary.url, name="waiter")
        stop = asyncio.Event()
        task = asyncio.create_task(w.run(stop))
        r = connect(primary.url)
        try:
            # healthy replica: finished, on the replica too, and acknowledged
            await create(r, keys, "rc1", vendor="voxq-ws")
            await publish(r, keys, "rc1", watermark_pcm(10))
            await wait_finished(r, keys, "rc1")
            assert rep.hget(keys.meta("rc1"), "status") == "finished"
            for _ in range(100):
                if await r.xlen(keys.sessions) == 0:
                    break
                await asyncio.sleep(0.05)
            assert await r.xlen(keys.sessions) == 0

            # stalled replica: the status is on the primary only, so the entry is not acked
            assert replica.proc is not None
            os.kill(replica.proc.pid, signal.SIGSTOP)
            try:
                await create(r, keys, "rc2", vendor="voxq-ws")
                await publish(r, keys, "rc2", watermark_pcm(10))
                await wait_finished(r, keys, "rc2")
                await asyncio.sleep(0.5)  # past the 300 ms WAIT
                pending = await r.xpending(keys.sessions, TRANSCRIBERS_GROUP)
                assert pending["pending"] == 1
            finally:
                os.kill(replica.proc.pid, signal.SIGCONT)
            # the replica catches up; the stale entry is taken over, found finished, acked
            for _ in range(200):
                if await r.xlen(keys.sessions) == 0:
                    break
                await asyncio.sleep(0.05)
            assert await r.xlen(keys.sessions) == 0
            assert rep.hget(keys.meta("rc2"), "status") == "finished"
        finally:
            stop.set()
            await within(task, 30)
            await r.aclose()
            rep.close()
