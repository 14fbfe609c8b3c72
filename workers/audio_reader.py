"""One multiplexed reader per worker: a single XREAD over every owned session's audio stream,
dispatching entries to per-session inboxes (instead of one blocking read per session).

Backpressure: a session whose inbox is full is left out of the next read, so its audio
waits in Redis, not in worker memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)

Entry = tuple[str, dict[bytes, bytes]]


class Subscription:
    """A session's read position and its inbox of audio entries."""

    __slots__ = ("active", "inbox", "key", "last_id", "limit", "ready")

    def __init__(self, key: str, from_id: str, limit: int):
        self.key = key
        self.last_id = from_id
        self.limit = limit
        self.inbox: deque[Entry] = deque()
        self.ready = asyncio.Event()
        self.active = True

    def room(self) -> int:
        """How many more entries the inbox takes."""
        return self.limit - len(self.inbox)

    async def get(self, timeout: float | None) -> Entry | None:
        """Next entry in order, or None after ``timeout`` seconds without one."""
        while not self.inbox:
            self.ready.clear()
            try:
                await asyncio.wait_for(self.ready.wait(), timeout)
            except TimeoutError:
                return None
        return self.inbox.popleft()


class AudioReader:
    """Reads all subscribed streams with one XREAD call at a time on its own connection."""

    def __init__(self, r: aioredis.Redis, count: int = 16, block_ms: int = 100):
        self.r = r
        self.count = count
        self.block_ms = block_ms
        self._subs: dict[str, Subscription] = {}
        self._wake = asyncio.Event()
        self.errors = 0

    def subscribe(self, key: str, from_id: str, limit: int) -> Subscription:
        """Start reading ``key`` after ``from_id``; replaces an earlier subscription."""
        old = self._subs.get(key)
        if old is not None:
            old.active = False
        sub = Subscription(key, from_id, limit)
        self._subs[key] = sub
        self._wake.set()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop reading for this subscription."""
        sub.active = False
        if self._subs.get(sub.key) is sub:
            del self._subs[sub.key]

    def poke(self) -> None:
        """An inbox drained: consider its stream again without waiting."""
        self._wake.set()

    async def run(self) -> None:
        """Read forever; Redis outages are retried with backoff, positions kept."""
        backoff = 0.05
        while True:
            # The bound is soft by at most `count` entries: a stream with any room is read.
            snapshot = {k: s for k, s in self._subs.items() if s.room() > 0}
            streams: dict[Any, Any] = {k: s.last_id for k, s in snapshot.items()}
            if not streams:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), 1.0)
                except TimeoutError:
                    pass
                continue
            try:
                resp: Any = await self.r.xread(streams, count=self.count, block=self.block_ms)
                backoff = 0.05
            except (RedisConnectionError, RedisTimeoutError, OSError) as e:
                self.errors += 1
                log.warning("audio reader: Redis unavailable (%s); retrying", e)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            for key, entries in resp or ():
                k = key.decode() if isinstance(key, bytes) else key
                sub = snapshot.get(k)
                if sub is None or self._subs.get(k) is not sub or not entries:
                    continue  # re-subscribed meanwhile: this batch is from the old position
                for eid, fields in entries:
                    sub.inbox.append((eid.decode() if isinstance(eid, bytes) else eid, fields))
                sub.last_id = sub.inbox[-1][0]
                sub.ready.set()
