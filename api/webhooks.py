"""Webhook delivery: every session's end event (session.finished/failed/abandoned), and each
final segment (transcript.final) to the targets that ask for it, POSTed, signed the Standard
Webhooks way, to the deployment's URLs, to subscriptions made with ``POST /v1/webhooks`` and to
the session's own ``webhook`` URL, at least once.

Why a Redis queue of our own and not RQ: a delivery must be retried with exponential backoff
for up to a day and survive any process restart; a sorted set of due deliveries (score: the
next attempt's time) gives exactly that, on the main Redis (a Redis Cluster too: every webhook
key shares one hash tag), without another worker role to run (RQ's scheduler) and without RQ's
fixed retry intervals. It runs inside ``voxq api``; several API processes share the work safely.

How: the lifecycle stream is read through the consumer group ``webhooks`` (each end event is
turned into deliveries by one API process; an entry left pending by a process that died is
claimed by another after ``lease`` seconds). Each delivery is a hash holding its URL, body and
attempt count; its id, stable across retries, is the message's ``webhook-id``. A process takes
due deliveries with a script that moves their score ``lease`` seconds ahead (a lease: if the
process dies mid-POST, the delivery falls due again). A 2xx ends it; 410 Gone ends it and
removes an API subscription; anything else (or no answer) is retried after 5 s, 10 s, 20 s, …
(capped at an hour, with jitter) until ``max_age`` has passed since the first attempt. Every
attempt is recorded on the session (``GET /v1/sessions/{id}/webhooks``).

Finals: while any target asks for ``transcript.final``, each poll looks at the sessions workers
drive (``voxq:live``); one API process at a time holds a session's finals lease (a key in the
session's slot) and turns the finals past the session's webhook cursor (same slot) into
deliveries, then moves the cursor. The end event first catches up on the finals left, so a
session's last finals are not missed. A delivery is enqueued before the cursor moves: a process
that dies between the two makes the next one enqueue those finals again with the same
webhook-id (at least once; receivers deduplicate by it and order by ``index``).

Secrets never reach Redis or a log: the deployment's secret (VOXQ_WEBHOOK_SECRET) signs its own
URLs and per-session webhooks; each API subscription's secret is derived from it and its id
(returned once, when the subscription is made). Logged URLs lose credentials and query.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import httpx
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from api.transcript_formats import segment_dict
from voxq import webhook_sign
from voxq.access import tenant_of
from voxq.backoff import REDIS as REDIS_BACKOFF
from voxq.backoff import Backoff
from voxq.errors import InvalidInput, MalformedRecord
from voxq.keys import Keys
from voxq.lifecycle import LifecycleEvent, decode_lifecycle
from voxq.records import Status, Transcript, decode_transcript
from voxq.sessions import read_finals
from voxq.settings import Settings

log = logging.getLogger("voxq.api.webhooks")

GROUP = "webhooks"
LOG_KEEP = 200  # attempts kept per session
EVENT_TYPES = {Status.FINISHED: "session.finished", Status.FAILED: "session.failed",
               Status.ABANDONED: "session.abandoned"}
SESSION_EVENTS = frozenset(EVENT_TYPES.values())
FINAL_EVENT = "transcript.final"
ALL_EVENTS = SESSION_EVENTS | {FINAL_EVENT}
FINALS_BATCH = 200  # finals read per session and round


def parse_events(text: str | Iterable[str]) -> frozenset[str]:
    """A set of event types from a comma list (or names); InvalidInput on an unknown one."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text)]
    events = frozenset(n for n in names if n)
    unknown = sorted(events - ALL_EVENTS)
    if unknown:
        raise InvalidInput(f"unknown webhook event {unknown[0][:40]!r} (known: "
                           f"{', '.join(sorted(ALL_EVENTS))})")
    if not events:
        raise InvalidInput("a webhook needs at least one event")
    return events


@dataclass(frozen=True, slots=True)
class Target:
    """Where one session's events go: target id, URL, whether end events carry the whole
    transcript, and which events."""

    id: str
    url: str
    with_transcript: bool
    events: frozenset[str]
    tenant: str | None = None  # an API subscription gets its own tenant's sessions only

    def wants(self, tenant: str) -> bool:
        """Whether this target receives events of a session of ``tenant``."""
        return self.tenant is None or self.tenant == tenant


class Outcome:
    """What one attempt led to."""

    DELIVERED = "delivered"
    RETRYING = "retrying"
    GAVE_UP = "gave_up"
    UNSUBSCRIBED = "unsubscribed"


