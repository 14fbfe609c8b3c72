"""One multiplexed reader per worker: XREADs over the owned sessions' audio streams,
dispatching entries to per-session inboxes (instead of one blocking read per session).

What a read costs, on both sides, grows with the number of streams it names, so a stream is
named only when it is due. Producers publish at a steady cadence (one chunk per chunk
duration) and Redis stamps each entry id with its arrival time in milliseconds, so after
each delivery the reader predicts when the stream's next entry lands: last id time + the
stream's observed spacing (moving average of id deltas) + the Redis-to-worker clock offset
(the smallest lag ever seen between an id's time and its receipt, re-learnt every few
seconds so a clock step heals). A stream is named in every read from a little before that
moment until its entry has come (never later than one spacing after the last one), and
streams that went quiet are polled at ``idle_ms``. Reads start at most every ``window_ms``
and take whatever is due; each stream then costs about one naming per chunk instead of
one per read, and relay latency stays within one window of the entry's arrival.

The command is packed by hand from per-stream pieces cached when a subscription or its
position changes, sent on the reader's own connection, and the reply is dispatched raw
(entry id and field list as Redis sends them): no per-read encoding through the client
library, no per-entry dicts.

Redis Cluster: one XREAD cannot span hash slots, so the due streams are grouped by the node
and slot their key lives on; each node gets one pipelined write holding one XREAD per slot
group, and replies are read in order. A MOVED, ASK, TRYAGAIN or CLUSTERDOWN reply, or a
connection error, refreshes the slot map before the next read.

Backpressure: a session whose inbox reaches its limit is not read until its runner has
taken half of it, so its audio waits in Redis, not in worker memory.

Oversized entries: XREAD hands back whatever a stream holds, so one reply can carry up to
``count`` entries per named stream of any size Redis accepted (its proto-max-bulk-len, 512 MB
by default, bounds a single value). A subscription with ``max_entry_bytes`` replaces every
entry larger than that with an ``Oversized`` marker as soon as the reply is dispatched, so
what a session holds in its inbox is bounded by ``limit`` × ``max_entry_bytes``; only the
reply being dispatched may briefly hold more.

Inline delivery: a subscription may carry a ``handler`` that takes an entry synchronously
(the session runner relays a chunk straight to a vendor socket that has room). It is used
only while the runner waits on an empty inbox, so entries keep their order; whatever the
handler declines goes to the inbox and wakes the runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import AskError, ClusterDownError, ResponseError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from voxq import backoff
from voxq.aio import raise_if_cancelled

log = logging.getLogger(__name__)

#: one stream entry as Redis sends it: [entry id, [field, value, field, value, ...]]
Entry = Sequence[Any]
#: takes an entry now (True) or declines it (False: it goes to the inbox)
Handler = Callable[[bytes, Sequence[bytes]], bool]

REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)
REDIRECTS = (AskError, TryAgainError, ClusterDownError)  # the slot map moved (MOVED is an ASK)
READ_TIMEOUT_S = 10.0  # a reply later than this: the connection is dead
SLACK_MS = 2.0  # name a stream this much before its next entry is predicted
OFFSET_EPOCH_S = 5.0  # the clock offset is re-learnt over this period


class Oversized(tuple[bytes, ...]):
    """The fields of an entry dropped on sight for its size: only that size is kept."""

    @property
    def size(self) -> int:
        """Bytes of the entry's largest field (its PCM, unless the entry is malformed)."""
        return int(self[1])


def _oversized(fields: Sequence[bytes]) -> Oversized:
    return Oversized((b"size", b"%d" % max(map(len, fields))))


def _bulk(b: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(b), b)


