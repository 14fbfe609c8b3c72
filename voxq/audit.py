"""The audit log: refused requests and key administration, in a capped Redis stream
``PREFIX:audit``, a Prometheus counter per reason, and a log line (the repeat filter of
voxq.logs keeps a storm of refusals to a few lines per window). Entries never hold a secret."""

from __future__ import annotations

import logging
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from voxq.keys import Keys
from voxq.metrics import AUTH_DENIED, KEY_ADMIN

log = logging.getLogger("voxq.audit")
MAXLEN = 10_000


def audit_key(keys: Keys) -> str:
    """The capped audit stream."""
    return f"{keys.prefix}:audit"


def _clean(v: object) -> str:
    return str(v if v is not None else "")[:200]


async def record(r: aioredis.Redis, keys: Keys, event: str, **fields: object) -> None:
    """Append one entry (``event``: a denial reason or key_created/key_revoked); a Redis
    failure is logged, never raised (an audit write must not turn a 403 into a 500)."""
    entry: dict[Any, Any] = {"event": event, "time": repr(round(time.time(), 3)),
                             **{k: _clean(v) for k, v in fields.items()}}
    try:
        await r.xadd(audit_key(keys), entry, maxlen=MAXLEN, approximate=True)
    except RedisError as e:
        log.warning("audit entry %s not stored: %s", event, type(e).__name__)


async def denied(r: aioredis.Redis, keys: Keys, reason: str, *, route: str, key_id: str = "",
                 tenant: str = "", peer: str = "", detail: str = "") -> None:
    """A refused request: counted, logged (rate-limited) and stored."""
    AUTH_DENIED.labels(reason).inc()
    log.warning("access denied (%s) on %s", reason, route[:100])
    await record(r, keys, reason, route=route, key_id=key_id, tenant=tenant, peer=peer,
                 detail=detail)


async def key_admin(r: aioredis.Redis, keys: Keys, action: str, *, key_id: str, tenant: str,
                    by: str) -> None:
    """A key created or revoked (``by``: the acting key's id, or ``cli``)."""
    KEY_ADMIN.labels(action).inc()
    log.info("key %s %s (tenant %s) by %s", key_id, action, tenant, by)
    await record(r, keys, f"key_{action}", key_id=key_id, tenant=tenant, by=by)


async def read(r: aioredis.Redis, keys: Keys, count: int = 100,
               before: str | None = None) -> list[dict[str, str]]:
    """The newest ``count`` entries, newest first (older than ``before`` if given)."""
    if before is not None and before.strip("0-") == "":
        return []  # nothing is older than the first possible id
    raw: Any = await r.xrevrange(audit_key(keys), max=f"({before}" if before else "+",
                                 min="-", count=count)
    out = []
    for eid, fields in raw or ():
        d = {(k.decode() if isinstance(k, bytes) else k): (v.decode(errors="replace")
             if isinstance(v, bytes) else v) for k, v in fields.items()}
        d["id"] = eid.decode() if isinstance(eid, bytes) else eid
        out.append(d)
    return out
