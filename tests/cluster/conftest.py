"""Fixtures of the Redis Cluster tests: one real cluster (three primaries, one replica each, six
redis-server processes on loopback) for the whole run, put back to full health before each test;
RQ on the run's standalone test Redis."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from voxq.embedded_redis import RedisServer
from voxq.redis_cluster import RedisClusterServer
from voxq.redis_conn import connect
from voxq.settings import Settings


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServer]:
    """The run's Redis Cluster (node timeout 1 s, so a killed primary is replaced quickly)."""
    with RedisClusterServer(node_timeout_ms=1000) as c:
        yield c


@pytest.fixture
def cluster(redis_cluster: RedisClusterServer) -> RedisClusterServer:
    """The cluster, healthy: every node up, the original primaries serving, replicas in sync."""
    redis_cluster.restore()
    return redis_cluster


@pytest.fixture
def csettings(cluster: RedisClusterServer, redis_server: RedisServer, prefix: str) -> Settings:
    """Settings on the cluster with the test's prefix; RQ on the standalone test Redis."""
    return Settings(redis_url=cluster.url, rq_redis_url=redis_server.url, prefix=prefix)


@pytest.fixture
def cenv(cluster: RedisClusterServer, redis_server: RedisServer, prefix: str) -> dict[str, str]:
    """Environment of child processes on the cluster."""
    e = {k: v for k, v in os.environ.items() if not k.startswith(("VOXQ_", "AWS_"))}
    e.update({"REDIS_URL": cluster.url, "VOXQ_RQ_REDIS_URL": redis_server.url,
              "VOXQ_PREFIX": prefix, "PYTHONUNBUFFERED": "1"})
    return e


@pytest.fixture
async def cr(cluster: RedisClusterServer) -> AsyncIterator[aioredis.Redis]:
    """An asyncio cluster client (what voxq.redis_conn.connect gives for the cluster URL)."""
    client = connect(cluster.url)
    yield client
    await client.aclose()
