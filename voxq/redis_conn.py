"""Connections to Redis: from REDIS_URL, or a private embedded server when none is set."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import redis
import redis.asyncio as aioredis

from voxq.embedded_redis import RedisServer
from voxq.errors import RedisUnavailable
from voxq.settings import Settings


def connect(url: str, **kw: Any) -> aioredis.Redis:
    """An asyncio Redis client (bytes in, bytes out: audio is binary)."""
    return aioredis.Redis.from_url(
        url, decode_responses=False, socket_keepalive=True, health_check_interval=15,
        socket_connect_timeout=5, **kw,
    )


def connect_sync(url: str, **kw: Any) -> redis.Redis:
    """A blocking Redis client, for the sync Publisher and RQ."""
    return redis.Redis.from_url(
        url, decode_responses=False, socket_keepalive=True, health_check_interval=15,
        socket_connect_timeout=5, **kw,
    )


async def check_reachable(r: aioredis.Redis, url: str) -> None:
    """PING, turning a connection failure into RedisUnavailable with a readable reason."""
    try:
        await r.ping()
    except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
        raise RedisUnavailable(f"cannot reach Redis at {redact_url(url)}: {e}") from e


def redact_url(url: str) -> str:
    """The URL with any password replaced, for messages and logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user + ':' if user else ''}***@{host}"


@contextlib.contextmanager
def redis_url(settings: Settings, announce: bool = True) -> Iterator[str]:
    """REDIS_URL if set; else start an embedded redis-server for the life of the block."""
    if settings.redis_url:
        yield settings.redis_url
        return
    server = RedisServer().start()
    if announce:
        print(f"voxq: REDIS_URL is not set; using an embedded Redis at {server.url}",
              file=sys.stderr)
    try:
        yield server.url
    finally:
        server.close()
