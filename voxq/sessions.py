"""Session records in Redis: create one, read its meta, list sessions, read its transcript.

Shared by the producer (create), the worker (meta) and the API (read). Every multi-key
operation stays inside one session's hash slot; the index and control stream are written
with separate commands so the same code runs on Redis Cluster.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from voxq.access import DEFAULT_TENANT
from voxq.errors import InvalidSessionId, MalformedRecord, SessionExists, UnknownSession
from voxq.keys import TRANSCRIBERS_GROUP, Keys, validate_session_id
from voxq.lifecycle import announce
from voxq.records import SessionMeta, Status, Transcript, decode_transcript

log = logging.getLogger("voxq.sessions")

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
    await r.zadd(keys.tenant_index(meta.tenant or DEFAULT_TENANT), {meta.session_id: meta.created})
    await r.xadd(keys.sessions, {"sid": meta.session_id})
    await announce(r, keys, meta.session_id, Status.CREATED, vendor=meta.vendor)
    return meta


async def get_meta(r: aioredis.Redis, keys: Keys, sid: str) -> SessionMeta:
    """The session's meta; UnknownSession if there is none, MalformedRecord if it is unreadable
    (including a record whose ``id`` names another session)."""
    h = await r.hgetall(keys.meta(validate_session_id(sid)))
    if not h:
        raise UnknownSession(f"no session {sid!r}")
    return SessionMeta.from_hash(h, sid)


@dataclass(frozen=True, slots=True)
class Page:
    """One page of the session index, newest first; ``skipped`` counts the entries of the page
    whose id or meta could not be read (left out, never failing the page)."""

    sessions: list[SessionMeta]
    total: int
    skipped: int = 0


def _decoded_id(raw: bytes | str) -> str:
    """An index member as a valid session id; InvalidSessionId if it is not one."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode()
        except UnicodeDecodeError:
            raise InvalidSessionId(f"index member {raw[:40]!r} is not UTF-8") from None
    return validate_session_id(raw)


async def list_sessions(r: aioredis.Redis, keys: Keys, offset: int = 0,
                        limit: int = 50, tenant: str | None = None) -> Page:
    """Sessions newest first (every tenant's, or one ``tenant``'s); ids whose meta has expired
    are left out of the page, and so are index members that are no valid id and metas that
    cannot be read (counted in ``skipped``)."""
    index = keys.index if tenant is None else keys.tenant_index(tenant)
    total = await r.zcard(index)
    raw_ids: Any = await r.zrevrange(index, offset, offset + limit - 1)
    ids: list[str] = []
    skipped = 0
    for raw in raw_ids or ():
        try:
            ids.append(_decoded_id(raw))
        except InvalidSessionId as e:
            log.warning("session index: skipping %s", e)
            skipped += 1
    metas: list[SessionMeta] = []
    if ids:
        async with r.pipeline(transaction=False) as p:
            for sid in ids:
                p.hgetall(keys.meta(sid))
            hashes = await p.execute()
        expired = [sid for sid, h in zip(ids, hashes, strict=True) if not h]
        if expired and tenant is not None:
            # the sweeper cleans the global index; a tenant's index is cleaned as it is read
            await r.zrem(index, *expired)
        for sid, h in zip(ids, hashes, strict=True):
            if not h:
                continue
            try:
                meta = SessionMeta.from_hash(h, sid)
                if tenant is not None and (meta.tenant or DEFAULT_TENANT) != tenant:
                    skipped += 1  # an index member whose record names another tenant
                    continue
                metas.append(meta)
            except MalformedRecord as e:
                log.warning("session index: skipping %s: %s", sid, e)
                skipped += 1
    return Page(sessions=metas, total=int(total), skipped=skipped)


@dataclass(frozen=True, slots=True)
class Finals:
    """A session's readable final segments in order, and how many entries could not be read."""

    segments: list[tuple[str, Transcript]]
    skipped: int = 0


async def read_finals(r: aioredis.Redis, keys: Keys, sid: str,
                      batch: int = 1000) -> list[tuple[str, Transcript]]:
    """Every final segment of a session in order, as (stream id, transcript); MalformedRecord
    at the first entry that cannot be read."""
    return (await _finals(r, keys, sid, batch, skip_malformed=False)).segments


async def read_finals_skipping(r: aioredis.Redis, keys: Keys, sid: str,
                               batch: int = 1000) -> Finals:
    """Every readable final segment of a session in order; unreadable entries are counted."""
    return await _finals(r, keys, sid, batch, skip_malformed=True)


async def _finals(r: aioredis.Redis, keys: Keys, sid: str, batch: int,
                  skip_malformed: bool) -> Finals:
    out: list[tuple[str, Transcript]] = []
    skipped = 0
    start = "-"
    key = keys.final(sid)
    while True:
        entries: Any = await r.xrange(key, min=start, max="+", count=batch)
        for eid, fields in entries:
            eid_s = eid.decode() if isinstance(eid, bytes) else eid
            try:
                out.append((eid_s, decode_transcript(fields)))
            except MalformedRecord as e:
                if not skip_malformed:
                    raise
                log.warning("session %s: skipping final entry %s: %s", sid, eid_s, e)
                skipped += 1
        if len(entries) < batch:
            return Finals(out, skipped)
        last = entries[-1][0]
        start = "(" + (last.decode() if isinstance(last, bytes) else last)


async def backfill_tenant_index(r: aioredis.Redis, keys: Keys, batch: int = 500) -> int:
    """Once per deployment: add sessions created before tenants existed (no ``tenant`` field)
    to the default tenant's index, so existing data stays listed without a migration by hand.
    Returns how many were added (0 when another process did it already)."""
    if not await r.exists(keys.index):
        return 0  # nothing from before tenants (checked again at the next start)
    if not await r.set(keys.tenant_backfill, repr(time.time()), nx=True):
        return 0
    added, cursor = 0, 0
    while True:
        reply: Any = await r.zscan(keys.index, cursor, count=batch)
        cursor, items = reply
        members: list[tuple[str, float]] = []
        for raw, score in items:
            try:
                members.append((_decoded_id(raw), float(score)))
            except InvalidSessionId:
                continue
        if members:
            async with r.pipeline(transaction=False) as p:
                for sid, _ in members:
                    p.hget(keys.meta(sid), "tenant")
                tenants = await p.execute()
            old = {sid: score for (sid, score), t in zip(members, tenants, strict=True) if not t}
            if old:
                n: Any = await r.zadd(keys.tenant_index(DEFAULT_TENANT), old)
                added += int(n)
        if not cursor:
            return added
