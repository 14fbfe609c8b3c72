"""The content cache on a real Redis: the key covers everything that shapes the audio, entries
expire, and the count and byte bounds evict the oldest entries first."""

from __future__ import annotations

import dataclasses

import redis.asyncio as aioredis

from voxq.keys import Keys
from voxq.tts_cache import TtsCache, cache_digest
from voxq.tts_offers import SynthesisRequest

BASE = SynthesisRequest(text="Hello there.", voice="Joanna", speed=1.0, volume=1.0, pitch=1.0,
                        sample_rate=24000, format="mp3")


def cache(r: aioredis.Redis, keys: Keys, **kw: int) -> TtsCache:
    opts = {"ttl_seconds": 60, "max_entries": 100, "max_bytes": 1 << 20}
    opts.update(kw)
    return TtsCache(r, keys, **opts)


def test_digest_covers_every_input_that_shapes_the_audio() -> None:
    d = cache_digest("aws", "neural", BASE)
    assert d == cache_digest("aws", "neural", dataclasses.replace(BASE))
    variants = [cache_digest("local", "neural", BASE), cache_digest("aws", "standard", BASE)]
    for change in ({"text": "Hello there!"}, {"voice": "Matthew"}, {"speed": 1.1}, {"volume": 0.9},
                   {"pitch": 1.2}, {"sample_rate": 16000}, {"format": "wav"}):
        variants.append(cache_digest("aws", "neural", dataclasses.replace(BASE, **change)))
    assert len({d, *variants}) == len(variants) + 1
    assert len(d) == 64 and int(d, 16) >= 0


async def test_put_get_and_ttl(r: aioredis.Redis, keys: Keys) -> None:
    c = cache(r, keys, ttl_seconds=30)
    assert await c.get("a" * 64) is None
    assert await c.put("a" * 64, b"mp3-bytes") == []
    assert await c.get("a" * 64) == b"mp3-bytes"
    ttl = await r.ttl(c.entry_key("a" * 64))
    assert 0 < ttl <= 30
    assert c.entry_key("a" * 64) == f"{keys.prefix}:tts:cache-{'a' * 64}"
    assert await r.exists(c.index_key)


async def test_entry_count_bound_evicts_the_oldest(r: aioredis.Redis, keys: Keys) -> None:
    c = cache(r, keys, max_entries=3)
    digests = [f"{i:064x}" for i in range(5)]
    evicted = []
    for d in digests:
        evicted += await c.put(d, d.encode())
    assert evicted == digests[:2]
    assert [await c.get(d) for d in digests] == [None, None, *(d.encode() for d in digests[2:])]
    assert await r.zcard(c.index_key) == 3


async def test_byte_bound_evicts_until_the_total_fits(r: aioredis.Redis, keys: Keys) -> None:
    c = cache(r, keys, max_bytes=1000)
    await c.put("1" * 64, bytes(400))
    await c.put("2" * 64, bytes(400))
    assert await c.put("3" * 64, bytes(400)) == ["1" * 64]
    assert await c.get("1" * 64) is None and await c.get("3" * 64) == bytes(400)
    assert await c.put("4" * 64, bytes(2000)) == []  # larger than the whole cache: not stored
    assert await c.get("4" * 64) is None


async def test_reinserting_the_same_digest_keeps_one_entry(r: aioredis.Redis, keys: Keys) -> None:
    c = cache(r, keys, max_entries=2)
    await c.put("a" * 64, b"x")
    await c.put("a" * 64, b"x")
    await c.put("b" * 64, b"y")
    assert await r.zcard(c.index_key) == 2
    assert await c.get("a" * 64) == b"x" and await c.get("b" * 64) == b"y"


async def test_disabled_cache_stores_nothing(r: aioredis.Redis, keys: Keys) -> None:
    for kw in ({"ttl_seconds": 0}, {"max_entries": 0}, {"max_bytes": 0}):
        c = cache(r, keys, **kw)
        assert not c.enabled
        assert await c.put("c" * 64, b"z") == []
        assert await c.get("c" * 64) is None
    assert await r.keys(f"{keys.prefix}:*") == []
