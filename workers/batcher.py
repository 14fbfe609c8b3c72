"""Pipelined commands for all sessions of one worker: every caller awaits its own reply, and
whatever the sessions asked for while the previous round trip was in flight leaves in one
write (per node on Redis Cluster), on one connection per node.

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

    __slots__ = ("args", "future", "key", "packed", "retries", "script")

    def __init__(self, key: bytes, packed: bytes, future: asyncio.Future[Any],
                 script: Script | None = None, args: Sequence[Arg] = ()):
        self.key = key
        self.packed = packed
        self.future = future
        self.script = script
        self.args = args
        self.retries = 0


class Batcher:
    """Queues commands and sends each round as one pipelined write per node."""

    def __init__(self, r: aioredis.Redis | RedisCluster, max_batch: int = 1000):
        self.r = r
        self.cluster = isinstance(r, RedisCluster)
        self.max_batch = max_batch
        self._queue: deque[_Item] = deque()
        self._task: asyncio.Task[None] | None = None
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

    def _submit(self, item: _Item) -> None:
        self._queue.append(item)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        """Send rounds until the queue is empty, then stop (the next command restarts it)."""
        try:
            while self._queue:
                n = min(len(self._queue), self.max_batch)
                batch = [self._queue.popleft() for _ in range(n)]
                self.rounds += 1
                self.commands += n
                if not self.cluster:
                    await self._round("", batch)
                    continue
                by_node: dict[str, list[_Item]] = {}
                assert isinstance(self.r, RedisCluster)
                nodes = self.r.nodes_manager
                for it in batch:
                    name = nodes.get_node_from_slot(key_slot(it.key)).name
                    by_node.setdefault(name, []).append(it)
                await asyncio.gather(*(self._round(name, items)
                                       for name, items in by_node.items()))
        except BaseException as e:
            for it in self._queue:
                if not it.future.done():
                    it.future.set_exception(RedisConnectionError(f"batcher stopped: {e!r}"))
            self._queue.clear()
            raise
        finally:
            self._task = None

    async def _round(self, name: str, items: list[_Item]) -> None:
        """One pipelined write to one node and its replies, in order."""
        try:
            async with asyncio.timeout(REPLY_TIMEOUT_S):  # one deadline for the whole round
                conn = await self._conn(name)
                await conn.send_packed_command(b"".join(it.packed for it in items))
                refresh = False
                for it in items:
                    try:
                        reply = await conn.read_response()
                    except ResponseError as e:
                        refresh |= self._failed(it, e)
                        continue
                    if not it.future.done():
                        it.future.set_result(reply)
            if refresh:
                await self._refresh()
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
        """An error reply: retry NOSCRIPT as EVAL and cluster redirects after a refresh;
        hand anything else to the caller. True if the slot map needs a refresh."""
        if isinstance(e, NoScriptError) and it.script is not None and it.retries == 0:
            it.retries += 1
            it.packed = pack(("EVAL", it.script.body, *it.args))
            self._queue.append(it)
            return False
        if self.cluster and isinstance(e, REDIRECTS) and it.retries < CLUSTER_RETRIES:
            it.retries += 1
            self._queue.append(it)
            return True
        if not it.future.done():
            it.future.set_exception(e)
        return False

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
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for name in list(self._conns):
            await self._drop(name)
