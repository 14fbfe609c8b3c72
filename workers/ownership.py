"""Session ownership: claim with an epoch, fenced writes, claim refresh and hand-off.

A worker owns a session while (a) the session's control entry is in its pending list and
(b) the meta hash's ``epoch`` is the one it got when it claimed. Every write a worker makes
for a session runs as a script that first checks the epoch, so an owner that was paused or
partitioned and lost the session can never write again (fencing). All keys a script
touches share the session's hash slot, so the scripts run unchanged on Redis Cluster.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from voxq.errors import MalformedRecord
from voxq.keys import TRANSCRIBERS_GROUP, Keys
from voxq.lifecycle import STATUS_MAXLEN, lifecycle_xadd
from voxq.records import CHECKPOINT_RE, Status
from voxq.redaction import redact
from workers.batcher import Batcher, Script

HANDOFF_CONSUMER = "handoff"


class Fenced(Exception):
    """This worker no longer owns the session: stop without writing."""


class SessionGone(Exception):
    """The session has no meta (expired or deleted) or already reached a terminal status."""


# KEYS: meta, status stream. ARGV: consumer, now, status stream maxlen.
_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -2 end
local st = redis.call('HGET', KEYS[1], 'status')
if st == 'finished' or st == 'failed' or st == 'abandoned' then return -3 end
-- an epoch that is not a whole number (a hand-written record) restarts at 1, so the claim
-- can still fence and the worker can mark the record failed
local epoch = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0')
if not epoch or epoch ~= math.floor(epoch) or epoch < 0 or epoch > 1e15 then epoch = 0 end
epoch = epoch + 1
redis.call('HSET', KEYS[1], 'epoch', epoch, 'owner', ARGV[1], 'status', 'active',
           'updated', ARGV[2])
if st ~= 'active' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'status', 'active', 'error', '')
end
return epoch
"""

# KEYS: meta, final, audio. ARGV: epoch, expected seq, channel, end_frames, checkpoint_id,
# checkpoint_frames, audio_seconds, now, trim (1: drop audio before the checkpoint), then
# the final's fields as name/value pairs.
# The expected seq makes a retried write (reply lost to a dropped connection) a no-op.
_WRITE_FINAL = """
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return -1 end
local have = tonumber(redis.call('HGET', KEYS[1], 'finals') or '0')
local seq = tonumber(ARGV[2])
if have > seq then return -3 end
if have < seq then return -4 end
redis.call('HSET', KEYS[1], 'finals', seq + 1)
local fields = {'seq', ARGV[2]}
for i = 10, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('XADD', KEYS[2], '*', unpack(fields))
redis.call('HSET', KEYS[1], 'final_end:' .. ARGV[3], ARGV[4], 'checkpoint', ARGV[5],
           'checkpoint_frames', ARGV[6], 'audio_seconds', ARGV[7], 'updated', ARGV[8])
if ARGV[9] == '1' and ARGV[5] ~= '0-0' then
  redis.call('XTRIM', KEYS[3], 'MINID', '~', ARGV[5])
end
return seq
"""

# KEYS: meta, status stream. ARGV: epoch, from, to, reason, now, status stream maxlen.
# The switch is recorded on the meta (a worker taking the session over resumes on the new
# vendor) and told to followers on the status stream (a non-terminal entry).
_SWITCH_VENDOR = """
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return -1 end
local n = redis.call('HINCRBY', KEYS[1], 'vendor_switches', 1)
redis.call('HSET', KEYS[1], 'active_vendor', ARGV[3], 'updated', ARGV[5])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*', 'status', 'active', 'error', '',
           'event', 'vendor_switched', 'from', ARGV[2], 'vendor', ARGV[3], 'reason', ARGV[4])
return n
"""

# KEYS: meta, partial. ARGV: epoch, maxlen, then fields.
_WRITE_PARTIAL = """
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return -1 end
local fields = {}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(fields))
return 1
"""

# KEYS: meta. A write that changes nothing but replicates (the status set to itself).
_BARRIER = """
local v = redis.call('HGET', KEYS[1], 'status')
if v then redis.call('HSET', KEYS[1], 'status', v) end
return 1
"""

# KEYS: control stream. ARGV: group, consumer.
_LEAVE_GROUP = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

