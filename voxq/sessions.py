"""Session records in Redis: create one, read its meta, list sessions, read its transcript.

Shared by the producer (create), the worker (meta) and the API (read). Every multi-key
operation stays inside one session's hash slot; the index and control stream are written
with separate commands so the same code runs on Redis Cluster.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from voxq.errors import SessionExists, UnknownSession
from voxq.keys import TRANSCRIBERS_GROUP, Keys, validate_session_id
from voxq.records import SessionMeta, Transcript, decode_transcript

# Creates the meta hash only if the session does not exist yet (one slot: cluster-safe).
CREATE_META = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""


async def ensure_group(r: aioredis.Redis, keys: Keys) -> None:
    """Create the control stream and its consumer group if they do not exist."""
    try:
        await r.xgroup_create(keys.sessions, TRANSCRIBERS_GROUP, id="0", mkstream=True)
    except aioredis.ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise


def stamped(meta: SessionMeta) -> tuple[SessionMeta, list[str]]:
    """The meta of a session being created (times set) and its hash as CREATE_META's ARGV."""
    now = time.time()
    meta = meta.with_(created=meta.created or now, updated=now)
    flat: list[str] = []
    for k, v in meta.to_hash().items():
        flat += [k, v]
    return meta, flat


async def create_session(r: aioredis.Redis, keys: Keys, meta: SessionMeta) -> SessionMeta:
    """Write meta, index and control entry for a new session; SessionExists if it is taken."""
    meta, flat = stamped(meta)
    created = await r.eval(CREATE_META, 1, keys.meta(meta.session_id), *flat)
    if not created:
        raise SessionExists(f"session {meta.session_id!r} already exists")
    await ensure_group(r, keys)
    await r.zadd(keys.index, {meta.session_id: meta.created})
    await r.xadd(keys.sessions, {"sid": meta.session_id})
    return meta


async def get_meta(r: aioredis.Redis, keys: Keys, sid: str) -> SessionMeta:
    """The session's meta; UnknownSession if there is none."""
    h = await r.hgetall(keys.meta(validate_session_id(sid)))
    if not h:
        raise UnknownSession(f"no session {sid!r}")
    return SessionMeta.from_hash(h)


@dataclass(frozen=True, slots=True)
class Page:
    """One page of the session index, newest first."""

    sessions: list[SessionMeta]
    total: int


async def list_sessions(r: aioredis.Redis, keys: Keys, offset: int = 0,
                        limit: int = 50) -> Page:
    """Sessions newest first; ids whose meta has expired are left out of the page."""
    total = await r.zcard(keys.index)
    ids: Any = await r.zrevrange(keys.index, offset, offset + limit - 1)
    metas: list[SessionMeta] = []
    if ids:
        async with r.pipeline(transaction=False) as p:
            for raw in ids:
                p.hgetall(keys.meta(raw.decode() if isinstance(raw, bytes) else raw))
            hashes = await p.execute()
        metas = [SessionMeta.from_hash(h) for h in hashes if h]
    return Page(sessions=metas, total=int(total))


async def read_finals(r: aioredis.Redis, keys: Keys, sid: str,
                      batch: int = 1000) -> list[tuple[str, Transcript]]:
    """Every final segment of a session in order, as (stream id, transcript)."""
    out: list[tuple[str, Transcript]] = []
    start = "-"
    key = keys.final(sid)
    while True:
        entries: Any = await r.xrange(key, min=start, max="+", count=batch)
        for eid, fields in entries:
            sid_s = eid.decode() if isinstance(eid, bytes) else eid
            out.append((sid_s, decode_transcript(fields)))
        if len(entries) < batch:
            return out
        last = out[-1][0]
        start = "(" + last
