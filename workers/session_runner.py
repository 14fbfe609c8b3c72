"""Drive one session: relay its audio from the checkpoint to a vendor recognizer and write
what comes back, fenced; retry transient vendor failures by replaying from the checkpoint,
and switch to the session's next fallback vendor (replaying from the same checkpoint) when
its vendor fails for good, exhausts the failover budget, or its fleet-wide breaker is open.

The checkpoint is the audio entry up to which every final is durable. Times from a vendor
are relative to the audio it was sent, so they are re-based by the checkpoint's position;
finals that end no later than the last one written on their channel were already said
(a replay re-recognises them) and are dropped, as are the leading words of a later final
whose middle lies before that end (a re-heard tail joined to new words).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from voxq import backoff, metrics
from voxq.aio import cancel_and_wait
from voxq.audio import Converter, decode_raw
from voxq.errors import InvalidInput, MalformedRecord
from voxq.keys import Keys
from voxq.records import SessionMeta, Status, Transcript, decode_chunk, encode_transcript
from voxq.redaction import redact
from voxq.settings import Settings
from workers import session_rules as rules
from workers.audio_reader import AudioReader, Oversized, Subscription
from workers.breaker import Admission, Breaker, is_outage
from workers.ownership import Checkpoint, Fenced, Ownership, checkpoint_from_meta
from workers.vendors.base import Recognizer, VendorError, VendorRetryable, error_kind
from workers.vendors.registry import create_recognizer

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_ATTEMPTS = 8
LATENCY_SAMPLE_EVERY = 8  # observe the relay latency of one chunk in this many
RESULTS_DRAIN_S = 5.0  # after a send failure, how long results already on their way may land
_EOS = b"\0eos"  # _chunk's answer for the end marker (identity-compared, never sent)
HORIZON_MARGIN_S = 2.0  # how far behind the newest result a silent channel's checkpoint trails
#: malformed audio entries a session survives (each counted on its meta); one more fails it
MAX_BAD_CHUNKS = 3
ENTRY_OVERHEAD = 64  # bytes of an audio entry besides its PCM (field names, seq)


def _never(pcm: bytes) -> bool:
    return False


@dataclass(frozen=True, slots=True)
class Context:
    """What every session of one worker shares."""

    r: aioredis.Redis
    keys: Keys
    settings: Settings
    ownership: Ownership
    reader: AudioReader
    breaker: Breaker | None = None  # None: no fleet-wide breaker (failover still works)


async def redis_retry(fn: Callable[[], Awaitable[T]], what: str) -> T:
    """Run a Redis operation until it succeeds, backing off while Redis is unreachable."""
    delays = backoff.REDIS.delays()
    while True:
        try:
            return await fn()
        except (RedisConnectionError, RedisTimeoutError, OSError) as e:
            metrics.REDIS_ERRORS.labels("worker").inc()
            log.warning("%s: Redis unavailable (%s); retrying", what, e)
            await asyncio.sleep(next(delays))


class SessionRunner:
    """The task that owns one claimed session until it ends, fails or is handed off."""

    def __init__(self, ctx: Context, meta: SessionMeta, epoch: int, control_id: str,
                 checkpoint: Checkpoint):
        self.ctx = ctx
        self.meta = meta
        self.sid = meta.session_id
        self.epoch = epoch
        self.control_id = control_id
        self.checkpoint = checkpoint
        self.final_end = list(checkpoint.final_end)
        self.finals = meta.finals
        self.pending = [False] * meta.channels  # a partial is open on the channel
        self.horizon = checkpoint.frames  # newest result end seen, in bus frames
        # entries relayed since the checkpoint: ids and end frames in two deques of atoms, so
        # thousands of sessions' windows give the cycle collector nothing to track
        self._window_ids: deque[bytes] = deque()
        self._window_ends: deque[int] = deque()
        self._rate = meta.rate
        self._frame_bytes = 2 * meta.channels
        self._max_chunk = meta.max_chunk_bytes
        self._speed = self._burst = self._t0 = 0.0
        self._sent = self._offset = self._limit = 0
        self._send_now: Callable[[bytes], bool] = _never
        self._bad: set[bytes] = set()  # ids of malformed audio entries (a replay sees them again)
        self.attempts = 0
        self.vendor = meta.current_vendor  # the vendor this session runs on now
        self._failing_since: float | None = None  # first failure since the last progress
        self._answered = False  # a final came back from ``vendor`` (the breaker was told)
        self.status: Status | None = None
        self.finishing = False  # end of audio reached: only the vendor's last finals remain
        self.error = ""  # reason of a FAILED status decided by the relay itself
        self._relayed = 0
        self._last_seq = -1
        self._relayed_flushed = 0  # part of _relayed already in the shared counters
        self._relayed_bytes = 0  # bytes relayed since the last flush

    # --- the session's life -------------------------------------------------------------

    async def run(self) -> Status | None:
        """Relay until the end; return the terminal status written, None if fenced."""
        metrics.SESSIONS_CLAIMED.inc()
        if self.epoch > 1:  # someone owned it before: a takeover or a hand-off
            metrics.TAKEOVERS.inc()
        metrics.SESSIONS_LIVE.inc()
        try:
            status = await self._run()
        finally:
            metrics.SESSIONS_LIVE.dec()
        if status is not None:
            metrics.SESSIONS_FINISHED.labels(status.value).inc()
        return status

    async def _run(self) -> Status | None:
        error = ""
        try:
            await self._admit()
        except Fenced:
            return None
        while True:
            try:
                status = await self._attempt()
                error = self.error
                break
            except Fenced:
                log.warning("session %s: ownership lost; stopping without writing", self.sid)
                return None
            except VendorError as e:
                metrics.VENDOR_ERRORS.labels(self.vendor, error_kind(e)).inc()
                self.attempts += 1
                now = time.monotonic()
                if self._failing_since is None:
                    self._failing_since = now
                tripped = await self._count_failure() if is_outage(e) else False
                try:
                    if self._next_vendor() is not None and (
                            tripped or not e.retryable
                            or self.attempts >= self.ctx.settings.failover_attempts
                            or now - self._failing_since >= self.ctx.settings.failover_seconds):
                        await self._switch(str(e))
                        await self._admit()
                        continue
                    if e.retryable and self.attempts < MAX_ATTEMPTS:
                        delay = backoff.VENDOR.compute(self.attempts - 1)
                        await self._reload()
                        log.warning("session %s: %s; retry %d in %.1fs from checkpoint %s",
                                    self.sid, e, self.attempts, delay, self.checkpoint.entry_id)
                        await asyncio.sleep(delay)
                        continue
                except Fenced:
                    return None
                status, error = Status.FAILED, str(e)
                break
            except (InvalidInput, MalformedRecord) as e:  # options the vendor refuses, a bad record
                status, error = Status.FAILED, str(e)
                break
        try:
            await redis_retry(lambda: self.ctx.ownership.set_status(
                self.sid, self.epoch, status, error, ttl=self.ctx.settings.retention_seconds,
                bad_chunks=self.bad_chunks), f"session {self.sid} status")
        except Fenced:
            return None
        # With VOXQ_WAIT_REPLICAS and the status not on the replicas, the control entry stays
        # pending: it goes stale, and whoever takes it over finds the status (and acks it) or,
        # if a failover lost the status, resumes the session.
        if not self.ctx.settings.wait_replicas or await self._replicated():
            await redis_retry(lambda: self.ctx.ownership.ack(self.control_id, self.sid),
                              f"session {self.sid} ack")
        self.status = status
        log.info("session %s %s%s", self.sid, status.value, f": {error}" if error else "")
        return status

    async def _replicated(self) -> bool:
        """With VOXQ_WAIT_REPLICAS: do enough replicas hold the final status? (An ack whose
        status a failover then lost would leave the session unowned and never finished.)"""
        s = self.ctx.settings
        try:
            got = await self.ctx.ownership.confirm_replicas(self.sid, s.wait_replicas,
                                                            s.wait_timeout_ms)
        except (RedisConnectionError, RedisTimeoutError, OSError) as e:
            log.warning("session %s: replicas not confirmed (%s); left for takeover", self.sid, e)
            return False
        if got < s.wait_replicas:
            log.warning("session %s: %d of %d replica(s) confirmed the status; left for takeover",
                        self.sid, got, s.wait_replicas)
            return False
        return True

    # --- failover -----------------------------------------------------------------------

    def _next_vendor(self) -> str | None:
        """The fallback after the current vendor, None if it is the last one."""
        chain = self.meta.vendors
        i = chain.index(self.vendor) if self.vendor in chain else 0
        return chain[i + 1] if i + 1 < len(chain) else None

    async def _count_failure(self) -> bool:
        """Count the failure on the vendor's fleet-wide breaker; True if it is open now."""
        b = self.ctx.breaker
        if b is None:
            return False
        tripped = await redis_retry(lambda: b.failed(self.vendor),
                                    f"session {self.sid} breaker")
        return tripped

    async def _admit(self) -> None:
        """Before starting on a vendor: while its breaker is open (and this session is not the
        interval's probe), move on to the next fallback at once; the last one is always tried."""
        b = self.ctx.breaker
        while b is not None and self._next_vendor() is not None:
            vendor = self.vendor
            verdict = await redis_retry(lambda v=vendor: b.admit(v),  # type: ignore[misc]
                                        f"session {self.sid} breaker")
            if verdict is Admission.PROBE:
                log.info("session %s: probing %s (its breaker is open)", self.sid, vendor)
            if verdict is not Admission.OPEN:
                return
            metrics.BREAKER_SKIPS.labels(vendor).inc()
            await self._switch(f"the {vendor} circuit breaker is open")

    async def _switch(self, reason: str) -> None:
        """Move the session to its next vendor: recorded on the meta and the status stream,
        counted, then the replay from the checkpoint starts afresh (no backoff)."""
        old, new = self.vendor, self._next_vendor()
        assert new is not None
        await self._reload()
        n = await redis_retry(lambda: self.ctx.ownership.switch_vendor(
            self.sid, self.epoch, old, new, reason), f"session {self.sid} vendor switch")
        metrics.VENDOR_SWITCHES.labels(old, new).inc()
        log.warning("session %s: switching from %s to %s (%s); switch %d, replay from "
                    "checkpoint %s", self.sid, old, new, redact(reason), n,
                    self.checkpoint.entry_id)
        self.vendor = new
        self.attempts = 0
        self._failing_since = None
        self._answered = False

    async def _reload(self) -> None:
        """Take checkpoint, final count and per-channel final ends from Redis, the truth after
        a failed attempt (a write cut short may or may not have landed); Fenced if we lost it."""
        h: Any = await redis_retry(lambda: self.ctx.r.hgetall(self.ctx.keys.meta(self.sid)),
                                   f"session {self.sid} reload")
        if rules.fenced({self.sid: self.epoch}, {self.sid: int(h.get(b"epoch", 0) or 0)}):
            raise Fenced(self.sid)
        self.checkpoint = checkpoint_from_meta(h, self.meta.channels)
        self.final_end = list(self.checkpoint.final_end)
        self.finals = int(h.get(b"finals", 0) or 0)

    async def _attempt(self) -> Status:
        """One vendor session from the checkpoint to the end of the audio."""
        m = self.meta
        vendor = self.vendor  # a fallback runs with its default options
        rec = create_recognizer(vendor, self.sid, m.language, m.rate, m.channels,
                                m.options if vendor == m.vendor else {}, self.ctx.settings)
        sub = self.ctx.reader.subscribe(self.ctx.keys.audio(self.sid), self.checkpoint.entry_id,
                                        self.ctx.settings.session_queue_chunks,
                                        max_entry_bytes=self._max_chunk + ENTRY_OVERHEAD)
        self._window_ids.clear()
        self._window_ends.clear()
        self._last_seq = -1  # seq of the last chunk relayed in this attempt
        self.pending = [False] * m.channels
        offset = self.checkpoint.frames
        tasks: list[asyncio.Task[Any]] = []
        try:
            await rec.start()
            metrics.VENDOR_CONNECTS.labels(vendor).inc()
            if self.attempts:
                metrics.VENDOR_RECONNECTS.labels(vendor).inc()
            collector = asyncio.create_task(self._collect(rec, offset))
            pump = asyncio.create_task(self._pump(rec, sub, offset))
            tasks = [pump, collector]
            done, _ = await asyncio.wait({collector, pump},
                                         return_when=asyncio.FIRST_EXCEPTION)
            if (pump in done and isinstance(pump.exception(), VendorError)
                    and not collector.done()):
                # The vendor failed while sending: let the results it already produced be
                # written before the collector is stopped (it usually ends with the error).
                await asyncio.wait({collector}, timeout=RESULTS_DRAIN_S)
                done = {pump} | ({collector} if collector.done() else set())
            for t in (pump, collector):
                if t in done and t.exception() is not None:
                    for other in (pump, collector):
                        other.cancel()
                    await asyncio.gather(pump, collector, return_exceptions=True)
                    raise t.exception()  # type: ignore[misc]
            if collector.done() and not pump.done():
                pump.cancel()
                await asyncio.gather(pump, return_exceptions=True)
                raise VendorRetryable("results ended before the end of the audio",
                                      vendor=vendor)
            status = await pump
            await collector
            return status
        finally:
            try:
                await cancel_and_wait(tasks)  # cancelled meanwhile: the two must not outlive it
            finally:
                self.ctx.reader.unsubscribe(sub)
                await rec.close()

    # --- audio in -----------------------------------------------------------------------

    async def _pump(self, rec: Recognizer, sub: Subscription, offset: int) -> Status:
        """Send audio in order; replay no faster than the vendor allows; stop at eos/idle.

        Chunks the vendor socket takes at once while this task waits for audio are relayed
        inline by the reader (``_relay_now``); everything else comes through the inbox."""
        m = self.meta
        conv = (None if rec.input_rate == m.rate
                else Converter(m.rate, rec.input_rate, m.channels))
        self._speed, self._burst = rec.max_replay_speed, rec.replay_burst_seconds
        self._t0 = time.monotonic()
        self._sent = 0
        self._offset = offset
        self._limit = self.ctx.settings.max_session_seconds * m.rate
        idle = self.ctx.settings.idle_timeout_seconds
        if conv is None and type(rec).send_nowait is not Recognizer.send_nowait:
            self._send_now = rec.send_nowait
            sub.handler = self._relay_now
        try:
            while True:
                entry = await sub.get(idle)
                if entry is None:
                    log.warning("session %s: no audio for %.0fs: abandoned", self.sid, idle)
                    await self._finish(rec, conv)
                    return Status.ABANDONED
                eid, fields = entry
                pcm = self._chunk(eid, fields)
                if pcm is None:
                    continue
                if pcm is _EOS:
                    sub.handler = None
                    self.finishing = True
                    await self._finish(rec, conv)
                    return Status.FINISHED
                sent = self._sent + len(pcm) // self._frame_bytes
                if offset + sent > self._limit:
                    sub.handler = None
                    self.error = (f"session is longer than the "
                                  f"{self.ctx.settings.max_session_seconds} s limit "
                                  "(VOXQ_MAX_SESSION_SECONDS); audio after it ignored")
                    await self._finish(rec, conv)
                    return Status.FAILED
                self._sent = sent
                self._window_ids.append(eid)
                self._window_ends.append(offset + sent)
                ahead = sent / m.rate - ((time.monotonic() - self._t0) * self._speed + self._burst)
                if ahead > 0:
                    await asyncio.sleep(ahead / self._speed)
                await rec.send(pcm if conv is None
                               else conv.process(decode_raw(pcm, "s16le", m.channels)))
                self._count(eid, len(pcm))
        finally:
            sub.handler = None
            self._flush_counts()

    def _count(self, eid: bytes, nbytes: int) -> None:
        """Relay metrics of one chunk, added to the shared counters in bulk (each update
        takes a lock; thousands of sessions relay tens of thousands of chunks a second);
        latency (from the entry id's XADD time) is sampled at the same points."""
        self._relayed += 1
        self._relayed_bytes += nbytes
        if not self._relayed % LATENCY_SAMPLE_EVERY:
            self._flush_counts()
            ms = eid.partition(b"-")[0]
            if ms.isdigit():
                metrics.RELAY_LATENCY.observe(max(0.0, time.time() - int(ms) / 1000))

    def _flush_counts(self) -> None:
        """Add the chunks and bytes relayed since the last flush to the shared counters."""
        chunks = self._relayed - self._relayed_flushed
        if chunks:
            metrics.CHUNKS_RELAYED.inc(chunks)
            metrics.BYTES_RELAYED.inc(self._relayed_bytes)
            self._relayed_flushed = self._relayed
            self._relayed_bytes = 0

    def _chunk(self, eid: bytes, fields: Sequence[bytes]) -> bytes | None:
        """PCM of a valid audio entry, _EOS for the end marker, None for a malformed entry
        (skipped and counted); InvalidInput once the session cannot be transcribed faithfully."""
        if (len(fields) == 4 and fields[0] == b"seq" and fields[2] == b"pcm"
                and fields[1].isdigit()):
            pcm, seq = fields[3], int(fields[1])
        elif isinstance(fields, Oversized):
            self._bad_chunk(eid, self._too_big(fields.size), fatal=True)
            return None
        else:
            try:
                chunk = decode_chunk(dict(zip(fields[::2], fields[1::2], strict=False)))
            except MalformedRecord as e:
                self._bad_chunk(eid, str(e))
                return None
            if chunk.eos:
                return _EOS
            pcm, seq = chunk.pcm, chunk.seq
        if seq <= self._last_seq:
            return None  # resent by a producer after a failover: already relayed
        n = len(pcm)
        if n > self._max_chunk:
            self._bad_chunk(eid, self._too_big(n), fatal=True)
        if not n or n % self._frame_bytes:
            self._bad_chunk(eid, f"{n} bytes is not whole {self.meta.channels}-channel s16 "
                                 "frames")
            return None
        self._last_seq = seq
        return pcm

    def _relay_now(self, eid: bytes, fields: Sequence[bytes]) -> bool:
        """The reader's inline path: send a well-formed chunk at once if nothing else is due
        (pacing, length limit, a full socket); False leaves it to ``_pump``, which decides
        exactly as this does."""
        if (len(fields) != 4 or fields[0] != b"seq" or fields[2] != b"pcm"
                or not fields[1].isdigit()):
            return False
        pcm = fields[3]
        n = len(pcm)
        if not n or n % self._frame_bytes or n > self._max_chunk:
            return False
        seq = int(fields[1])
        if seq <= self._last_seq:
            return False  # a resent duplicate: _pump skips it
        sent = self._sent + n // self._frame_bytes
        if self._offset + sent > self._limit:
            return False
        if sent / self._rate - ((time.monotonic() - self._t0) * self._speed + self._burst) > 0:
            return False
        if not self._send_now(pcm):
            return False
        self._last_seq = seq
        self._count(eid, n)
        self._sent = sent
        self._window_ids.append(eid)
        self._window_ends.append(self._offset + sent)
        return True

    async def _finish(self, rec: Recognizer, conv: Converter | None) -> None:
        if conv is not None:
            tail = conv.process(np.zeros((0, self.meta.channels), np.float32), last=True)
            if tail:
                await rec.send(tail)
        await rec.finish()

    def _too_big(self, n: int) -> str:
        return (f"{n} bytes is more than {self._max_chunk} bytes (200 ms of {self.meta.rate} Hz "
                f"{self.meta.channels}-channel audio)")

    @property
    def bad_chunks(self) -> int:
        """Malformed audio entries met so far (written to the meta with the final status)."""
        return len(self._bad)

    def _bad_chunk(self, eid: bytes, why: str, fatal: bool = False) -> None:
        """Count a malformed entry; InvalidInput (the session fails with the reason) for one
        more than MAX_BAD_CHUNKS or a ``fatal`` one: audio was lost, the transcript would lie."""
        self._bad.add(eid)
        where = eid.decode(errors="replace")
        log.warning("session %s: malformed audio entry %s (%s); %d so far",
                    self.sid, where, why, self.bad_chunks)
        if fatal:
            raise InvalidInput(f"malformed audio entry {where}: {why}")
        if self.bad_chunks > MAX_BAD_CHUNKS:
            raise InvalidInput(f"{self.bad_chunks} malformed audio entries (at most "
                               f"{MAX_BAD_CHUNKS} are skipped); the last, {where}: {why}")

    # --- results out --------------------------------------------------------------------

    async def _collect(self, rec: Recognizer, offset: int) -> None:
        """Write partials and finals as they come, re-based and de-duplicated."""
        rate = self.meta.rate
        own = self.ctx.ownership
        maxlen = self.ctx.settings.partial_maxlen
        async for t in rec.results():
            t = rules.rebase(t, offset, rate)
            ch = t.channel if 0 <= t.channel < self.meta.channels else 0
            end_frames = rules.end_frames(t, rate)
            self.horizon = max(self.horizon, end_frames)
            if not t.is_final:
                self.pending[ch] = True
                fields = encode_transcript(t)
                await redis_retry(lambda f=fields: own.write_partial(  # type: ignore[misc]
                    self.sid, self.epoch, maxlen, f), f"session {self.sid} partial")
                continue
            self.pending[ch] = False
            new = rules.unsaid(t, self.final_end[ch], rate)
            if new is None:
                continue  # already written before a replay
            await self._write_final(new, ch, end_frames)

    async def _write_final(self, t: Transcript, ch: int, end_frames: int) -> None:
        """Write one final and move the checkpoint; in-memory state moves only once the write
        landed, so a write cut short can never make its re-recognised copy look like a duplicate."""
        margin = round(HORIZON_MARGIN_S * self.meta.rate)
        final_end = list(self.final_end)
        final_end[ch] = end_frames
        safe = rules.safe_frames(final_end, self.pending, self.horizon, margin)
        ckpt = self.checkpoint
        ids, ends = self._window_ids, self._window_ends
        if ends and ends[0] <= safe:
            while ends and ends[0] <= safe:
                eid, frames = ids.popleft(), ends.popleft()
            ckpt = Checkpoint(eid.decode(), frames, ())
        seq = self.finals
        fields = encode_transcript(replace(t, vendor=self.vendor))
        await redis_retry(lambda: self.ctx.ownership.write_final(
            self.sid, self.epoch, seq, ch, end_frames, ckpt.entry_id, ckpt.frames,
            max(final_end) / self.meta.rate, fields,
            trim=not self.ctx.settings.keep_audio), f"session {self.sid} final")
        self.final_end = final_end
        self.finals = seq + 1
        self.attempts = 0  # progress: a later failure starts its backoff afresh
        self._failing_since = None
        self.checkpoint = Checkpoint(ckpt.entry_id, ckpt.frames, tuple(final_end))
        if not self._answered:  # the vendor works: close its breaker if it was open
            self._answered = True
            b = self.ctx.breaker
            if b is not None and await redis_retry(lambda: b.succeeded(self.vendor),
                                                   f"session {self.sid} breaker"):
                log.info("session %s: %s answered; its circuit breaker is closed", self.sid,
                         self.vendor)
