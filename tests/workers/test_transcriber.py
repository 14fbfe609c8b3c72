"""The transcriber end to end on the local engine against a real Redis: relay, results,
status, malformed input, and takeover after a SIGKILLed worker."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.conftest import SAMPLE
from tests.support import create, load_pcm, publish, start_worker, stereo, stop_process, wait_status
from voxq.aio import within
from voxq.keys import Keys
from voxq.records import Status, decode_transcript, encode_chunk
from voxq.sessions import read_finals
from voxq.settings import Settings
from workers.transcriber import Transcriber

# Words of the sample's reference text that the bundled model recognises in it.
EXPECTED_WORDS = {"please", "account", "status", "order"}


@pytest.fixture
async def worker(settings: Settings) -> AsyncIterator[Transcriber]:
    """An in-process worker on the test Redis."""
    assert settings.redis_url
    w = Transcriber(settings.model_copy(update={"claim_timeout_seconds": 2.0}),
                    settings.redis_url, name="w-test")
    stop = asyncio.Event()
    task = asyncio.create_task(w.run(stop))
    yield w
    stop.set()
    await within(task, 30)


def words_of(finals: list) -> set[str]:  # type: ignore[type-arg]
    return {w for _, t in finals for w in t.text.split()}


async def test_sample_transcribed_with_partials_and_finals(
        worker: Transcriber, r: aioredis.Redis, keys: Keys) -> None:
    pcm = load_pcm(SAMPLE)
    await create(r, keys, "s1")
    await publish(r, keys, "s1", pcm)
    meta = await wait_status(r, keys, "s1")
    assert meta.status is Status.FINISHED, meta.error
    finals = await read_finals(r, keys, "s1")
    assert EXPECTED_WORDS <= words_of(finals)
    assert [t.seq for _, t in finals] == list(range(len(finals)))
    starts = [t.start for _, t in finals]
    assert starts == sorted(starts) and finals[-1][1].end <= len(pcm) / 32000 + 0.5
    assert all(t.words and t.words[0].start >= t.start - 0.05 for _, t in finals)
    partials = await r.xrange(keys.partial("s1"))
    assert partials and not decode_transcript(partials[0][1]).is_final
    # retention: every key of the finished session expires
    for key in keys.session_keys("s1"):
        assert 0 < await r.ttl(key) <= worker.settings.retention_seconds
    assert await r.xlen(keys.sessions) == 0  # control entry acknowledged and removed


async def test_two_channels_are_decoded_separately(
        worker: Transcriber, r: aioredis.Redis, keys: Keys) -> None:
    pcm = load_pcm(SAMPLE)
    half = len(pcm) // 2 // 2 * 2
    await create(r, keys, "st", channels=2)
    await publish(r, keys, "st", stereo(pcm[:half], b"\0" * half + pcm[half:]), channels=2)
    meta = await wait_status(r, keys, "st")
    assert meta.status is Status.FINISHED, meta.error
    finals = await read_finals(r, keys, "st")
    by_channel = {c: [t for _, t in finals if t.channel == c] for c in (0, 1)}
    assert by_channel[0] and by_channel[1]
    assert max(t.end for t in by_channel[0]) <= half / 32000 + 0.5
    assert min(t.start for t in by_channel[1]) >= half / 32000 - 0.5


async def test_malformed_chunks_are_skipped_and_change_nothing(
        worker: Transcriber, r: aioredis.Redis, keys: Keys) -> None:
    pcm = load_pcm(SAMPLE)
    await create(r, keys, "bad")
    await r.xadd(keys.audio("bad"), {"seq": "x", "pcm": b"\0\0"})
    await r.xadd(keys.audio("bad"), encode_chunk(0, b"\0\0\0"))  # half a frame
    await r.xadd(keys.audio("bad"), {"seq": "1"})  # no pcm
    await publish(r, keys, "bad", pcm, start_seq=2)
    meta = await wait_status(r, keys, "bad")
    assert meta.status is Status.FINISHED
    assert meta.bad_chunks == 3  # counted where the API shows it, never silent
    assert EXPECTED_WORDS <= words_of(await read_finals(r, keys, "bad"))


async def test_unknown_vendor_fails_with_reason(
        worker: Transcriber, r: aioredis.Redis, keys: Keys) -> None:
    await create(r, keys, "nv", vendor="nosuchvendor")
    await publish(r, keys, "nv", b"\0" * 3200)
    meta = await wait_status(r, keys, "nv")
    assert meta.status is Status.FAILED
    assert "nosuchvendor" in meta.error and "known" in meta.error


async def test_producer_gone_silent_is_abandoned_with_finals_kept(
        r: aioredis.Redis, keys: Keys, settings: Settings) -> None:
    assert settings.redis_url
    w = Transcriber(settings.model_copy(update={"idle_timeout_seconds": 1.5}),
                    settings.redis_url, name="w-idle")
    stop = asyncio.Event()
    task = asyncio.create_task(w.run(stop))
    try:
        await create(r, keys, "gone")
        await publish(r, keys, "gone", load_pcm(SAMPLE), eos=False)
        meta = await wait_status(r, keys, "gone")
        assert meta.status is Status.ABANDONED
        assert EXPECTED_WORDS & words_of(await read_finals(r, keys, "gone"))
    finally:
        stop.set()
        await within(task, 30)


async def test_sigkilled_worker_session_completed_by_another(
        r: aioredis.Redis, keys: Keys, env: dict[str, str], tmp_path: Path) -> None:
    env = {**env, "VOXQ_CLAIM_TIMEOUT_SECONDS": "2"}
    first = start_worker(env, "w1", log=tmp_path / "w1.log")
    second = None
    try:
        pcm = load_pcm(SAMPLE)
        await create(r, keys, "kill")
        feeder = asyncio.create_task(publish(r, keys, "kill", pcm, realtime=2.0))
        # wait until w1 owns the session and has written at least one final
        deadline = time.monotonic() + 60
        while await r.hget(keys.meta("kill"), "finals") in (None, b"0"):
            assert time.monotonic() < deadline, (tmp_path / "w1.log").read_text()
            await asyncio.sleep(0.05)
        assert await r.hget(keys.meta("kill"), "owner") == b"w1"
        first.send_signal(signal.SIGKILL)
        first.wait()
        killed_at = time.monotonic()
        second = start_worker(env, "w2", log=tmp_path / "w2.log")
        await feeder
        meta = await wait_status(r, keys, "kill", timeout=90)
        took = time.monotonic() - killed_at
        assert meta.status is Status.FINISHED, meta.error
        assert meta.owner == "w2" and meta.epoch == 2
        finals = await read_finals(r, keys, "kill")
        assert [t.seq for _, t in finals] == list(range(len(finals)))
        ends = [t.end for _, t in finals]
        assert ends == sorted(ends), "a final was said twice or out of order"
        assert EXPECTED_WORDS <= words_of(finals)
        print(f"takeover completed the session {took:.1f}s after SIGKILL")
    finally:
        for p in (first, second):
            if p:
                stop_process(p, 10)
