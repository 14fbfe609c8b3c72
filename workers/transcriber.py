"""The transcriber worker: claims sessions from the control stream up to its capacity, runs
one SessionRunner task per session, keeps its claims fresh, takes over stale claims of
dead workers, and drains on SIGTERM by handing its sessions to the others at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import signal
import socket
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from voxq import backoff, redaction
from voxq.errors import InvalidInput, MalformedRecord
from voxq.keys import TRANSCRIBERS_GROUP, Keys
from voxq.records import SessionMeta, Status
from voxq.redis_conn import connect
from voxq.sessions import ensure_group
from voxq.settings import Settings
from workers.audio_reader import AudioReader
from workers.breaker import Breaker
from workers.health_server import serve_health
from workers.ownership import Checkpoint, Fenced, Ownership, SessionGone, checkpoint_from_meta
from workers.pod_cost import UPDATE_INTERVAL_S, PodRef, keep_cost_current, pod_from_env
from workers.session_rules import fenced
from workers.session_runner import Context, SessionRunner, redis_retry
from workers.sweeper import try_sweep

log = logging.getLogger(__name__)
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)


def default_worker_name() -> str:
    """host-pid: unique per process, readable in XINFO CONSUMERS."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class _Held:
    runner: SessionRunner
    task: asyncio.Task[object]
    control_id: str


@dataclass
class WorkerStats:
    """Counters a worker exposes (and tests read)."""

    claimed: int = 0
    taken_over: int = 0
    finished: int = 0
    fenced: int = 0
    handed_off: int = 0
    rejected: int = 0  # sessions failed at claim for a malformed record
    statuses: dict[str, int] = field(default_factory=dict)


