"""Housekeeping and bounds: the sweeper removes what expired sessions left, duplicate control
entries never make workers fight, and a session past the length limit ends with a reason."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from tests.emulators.watermark import WatermarkEmulator, expected_words, watermark_pcm
from tests.support import create, publish, wait_status
from voxq.aio import within
from voxq.keys import Keys
from voxq.records import Status
from voxq.sessions import read_finals
from voxq.settings import Settings
from workers.sweeper import sweep_once
from workers.transcriber import Transcriber


@pytest.fixture
def emulator() -> Iterator[WatermarkEmulator]:
    with WatermarkEmulator() as emu:
        yield emu


async def run_worker(settings: Settings, name: str) -> tuple[Transcriber, asyncio.Event,
                                                             asyncio.Task[None]]:
    assert settings.redis_url
    w = Transcriber(settings, settings.redis_url, name=name)
    stop = asyncio.Event()
    return w, stop, asyncio.create_task(w.run(stop))


@pytest.fixture
async def wm_settings(settings: Settings, emulator: WatermarkEmulator) -> AsyncIterator[Settings]:
    yield settings.model_copy(update={"voxqws_url": emulator.url, "claim_timeout_seconds": 2.0})


async def test_sweeper_removes_leftovers_of_expired_sessions(r: aioredis.Redis,
                                                             keys: Keys) -> None:
    await create(r, keys, "alive")
    await create(r, keys, "expired")
    await publish(r, keys, "expired", b"\0" * 3200)
    await r.xadd(keys.final("expired"), {"text": "x", "start": "0", "end": "1"})
    await r.delete(keys.meta("expired"))  # as if its TTL ran out before the others'
    await r.zadd(keys.live, {"ghost": time.time() - 1000, "fresh": time.time()})
    report = await sweep_once(r, keys, stale_live_after=60)
    assert (report.orphans, report.stale_live) == (1, 1)
    assert await r.zrange(keys.index, 0, -1) == [b"alive"]
    assert not await r.exists(keys.audio("expired"), keys.final("expired"))
    assert await r.zrange(keys.live, 0, -1) == [b"fresh"]
    assert (await sweep_once(r, keys, stale_live_after=60)).orphans == 0


async def test_duplicate_control_entry_is_dropped_not_fought_over(
        wm_settings: Settings, r: aioredis.Redis, keys: Keys) -> None:
    a = await run_worker(wm_settings, "dup-a")
    b = await run_worker(wm_settings, "dup-b")
    try:
        await create(r, keys, "dup", vendor="voxq-ws")
        feeder = asyncio.create_task(publish(r, keys, "dup", watermark_pcm(60), realtime=4))
        while int(await r.hget(keys.meta("dup"), "finals") or 0) < 1:
            await asyncio.sleep(0.02)
        await asyncio.sleep(wm_settings.claim_timeout_seconds / 2)  # refresh marks it live
        await r.xadd(keys.sessions, {"sid": "dup"})  # e.g. a producer retried its XADD
        await feeder
        meta = await wait_status(r, keys, "dup")
        assert meta.status is Status.FINISHED and meta.epoch == 1
        words = [w for _, t in await read_finals(r, keys, "dup") for w in t.text.split()]
        assert words == expected_words(60)
        assert a[0].stats.fenced + b[0].stats.fenced == 0
    finally:
        for _, stop, task in (a, b):
            stop.set()
            await within(task, 30)


async def test_session_past_length_limit_fails_with_reason_and_keeps_finals(
        wm_settings: Settings, r: aioredis.Redis, keys: Keys) -> None:
    w = await run_worker(wm_settings.model_copy(update={"max_session_seconds": 10}), "len")
    try:
        await create(r, keys, "long", vendor="voxq-ws")
        await publish(r, keys, "long", watermark_pcm(130))
        meta = await wait_status(r, keys, "long")
        assert meta.status is Status.FAILED and "VOXQ_MAX_SESSION_SECONDS" in meta.error
        words = [x for _, t in await read_finals(r, keys, "long") for x in t.text.split()]
        assert words == expected_words(100)
    finally:
        w[1].set()
        await within(w[2], 30)
