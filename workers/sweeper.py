"""Housekeeping one worker at a time does (a lock key elects it): drop index entries and
leftover streams of sessions whose meta has expired, and stale entries of the live set."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from voxq.keys import Keys


@dataclass(frozen=True, slots=True)
class SweepReport:
    """What one sweep removed."""

    orphans: int
    stale_live: int


def _s(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


async def sweep_once(r: aioredis.Redis, keys: Keys, stale_live_after: float,
                     batch: int = 500) -> SweepReport:
    """One pass over the index; cheap enough to run every minute on a large index."""
    orphans = 0
    cursor: Any = 0
    while True:
        cursor, items = await r.zscan(keys.index, cursor, count=batch)
        ids = [_s(member) for member, _score in items]
        if ids:
            async with r.pipeline(transaction=False) as p:
                for sid in ids:
                    p.exists(keys.meta(sid))
                exists = await p.execute()
            gone = [sid for sid, e in zip(ids, exists, strict=True) if not e]
            if gone:
                async with r.pipeline(transaction=False) as p:
                    p.zrem(keys.index, *gone)
                    for sid in gone:
                        p.delete(keys.audio(sid), keys.final(sid), keys.partial(sid),
                                 keys.status(sid))
                    await p.execute()
                orphans += len(gone)
        if int(cursor) == 0:
            break
    stale = await r.zremrangebyscore(keys.live, "-inf", time.time() - stale_live_after)
    return SweepReport(orphans=orphans, stale_live=int(stale))


async def try_sweep(r: aioredis.Redis, keys: Keys, who: str, interval: float,
                    stale_live_after: float) -> SweepReport | None:
    """Sweep if no other worker swept within ``interval`` seconds."""
    if not await r.set(f"{keys.prefix}:sweeper", who, nx=True, ex=max(1, int(interval))):
        return None
    return await sweep_once(r, keys, stale_live_after)
