"""Pipelined commands for all sessions of one worker: every caller awaits its own reply, and
whatever the sessions asked for while the previous round trip was in flight leaves in one
write (per node on Redis Cluster), on one connection per node. Each node has its own queue and
its own round trips, so a slow or unreachable shard holds back only the commands for it.

Why: thousands of sessions each writing their own fenced results would hold one pooled
connection per write in flight and pay a full client round trip each; here a burst of
writes costs one write and one read of replies, and batching needs no timer, so an idle
worker still sends a lone write at once.

Each command must name its keys in one hash slot (the fenced scripts touch one session's
keys only), which is what lets the same batches run on Redis Cluster: a round is split by
the node that serves each command's slot. Scripts go as EVALSHA; a NOSCRIPT reply (Redis
restarted) is retried once as EVAL, which also loads the script. MOVED/ASK/TRYAGAIN/
CLUSTERDOWN replies refresh the slot map and retry the command a few times. A connection
error fails the commands of that round with the error (callers retry, see redis_retry).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import AskError, ClusterDownError, NoScriptError, ResponseError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError

log = logging.getLogger(__name__)

Arg = bytes | str | int | float
REPLY_TIMEOUT_S = 10.0
CLUSTER_RETRIES = 5
#: replies that mean "the slot map moved or is moving": refresh it and retry
REDIRECTS = (AskError, TryAgainError, ClusterDownError)  # MovedError is an AskError


def pack(args: Sequence[Arg]) -> bytes:
    """One command in RESP, encoded the way redis-py encodes the same arguments."""
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, bytes):
            b = a
        elif isinstance(a, str):
            b = a.encode()
        elif isinstance(a, bool):
            raise TypeError("booleans are not Redis arguments")
        elif isinstance(a, int):
            b = b"%d" % a
        else:
            b = repr(a).encode()
        parts += (b"$%d\r\n" % len(b), b, b"\r\n")
    return b"".join(parts)


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script known by its SHA1."""

    body: str
    sha: str

    @classmethod
    def of(cls, body: str) -> Script:
        """The script and its SHA1."""
        return cls(body, hashlib.sha1(body.encode()).hexdigest())


class _Item:
    """One queued command and the future its caller awaits."""

    __slots__ = ("args", "future", "key", "packed", "redirected", "retries", "script")

    def __init__(self, key: bytes, packed: bytes, future: asyncio.Future[Any],
                 script: Script | None = None, args: Sequence[Arg] = ()):
        self.key = key
        self.packed = packed
        self.future = future
        self.script = script
        self.args = args
        self.retries = 0
        self.redirected = False


