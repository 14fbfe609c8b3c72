"""Fixtures that start real processes: a redis-server per test session (restartable for
fault tests), and async clients bound to it. No Redis is ever mocked."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from voxq.embedded_redis import RedisServer
from voxq.keys import Keys
from voxq.redis_conn import connect
from voxq.settings import Settings

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "voxq" / "samples" / "support-call.flac"
SAMPLE_TEXT = REPO / "voxq" / "samples" / "support-call.txt"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the whole run; tests isolate themselves by key prefix."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix unique to the test, so tests sharing a server never see each other."""
    name = "".join(c if c.isalnum() else "-" for c in request.node.name)[-24:]
    return f"t{os.getpid()}-{id(request) % 100000}-{name}"


@pytest.fixture
def keys(prefix: str) -> Keys:
    """The key schema under the test's prefix."""
    return Keys(prefix)


@pytest.fixture
def settings(redis_server: RedisServer, prefix: str) -> Settings:
    """Settings pointing at the test Redis with the test's prefix."""
    return Settings(redis_url=redis_server.url, prefix=prefix)


@pytest.fixture
def env(redis_server: RedisServer, prefix: str) -> dict[str, str]:
    """Environment for child processes (workers, API, producers) of this test."""
    e = {k: v for k, v in os.environ.items() if not k.startswith(("VOXQ_", "AWS_"))}
    e.update({"REDIS_URL": redis_server.url, "VOXQ_PREFIX": prefix,
              "PYTHONUNBUFFERED": "1"})
    return e


@pytest.fixture
async def r(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """An asyncio client on the test Redis."""
    client = connect(redis_server.url)
    yield client
    await client.aclose()