class Subscription:
    """A session's read position, its inbox of audio entries and its idle timer."""

    __slots__ = ("_deadline", "_reader", "_timeout", "_timer", "_waiter", "active", "due", "got",
                 "handler", "id_part", "inbox", "interval", "key", "key_bytes", "key_part",
                 "last_id", "last_ms", "limit", "max_bytes", "overdue", "paused", "slot",
                 "ticket")

    def __init__(self, reader: AudioReader, key: str, from_id: str, limit: int,
                 max_bytes: int = 0):
        self._reader = reader
        self.key = key
        self.key_bytes = key.encode()
        self.key_part = _bulk(self.key_bytes)
        self.last_id = b""
        self.id_part = b""
        self.move_to(from_id.encode())
        self.limit = limit
        self.max_bytes = max_bytes  # larger entries are replaced by Oversized (0: no limit)
        self.inbox: deque[Entry] = deque()
        self.active = True
        self.paused = False
        self.handler: Handler | None = None
        self._waiter: asyncio.Future[bool] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timeout = 0.0
        self._deadline = 0.0
        # read scheduling (see the module docstring), times in wall-clock milliseconds
        self.due = 0.0  # name the stream in reads from this time on
        self.interval = 0.0  # observed spacing of entries (0: not known yet)
        self.last_ms = 0  # time part of the newest entry id delivered
        self.overdue = 0.0  # since when it is due without data (0: it is not)
        self.got = 0  # entries the current read delivered
        self.ticket = 0  # which heap entry is current
        self.slot = key_slot(self.key_bytes)

    def move_to(self, eid: bytes) -> None:
        """Read after ``eid`` from now on."""
        self.last_id = eid
        self.id_part = _bulk(eid)

    def room(self) -> int:
        """How many more entries the inbox takes."""
        return self.limit - len(self.inbox)

    @property
    def waiting(self) -> bool:
        """True while the runner waits on an empty inbox."""
        return self._waiter is not None

    async def get(self, timeout: float) -> Entry | None:
        """Next entry in order, or None after ``timeout`` seconds without audio."""
        inbox = self.inbox
        if not inbox:
            loop = asyncio.get_running_loop()
            self._timeout = timeout
            self._deadline = loop.time() + timeout
            waiter = self._waiter = loop.create_future()
            if self._timer is None:
                self._timer = loop.call_at(self._deadline, self._expire)
            try:
                if not await waiter:
                    return None
            finally:
                self._waiter = None
        entry = inbox.popleft()
        if self.paused and len(inbox) <= self.limit // 2:
            self.paused = False
            self._reader.schedule(self, 0.0)
        return entry

    def _expire(self) -> None:
        """The idle timer: fire if nothing arrived since the deadline, else re-arm (one
        timer per subscription, not one per wait)."""
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        loop = waiter.get_loop()
        if loop.time() < self._deadline:
            self._timer = loop.call_at(self._deadline, self._expire)
        else:
            waiter.set_result(False)

    def push(self, entries: Sequence[Entry]) -> None:
        """Deliver entries read from Redis (in order) and advance the read position."""
        self.move_to(entries[-1][0])
        if self.max_bytes:
            entries = self._bounded(entries)
        inbox = self.inbox
        rest: Sequence[Entry] = entries
        handler = self.handler
        waiter = self._waiter
        if handler is not None and waiter is not None and not inbox:
            taken = 0
            for eid, fields in entries:
                try:
                    if not handler(eid, fields):
                        break
                except Exception:  # the runner's slow path meets the same error and owns it
                    log.debug("inline handler of %s failed", self.key, exc_info=True)
                    break
                taken += 1
            if taken:
                self._deadline = waiter.get_loop().time() + self._timeout
                if taken == len(entries):
                    return
                rest = entries[taken:]
        inbox.extend(rest)
        if waiter is not None and not waiter.done():
            waiter.set_result(True)
        if len(inbox) >= self.limit and not self.paused:
            self.paused = True

    def _bounded(self, entries: Sequence[Entry]) -> Sequence[Entry]:
        """``entries`` with every one larger than ``max_bytes`` replaced by Oversized."""
        cap = self.max_bytes
        out: list[Entry] | None = None
        for i, (eid, fields) in enumerate(entries):
            if sum(map(len, fields)) > cap:
                if out is None:
                    out = list(entries)
                out[i] = [eid, _oversized(fields)]
        return entries if out is None else out

    def close(self) -> None:
        """Stop delivering: no handler, no idle timer."""
        self.active = False
        self.handler = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def xread(subs: Sequence[Subscription], count: int) -> bytes:
    """XREAD COUNT n STREAMS keys... ids..., packed."""
    return b"".join([b"*%d\r\n$5\r\nXREAD\r\n$5\r\nCOUNT\r\n" % (4 + 2 * len(subs)),
                     _bulk(b"%d" % count), b"$7\r\nSTREAMS\r\n",
                     *[x.key_part for x in subs], *[x.id_part for x in subs]])


def group_by_slot(subs: Sequence[Subscription]) -> list[list[Subscription]]:
    """Subscriptions of one node by hash slot: one XREAD per slot on a cluster."""
    by_slot: dict[int, list[Subscription]] = {}
    for x in subs:
        by_slot.setdefault(x.slot, []).append(x)
    return list(by_slot.values())


def _pairs(reply: Any) -> Any:
    """XREAD's reply as (key, entries) pairs (RESP2 list or RESP3 map)."""
    if reply is None:
        return ()
    return reply.items() if isinstance(reply, dict) else reply


def _now_ms() -> float:
    return time.time() * 1000.0