class Batcher:
    """Queues commands and sends each round as one pipelined write per node."""

    def __init__(self, r: aioredis.Redis | RedisCluster, max_batch: int = 1000):
        self.r = r
        self.cluster = isinstance(r, RedisCluster)
        self.max_batch = max_batch
        self._queues: dict[str, deque[_Item]] = {}  # by node name ("" when not a cluster)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._refreshing: asyncio.Task[None] | None = None
        self._conns: dict[str, Any] = {}
        self.rounds = 0
        self.commands = 0

    def submit(self, *args: Arg) -> asyncio.Future[Any]:
        """Queue one command whose first key is ``args[1]``; the future of its reply (many
        commands can be queued, then gathered, without a task each)."""
        key = args[1]
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._submit(_Item(key if isinstance(key, bytes) else str(key).encode(), pack(args),
                           fut))
        return fut

    async def on_own_connection(self, key: str | bytes, *commands: Sequence[Arg],
                                timeout: float = REPLY_TIMEOUT_S) -> list[Any]:
        """Run ``commands`` back to back on a connection of their own to the node serving
        ``key``, outside the rounds: a blocking command there (WAIT) would hold every
        session's writes to that node. Replies in order; an error reply is raised."""
        k = key if isinstance(key, bytes) else key.encode()
        if self.cluster:
            assert isinstance(self.r, RedisCluster)
            node = self.r.nodes_manager.get_node_from_slot(key_slot(k))
            conn = node.acquire_connection()
        else:
            assert isinstance(self.r, aioredis.Redis)
            conn = await self.r.connection_pool.get_connection()
        try:
            async with asyncio.timeout(timeout):
                await conn.send_packed_command(b"".join(pack(c) for c in commands))
                replies = [await conn.read_response(disable_decoding=True) for _ in commands]
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            if isinstance(self.r, RedisCluster):
                node.release(conn)
            else:
                await self.r.connection_pool.release(conn)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    async def execute(self, *args: Arg) -> Any:
        """Run one command whose first key is ``args[1]``; its reply, or its error raised."""
        return await self.submit(*args)

    async def eval(self, script: Script, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """Run a script (EVALSHA, falling back to EVAL once) on keys of one hash slot."""
        full = (len(keys), *keys, *args)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._submit(_Item(keys[0].encode(), pack(("EVALSHA", script.sha, *full)), fut,
                           script, full))
        return await fut

    def _node_of(self, key: bytes) -> str:
        if not self.cluster:
            return ""
        assert isinstance(self.r, RedisCluster)
        return str(self.r.nodes_manager.get_node_from_slot(key_slot(key)).name)

    def _submit(self, item: _Item) -> None:
        try:
            name = self._node_of(item.key)
        except Exception as e:  # no slot map yet, or the slot is not served: retryable
            if not item.future.done():
                item.future.set_exception(RedisConnectionError(f"no node for {item.key!r}: {e}"))
            if self._refreshing is None or self._refreshing.done():
                self._refreshing = asyncio.get_running_loop().create_task(self._refresh())
            return
        q = self._queues.get(name)
        if q is None:
            q = self._queues[name] = deque()
        q.append(item)
        if name not in self._tasks:
            self._tasks[name] = asyncio.get_running_loop().create_task(self._flush(name))

    async def _flush(self, name: str) -> None:
        """Send rounds to one node until its queue is empty, then stop (the next command for
        it starts a new loop)."""
        q = self._queues[name]
        try:
            while q:
                n = min(len(q), self.max_batch)
                batch = [q.popleft() for _ in range(n)]
                self.rounds += 1
                self.commands += n
                await self._round(name, batch)
        except BaseException as e:
            for it in q:
                if not it.future.done():
                    it.future.set_exception(RedisConnectionError(f"batcher stopped: {e!r}"))
            q.clear()
            raise
        finally:
            self._tasks.pop(name, None)

    async def _round(self, name: str, items: list[_Item]) -> None:
        """One pipelined write to one node and its replies, in order."""
        try:
            async with asyncio.timeout(REPLY_TIMEOUT_S):  # one deadline for the whole round
                conn = await self._conn(name)
                await conn.send_packed_command(b"".join(it.packed for it in items))
                again: list[_Item] = []
                for it in items:
                    try:
                        reply = await conn.read_response()
                    except ResponseError as e:
                        if self._failed(it, e):
                            again.append(it)
                        continue
                    if not it.future.done():
                        it.future.set_result(reply)
            if again:
                await self._retry(again)
        except asyncio.CancelledError:
            await self._drop(name)
            self._fail(items, RedisConnectionError("worker stopping"))
            raise
        except Exception as e:  # connection lost, timeout: the callers decide to retry
            await self._drop(name)
            self._fail(items, e)
            if self.cluster:  # the node may be gone for good (a failover): re-read the slots
                await self._refresh()

    def _failed(self, it: _Item, e: ResponseError) -> bool:
        """An error reply: NOSCRIPT is retried as EVAL, cluster redirects after a refresh of
        the slot map; anything else goes to the caller. True if the item is to be retried.
        NOSCRIPT falls back to EVAL whenever it comes, after a redirect too (a node that just
        took the slot over may not have the script loaded); EVAL cannot answer it again."""
        if isinstance(e, NoScriptError) and it.script is not None \
                and it.retries <= CLUSTER_RETRIES:
            it.retries += 1
            it.packed = pack(("EVAL", it.script.body, *it.args))
            return True
        if self.cluster and isinstance(e, REDIRECTS) and it.retries < CLUSTER_RETRIES:
            it.retries += 1
            it.redirected = True
            return True
        if not it.future.done():
            it.future.set_exception(e)
        return False

    async def _retry(self, items: list[_Item]) -> None:
        """Queue retried items again, routed by a refreshed slot map if any was redirected."""
        if any(it.redirected for it in items):
            await self._refresh()
        for it in items:
            it.redirected = False
            self._submit(it)

    @staticmethod
    def _fail(items: list[_Item], e: BaseException) -> None:
        for it in items:
            if not it.future.done():
                it.future.set_exception(e)

    async def _refresh(self) -> None:
        assert isinstance(self.r, RedisCluster)
        try:
            await self.r.nodes_manager.initialize()
        except Exception as e:  # the retried commands fail again and come back here
            log.warning("batcher: cluster slots not refreshed (%s)", e)

    async def _conn(self, name: str) -> Any:
        conn = self._conns.get(name)
        if conn is None:
            if self.cluster:
                assert isinstance(self.r, RedisCluster)
                node = self.r.get_node(node_name=name)
                if node is None:
                    raise RedisConnectionError(f"no cluster node {name}")
                conn = node.acquire_connection()
            else:
                assert isinstance(self.r, aioredis.Redis)
                conn = await self.r.connection_pool.get_connection()
            self._conns[name] = conn
        return conn

    async def _drop(self, name: str) -> None:
        conn = self._conns.pop(name, None)
        if conn is None:
            return
        try:
            await conn.disconnect()
            if self.cluster:
                assert isinstance(self.r, RedisCluster)
                node = self.r.get_node(node_name=name)
                if node is not None:
                    node.release(conn)
            else:
                assert isinstance(self.r, aioredis.Redis)
                await self.r.connection_pool.release(conn)
        except Exception:  # already broken
            log.debug("batcher: dropping connection to %s failed", name, exc_info=True)

    async def aclose(self) -> None:
        """Stop sending and give the connections back."""
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for name in list(self._conns):
            await self._drop(name)