# KEYS: meta, status stream, then every other key of the session. ARGV: epoch, status,
# error, now, ttl, bad_chunks ('': leave as is), status stream maxlen. The status stream entry
# is written in the same script (same slot), so a reader of the session's streams sees it
# after every final.
_SET_STATUS = """
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return -1 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'error', ARGV[3], 'updated', ARGV[4])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'bad_chunks', ARGV[6]) end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*', 'status', ARGV[2], 'error', ARGV[3])
local ttl = tonumber(ARGV[5])
if ttl > 0 then
  for i = 1, #KEYS do redis.call('EXPIRE', KEYS[i], ttl) end
end
return 1
"""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Where a resumed session starts: the audio entry id after which nothing is final,
    its position in frames, and per channel the end (in frames) of the last final written."""

    entry_id: str
    frames: int
    final_end: tuple[int, ...]


async def _all(futures: Iterable[asyncio.Future[Any]]) -> list[Any]:
    """Every reply, in order; the first error raised once all have settled (none unseen)."""
    out = await asyncio.gather(*futures, return_exceptions=True)
    for v in out:
        if isinstance(v, BaseException):
            raise v
    return out


def _consume(f: asyncio.Future[Any]) -> None:
    """Mark a late reply's error as seen (asyncio would log it as never retrieved)."""
    if not f.cancelled():
        f.exception()


def _s(v: object) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def checkpoint_from_meta(h: Mapping[bytes, bytes], channels: int) -> Checkpoint:
    """Read the checkpoint fields out of a meta hash (zeros for a new session); MalformedRecord
    if they are malformed."""
    d = {_s(k): _s(v) for k, v in h.items()}
    entry_id = d.get("checkpoint", "0-0") or "0-0"
    if CHECKPOINT_RE.fullmatch(entry_id) is None:
        raise MalformedRecord(f"checkpoint {entry_id[:40]!r} is not a stream entry id")

    def whole(name: str, default: str) -> int:
        raw = d.get(name, default) or default
        try:
            return int(raw)
        except ValueError:
            raise MalformedRecord(f"{name} {raw[:40]!r} is not an integer") from None

    return Checkpoint(
        entry_id=entry_id,
        frames=whole("checkpoint_frames", "0"),
        final_end=tuple(whole(f"final_end:{c}", "-1") for c in range(channels)),
    )