class AudioReader:
    """Reads the due streams of all subscriptions with as few commands as the deployment
    allows (one XREAD standalone; one pipelined write per node on a cluster)."""

    def __init__(self, r: aioredis.Redis | RedisCluster, count: int = 16,
                 window_ms: float = 5.0, idle_ms: float = 100.0, max_entries: int = 4096):
        self.r = r
        self.count = count
        #: streams named per read at most, so one reply holds at most ``max_entries`` entries
        self.max_streams = max(1, max_entries // count)
        self.window_ms = window_ms
        self.idle_ms = idle_ms
        self.cluster = isinstance(r, RedisCluster)
        self._subs: dict[str, Subscription] = {}
        self._heap: list[tuple[float, int, Subscription]] = []
        self._tickets = 0
        self._wake = asyncio.Event()
        self._conns: dict[str, Any] = {}
        self._offset = float("inf")  # smallest (receipt - id time) seen, ms: clock offset
        self._offset_next = float("inf")
        self._offset_epoch = 0.0
        self._node_of: dict[int, str] = {}  # cluster: slot -> node name, until a refresh
        self.errors = 0
        self.reads = 0
        self.named = 0
        self.entries = 0

    # --- subscriptions ----------------------------------------------------------------

    def subscribe(self, key: str, from_id: str, limit: int,
                  max_entry_bytes: int = 0) -> Subscription:
        """Start reading ``key`` after ``from_id``; replaces an earlier subscription. Entries
        larger than ``max_entry_bytes`` (0: no limit) arrive as Oversized markers."""
        old = self._subs.get(key)
        if old is not None:
            old.close()
        sub = Subscription(self, key, from_id, limit, max_entry_bytes)
        self._subs[key] = sub
        self.schedule(sub, 0.0)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop reading for this subscription."""
        sub.close()
        if self._subs.get(sub.key) is sub:
            del self._subs[sub.key]

    def schedule(self, sub: Subscription, due: float) -> None:
        """Name ``sub`` in reads from ``due`` (wall ms; 0: at once)."""
        self._tickets += 1
        sub.ticket = self._tickets
        sub.due = due
        heapq.heappush(self._heap, (due, self._tickets, sub))
        if due == 0.0:
            self._wake.set()

    def poke(self) -> None:
        """Consider the streams again without waiting."""
        self._wake.set()

    def _take_due(self, now: float) -> tuple[list[Subscription], float]:
        """Pop the subscriptions due by ``now``, earliest first and at most ``max_streams``
        (a worker that fell behind must not ask for every backlog at once); also when the
        next one falls due."""
        heap = self._heap
        subs = self._subs
        due: list[Subscription] = []
        cap = self.max_streams
        while heap and heap[0][0] <= now and len(due) < cap:
            _, ticket, sub = heapq.heappop(heap)
            if sub.ticket == ticket and sub.active and not sub.paused and subs.get(sub.key) is sub:
                due.append(sub)
        while heap and (heap[0][2].ticket != heap[0][1] or not heap[0][2].active):
            heapq.heappop(heap)  # drop stale entries so the next due time is a real one
        return due, heap[0][0] if heap else now + 1000.0

    # --- reading ------------------------------------------------------------------------

    async def run(self) -> None:
        """Read until cancelled (a cancellation always ends it); Redis outages are retried with
        backoff, positions kept."""
        delays = backoff.REDIS.delays()
        last = 0.0
        if self.cluster:  # the slot map must be loaded before slots are grouped by node
            assert isinstance(self.r, RedisCluster)
            await self.r.initialize()
        try:
            while True:
                raise_if_cancelled()  # a library that swallowed our cancellation cannot keep us
                now = _now_ms()
                wait = last + self.window_ms - now
                if wait > 0 and not (self._heap and self._heap[0][0] <= last):
                    await asyncio.sleep(wait / 1000)
                    now = _now_ms()
                due, next_due = self._take_due(now)
                if not due:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(min(1.0, max(0.001, (next_due - now) / 1000))):
                            await self._wake.wait()
                    continue
                last = now
                try:
                    await (self._read_cluster(due) if self.cluster else self._read_one("", due))
                    delays = backoff.REDIS.delays()
                except REDIS_DOWN as e:
                    self.errors += 1
                    log.warning("audio reader: Redis unavailable (%s); retrying", e)
                    await self._reset(refresh=True)
                    await asyncio.sleep(next(delays))
                    for sub in due:
                        self.schedule(sub, 0.0)
                    continue
                except ResponseError as e:
                    self.errors += 1
                    moved = isinstance(e, REDIRECTS)
                    log.warning("audio reader: %s; %s", e, "regrouping" if moved else "retrying")
                    await self._reset(refresh=moved)
                    await asyncio.sleep(next(delays))
                    for sub in due:
                        self.schedule(sub, 0.0)
                    continue
                self._reschedule(due, _now_ms())
        finally:
            await self._reset(refresh=False)

    def _reschedule(self, subs: list[Subscription], now: float) -> None:
        """After a read: predict each stream's next entry (see the module docstring)."""
        if now - self._offset_epoch > OFFSET_EPOCH_S * 1000:
            self._offset, self._offset_next = self._offset_next, float("inf")
            self._offset_epoch = now
        for sub in subs:
            got, sub.got = sub.got, 0
            if not sub.active or sub.paused:
                continue
            if got:
                sub.overdue = 0.0
                eid = sub.last_id
                ms = int(eid[:eid.find(b"-")])
                lag = now - ms
                if lag < self._offset_next:
                    self._offset_next = lag
                    self._offset = min(self._offset, lag)
                if sub.last_ms:
                    step = (ms - sub.last_ms) / got
                    sub.interval = step if not sub.interval else 0.75 * sub.interval + 0.25 * step
                sub.last_ms = ms
                if got >= self.count or sub.interval <= 0:
                    self.schedule(sub, 0.0 if got >= self.count else now)
                else:
                    nxt = ms + sub.interval + self._offset - SLACK_MS
                    self.schedule(sub, min(nxt, now + max(sub.interval, self.window_ms)))
            else:
                if not sub.overdue:
                    sub.overdue = now
                quiet = now - sub.overdue > max(2 * sub.interval, self.idle_ms)
                self.schedule(sub, now + self.idle_ms if quiet else now)

    async def _reset(self, refresh: bool) -> None:
        """Drop the reader's connections (and refresh the cluster's slot map)."""
        conns, self._conns = self._conns, {}
        for name, conn in conns.items():
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
            except Exception:  # a broken socket is being thrown away anyway
                log.debug("audio reader: dropping connection to %s failed", name, exc_info=True)
        if refresh and self.cluster:
            assert isinstance(self.r, RedisCluster)
            try:
                await self.r.nodes_manager.initialize()
            except Exception as e:  # keep reading the old map; the next error retries
                log.warning("audio reader: cluster slots not refreshed (%s)", e)
            self._node_of.clear()

    async def _conn(self, name: str) -> Any:
        """The reader's own connection to a node (kept across reads)."""
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

    async def _read_one(self, name: str, subs: list[Subscription]) -> None:
        """One XREAD over the due streams (standalone Redis)."""
        conn = await self._conn(name)
        await conn.send_packed_command(xread(subs, self.count))
        self._dispatch(subs, await conn.read_response(timeout=READ_TIMEOUT_S))

    async def _read_cluster(self, subs: list[Subscription]) -> None:
        """Per node, one pipelined write of one XREAD per slot group, read back in order."""
        assert isinstance(self.r, RedisCluster)
        nodes = self.r.nodes_manager
        by_node: dict[str, list[Subscription]] = {}
        node_of = self._node_of
        for sub in subs:
            name = node_of.get(sub.slot)
            if name is None:
                name = node_of[sub.slot] = nodes.get_node_from_slot(sub.slot).name
            by_node.setdefault(name, []).append(sub)
        results = await asyncio.gather(*(self._read_node(name, group)
                                         for name, group in by_node.items()),
                                       return_exceptions=True)
        for res in results:
            if isinstance(res, BaseException):
                raise res

    async def _read_node(self, name: str, subs: list[Subscription]) -> None:
        groups = group_by_slot(subs)
        conn = await self._conn(name)
        await conn.send_packed_command(b"".join(xread(g, self.count) for g in groups))
        error: ResponseError | None = None
        for g in groups:
            try:
                self._dispatch(g, await conn.read_response(timeout=READ_TIMEOUT_S))
            except ResponseError as e:  # read every reply so the connection stays in step
                error = error or e
        if error is not None:
            raise error

    def _dispatch(self, subs: list[Subscription], reply: Any) -> None:
        """Hand each stream's entries to its subscription (if it is still the same one)."""
        self.reads += 1
        self.named += len(subs)
        if reply is None:
            return
        current = self._subs
        by_key = {s.key_bytes: s for s in subs} if len(subs) > 1 else None
        for key, entries in _pairs(reply):
            sub = by_key.get(key) if by_key is not None else subs[0]
            if (sub is None or not entries or not sub.active or current.get(sub.key) is not sub
                    or sub.key_bytes != key):
                continue  # re-subscribed meanwhile: this batch is from the old position
            sub.push(entries)
            sub.got = len(entries)
            self.entries += len(entries)
