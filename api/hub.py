"""One event hub per API process: a single multiplexed reader of every followed session's
final, partial and status streams (and of the global lifecycle stream), fanning each entry out
to the followers of that session through bounded per-follower queues.

Why: a follower used to hold one pooled Redis connection for a blocking read of its own, so
about a hundred followers emptied the pool and took every route (and readiness) down. Here the
reads cost one dedicated connection whatever the number of followers, and each entry is decoded
and rendered to JSON once, not once per follower.

Reading: on a single Redis, one ``XREAD BLOCK`` names every stream at the hub's positions; a
follower that joins a session not yet read wakes the blocked read with ``CLIENT UNBLOCK`` (from
the route pool), so its streams are named at once. On a Redis Cluster one XREAD cannot span
slots: each round pipelines one non-blocking XREAD per slot (the client splits the pipeline by
node, one connection each) and rounds repeat every ``cluster_poll_ms`` while nothing arrives.
A connection error keeps every position and retries with backoff (a Redis restart loses no
entry a follower has not yet seen).

Status without polling: the worker appends each status change to the session's own status
stream in the same fenced script that writes the meta hash, so it arrives in the same read as
the finals. As a safety net for writers that do not (and for sessions whose keys expired), the
hub checks every followed session's meta in one pipeline every ``status_check_seconds``.

Slow followers: a follower whose queue reaches its limit is dropped from the fan-out at once
(marked ``overflowed``); its route sends what it had queued and a final error telling the client
to resume with its last event id. Nothing one follower does slows the others or grows memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable
from enum import StrEnum
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from api.render import event_data
from voxq import backoff
from voxq.errors import MalformedRecord
from voxq.keys import Keys
from voxq.lifecycle import decode_lifecycle, decode_status, decode_vendor_switch
from voxq.records import Status

log = logging.getLogger("voxq.api.hub")

REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)
XREAD_COUNT, BLOCK, STREAMS = b"$5\r\nXREAD\r\n$5\r\nCOUNT\r\n", b"$5\r\nBLOCK\r\n", b"$7\r\nSTREAMS\r\n"
VENDOR_CACHE = 20_000  # session ids whose vendor the firehose remembers


def _reraise_if_cancelling() -> None:
    """Cancellation always wins: a client library may turn a cancellation that lands inside a
    read into its own timeout or connection error (Python 3.11), which must not be retried."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Kind(StrEnum):
    """What a queued item carries."""

    FINAL = "final"
    PARTIAL = "partial"
    STATUS = "status"  # data: (Status, error)
    GONE = "gone"  # the session's meta no longer exists
    LIFECYCLE = "lifecycle"  # data: the event's dict (firehose)
    VENDOR_SWITCHED = "vendor_switched"  # data: rendered JSON (from, vendor, reason)


#: one fanned-out item: (kind, stream id, data); data is rendered JSON for final/partial
#: (None for a malformed entry, which advances the cursor but is not sent)
Item = tuple[Kind, str, Any]

_STREAM_KINDS = (Kind.FINAL, Kind.PARTIAL, Kind.STATUS)


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


class Follower:
    """One follower's bounded queue of items and its wake-up.

    Lean on purpose (a process holds thousands): a plain list and a future made only while
    the follower waits, not an asyncio.Queue or Event with their own deques."""

    __slots__ = ("_waiter", "channel", "closed", "deadline", "limit", "overflowed", "queue",
                 "statuses")

    def __init__(self, limit: int, statuses: frozenset[str] = frozenset()):
        self.queue: list[Item] = []
        self.limit = limit
        self.overflowed = False
        self.closed = False  # the process is shutting down: end the stream
        self.channel: Channel | None = None
        self.statuses = statuses  # firehose filter (empty: every status)
        self._waiter: asyncio.Future[None] | None = None
        self.deadline = 0.0  # loop time at which a wait ends without items

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def push(self, item: Item) -> bool:
        """Queue an item; False (and overflowed) if the queue is full."""
        if len(self.queue) >= self.limit:
            self.overflowed = True
            self._wake()
            return False
        self.queue.append(item)
        self._wake()
        return True

    async def wait(self, timeout: float) -> bool:
        """Wait about ``timeout`` seconds (to the hub's next tick past it) for items, the
        overflow or the end; True if there are. No timer of its own: the hub's one ticker
        ends waits past their deadline, which saves a timer per event per follower."""
        if self.queue or self.overflowed or self.closed:
            return True
        loop = asyncio.get_running_loop()
        self.deadline = loop.time() + timeout
        self._waiter = loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        return bool(self.queue) or self.overflowed or self.closed

    def take(self) -> list[Item]:
        """Every queued item, in order."""
        items, self.queue = self.queue, []
        return items


