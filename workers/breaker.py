"""A fleet-wide circuit breaker per vendor, kept in Redis so every worker shares it.

Each vendor has one hash (``Keys.breaker``). Failures that say the vendor itself is unwell
(``is_outage``: a retryable error — refused connection, 5xx, dropped socket, timeout — or
refused credentials) of any session on any worker are counted over a sliding window
(VOXQ_BREAKER_WINDOW_SECONDS, estimated from the current and the previous fixed window, the
way rate limiters do, so a burst across a window edge still counts in full); a refusal of one
session's own request (a language or audio the vendor does not take) is not counted, so one
tenant's mistake cannot push the fleet off a healthy vendor. At VOXQ_BREAKER_THRESHOLD the
breaker opens. While it is open, sessions that have a fallback start on it at once instead
of each spending its own retry budget on a vendor that is down; one session per
VOXQ_BREAKER_PROBE_SECONDS is still let through as a probe, and the first final any session
gets from the vendor closes the breaker. All three operations are one Lua script on one key,
so the decision is atomic across workers and runs unchanged on Redis Cluster.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from enum import IntEnum

from voxq import metrics
from voxq.keys import Keys
from voxq.settings import Settings
from workers.batcher import Batcher, Script
from workers.vendors.base import VendorAuthError, VendorError

log = logging.getLogger(__name__)

# KEYS: the vendor's breaker hash. ARGV: op (fail | admit | ok), now, window, threshold,
# probe interval, ttl. Fields: start (start of the current fixed window), n (failures in it),
# prev (failures in the window before it), open (opened at, absent when closed), probe (last
# probe let through).
# fail: count; the sliding estimate is prev weighted by how much of the previous window still
#       lies within one window of now, plus n; open at the threshold; returns 2 if this failure
#       opened it, 1 if it was open already, 0 if it is closed.
# admit: 0 closed (use the vendor), 1 open but this session probes it, 2 open (skip it).
# ok: the vendor answered: delete the hash (closed, count reset) if it was open; returns 1
#     if it was open.
_BREAKER = """
local op, now = ARGV[1], tonumber(ARGV[2])
local ttl = tonumber(ARGV[6])
if op == 'fail' then
  local window = tonumber(ARGV[3])
  local start = tonumber(redis.call('HGET', KEYS[1], 'start') or ARGV[2])
  local n = tonumber(redis.call('HGET', KEYS[1], 'n') or '0')
  local prev = tonumber(redis.call('HGET', KEYS[1], 'prev') or '0')
  if now - start >= window then
    local passed = math.floor((now - start) / window)
    if passed == 1 then prev = n else prev = 0 end
    start = start + passed * window
    n = 0
  end
  n = n + 1
  redis.call('HSET', KEYS[1], 'start', tostring(start), 'n', n, 'prev', prev)
  local estimate = prev * (1 - (now - start) / window) + n
  local rc = redis.call('HEXISTS', KEYS[1], 'open')
  if rc == 0 and estimate >= tonumber(ARGV[4]) then
    redis.call('HSET', KEYS[1], 'open', ARGV[2], 'probe', ARGV[2])
    rc = 2
  end
  redis.call('EXPIRE', KEYS[1], ttl)
  return rc
elseif op == 'admit' then
  if not redis.call('HGET', KEYS[1], 'open') then return 0 end
  local probe = tonumber(redis.call('HGET', KEYS[1], 'probe') or '0')
  if now - probe >= tonumber(ARGV[5]) then
    redis.call('HSET', KEYS[1], 'probe', ARGV[2])
    redis.call('EXPIRE', KEYS[1], ttl)
    return 1
  end
  return 2
elseif op == 'ok' then
  if not redis.call('HGET', KEYS[1], 'open') then return 0 end
  redis.call('DEL', KEYS[1])
  return 1
end
return redis.error_reply('unknown breaker op')
"""


def is_outage(e: VendorError) -> bool:
    """Whether a failure speaks of the vendor's health (counted by the breaker) rather than of
    one session's request: retryable errors and refused credentials are; other refusals not."""
    return e.retryable or isinstance(e, VendorAuthError)


class Admission(IntEnum):
    """What the breaker says to a session about to start on a vendor."""

    CLOSED = 0  # the vendor is healthy as far as the fleet knows
    PROBE = 1  # open, and this session is the interval's probe
    OPEN = 2  # open: start on the fallback instead


class Breaker:
    """The breakers of every vendor, as one worker sees them (the state lives in Redis)."""

    def __init__(self, batcher: Batcher, keys: Keys, settings: Settings,
                 clock: Callable[[], float] = time.time):
        self.batcher = batcher
        self.clock = clock  # wall clock: every worker's counts meet in one hash
        self.keys = keys
        self.window = settings.breaker_window_seconds
        self.threshold = settings.breaker_threshold
        self.probe = settings.breaker_probe_seconds
        # an open breaker nobody touches expires: long enough for several probe intervals
        self.ttl = max(60, int(10 * max(self.window, self.probe)))
        self._script = Script.of(_BREAKER)

    async def _op(self, op: str, vendor: str) -> int:
        return int(await self.batcher.eval(
            self._script, [self.keys.breaker(vendor)],
            [op, repr(self.clock()), self.window, self.threshold, self.probe, self.ttl]))

    async def failed(self, vendor: str) -> bool:
        """Count one failure of ``vendor``; True if its breaker is open now."""
        rc = await self._op("fail", vendor)
        if rc == 2:
            metrics.BREAKER_TRIPS.labels(vendor).inc()
            log.warning("the %s circuit breaker opened: %d failures within %g s across the "
                        "fleet", vendor, self.threshold, self.window)
        return rc > 0

    async def admit(self, vendor: str) -> Admission:
        """Whether a session may start on ``vendor`` now (and whether it is the probe)."""
        return Admission(await self._op("admit", vendor))

    async def succeeded(self, vendor: str) -> bool:
        """The vendor answered (a final came back): close its breaker; True if it was open."""
        return bool(await self._op("ok", vendor))