class Transcriber:
    """One worker process's session manager."""

    def __init__(self, settings: Settings, redis_url: str, name: str | None = None,
                 max_sessions: int | None = None, health_port: int | None = None):
        redaction.install(settings)
        self.settings = settings
        self.redis_url = redis_url
        self.name = name or settings.worker_name or default_worker_name()
        self.max_sessions = max_sessions or settings.max_sessions
        self.health_port = health_port if health_port is not None else settings.worker_health_port
        self.keys = Keys(settings.prefix)
        self.claim_timeout_ms = int(settings.claim_timeout_seconds * 1000)
        self.held: dict[str, _Held] = {}
        self._starting: set[str] = set()
        self._ending: set[asyncio.Task[None]] = set()
        self.stats = WorkerStats()
        self.draining = asyncio.Event()
        self.ready = False
        self.heartbeat = time.monotonic()
        self._capacity = asyncio.Event()
        self._r: aioredis.Redis | None = None
        self._r_read: aioredis.Redis | None = None
        #: this pod in the Kubernetes API (pod-deletion-cost); None: found from the environment
        self.pod: PodRef | None = None
        self.pod_cost_interval = UPDATE_INTERVAL_S

    # --- main loop ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Work until ``stop`` is set or SIGTERM/SIGINT; then drain and return."""
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        # Probes first: liveness holds while Redis is still unreachable (a pod must not be
        # restarted for Redis' sake), readiness stays false until the consumer group exists.
        heartbeat = asyncio.create_task(self._heartbeat_loop(), name="heartbeat")
        health = None
        if self.health_port is not None:
            health = await serve_health("0.0.0.0", self.health_port, lambda: self.heartbeat,
                                        lambda: self.ready and not self.draining.is_set())
            self.health_port = health.sockets[0].getsockname()[1]
        self._r = connect(self.redis_url)
        self._r_read = connect(self.redis_url)  # the blocking XREADs get their own socket
        own = Ownership(self._r, self.keys, self.name)
        reader = AudioReader(self._r_read, window_ms=self.settings.read_window_ms)
        ctx = Context(self._r, self.keys, self.settings, own, reader,
                      Breaker(own.batcher, self.keys, self.settings))
        r = self._r
        tasks: list[asyncio.Task[Any]] = []
        try:
            if not await _until_stopped(
                    redis_retry(lambda: ensure_group(r, self.keys), "consumer group"), stop):
                return
            self.ready = True
            log.info("worker %s: up, capacity %d sessions", self.name, self.max_sessions)
            tasks = [
                asyncio.create_task(reader.run(), name="audio-reader"),
                asyncio.create_task(self._claim_loop(ctx), name="claim"),
                asyncio.create_task(self._takeover_loop(ctx), name="takeover"),
                asyncio.create_task(self._refresh_loop(ctx), name="refresh"),
                asyncio.create_task(self._sweep_loop(), name="sweep"),
            ]
            pod = self.pod if self.pod is not None else pod_from_env(os.environ)
            if pod is not None:
                tasks.append(asyncio.create_task(
                    keep_cost_current(pod, lambda: len(self.held), self.pod_cost_interval),
                    name="pod-deletion-cost"))
            await stop.wait()
        finally:
            self.ready = False
            self.draining.set()
            if tasks:
                # no new claims, then the sessions go; the claims of finishing ones are
                # still refreshed during the grace period
                await cancel_all(tasks[1:3])
                await self._drain(own)
                await cancel_all(tasks)
                await self._leave_group(own)
            await cancel_all([heartbeat])
            await own.aclose()
            await self._r.aclose()
            await self._r_read.aclose()
            if health is not None:
                health.close()
            log.info("worker %s: stopped", self.name)

    # --- claiming -----------------------------------------------------------------------

    def free(self) -> int:
        """Sessions this worker can still take."""
        return self.max_sessions - len(self.held)

    async def _claim_loop(self, ctx: Context) -> None:
        """Read new control entries (XREADGROUP) while there is capacity."""
        assert self._r is not None
        claim_r = connect(self.redis_url)  # XREADGROUP BLOCK holds its socket
        delays = backoff.REDIS.delays()
        try:
            while not self.draining.is_set():
                if self.free() <= 0:
                    self._capacity.clear()
                    await self._capacity.wait()
                    continue
                try:
                    resp: Any = await claim_r.xreadgroup(
                        TRANSCRIBERS_GROUP, self.name, {self.keys.sessions: ">"},
                        count=min(self.free(), 50), block=1000)
                except ResponseError as e:
                    if "NOGROUP" in str(e):
                        await ensure_group(self._r, self.keys)
                        continue
                    raise
                except REDIS_DOWN as e:
                    log.warning("claim: Redis unavailable (%s)", e)
                    await asyncio.sleep(next(delays))
                    continue
                delays = backoff.REDIS.delays()
                for _key, entries in resp or ():
                    await self._start_many(ctx, entries, takeover=False)
        finally:
            await claim_r.aclose()

    async def _takeover_loop(self, ctx: Context) -> None:
        """Take over control entries idle past the claim timeout (their owner is gone)."""
        assert self._r is not None
        interval = max(0.05, self.settings.claim_timeout_seconds / 8)
        while not self.draining.is_set():
            await asyncio.sleep(interval)
            if self.free() <= 0:
                continue
            try:
                start = "0-0"
                while self.free() > 0:
                    claimed: Any = await self._r.xautoclaim(
                        self.keys.sessions, TRANSCRIBERS_GROUP, self.name,
                        min_idle_time=self.claim_timeout_ms, start_id=start,
                        count=min(self.free(), 50))
                    start, entries = _s(claimed[0]), claimed[1]
                    await self._start_many(ctx, [e for e in entries if e[1] is not None],
                                           takeover=True)  # None: a deleted entry
                    if start == "0-0":
                        break
            except ResponseError as e:
                if "NOGROUP" not in str(e):
                    raise
            except REDIS_DOWN as e:
                log.warning("takeover: Redis unavailable (%s)", e)

    async def _start_many(self, ctx: Context, entries: list[Any], takeover: bool) -> None:
        """Start the sessions of a batch of control entries concurrently (a dead worker's
        sessions are taken over together, not one round trip after another). An entry whose
        start failed stays pending and goes stale, so a later takeover scan retries it."""
        results = await asyncio.gather(
            *(self._start(ctx, _s(eid), fields, takeover) for eid, fields in entries),
            return_exceptions=True)
        for (eid, _), res in zip(entries, results, strict=True):
            if isinstance(res, BaseException):
                log.warning("control entry %s: could not start (%r); retried when stale",
                            _s(eid), res)

    async def _start(self, ctx: Context, control_id: str, fields: dict[bytes, bytes],
                     takeover: bool) -> None:
        """Claim the session a control entry names and start its runner."""
        sid = _s(fields.get(b"sid", b""))
        if sid in self.held or sid in self._starting:
            return
        self._starting.add(sid)
        try:
            await self._claim_and_run(ctx, sid, control_id, takeover)
        finally:
            self._starting.discard(sid)

    async def _claim_and_run(self, ctx: Context, sid: str, control_id: str,
                             takeover: bool) -> None:
        assert self._r is not None
        refreshed = await self._r.zscore(self.keys.live, sid)
        if refreshed is not None and time.time() - refreshed < self.settings.claim_timeout_seconds:
            # A live worker drives this session: the entry is a duplicate. Taking it would
            # only make two workers fence each other in turn.
            log.warning("control entry %s: session %s is live elsewhere; dropped", control_id, sid)
            await ctx.ownership.ack(control_id)
            return
        try:
            epoch = await ctx.ownership.claim(sid)
        except (SessionGone, InvalidInput) as e:
            log.info("control entry %s (%r): nothing to do (%s)", control_id, sid[:160], e)
            await ctx.ownership.ack(control_id)
            return
        except ResponseError as e:
            if "WRONGTYPE" not in str(e):
                raise
            # not a hash: nothing a worker could mark failed; acknowledged once, never retried
            log.warning("control entry %s: meta of session %s is not a hash; dropped",
                        control_id, sid)
            await ctx.ownership.ack(control_id)
            return
        h: Any = await self._r.hgetall(self.keys.meta(sid))
        try:
            meta, checkpoint = await self._read_record(sid, h)
        except MalformedRecord as e:
            # A record no worker can drive: failed with the reason, kept for the retention
            # period like any other, and its control entry acknowledged (never taken over).
            log.warning("session %s: malformed record: %s", sid, e)
            with contextlib.suppress(Fenced):  # deleted or claimed again meanwhile
                await ctx.ownership.set_status(sid, epoch, Status.FAILED,
                                               f"malformed session: {e}",
                                               ttl=self.settings.retention_seconds)
            await ctx.ownership.ack(control_id, sid)
            self.stats.rejected += 1
            return
        runner = SessionRunner(ctx, meta, epoch, control_id, checkpoint)
        task = asyncio.create_task(runner.run(), name=f"session-{sid}")
        self.held[sid] = _Held(runner, task, control_id)
        self.stats.claimed += 1
        if takeover:
            self.stats.taken_over += 1
            log.info("session %s: taken over at checkpoint %s (epoch %d)", sid,
                     runner.checkpoint.entry_id, epoch)
        task.add_done_callback(functools.partial(self._done, sid))

    async def _read_record(self, sid: str, h: Any) -> tuple[SessionMeta, Checkpoint]:
        """The session's meta and checkpoint, checked against its key; MalformedRecord for a
        record that names another session or whose audio key is not a stream (one such key
        in the reader's multi-stream XREAD would fail the read of every session)."""
        assert self._r is not None
        meta = SessionMeta.from_hash(h)
        if meta.session_id != sid:
            raise MalformedRecord(f"its meta names session {meta.session_id!r}, not {sid!r}")
        checkpoint = checkpoint_from_meta(h, meta.channels)
        kind = _s(await self._r.type(self.keys.audio(sid)))
        if kind not in ("stream", "none"):
            raise MalformedRecord(f"its audio key holds a {kind}, not a stream")
        return meta, checkpoint

    def _done(self, sid: str, task: asyncio.Task[object]) -> None:
        held = self.held.pop(sid, None)
        self._capacity.set()
        if task.cancelled() or held is None:
            return
        exc = task.exception()
        if exc is not None:
            log.error("session %s: runner crashed: %r", sid, exc, exc_info=exc)
            # failed, not left pending: a takeover would only crash the same way, in a loop
            ending = asyncio.create_task(self._fail_crashed(held, exc))
            self._ending.add(ending)
            ending.add_done_callback(self._ending.discard)
            return
        status = task.result()
        if status is None:
            self.stats.fenced += 1
        else:
            self.stats.finished += 1
            key = str(getattr(status, "value", status))
            self.stats.statuses[key] = self.stats.statuses.get(key, 0) + 1

    async def _fail_crashed(self, held: _Held, exc: BaseException) -> None:
        """Mark a session whose runner crashed failed and acknowledge its control entry."""
        runner = held.runner
        own = runner.ctx.ownership
        try:
            await own.set_status(runner.sid, runner.epoch, Status.FAILED,
                                 f"internal error: {type(exc).__name__}",
                                 ttl=self.settings.retention_seconds)
            await own.ack(held.control_id, runner.sid)
        except Fenced:
            pass  # someone else owns it now
        except REDIS_DOWN as e:
            log.warning("session %s: crash not recorded, Redis unavailable (%s); "
                        "left for takeover", runner.sid, e)

    # --- keeping claims -----------------------------------------------------------------

    async def _refresh_loop(self, ctx: Context) -> None:
        """Every quarter of the claim timeout: check epochs (fencing) and refresh our claims.

        The epoch reads get half an interval: on Redis Cluster one unreachable shard must not
        hold back the refresh of sessions on healthy ones (their claims would go stale and be
        taken over). A session whose epoch did not arrive in time keeps its claim: its own
        writes are fenced by the scripts anyway."""
        assert self._r is not None
        interval = self.settings.claim_timeout_seconds / 4
        while True:
            await asyncio.sleep(interval)
            held = list(self.held.items())
            if not held:
                continue
            try:
                epochs = await ctx.ownership.epochs_within([sid for sid, _ in held],
                                                           timeout=interval / 2)
                mine = []
                moved = set(fenced({sid: h.runner.epoch for sid, h in held}, epochs))
                for sid, h in held:
                    if sid in moved:
                        log.warning("session %s: epoch moved to %s: fenced", sid, epochs[sid])
                        h.task.cancel()
                        self.stats.fenced += 1
                    elif self.held.get(sid) is h:  # not ended or handed off meanwhile
                        mine.append((sid, h))
                await ctx.ownership.refresh([h.control_id for _, h in mine])
                now = time.time()
                if mine:
                    await self._r.zadd(self.keys.live, {sid: now for sid, _ in mine})
            except REDIS_DOWN as e:
                log.warning("refresh: Redis unavailable (%s)", e)

    async def _sweep_loop(self) -> None:
        """Remove what expired sessions left behind; one worker per interval does it."""
        assert self._r is not None
        interval = self.settings.sweep_interval_seconds
        while True:
            await asyncio.sleep(interval * (0.5 + random.random()))
            try:
                report = await try_sweep(self._r, self.keys, self.name, interval,
                                         stale_live_after=10 * self.settings.claim_timeout_seconds)
                if report and (report.orphans or report.stale_live):
                    log.info("sweep: %d orphaned session(s), %d stale live entries removed",
                             report.orphans, report.stale_live)
            except REDIS_DOWN as e:
                log.warning("sweep: Redis unavailable (%s)", e)

    async def _heartbeat_loop(self) -> None:
        """Proves the event loop turns (liveness), independent of Redis or vendors."""
        while True:
            self.heartbeat = time.monotonic()
            await asyncio.sleep(1.0)

    # --- draining -----------------------------------------------------------------------

    async def _drain(self, own: Ownership) -> None:
        """Hand sessions still receiving audio to the other workers at once; let those at end
        of audio finish within the grace period, then hand off whatever is left."""
        held = list(self.held.values())
        busy = [h for h in held if not h.runner.finishing]
        await self._stop_and_handoff(own, busy)
        finishing = [h for h in held if h.runner.finishing]
        if finishing:
            await asyncio.wait([h.task for h in finishing],
                               timeout=self.settings.drain_grace_seconds)
            await self._stop_and_handoff(own, finishing)

    async def _leave_group(self, own: Ownership) -> None:
        """Delete this worker's consumer from the group once nothing is pending for it, so a
        fleet that scales up and down does not leave a consumer per pod that ever ran."""
        try:
            if await own.leave_group():
                log.info("worker %s: left the consumer group", self.name)
            else:
                log.info("worker %s: entries still pending; consumer kept for takeover",
                         self.name)
        except REDIS_DOWN as e:
            log.warning("leaving the consumer group: Redis unavailable (%s)", e)

    async def _stop_and_handoff(self, own: Ownership, held: list[_Held]) -> None:
        await cancel_all([h.task for h in held])
        left = [h for h in held if h.runner.status is None]
        if not left:
            return
        try:
            await own.handoff([h.control_id for h in left], idle_ms=self.claim_timeout_ms * 10)
            if self._r is not None:
                await self._r.zrem(self.keys.live, *[h.runner.sid for h in left])
            self.stats.handed_off += len(left)
            log.info("worker %s: handed off %d session(s)", self.name, len(left))
        except REDIS_DOWN as e:
            log.warning("drain: Redis unavailable (%s); claims will go stale instead", e)


async def _until_stopped(work: Awaitable[object], stop: asyncio.Event) -> bool:
    """Await ``work`` unless ``stop`` is set first (then cancel it): True if it finished."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait([task, stopped], return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if task.done():
        task.result()
        return True
    await cancel_all([task])
    return False


async def cancel_all(tasks: list[asyncio.Task[object]]) -> None:
    """Cancel tasks and wait until they are done, cancelling again while any is still alive:
    on Python 3.11 ``asyncio.wait_for`` (used inside redis-py) can swallow a cancellation."""
    pending = [t for t in tasks if not t.done()]
    while pending:
        for t in pending:
            t.cancel()
        _, still = await asyncio.wait(pending, timeout=1.0)
        pending = list(still)


def _s(v: object) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)
