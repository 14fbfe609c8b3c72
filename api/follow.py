"""One follower of one session on the event hub: catch up from Redis, join the hub's fan-out,
and end with every final once, in order, then one ``status`` (the SSE and WebSocket contract).

Joining without losing or repeating an entry: the follower first reads what is already stored
after its cursor (XRANGE pages on the bounded route pool), then joins the hub's channel, which
reports the positions the hub will deliver from; anything between the follower's position and
the hub's is read once more from Redis, and anything the hub delivers at or before the
follower's position is skipped. On a terminal status the follower reads the rest of the final
stream before the status: the status entry is written after the last final, so a read that
starts after the status was seen finds every final.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from api.hub import REDIS_DOWN, EventHub, Follower, Kind
from api.render import event_data
from api.sse import Cursor, stream_id_key
from voxq import backoff
from voxq.errors import MalformedRecord, RedisUnavailable
from voxq.keys import Keys
from voxq.lifecycle import decode_status
from voxq.records import Status

log = logging.getLogger("voxq.api.follow")

SLOW_MESSAGE = ("this follower fell too far behind and was cut off; reconnect with the last "
                "event id (Last-Event-ID, or ?after= on the WebSocket) to resume")


@dataclass(frozen=True, slots=True)
class LiveEvent:
    """One event for a client: ``partial``, ``final``, ``status``, ``vendor_switched`` or
    ``error`` (cut off), its resumable id and its JSON data."""

    kind: str
    id: str
    data: str


KEEPALIVE = LiveEvent("keepalive", "", "")


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _after(a: str, b: str) -> bool:
    """Is stream id ``a`` later than ``b``?"""
    return stream_id_key(a) > stream_id_key(b)


def _status(raw: bytes | str | None) -> Status | None:
    try:
        return Status(_s(raw)) if raw is not None else None
    except ValueError:
        return None


def _status_event(status: Status, error: str, cursor: Cursor) -> LiveEvent:
    info = {"status": status.value, "error": error}
    return LiveEvent("status", cursor.event_id, json.dumps(info, separators=(",", ":")))


class SessionFollow:
    """The events of one session for one client, from ``cursor`` (None: every final so far
    and partials from now on) until its terminal status, the client's departure or a cut-off."""

    __slots__ = ("_start", "batch", "cursor", "follower", "gate", "hub", "keys", "r",
                 "retry_seconds", "sid")

    def __init__(self, hub: EventHub, r: aioredis.Redis, keys: Keys, sid: str,
                 cursor: Cursor | None, batch: int, gate: asyncio.Semaphore | None = None,
                 retry_seconds: float = 30.0):
        self.hub = hub
        self.r = r
        self.keys = keys
        self.sid = sid
        self.cursor = cursor
        self.batch = batch
        self.retry_seconds = retry_seconds
        self.gate = gate or asyncio.Semaphore(1)
        self.follower: Follower | None = None
        self._start: Any = None  # the first read's replies

    async def start(self) -> bool:
        """The first read, one MULTI: status, positions and the first page of stored events.
        False if the session does not exist (nothing else is read)."""
        keys, sid, cur, n = self.keys, self.sid, self.cursor, self.batch

        async def first() -> Any:
            async with self.r.pipeline(transaction=True) as p:
                p.hmget(keys.meta(sid), ["status", "error"])
                p.xrevrange(keys.status(sid), count=1)
                p.xrevrange(keys.partial(sid), count=1)
                p.xrange(keys.final(sid), min=f"({cur.final if cur else '0-0'}", count=n)
                if cur is not None:
                    p.xrange(keys.partial(sid), min=f"({cur.partial}", count=n)
                return await p.execute()

        self._start = await self._retrying(first)
        return self._start[0][0] is not None

    async def _retrying(self, call: Callable[[], Awaitable[Any]]) -> Any:
        """A read, retried with backoff while Redis is unreachable (a restart or failover),
        for up to ``retry_seconds``; then RedisUnavailable."""
        deadline = time.monotonic() + self.retry_seconds
        delays = backoff.REDIS.delays()
        while True:
            try:
                async with self.gate:  # leaves pooled connections free for request routes
                    return await call()
            except REDIS_DOWN as e:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError from e
                delay = next(delays)
                if time.monotonic() + delay > deadline:
                    raise RedisUnavailable(f"Redis unreachable: {e}") from e
                await asyncio.sleep(delay)

    async def _range(self, key: str, after: str, upto: str, count: int) -> list[Any]:
        got: Any = await self._retrying(
            lambda: self.r.xrange(key, min=f"({after}", max=upto, count=count))
        return list(got or ())

    async def _stored(self, upto: tuple[str, str] = ("+", "+"),
                      first: tuple[list[Any], list[Any]] | None = None
                      ) -> AsyncIterator[LiveEvent]:
        """Finals and partials stored after the cursor (up to ``upto``), in id order; the
        first page may have been read already (``first``)."""
        fkey, pkey = self.keys.final(self.sid), self.keys.partial(self.sid)
        while True:
            assert self.cursor is not None
            cur = self.cursor
            if first is not None:
                finals, partials = first
                first = None
                finals, partials = list(finals or ()), list(partials or ())
            else:
                finals = (await self._range(fkey, cur.final, upto[0], self.batch)
                          if upto[0] == "+" or _after(upto[0], cur.final) else [])
                partials = (await self._range(pkey, cur.partial, upto[1], self.batch)
                            if upto[1] == "+" or _after(upto[1], cur.partial) else [])
            entries = [("final", _s(e), f) for e, f in finals]
            entries += [("partial", _s(e), f) for e, f in partials]
            entries.sort(key=lambda e: (stream_id_key(e[1]), e[0] == "partial"))
            for kind, eid, fields in entries:
                self.cursor = self.cursor.advanced(kind, eid)
                try:
                    data = event_data(fields)
                except MalformedRecord:
                    continue
                yield LiveEvent(kind, self.cursor.event_id, data)
            if len(finals) < self.batch and len(partials) < self.batch:
                return

    async def events(self, disconnected: Callable[[], Awaitable[bool]],
                     keepalive: float) -> AsyncIterator[LiveEvent]:
        """The events; KEEPALIVE after ``keepalive`` seconds without one."""
        try:
            async for ev in self._events(disconnected, keepalive):
                yield ev
        except RedisUnavailable as e:
            log.warning("follower of %s: %s; ended", self.sid, e)
            if self.cursor is not None:
                yield LiveEvent("error", self.cursor.event_id, json.dumps(
                    {"error": "redis_unavailable", "detail": "the event store is unreachable; "
                     "reconnect later with the last event id to resume"}))
        finally:
            if self.follower is not None:
                self.hub.leave(self.follower)

    async def _events(self, disconnected: Callable[[], Awaitable[bool]],
                      keepalive: float) -> AsyncIterator[LiveEvent]:
        keys, sid = self.keys, self.sid
        if self._start is None and not await self.start():
            return  # vanished (expired or deleted) before the stream began
        (raw_status, raw_error), last_status, last_partial, finals, *partials = self._start
        self._start = None  # a live follower keeps no page of the catch-up alive
        if self.cursor is None:
            newest = _s(last_partial[0][0]) if last_partial else "0-0"
            self.cursor = Cursor(final="0-0", partial=newest)
        first = (finals, partials[0] if partials else [])
        status = _status(raw_status)
        if status is not None and status.terminal:
            async for ev in self._stored(first=first):
                yield ev
            yield _status_event(status, _s(raw_error) if raw_error else "", self.cursor)
            return
        status_pos = _s(last_status[0][0]) if last_status else "0-0"
        async for ev in self._stored(first=first):
            yield ev
        del first, finals, partials, last_status, last_partial  # nor in this frame
        follower, (hub_final, hub_partial, hub_status) = self.hub.join(
            sid, self.cursor.final, self.cursor.partial, status_pos)
        self.follower = follower
        async for ev in self._stored((hub_final, hub_partial)):
            yield ev  # what the hub read before this follower joined
        terminal: tuple[Status, str] | None = None
        if _after(hub_status, status_pos):
            for _, fields in await self._range(keys.status(sid), status_pos, hub_status, 100):
                try:
                    st, err = decode_status(fields)
                except MalformedRecord:
                    continue
                if st.terminal:
                    terminal = (st, err)
        last_check = time.monotonic()
        while terminal is None:
            if not await follower.wait(keepalive):
                if await disconnected():
                    return
                last_check = time.monotonic()
                yield KEEPALIVE
                continue
            for kind, eid, data in follower.take():
                if kind is Kind.STATUS:
                    st, err = data
                    if st.terminal:
                        terminal = (st, err)
                        break
                    continue
                if kind is Kind.GONE:
                    return
                if kind is Kind.VENDOR_SWITCHED:
                    assert self.cursor is not None
                    yield LiveEvent(kind.value, self.cursor.event_id, data)
                    continue
                assert self.cursor is not None
                if kind is Kind.FINAL:
                    if not _after(eid, self.cursor.final):
                        continue
                    self.cursor = self.cursor.advanced("final", eid)
                elif kind is Kind.PARTIAL:
                    if not _after(eid, self.cursor.partial):
                        continue
                    self.cursor = self.cursor.advanced("partial", eid)
                if data is not None:
                    yield LiveEvent(kind.value, self.cursor.event_id, data)
            if terminal is None and follower.closed:
                return  # the API is shutting down: the client resumes with its last id
            if terminal is None and follower.overflowed and not follower.queue:
                assert self.cursor is not None
                yield LiveEvent("error", self.cursor.event_id,
                                json.dumps({"error": "slow_consumer", "detail": SLOW_MESSAGE}))
                return
            if time.monotonic() - last_check >= keepalive:
                last_check = time.monotonic()
                if await disconnected():
                    return
        self.hub.leave(follower)
        async for ev in self._stored():
            yield ev
        assert self.cursor is not None
        yield _status_event(terminal[0], terminal[1], self.cursor)
