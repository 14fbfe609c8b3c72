"""Connections to Redis: from REDIS_URL, or a private embedded server when none is set.

A Redis Cluster is chosen by the URL's scheme: ``redis+cluster://host:port[,host:port...]/``
(``rediss+cluster://`` for TLS) names some or all of its nodes (the client discovers the rest);
:func:`connect` and :func:`connect_sync` then return redis-py's cluster clients, which route
every command by its key's hash slot and split pipelines by node. Every other scheme
(``redis://``, ``rediss://``, ``unix://``) is a single Redis, as before. Credentials go in the
usual place (``redis+cluster://user:password@host:port,host:port/``) and apply to every node.

RQ cannot run on a cluster (it issues transactions across its own keys): the TTS queue lives on
a standalone Redis, ``VOXQ_RQ_REDIS_URL`` (:func:`rq_url`).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TypeAlias
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
import redis.asyncio as aioredis
import redis.cluster as sync_cluster
from redis.asyncio import cluster as async_cluster

from voxq.embedded_redis import RedisServer
from voxq.errors import InvalidInput, RedisUnavailable
from voxq.settings import Settings

#: what :func:`connect` returns: a single Redis, or a cluster client for a cluster URL
AsyncRedis: TypeAlias = aioredis.Redis | async_cluster.RedisCluster
#: what :func:`connect_sync` returns
SyncRedis: TypeAlias = redis.Redis | sync_cluster.RedisCluster

CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}
_CLUSTER_QUERY = {  # query parameters a cluster URL may carry, with their types
    "socket_timeout": float, "socket_connect_timeout": float, "ssl_ca_certs": str,
    "ssl_certfile": str, "ssl_keyfile": str, "ssl_cert_reqs": str, "ssl_check_hostname": bool,
    "client_name": str, "require_full_coverage": bool,
}


@dataclass(frozen=True, slots=True)
class ClusterUrl:
    """A parsed ``redis+cluster://`` URL."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments every client of this cluster (or of one of its nodes) takes."""
        kw: dict[str, Any] = dict(self.options)
        if self.username:
            kw["username"] = self.username
        if self.password:
            kw["password"] = self.password
        if self.ssl:
            kw["ssl"] = True
        return kw


def is_cluster_url(url: str | None) -> bool:
    """True if ``url`` names a Redis Cluster (``redis+cluster://`` or ``rediss+cluster://``)."""
    return bool(url) and str(url).split("://", 1)[0].lower() in CLUSTER_SCHEMES


