"""Per-key request rate limits (a token bucket) and per-tenant daily TTS character quotas, each
one Lua call on one Redis key, so every API process shares them and they work on a cluster."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import redis.asyncio as aioredis

from voxq.access import Scope
from voxq.keys import Keys
from voxq.settings import Settings

# KEYS[1]: the bucket hash. ARGV: rate per second, burst, now (s), cost.
# Returns {allowed (1/0), milliseconds until a request would be allowed}.
BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then tokens = burst ts = now end
if now > ts then tokens = math.min(burst, tokens + (now - ts) * rate) ts = now end
local allowed = 0
local wait = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait = math.ceil((cost - tokens) / rate * 1000)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(ts))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, wait}
"""

# KEYS[1]: the tenant's counter of one UTC day. ARGV: limit, amount, seconds to the day's end.
# Returns {allowed (1/0), characters used}.
QUOTA = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local amount = tonumber(ARGV[2])
if used + amount > tonumber(ARGV[1]) then return {0, used} end
used = redis.call('INCRBY', KEYS[1], amount)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]) + 3600)
return {1, used}
"""


@dataclass(frozen=True, slots=True)
class Limit:
    """A token bucket: ``rate`` requests per second on average, ``burst`` at once."""

    rate: float
    burst: int


def limit_for(scopes: Iterable[Scope], settings: Settings) -> Limit | None:
    """A key's bucket: the most generous of its scopes' limits (VOXQ_RATE_LIMIT_SCOPES), else
    the default; None when rate limits are off (VOXQ_RATE_LIMIT_PER_SECOND 0)."""
    per_scope = settings.rate_limit_scopes
    rates = [per_scope[s.value] for s in scopes if s.value in per_scope]
    rate = max(rates) if rates else settings.rate_limit_per_second
    if rate <= 0:
        return None
    burst = max(1, round(rate * settings.rate_limit_burst_seconds))
    return Limit(rate, burst)


def bucket_key(keys: Keys, key_id: str) -> str:
    """One key's bucket (tokens minted from a key share it)."""
    return f"{keys.prefix}:ratelimit:{{{key_id}}}"


async def take(r: aioredis.Redis, keys: Keys, key_id: str, limit: Limit,
               now: float | None = None) -> float | None:
    """Take one request from the key's bucket: None if allowed, else seconds to wait."""
    reply = await r.eval(BUCKET, 1, bucket_key(keys, key_id), repr(limit.rate),
                         str(limit.burst), repr(now if now is not None else time.time()), "1")
    allowed, wait_ms = int(reply[0]), int(reply[1])
    return None if allowed else max(wait_ms / 1000, 0.001)


def quota_key(keys: Keys, tenant: str, day: str) -> str:
    """A tenant's TTS characters of one UTC day (YYYYMMDD)."""
    return f"{keys.prefix}:quota:tts:{{{tenant}}}:{day}"


async def spend_chars(r: aioredis.Redis, keys: Keys, tenant: str, chars: int, limit: int,
                      now: float | None = None) -> float | None:
    """Count ``chars`` against the tenant's daily quota: None if within it (counted), else the
    seconds until the next UTC day (nothing counted)."""
    now = now if now is not None else time.time()
    day = time.strftime("%Y%m%d", time.gmtime(now))
    left = 86400 - (now % 86400)
    reply = await r.eval(QUOTA, 1, quota_key(keys, tenant, day), str(limit), str(chars),
                         str(int(left)))
    return None if int(reply[0]) else max(1.0, left)
