"""The Publisher's replica confirmation (wait_replicas) on a single primary with a replica, as
behind Sentinel: chunks count as delivered only once the replica has them; a stalled replica
holds them back without losing or duplicating any; a primary without replicas is held to the
replicas it has."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator

import pytest
import redis

from producer.publisher import Publisher
from voxq.embedded_redis import RedisServer
from voxq.keys import Keys
from voxq.records import decode_chunk
from voxq.settings import Settings


@pytest.fixture
def pair() -> Iterator[tuple[RedisServer, RedisServer]]:
    """A primary and its replica."""
    with RedisServer() as primary, RedisServer() as replica:
        c = redis.Redis(port=replica.port)
        c.replicaof("127.0.0.1", primary.port)
        deadline = time.monotonic() + 10
        while c.info("replication").get("master_link_status") != "up":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        c.close()
        yield primary, replica


def seqs(server: RedisServer, keys: Keys, sid: str) -> list[int]:
    c = redis.Redis(port=server.port)
    try:
        return [decode_chunk(f).seq for _, f in c.xrange(keys.audio(sid))]
    finally:
        c.close()


async def test_replica_confirms_every_chunk(pair: tuple[RedisServer, RedisServer],
                                            keys: Keys) -> None:
    primary, replica = pair
    pub = Publisher(primary.url, settings=Settings(), keys=keys, wait_replicas=1)
    await pub.open("w1")
    await pub.send(b"\0\0" * 1600 * 10)
    await pub.close()
    assert pub.stats.waits >= 2 and pub.stats.wait_shortfalls == 0  # creation and audio
    assert seqs(replica, keys, "w1") == list(range(11))  # eos included


async def test_stalled_replica_holds_chunks_back_then_confirms(
        pair: tuple[RedisServer, RedisServer], keys: Keys) -> None:
    primary, replica = pair
    pub = Publisher(primary.url, settings=Settings(), keys=keys, wait_replicas=1,
                    wait_timeout_ms=200, backoff_max=0.2)
    await pub.open("w2")
    await pub.send(b"\0\0" * 1600 * 3)
    await pub.flush()
    assert replica.proc is not None
    os.kill(replica.proc.pid, signal.SIGSTOP)
    try:
        await pub.send(b"\0\0" * 1600 * 5)
        await asyncio.sleep(1.0)
        assert pub.acked_seq == 2 and pub.buffered == 5  # on the primary, not yet confirmed
        assert pub.stats.wait_shortfalls >= 1
    finally:
        os.kill(replica.proc.pid, signal.SIGCONT)
    await pub.close(timeout=30)
    assert pub.acked_seq == 8 and pub.stats.lost == 0
    assert seqs(primary, keys, "w2") == list(range(9))  # confirmed, never written twice
    assert seqs(replica, keys, "w2") == list(range(9))


async def test_a_primary_without_replicas_is_held_to_none(keys: Keys) -> None:
    with RedisServer() as alone:
        pub = Publisher(alone.url, settings=Settings(), keys=keys, wait_replicas=1,
                        wait_timeout_ms=50)
        await pub.open("w3")
        await pub.send(b"\0\0" * 1600 * 2)
        await pub.close()
    assert pub.stats.chunks == 2 and pub.stats.degraded_waits >= 1
    assert pub.stats.wait_shortfalls == 0