def _truthy(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def parse_cluster_url(url: str) -> ClusterUrl:
    """Split a cluster URL into its nodes, credentials and options; InvalidInput if malformed."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in CLUSTER_SCHEMES:
        raise InvalidInput(f"not a Redis Cluster URL (redis+cluster://host:port,...): "
                           f"{redact_url(url)}")
    try:
        parts = urlsplit("redis://" + rest)
    except ValueError as e:
        raise InvalidInput(f"malformed Redis Cluster URL {redact_url(url)}: {e}") from None
    netloc = parts.netloc
    creds, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, pw = creds.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if colon else None
    nodes: list[tuple[str, int]] = []
    for item in filter(None, (h.strip() for h in hosts.split(","))):
        if item.startswith("["):  # [ipv6]:port
            host, _, tail = item[1:].partition("]")
            port_s = tail[1:] if tail.startswith(":") else ""
        else:
            host, _, port_s = item.partition(":")
        try:
            port = int(port_s) if port_s else 6379
        except ValueError:
            raise InvalidInput(f"bad port {port_s!r} in Redis Cluster URL {redact_url(url)}") from None
        if not host or not 0 < port < 65536:
            raise InvalidInput(f"bad node {item!r} in Redis Cluster URL {redact_url(url)}")
        nodes.append((host, port))
    if not nodes:
        raise InvalidInput(f"Redis Cluster URL names no node: {redact_url(url)}")
    if parts.path.strip("/") not in ("", "0"):
        raise InvalidInput(f"a Redis Cluster has only database 0, not {parts.path.strip('/')!r}")
    options: dict[str, Any] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        cast = _CLUSTER_QUERY.get(key)
        if cast is None:
            raise InvalidInput(f"unknown Redis Cluster URL option {key!r}; known: "
                               f"{', '.join(sorted(_CLUSTER_QUERY))}")
        try:
            options[key] = _truthy(value) if cast is bool else cast(value)
        except ValueError:
            raise InvalidInput(f"bad value {value!r} for Redis Cluster URL option {key!r}") from None
    return ClusterUrl(tuple(nodes), username, password, CLUSTER_SCHEMES[scheme.lower()], options)


_COMMON = {"decode_responses": False, "socket_keepalive": True, "health_check_interval": 15,
           "socket_connect_timeout": 5}


def connect(url: str, **kw: Any) -> aioredis.Redis:
    """An asyncio Redis client (bytes in, bytes out: audio is binary).

    For a ``redis+cluster://`` URL this is a ``redis.asyncio.cluster.RedisCluster`` (typed as
    Redis here: it offers the same commands, routed by hash slot, and pipelines split by node).
    """
    if is_cluster_url(url):
        c = parse_cluster_url(url)
        client = async_cluster.RedisCluster(
            startup_nodes=[async_cluster.ClusterNode(h, p) for h, p in c.nodes],
            **{**_COMMON, **c.client_kwargs(), **kw})
        return client  # type: ignore[return-value]
    return aioredis.Redis.from_url(url, **{**_COMMON, **kw})


def connect_bounded(url: str, max_connections: int, timeout: float, **kw: Any) -> aioredis.Redis:
    """An asyncio client whose pool holds at most ``max_connections`` connections (per node on
    a cluster); a caller beyond that waits up to ``timeout`` seconds for one, then gets a
    ConnectionError. Nothing in the process can then open connections without bound."""
    if is_cluster_url(url):
        return connect(url, max_connections=max_connections, **kw)
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=timeout, **{**_COMMON, **kw})
    return aioredis.Redis.from_pool(pool)


def connect_sync(url: str, **kw: Any) -> redis.Redis:
    """A blocking Redis client, for the sync Publisher and RQ (``redis.cluster.RedisCluster``
    for a cluster URL; RQ itself needs a standalone Redis, see :func:`rq_url`)."""
    if is_cluster_url(url):
        c = parse_cluster_url(url)
        client = sync_cluster.RedisCluster(
            startup_nodes=[sync_cluster.ClusterNode(h, p) for h, p in c.nodes],
            **{**_COMMON, **c.client_kwargs(), **kw})
        return client  # type: ignore[return-value]
    return redis.Redis.from_url(url, **{**_COMMON, **kw})


def connect_node(url: str, host: str, port: int, **kw: Any) -> aioredis.Redis:
    """An asyncio client on one node of the cluster ``url`` names (its credentials and TLS):
    for commands that must share one connection, such as writes followed by WAIT."""
    c = parse_cluster_url(url)
    opts = {k: v for k, v in c.client_kwargs().items() if k != "require_full_coverage"}
    return aioredis.Redis(host=host, port=port, **{**_COMMON, **opts, **kw})


def rq_url(settings: Settings, redis_url: str) -> str:
    """The Redis RQ uses for the TTS queue: ``VOXQ_RQ_REDIS_URL``, else the main Redis when it is
    a single Redis. RQ runs transactions across its own keys (queue, job, registries), which a
    Redis Cluster refuses, so with a cluster ``VOXQ_RQ_REDIS_URL`` is required."""
    explicit = settings.rq_redis_url
    if explicit:
        if is_cluster_url(explicit):
            raise InvalidInput("VOXQ_RQ_REDIS_URL must name a single Redis (redis://, rediss:// or "
                               "unix://), not a cluster: RQ's transactions span hash slots")
        return explicit
    if is_cluster_url(redis_url):
        raise InvalidInput(
            "REDIS_URL names a Redis Cluster, but RQ (the TTS queue) cannot run on a cluster: set "
            "VOXQ_RQ_REDIS_URL to a single Redis for the queue (redis://host:6379/0); TTS results "
            "and the cache stay on the cluster")
    return redis_url


def validate_redis_url(url: str) -> str:
    """``url`` if a client can be built from it (scheme, host, port, database, options), else
    InvalidInput saying what is wrong, with any password hidden. Nothing is connected."""
    shown = redact_url(url)
    if is_cluster_url(url):
        parse_cluster_url(url)
        return url
    try:
        parts = urlsplit(url)
        db = parts.path.strip("/")
        if parts.scheme in ("redis", "rediss") and db and not db.isdigit():
            raise ValueError(f"the database must be a number, not {db[:20]!r}")
        redis.ConnectionPool.from_url(url).make_connection()  # builds, never connects
    except TypeError as e:  # an unknown ?option= reaches the connection's constructor
        option = str(e).rpartition("argument")[2].strip(" '\"")
        raise InvalidInput(f"{shown}: unknown option {option!r}") from None
    except ValueError as e:
        raise InvalidInput(f"{shown}: {e}") from None
    return url


async def check_reachable(r: AsyncRedis, url: str) -> None:
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