def bulk(v: str) -> bytes:
    """One RESP bulk string (a command argument as sent on the wire)."""
    b = v.encode()
    return b"$%d\r\n%s\r\n" % (len(b), b)


class Channel:
    """The followers of one session and the hub's read positions in its three streams (also
    kept as RESP arguments, so each XREAD is assembled without encoding every key again)."""

    __slots__ = ("followers", "keys", "kwire", "pos", "pwire", "sid")

    def __init__(self, sid: str, keys: tuple[str, str, str], pos: list[str]):
        self.sid = sid
        self.keys = keys  # final, partial, status
        self.pos = pos
        self.kwire = [bulk(k) for k in keys]
        self.pwire = [bulk(p) for p in pos]
        self.followers: set[Follower] = set()


class EventHub:
    """The API process's one reader of live events (see the module docstring)."""

    def __init__(self, url: str, keys: Keys, routes: aioredis.Redis, *, queue_limit: int = 1000,
                 batch: int = 200, block_ms: int = 1000, status_check_seconds: float = 5.0,
                 cluster_poll_ms: float = 20.0, tick_seconds: float = 0.5):
        self.url = url
        self.keys = keys
        self.routes = routes
        self.cluster = isinstance(routes, RedisCluster)
        self.queue_limit = queue_limit
        self.batch = batch
        self.block_ms = max(1, block_ms)
        self.status_check_seconds = status_check_seconds
        self.cluster_poll_ms = cluster_poll_ms
        self.tick_seconds = tick_seconds
        self._channels: dict[str, Channel] = {}
        self._by_key: dict[bytes, tuple[Channel, Kind]] = {}
        self._firehose: set[Follower] = set()
        self.closing = False
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._life_key = keys.lifecycle
        self._life_pos = ""  # set when the reader starts
        self._vendors: OrderedDict[str, str] = OrderedDict()
        self._reader: aioredis.Redis | None = None
        self._conn: Any = None  # the reader's one connection (single Redis)
        self._reader_id: int | None = None
        self._blocked = False
        self._unblocking = False
        self._changed = asyncio.Event()
        self._next_check = 0.0
        self.started = asyncio.Event()
        self._stopping = False
        self.reads = 0
        self.entries = 0
        self.cutoffs = 0
        self.errors = 0

    async def stop(self, task: asyncio.Task[None], timeout: float = 10.0) -> bool:
        """Stop the reader task: flag and cancel it, cancelling again until it ends (a client
        library may swallow one cancellation on Python 3.11); False if it outlived
        ``timeout``."""
        self._stopping = True
        self._changed.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not task.done() and loop.time() < deadline:
            task.cancel()
            await asyncio.wait({task}, timeout=0.5)
        return task.done()

    # --- followers ----------------------------------------------------------------------

    @property
    def followers(self) -> int:
        """Followers of sessions and of the firehose now."""
        return sum(len(c.followers) for c in self._channels.values()) + len(self._firehose)

    def join(self, sid: str, final: str, partial: str, status: str) -> tuple[Follower, list[str]]:
        """Follow ``sid``; the hub's positions (final, partial, status) from which entries
        will reach the follower. A new channel starts at the positions given."""
        ch = self._channels.get(sid)
        if ch is None:
            keys = (self.keys.final(sid), self.keys.partial(sid), self.keys.status(sid))
            ch = Channel(sid, keys, [final, partial, status])
            self._channels[sid] = ch
            for key, kind in zip(keys, _STREAM_KINDS, strict=True):
                self._by_key[key.encode()] = (ch, kind)
            self._wake()
        f = Follower(self.queue_limit)
        f.closed = self.closing
        f.channel = ch
        ch.followers.add(f)
        return f, list(ch.pos)

    def leave(self, f: Follower) -> None:
        """Stop delivering to ``f`` (idempotent); a channel without followers is dropped."""
        self._firehose.discard(f)
        ch, f.channel = f.channel, None
        if ch is None:
            return
        ch.followers.discard(f)
        if not ch.followers and self._channels.get(ch.sid) is ch:
            del self._channels[ch.sid]
            for key in ch.keys:
                self._by_key.pop(key.encode(), None)

    def close_followers(self) -> int:
        """End every follower's stream (the process is shutting down; clients resume with
        their last event id elsewhere) and refuse no one new: the server stops accepting.
        How many were told."""
        self.closing = True
        told = 0
        for f in [*self._firehose, *(f for c in self._channels.values() for f in c.followers)]:
            f.closed = True
            f._wake()
            told += 1
        return told

    def join_firehose(self, statuses: Iterable[str] = ()) -> Follower:
        """Follow every session's lifecycle events (only ``statuses`` if given)."""
        f = Follower(self.queue_limit, frozenset(statuses))
        f.closed = self.closing
        self._firehose.add(f)
        return f

    def vendor_of(self, sid: str) -> str:
        """The vendor of a session whose ``created`` event this hub read ("" if unknown)."""
        return self._vendors.get(sid, "")

    def waiter(self, sid: str) -> asyncio.Future[None]:
        """A future resolved when a ``created`` event for ``sid`` is read."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(sid, set()).add(fut)
        return fut

    def drop_waiter(self, sid: str, fut: asyncio.Future[None]) -> None:
        """Forget a waiter (after it resolved, timed out or its client left)."""
        waiting = self._waiters.get(sid)
        if waiting is not None:
            waiting.discard(fut)
            if not waiting:
                del self._waiters[sid]

    def _wake(self) -> None:
        """Make the reader name the streams of a new channel without waiting for its block."""
        self._changed.set()
        if self._blocked and not self._unblocking and self._reader_id is not None:
            self._unblocking = True
            task = asyncio.get_running_loop().create_task(self._unblock(self._reader_id))
            task.add_done_callback(lambda _t: None)

    async def _unblock(self, client_id: int) -> None:
        try:
            await self.routes.client_unblock(client_id)
        except RedisError as e:  # the read ends within block_ms anyway
            log.debug("hub: CLIENT UNBLOCK failed: %s", e)
        finally:
            self._unblocking = False

    # --- fan-out --------------------------------------------------------------------------

    def _fan(self, ch: Channel, item: Item) -> None:
        dropped = [f for f in ch.followers if not f.push(item)]
        for f in dropped:
            self.cutoffs += 1
            log.info("hub: a follower of %s fell %d events behind; cut off", ch.sid, f.limit)
            self.leave(f)

    def _dispatch_stream(self, key: bytes, entries: list[Any]) -> None:
        found = self._by_key.get(key)
        if found is None or not entries:
            return
        ch, kind = found
        idx = _STREAM_KINDS.index(kind)
        for eid_raw, fields in entries:
            eid = _s(eid_raw)
            ch.pos[idx] = eid
            ch.pwire[idx] = bulk(eid)
            self.entries += 1
            data: Any
            switch = decode_vendor_switch(fields) if kind is Kind.STATUS else None
            if switch is not None:
                self._fan(ch, (Kind.VENDOR_SWITCHED, eid,
                               json.dumps(switch, separators=(",", ":"))))
                continue
            try:
                data = decode_status(fields) if kind is Kind.STATUS else event_data(fields)
            except MalformedRecord as e:  # a hostile entry never stops the hub
                log.warning("hub: malformed %s entry %s of %s: %s", kind.value, eid, ch.sid, e)
                data = None
                if kind is Kind.STATUS:
                    continue
            self._fan(ch, (kind, eid, data))

    def _dispatch_lifecycle(self, entries: list[Any]) -> None:
        for eid_raw, fields in entries:
            eid = _s(eid_raw)
            self._life_pos = eid
            try:
                ev = decode_lifecycle(fields)
            except MalformedRecord as e:
                log.warning("hub: %s (%s)", e, eid)
                continue
            vendor = ev.vendor or self._vendors.get(ev.session_id, "")
            if ev.vendor:
                self._vendors[ev.session_id] = ev.vendor
                if len(self._vendors) > VENDOR_CACHE:
                    self._vendors.popitem(last=False)
            if ev.status is Status.CREATED:
                for fut in self._waiters.pop(ev.session_id, ()):
                    if not fut.done():
                        fut.set_result(None)
            if not self._firehose:
                continue
            d = ev.to_dict()
            d["vendor"] = vendor
            item: Item = (Kind.LIFECYCLE, eid, d)
            for f in list(self._firehose):
                if f.statuses and ev.status.value not in f.statuses:
                    continue
                if not f.push(item):
                    self.cutoffs += 1
                    self.leave(f)

    def dispatch(self, reply: Any) -> None:
        """Hand an XREAD reply (RESP2 list or RESP3 map) to the channels and the firehose."""
        self.reads += 1
        if not reply:
            return
        pairs = reply.items() if isinstance(reply, dict) else reply
        life = self._life_key.encode()
        for key, entries in pairs:
            k = key if isinstance(key, bytes) else key.encode()
            if k == life:
                self._dispatch_lifecycle(entries)
            else:
                self._dispatch_stream(k, entries)

    # --- status safety net ----------------------------------------------------------------

    async def check_statuses(self) -> None:
        """One pipelined read of every followed session's status; terminal or vanished
        sessions are told to their followers (covers writers without a status stream)."""
        chans = list(self._channels.values())
        if not chans:
            return
        async with self.routes.pipeline(transaction=False) as p:
            for ch in chans:
                p.hmget(self.keys.meta(ch.sid), ["status", "error"])
            replies = await p.execute()
        for ch, (raw, err) in zip(chans, replies, strict=True):
            if not ch.followers:
                continue
            if raw is None:
                self._fan(ch, (Kind.GONE, "", None))
                continue
            try:
                st = Status(_s(raw))
            except ValueError:
                continue
            if st.terminal:
                self._fan(ch, (Kind.STATUS, "", (st, _s(err) if err else "")))

    # --- reading --------------------------------------------------------------------------

    def _streams(self) -> tuple[list[str], list[str]]:
        keys: list[str] = [self._life_key]
        ids: list[str] = [self._life_pos]
        for ch in self._channels.values():
            keys.extend(ch.keys)
            ids.extend(ch.pos)
        return keys, ids

    async def _start_position(self) -> None:
        last = await self.routes.xrevrange(self._life_key, count=1)
        self._life_pos = _s(last[0][0] or b"0-0") if last else "0-0"

    def expire_waits(self, now: float) -> int:
        """End the waits of followers whose deadline has passed; how many."""
        ended = 0
        for f in [*self._firehose, *(f for c in self._channels.values() for f in c.followers)]:
            if f._waiter is not None and f.deadline <= now:
                f._wake()
                ended += 1
        return ended

    async def _tick(self) -> None:
        """The one timer of every follower's wait (see Follower.wait)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.tick_seconds)
            self.expire_waits(loop.time())

    async def run(self) -> None:
        """Read until cancelled; Redis outages are retried with backoff, positions kept.
        Also runs the followers' wait ticker for as long as it runs."""
        async with asyncio.TaskGroup() as tg:
            ticker = tg.create_task(self._tick())
            try:
                await self._read_loop()
            finally:
                ticker.cancel()

    async def _read_loop(self) -> None:
        delays = backoff.REDIS.delays()
        if not self.cluster:
            self._reader = aioredis.Redis(connection_pool=self.routes.connection_pool.__class__(
                connection_class=self.routes.connection_pool.connection_class,
                max_connections=1, **self.routes.connection_pool.connection_kwargs))
        try:
            while not self._stopping:
                try:
                    if not self._life_pos:
                        await self._start_position()
                        self.started.set()
                    await (self._read_cluster() if self.cluster else self._read_blocking())
                    if self.status_check_seconds > 0 and time.monotonic() >= self._next_check:
                        self._next_check = time.monotonic() + self.status_check_seconds
                        await self.check_statuses()
                    delays = backoff.REDIS.delays()
                except REDIS_DOWN as e:
                    _reraise_if_cancelling()
                    self.errors += 1
                    log.warning("hub: Redis unavailable (%s); retrying", e)
                    await asyncio.sleep(next(delays))
                except RedisError as e:
                    _reraise_if_cancelling()
                    self.errors += 1
                    log.warning("hub: %s; retrying", e)
                    if self.cluster:
                        with contextlib.suppress(RedisError, OSError):
                            await self.routes.nodes_manager.initialize()  # type: ignore[attr-defined]
                    await asyncio.sleep(next(delays))
        finally:
            await self._drop_connection()
            reader, self._reader = self._reader, None
            if reader is not None:
                await reader.aclose()
                await reader.connection_pool.disconnect()

    def packed_xread(self, block: int) -> bytes:
        """The XREAD BLOCK over every stream, as bytes on the wire. Packed from each channel's
        cached arguments: redis-py's packing of a command naming thousands of streams costs
        milliseconds per round, more than everything else the hub does."""
        chans = self._channels.values()
        n = 1 + 3 * len(self._channels)
        parts = [b"*%d\r\n" % (6 + 2 * n), XREAD_COUNT, bulk(str(self.batch)), BLOCK,
                 bulk(str(block)), STREAMS, bulk(self._life_key)]
        for ch in chans:
            parts.extend(ch.kwire)
        parts.append(bulk(self._life_pos))
        for ch in chans:
            parts.extend(ch.pwire)
        return b"".join(parts)

    async def _connection(self) -> Any:
        """The reader's connection, connected, with its client id known (for CLIENT UNBLOCK)."""
        if self._conn is None:
            assert self._reader is not None
            conn = await self._reader.connection_pool.get_connection()
            self._conn = conn
            try:
                await conn.send_command("CLIENT", "ID")
                self._reader_id = int(await conn.read_response())
            except BaseException:
                await self._drop_connection()
                raise
        return self._conn

    async def _drop_connection(self) -> None:
        """Close the reader's connection (after an error or a cancellation mid-read, when a
        reply may still be on its way) and give it back to its pool."""
        conn, self._conn, self._reader_id = self._conn, None, None
        if conn is None or self._reader is None:
            return
        await conn.disconnect(nowait=True)
        await self._reader.connection_pool.release(conn)

    async def _read_blocking(self) -> None:
        """One XREAD BLOCK over every stream (single Redis)."""
        conn = await self._connection()
        self._changed.clear()
        block = self.block_ms
        if self.status_check_seconds > 0:
            left = self._next_check - time.monotonic()
            block = max(1, min(block, int(left * 1000)))
        packed = self.packed_xread(block)
        self._blocked = True
        try:
            await conn.send_packed_command(packed, check_health=False)
            reply = await conn.read_response()
        except BaseException:
            self._blocked = False
            await self._drop_connection()
            raise
        self._blocked = False
        self.dispatch(reply)

    async def _read_cluster(self) -> None:
        """One pipelined round of non-blocking XREADs, one per slot (Redis Cluster)."""
        by_slot: dict[int, tuple[list[str], list[str]]] = {}
        keys, ids = self._streams()
        for k, i in zip(keys, ids, strict=True):
            ks, is_ = by_slot.setdefault(key_slot(k.encode()), ([], []))
            ks.append(k)
            is_.append(i)
        async with self.routes.pipeline(transaction=False) as p:
            for ks, is_ in by_slot.values():
                p.execute_command("XREAD", "COUNT", self.batch, "STREAMS", *ks, *is_)
            replies = await p.execute()
        got = False
        for reply in replies:
            if reply:
                got = True
                self.dispatch(reply)
        if not got:
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.cluster_poll_ms / 1000):
                    await self._changed.wait()