def shown_url(url: str) -> str:
    """A URL fit for logs and API answers: no credentials, no query (tokens hide there)."""
    p = urlsplit(url)
    host = p.hostname or ""
    port = f":{p.port}" if p.port else ""
    return f"{p.scheme}://{host}{port}{p.path}"


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


@dataclass(frozen=True, slots=True)
class WebhookKeys:
    """The webhook keys: one hash tag, so the queue's scripts run on a cluster too."""

    prefix: str

    @property
    def tag(self) -> str:
        return f"{self.prefix}:{{webhooks}}"

    @property
    def subs(self) -> str:
        """Hash: subscription id -> JSON {url, include_transcript, created} (no secret)."""
        return f"{self.tag}:subs"

    @property
    def due(self) -> str:
        """Sorted set: delivery id by the time of its next attempt."""
        return f"{self.tag}:due"

    def delivery(self, did: str) -> str:
        """Hash: one delivery (target, url, session, event, body, attempts, first)."""
        return f"{self.tag}:d:{did}"

    def attempts(self, sid: str) -> str:
        """List: the session's delivery attempts, newest last (JSON each)."""
        return f"{self.tag}:log:{sid}"


def finals_cursor(keys: Keys, sid: str) -> str:
    """String in the session's slot: `<final stream id> <finals before it>` already enqueued."""
    return f"{keys.prefix}:{{{sid}}}:webhook:cursor"


def finals_lease(keys: Keys, sid: str) -> str:
    """String in the session's slot: the API process that turns its finals into deliveries."""
    return f"{keys.prefix}:{{{sid}}}:webhook:lease"


# KEYS: delivery hash, due set. ARGV: due time, delivery id, then field/value pairs.
# Idempotent: a lifecycle entry processed twice enqueues nothing twice.
_ENQUEUE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
return 1
"""

# KEYS: due set. ARGV: now, lease until, max. Takes due deliveries under a lease.
_TAKE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return ids
"""


# KEYS: lease. ARGV: holder. Gives the lease up if the caller holds it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: lease. ARGV: holder, milliseconds. 1 if the caller holds (or now took) the lease.
_LEASE = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
"""


def delivery_id(lifecycle_id: str, target: str) -> str:
    """A delivery's id (the message's webhook-id), the same for every attempt: 36 chars."""
    return "msg_" + hashlib.sha256(f"{lifecycle_id}|{target}".encode()).hexdigest()[:32]


def env_targets(settings: Settings) -> list[tuple[str, str]]:
    """(target id, URL) of VOXQ_WEBHOOK_URLS."""
    urls = [u.strip() for u in (settings.webhook_urls or "").split(",") if u.strip()]
    return [("env:" + hashlib.sha256(u.encode()).hexdigest()[:12], u) for u in urls]


def subscription_secret(master: str, sub_id: str) -> str:
    """An API subscription's secret (derived, never stored)."""
    return webhook_sign.derived_secret(master, f"sub:{sub_id}")


def backoff(attempts: int, base: float, cap: float = 3600.0) -> float:
    """Seconds before the next delivery attempt after ``attempts`` failed ones: voxq's one
    strategy (equal jitter) on the delivery schedule's base and cap."""
    return Backoff(base=min(base, cap), cap=cap).compute(attempts - 1)