class Ownership:
    """The fenced operations of one worker on the sessions it owns.

    Per-session writes go through one Batcher: the writes of all sessions that fall due
    while a round trip is in flight leave together, pipelined (grouped by node on a
    cluster), on one connection."""

    def __init__(self, r: aioredis.Redis, keys: Keys, consumer: str,
                 batcher: Batcher | None = None):
        self.r = r
        self.keys = keys
        self.consumer = consumer
        self.batcher = batcher or Batcher(r)
        self._claim = Script.of(_CLAIM)
        self._final = Script.of(_WRITE_FINAL)
        self._partial = Script.of(_WRITE_PARTIAL)
        self._status = Script.of(_SET_STATUS)
        self._leave = Script.of(_LEAVE_GROUP)
        self._switch = Script.of(_SWITCH_VENDOR)

    async def aclose(self) -> None:
        """Stop the batcher and release its connections."""
        await self.batcher.aclose()

    async def claim(self, sid: str) -> int:
        """Take the session: bump and return its epoch. SessionGone if there is nothing to do."""
        epoch = int(await self.batcher.eval(
            self._claim, [self.keys.meta(sid), self.keys.status(sid)],
            [self.consumer, repr(time.time()), STATUS_MAXLEN]))
        if epoch < 0:
            raise SessionGone(sid)
        await self.announce(sid, Status.ACTIVE)
        return epoch

    async def announce(self, sid: str, status: Status, error: str = "") -> None:
        """Append to the global lifecycle stream, after the fenced write (another slot on a
        cluster). Best effort for the firehose and webhooks: the session's own status stream
        and meta are the truth, and a lost entry is healed by the API's status check."""
        await self.batcher.submit(*lifecycle_xadd(self.keys, sid, status, error))

    async def write_final(self, sid: str, epoch: int, seq: int, channel: int, end_frames: int,
                          checkpoint: str, checkpoint_frames: int, audio_seconds: float,
                          fields: Mapping[str, str], trim: bool = False) -> None:
        """Append final number ``seq`` and move the checkpoint, atomically and idempotently
        (a retry after a lost reply writes nothing twice); Fenced if no longer owner."""
        flat: list[str] = []
        for k, v in fields.items():
            if k != "seq":
                flat += [k, v]
        rc = int(await self.batcher.eval(
            self._final, [self.keys.meta(sid), self.keys.final(sid), self.keys.audio(sid)],
            [epoch, seq, channel, end_frames, checkpoint, checkpoint_frames,
             repr(round(audio_seconds, 3)), repr(time.time()), int(trim), *flat]))
        if rc == -1:
            raise Fenced(sid)
        if rc == -4:
            raise Fenced(f"{sid}: final {seq} is ahead of the stored count")

    async def write_partial(self, sid: str, epoch: int, maxlen: int,
                            fields: Mapping[str, str]) -> None:
        """Append a partial to the capped partial stream; Fenced if no longer owner."""
        flat: list[str] = []
        for k, v in fields.items():
            flat += [k, v]
        ok = int(await self.batcher.eval(self._partial,
                                         [self.keys.meta(sid), self.keys.partial(sid)],
                                         [epoch, maxlen, *flat]))
        if ok < 0:
            raise Fenced(sid)

    async def set_status(self, sid: str, epoch: int, status: Status, error: str = "",
                         ttl: int = 0, bad_chunks: int | None = None) -> None:
        """Write a status (and, for terminal ones, retention TTLs, and the count of audio
        entries that could not be used); Fenced if not owner."""
        error = redact(error)[:2000]
        ok = int(await self.batcher.eval(self._status, list(self.keys.session_keys(sid)),
                                         [epoch, status.value, error,
                                          repr(time.time()), ttl,
                                          "" if bad_chunks is None else bad_chunks,
                                          STATUS_MAXLEN]))
        if ok < 0:
            raise Fenced(sid)
        await self.announce(sid, status, error)

    async def switch_vendor(self, sid: str, epoch: int, old: str, new: str, reason: str) -> int:
        """Record that the session now runs on vendor ``new`` (meta and a ``vendor_switched``
        entry on its status stream); the session's switch count; Fenced if not owner."""
        n = int(await self.batcher.eval(
            self._switch, [self.keys.meta(sid), self.keys.status(sid)],
            [epoch, old, new, redact(reason)[:300], repr(time.time()), STATUS_MAXLEN]))
        if n < 0:
            raise Fenced(sid)
        return n

    async def epochs_within(self, sids: Sequence[str], timeout: float) -> dict[str, int | None]:
        """Current epoch of each session whose reply came within ``timeout`` seconds (None
        where the meta is gone); sessions on a slow or unreachable node are left out."""
        if not sids:
            return {}
        futs = {sid: self.batcher.submit("HGET", self.keys.meta(sid), "epoch") for sid in sids}
        await asyncio.wait(futs.values(), timeout=timeout)
        out: dict[str, int | None] = {}
        for sid, f in futs.items():
            if not f.done():
                f.add_done_callback(_consume)  # its reply or error arrives later, unread
            elif f.exception() is None:
                v = f.result()
                out[sid] = None if v is None else int(v)
        return out

    async def refresh(self, entry_ids: Sequence[str]) -> set[str]:
        """Reset the idle time of our control entries; return the ids still pending for us."""
        if not entry_ids:
            return set()
        got = await self.r.xclaim(self.keys.sessions, TRANSCRIBERS_GROUP, self.consumer,
                                  min_idle_time=0, message_ids=list(entry_ids), justid=True)
        return {_s(x) for x in got}

    async def handoff(self, entry_ids: Sequence[str], idle_ms: int) -> None:
        """Give control entries up so another worker's next takeover scan picks them at once."""
        if entry_ids:
            await self.r.xclaim(self.keys.sessions, TRANSCRIBERS_GROUP, HANDOFF_CONSUMER,
                                min_idle_time=0, message_ids=list(entry_ids), idle=idle_ms,
                                justid=True)

    async def leave_group(self) -> bool:
        """Delete this consumer from the group if nothing is pending for it (atomically: a
        consumer's pending entries would go with it). True if deleted."""
        return bool(await self.batcher.eval(self._leave, [self.keys.sessions],
                                            [TRANSCRIBERS_GROUP, self.consumer]))

    async def confirm_replicas(self, sid: str, replicas: int, timeout_ms: int) -> int:
        """How many replicas hold every write made so far to the session's node: a barrier
        write then WAIT on one connection (WAIT counts only that connection's own writes, and
        replication is ordered). At least ``replicas``, or fewer once ``timeout_ms`` passed."""
        _, got = await self.batcher.on_own_connection(
            self.keys.meta(sid), ("EVAL", _BARRIER, 1, self.keys.meta(sid)),
            ("WAIT", replicas, timeout_ms), timeout=timeout_ms / 1000 + 5)
        return int(got)

    async def ack(self, entry_id: str, sid: str | None = None) -> None:
        """Acknowledge (and delete) a control entry whose session is done; drop it from live."""
        b, k = self.batcher, self.keys
        calls = [b.submit("XACK", k.sessions, TRANSCRIBERS_GROUP, entry_id),
                 b.submit("XDEL", k.sessions, entry_id)]
        if sid is not None:
            calls.append(b.submit("ZREM", k.live, sid))
        await _all(calls)
