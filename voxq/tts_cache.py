"""A content-hash cache of synthesised MP3s in Redis, bounded by age, entry count and bytes.

The key is the SHA-256 of everything that shapes the audio (text, vendor and its variant such as
the Polly engine, voice, speed, volume, pitch, rate, format), so identical requests are served
without calling the vendor. Each entry is a string key with its own TTL,
``PREFIX:tts:cache-DIGEST``; an index sorted set ``PREFIX:tts:cache-index`` (members
``DIGEST:BYTES`` scored by insertion time) lets one single-key script evict the oldest entries
when a bound is passed — single-key, so it also runs on Redis Cluster. Entries the script evicts
are deleted afterwards; an entry whose index member is lost still expires by its own TTL.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

import redis.asyncio as aioredis

from voxq.keys import Keys
from voxq.tts_offers import SynthesisRequest

log = logging.getLogger("voxq.tts.cache")

CACHE_FORMAT = 1
"""Bumped when what is cached changes shape, so old entries are never served."""

_EVICT = """
local idx = KEYS[1]
local now, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local max_n, max_b = tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZADD', idx, now, ARGV[5])
redis.call('ZREMRANGEBYSCORE', idx, '-inf', '(' .. (now - ttl))
local members = redis.call('ZRANGE', idx, 0, -1)
local total = 0
for _, m in ipairs(members) do total = total + tonumber(string.match(m, ':(%d+)$')) end
local evicted = {}
local i, n = 1, #members
while (n > max_n or total > max_b) and i <= #members do
  local m = members[i]
  evicted[#evicted + 1] = m
  total = total - tonumber(string.match(m, ':(%d+)$'))
  n = n - 1
  i = i + 1
end
if #evicted > 0 then redis.call('ZREM', idx, unpack(evicted)) end
redis.call('EXPIRE', idx, ttl + 60)
return evicted
"""


def cache_digest(vendor: str, variant: str, request: SynthesisRequest) -> str:
    """Hex SHA-256 of every input that shapes the audio (voice already resolved)."""
    shape = {
        "v": CACHE_FORMAT,
        "vendor": vendor,
        "variant": variant,
        "text": request.text,
        "voice": request.voice,
        "speed": round(request.speed, 4),
        "volume": round(request.volume, 4),
        "pitch": round(request.pitch, 4),
        "sample_rate": request.sample_rate,
        "format": request.format,
    }
    blob = json.dumps(shape, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class TtsCache:
    """Get and put MP3s by digest; a no-op when any bound is 0."""

    def __init__(self, r: aioredis.Redis, keys: Keys, *, ttl_seconds: int, max_entries: int,
                 max_bytes: int):
        self.r = r
        self.keys = keys
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._evict = r.register_script(_EVICT)

    @property
    def enabled(self) -> bool:
        """False when configured off (TTL, entries or bytes set to 0)."""
        return self.ttl > 0 and self.max_entries > 0 and self.max_bytes > 0

    def entry_key(self, digest: str) -> str:
        """The string key of one cached MP3."""
        return self.keys.tts(f"cache-{digest}")

    @property
    def index_key(self) -> str:
        """The sorted set of cached digests by insertion time."""
        return self.keys.tts("cache-index")

    async def get(self, digest: str) -> bytes | None:
        """The cached MP3, or None."""
        if not self.enabled:
            return None
        data: Any = await self.r.get(self.entry_key(digest))
        return bytes(data) if data else None

    async def put(self, digest: str, mp3: bytes) -> list[str]:
        """Store ``mp3`` (unless it alone passes the byte bound); return the evicted digests."""
        if not self.enabled or not mp3 or len(mp3) > self.max_bytes:
            return []
        await self.r.set(self.entry_key(digest), mp3, ex=self.ttl)
        members = await self._evict(keys=[self.index_key], args=[
            time.time(), self.ttl, self.max_entries, self.max_bytes, f"{digest}:{len(mp3)}"])
        evicted = [m.decode().rsplit(":", 1)[0] if isinstance(m, bytes) else str(m).rsplit(":", 1)[0]
                   for m in members]
        gone = [d for d in evicted if d != digest]  # an older member of this digest: keep the key
        if gone:
            async with self.r.pipeline(transaction=False) as pipe:
                for d in gone:
                    pipe.delete(self.entry_key(d))
                await pipe.execute()
            log.debug("tts cache evicted %d entries", len(gone))
        return gone