class WebhookDispatcher:
    """Turns end events into deliveries and delivers them (see the module docstring)."""

    def __init__(self, r: aioredis.Redis, keys: Keys, settings: Settings, *,
                 consumer: str | None = None, poll_seconds: float = 0.5, lease: float = 60.0,
                 concurrency: int = 16, retry_base_seconds: float = 5.0):
        secret = settings.webhook_secret
        if secret is None:
            raise InvalidInput("webhooks need VOXQ_WEBHOOK_SECRET")
        self._master = secret.get_secret_value()
        webhook_sign.secret_key(self._master)  # InvalidInput now, not at the first delivery
        self.env_events = parse_events(settings.webhook_events)
        self.r = r
        self.keys = keys
        self.wk = WebhookKeys(keys.prefix)
        self.settings = settings
        self.consumer = consumer or f"api-{uuid.uuid4().hex[:12]}"
        self.poll_seconds = poll_seconds
        self.lease = lease
        self.retry_base = retry_base_seconds
        self._gate = asyncio.Semaphore(concurrency)
        #: a session's finals lease lapses this long after its holder's last round
        self.finals_lease = max(5.0, 10 * poll_seconds)
        self._leased: set[str] = set()
        self._stopping = False
        self.delivered = 0
        self.attempts = 0

    # --- enqueue --------------------------------------------------------------------------

    async def ensure_group(self) -> None:
        """The consumer group on the lifecycle stream (new events from its creation on)."""
        try:
            await self.r.xgroup_create(self.keys.lifecycle, GROUP, id="$", mkstream=True)
        except aioredis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    async def _shared_targets(self) -> list[Target]:
        """The deployment's URLs and the API's subscriptions (every session's)."""
        out = [Target(t, u, self.settings.webhook_include_transcript, self.env_events)
               for t, u in env_targets(self.settings)]
        subs: Any = await self.r.hgetall(self.wk.subs)
        for sub_id, raw in (subs or {}).items():
            try:
                d = json.loads(raw)
                events = parse_events(d["events"]) if "events" in d else SESSION_EVENTS
                out.append(Target(f"sub:{_s(sub_id)}", str(d["url"]),
                                  bool(d.get("include_transcript")), events,
                                  tenant_of(d.get("tenant"))))
            except (ValueError, KeyError, TypeError, InvalidInput):
                log.warning("webhook subscription %s is malformed; skipped", _s(sub_id)[:64])
        return out

    async def _targets(self, sid: str) -> tuple[list[Target], str]:
        """Every target of one session's events, and its vendor."""
        shared = await self._shared_targets()
        own, finals, vendor, tenant = await self.r.hmget(
            self.keys.meta(sid), ["webhook", "webhook_finals", "vendor", "tenant"])
        out = [t for t in shared if t.wants(tenant_of(tenant))]
        if own:
            events = SESSION_EVENTS | ({FINAL_EVENT} if finals == b"1" else frozenset())
            out.append(Target("session", _s(own), self.settings.webhook_include_transcript,
                              events))
        return out, _s(vendor) if vendor else ""

    async def _body(self, event: LifecycleEvent, with_transcript: bool) -> bytes:
        base = (self.settings.api_public_url or "").rstrip("/")
        data: dict[str, Any] = {
            "session_id": event.session_id, "status": event.status.value,
            "error": event.error, "vendor": event.vendor,
            "transcript_url": f"{base}/v1/sessions/{event.session_id}/transcript"}
        if with_transcript:
            finals = await read_finals(self.r, self.keys, event.session_id)
            data["transcript"] = [segment_dict(t, i) for i, (_, t) in enumerate(finals)]
        ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(event.time or time.time()))
        return json.dumps({"type": EVENT_TYPES[event.status], "timestamp": ts, "data": data},
                          separators=(",", ":")).encode()

    async def enqueue(self, eid: str, fields: Any) -> int:
        """Deliveries for one lifecycle entry (none unless it is an end event)."""
        try:
            ev = decode_lifecycle(fields)
        except MalformedRecord as e:
            log.warning("webhooks: %s", e)
            return 0
        if ev.status not in EVENT_TYPES:
            return 0
        targets, vendor = await self._targets(ev.session_id)
        n = await self.enqueue_finals(ev.session_id, targets, vendor)  # the last ones first
        if not ev.vendor:
            ev = replace(ev, vendor=vendor)
        event = EVENT_TYPES[ev.status]
        for t in targets:
            if event in t.events:
                n += await self._enqueue_one(delivery_id(eid, t.id), t, ev.session_id, event,
                                             await self._body(ev, t.with_transcript))
        return n

    async def _enqueue_one(self, did: str, t: Target, sid: str, event: str, body: bytes) -> int:
        now = time.time()
        return int(await self.r.eval(
            _ENQUEUE, 2, self.wk.delivery(did), self.wk.due, repr(now), did,
            "target", t.id, "url", t.url, "sid", sid, "event", event, "body", body,
            "attempts", "0", "first", repr(now)))

    # --- finals ---------------------------------------------------------------------------

    def _final_body(self, sid: str, vendor: str, index: int, t: Transcript) -> bytes:
        base = (self.settings.api_public_url or "").rstrip("/")
        ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return json.dumps({"type": FINAL_EVENT, "timestamp": ts, "data": {
            "session_id": sid, "vendor": vendor, "index": index, "segment": segment_dict(t, index),
            "transcript_url": f"{base}/v1/sessions/{sid}/transcript"}},
            separators=(",", ":")).encode()

    async def enqueue_finals(self, sid: str, targets: list[Target], vendor: str) -> int:
        """Deliveries for the session's finals past its cursor, to the targets that want them;
        then the cursor moves past them (see the module docstring)."""
        wanting = [t for t in targets if FINAL_EVENT in t.events]
        if not wanting:
            return 0
        cursor_key, n = finals_cursor(self.keys, sid), 0
        raw: Any = await self.r.get(cursor_key)
        last, _, before = _s(raw).partition(" ") if raw else ("", "", "0")
        index = int(before) if before.isdigit() else 0
        while True:
            entries: Any = await self.r.xrange(self.keys.final(sid),
                                               min=f"({last}" if last else "-", max="+",
                                               count=FINALS_BATCH)
            for eid_raw, fields in entries:
                eid = _s(eid_raw)
                try:
                    t = decode_transcript(fields)
                except MalformedRecord as e:  # counted by the API's transcript routes too
                    log.warning("webhooks: final %s of %s is unreadable (%s); not sent", eid,
                                sid, e)
                else:
                    for target in wanting:
                        n += await self._enqueue_one(
                            delivery_id(f"{sid}|{eid}", target.id), target, sid, FINAL_EVENT,
                            self._final_body(sid, vendor, index, t))
                    index += 1
                last = eid
            if entries:
                await self.r.set(cursor_key, f"{last} {index}",
                                 ex=int(self.settings.retention_seconds))
            if len(entries) < FINALS_BATCH:
                return n

    async def follow_finals(self) -> int:
        """One round over the live sessions: for each one whose finals some target wants and
        whose lease this process holds (or takes), enqueue its new finals."""
        shared = [t for t in await self._shared_targets() if FINAL_EVENT in t.events]
        live: Any = await self.r.zrange(self.keys.live, 0, -1)
        sids = [_s(s) for s in live or []]
        if not sids:
            return 0
        async with self.r.pipeline(transaction=False) as p:
            for sid in sids:
                p.hmget(self.keys.meta(sid), ["webhook", "webhook_finals", "vendor", "tenant"])
            metas: list[Any] = await p.execute()
        n = 0
        lease_ms = int(self.finals_lease * 1000)
        self._leased &= set(sids)
        for sid, (own, finals, vendor, tenant) in zip(sids, metas, strict=True):
            targets = [t for t in shared if t.wants(tenant_of(tenant))]
            if own and finals == b"1":
                targets.append(Target("session", _s(own),
                                      self.settings.webhook_include_transcript,
                                      SESSION_EVENTS | {FINAL_EVENT}))
            if not targets:
                continue
            if not await self.r.eval(_LEASE, 1, finals_lease(self.keys, sid), self.consumer,
                                     lease_ms):
                continue
            self._leased.add(sid)
            n += await self.enqueue_finals(sid, targets, _s(vendor) if vendor else "")
        return n

    async def enqueue_new(self) -> int:
        """Read new (and abandoned pending) lifecycle entries; enqueue, then acknowledge."""
        lk = self.keys.lifecycle
        reply: Any = await self.r.xreadgroup(GROUP, self.consumer, {lk: ">"}, count=100)
        entries: list[Any] = []
        for _, es in (reply.items() if isinstance(reply, dict) else reply or []):
            entries.extend(es)
        claimed: Any = await self.r.xautoclaim(lk, GROUP, self.consumer,
                                               min_idle_time=int(self.lease * 1000), count=100)
        entries.extend(claimed[1] if claimed else [])
        n = 0
        for eid_raw, fields in entries:
            eid = _s(eid_raw)
            if fields:
                n += await self.enqueue(eid, fields)
            await self.r.xack(lk, GROUP, eid)
        return n

    # --- delivery -------------------------------------------------------------------------

    def _secret(self, target: str) -> str:
        if target.startswith("sub:"):
            return subscription_secret(self._master, target[4:])
        return self._master

    async def _record(self, sid: str, entry: dict[str, Any]) -> None:
        key = self.wk.attempts(sid)
        async with self.r.pipeline(transaction=False) as p:
            p.rpush(key, json.dumps(entry, separators=(",", ":")))
            p.ltrim(key, -LOG_KEEP, -1)
            p.expire(key, self.settings.retention_seconds)
            await p.execute()

    async def deliver(self, client: httpx.AsyncClient, did: str) -> str | None:
        """One attempt of one delivery; its outcome (None if the delivery is gone)."""
        key = self.wk.delivery(did)
        h: Any = await self.r.hgetall(key)
        if not h:
            await self.r.zrem(self.wk.due, did)
            return None
        d = {_s(k): v for k, v in h.items()}
        target, url, sid = _s(d["target"]), _s(d["url"]), _s(d["sid"])
        body = bytes(d["body"])
        attempt = int(d.get("attempts", b"0")) + 1
        if target.startswith("sub:") and not await self.r.hexists(self.wk.subs, target[4:]):
            await self._forget(did)
            return None  # unsubscribed meanwhile
        ts = int(time.time())
        code: int | None = None
        error = ""
        try:
            resp = await client.post(url, content=body,
                                     headers=webhook_sign.headers(self._secret(target), did, ts,
                                                                  body))
            code = resp.status_code
        except httpx.HTTPError as e:
            error = type(e).__name__
        self.attempts += 1
        if code is not None and 200 <= code < 300:
            outcome = Outcome.DELIVERED
        elif code == 410:
            outcome = Outcome.UNSUBSCRIBED
        elif time.time() - float(d["first"]) >= self.settings.webhook_max_age_seconds:
            outcome = Outcome.GAVE_UP
        else:
            outcome = Outcome.RETRYING
        await self._record(sid, {"id": did, "event": _s(d["event"]), "url": shown_url(url),
                                 "attempt": attempt, "status_code": code, "error": error,
                                 "time": round(time.time(), 3), "outcome": outcome})
        if outcome == Outcome.RETRYING:
            async with self.r.pipeline(transaction=False) as p:
                p.hset(key, "attempts", attempt)
                p.zadd(self.wk.due, {did: time.time() + backoff(attempt, self.retry_base)})
                await p.execute()
            log.info("webhook %s to %s: %s; retry %d scheduled", did, shown_url(url),
                     code or error, attempt)
            return outcome
        if outcome == Outcome.UNSUBSCRIBED and target.startswith("sub:"):
            await self.r.hdel(self.wk.subs, target[4:])
            log.info("webhook subscription %s answered 410 Gone: removed", target[4:])
        if outcome == Outcome.GAVE_UP:
            log.warning("webhook %s to %s: given up after %d attempts", did, shown_url(url),
                        attempt)
        if outcome == Outcome.DELIVERED:
            self.delivered += 1
        await self._forget(did)
        return outcome

    async def _forget(self, did: str) -> None:
        async with self.r.pipeline(transaction=False) as p:
            p.delete(self.wk.delivery(did))
            p.zrem(self.wk.due, did)
            await p.execute()

    async def deliver_due(self, client: httpx.AsyncClient) -> int:
        """Take the due deliveries under a lease and attempt each (bounded concurrency)."""
        now = time.time()
        ids: Any = await self.r.eval(_TAKE, 1, self.wk.due, repr(now), repr(now + self.lease),
                                     200)
        if not ids:
            return 0

        async def one(did: str) -> None:
            async with self._gate:
                try:
                    await self.deliver(client, did)
                except RedisError as e:  # the lease brings it back
                    log.warning("webhook %s: Redis error (%s); retried after the lease", did, e)

        await asyncio.gather(*(one(_s(i)) for i in ids))
        return len(ids)

    async def run(self) -> None:
        """Enqueue and deliver until stopped; Redis outages are retried."""
        delays = REDIS_BACKOFF.delays()
        async with httpx.AsyncClient(timeout=self.settings.webhook_timeout_seconds,
                                     follow_redirects=False) as client:
            while not self._stopping:
                try:
                    await self.ensure_group()
                    break
                except (RedisError, OSError) as e:
                    log.warning("webhooks: Redis unavailable (%s); retrying", e)
                    await asyncio.sleep(next(delays))
            while not self._stopping:
                try:
                    await self.enqueue_new()
                    await self.follow_finals()
                    while await self.deliver_due(client):
                        pass
                    delays = REDIS_BACKOFF.delays()
                    await asyncio.sleep(self.poll_seconds)
                except (RedisError, OSError) as e:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise
                    log.warning("webhooks: Redis unavailable (%s); retrying", e)
                    await asyncio.sleep(next(delays))

    async def stop(self, task: asyncio.Task[None], timeout: float = 10.0) -> bool:
        """Stop the loop (flag and cancel, cancelling again until it ends)."""
        self._stopping = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not task.done() and loop.time() < deadline:
            task.cancel()
            await asyncio.wait({task}, timeout=0.5)
        if task.done() and self._leased:  # another process takes these sessions' finals now
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(max(0.1, deadline - loop.time())):
                    for sid in self._leased:
                        await self.r.eval(_RELEASE, 1, finals_lease(self.keys, sid),
                                          self.consumer)
            self._leased.clear()
        return task.done()
