"""Vendor faults against the watermark emulator: dropped sockets, refused handshakes and
error answers are retried from the checkpoint with an exact transcript, or end the
session `failed` with the vendor's message, without retry storms."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from tests.emulators.watermark import WatermarkEmulator, expected_words, random_drops, watermark_pcm
from tests.support import create, publish, wait_status
from voxq.aio import within
from voxq.keys import Keys
from voxq.records import Status
from voxq.sessions import read_finals
from voxq.settings import Settings
from workers.transcriber import Transcriber


@pytest.fixture
def emulator() -> Iterator[WatermarkEmulator]:
    with WatermarkEmulator() as emu:
        yield emu


@pytest.fixture
async def worker(settings: Settings, emulator: WatermarkEmulator) -> AsyncIterator[Transcriber]:
    assert settings.redis_url
    w = Transcriber(settings.model_copy(update={"voxqws_url": emulator.url}),
                    settings.redis_url, name="w-faults")
    stop = asyncio.Event()
    task = asyncio.create_task(w.run(stop))
    yield w
    stop.set()
    await within(task, 30)


async def transcript_words(r: aioredis.Redis, keys: Keys, sid: str) -> list[str]:
    return [w for _, t in await read_finals(r, keys, sid) for w in t.text.split()]


async def test_clean_session_is_exact(worker: Transcriber, r: aioredis.Redis, keys: Keys) -> None:
    await create(r, keys, "wm", vendor="voxq-ws")
    await publish(r, keys, "wm", watermark_pcm(120))
    meta = await wait_status(r, keys, "wm")
    assert meta.status is Status.FINISHED, meta.error
    assert await transcript_words(r, keys, "wm") == expected_words(120)
    finals = await read_finals(r, keys, "wm")
    assert finals[0][1].start == 0.0 and finals[-1][1].end == pytest.approx(12.0)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_socket_drops_replay_exactly(
        seed: int, worker: Transcriber, emulator: WatermarkEmulator, r: aioredis.Redis,
        keys: Keys) -> None:
    emulator.faults.drop_after_frames = random_drops(random.Random(seed), (3, 60), 4)
    await create(r, keys, "drop", vendor="voxq-ws")
    await publish(r, keys, "drop", watermark_pcm(150), realtime=20)
    meta = await wait_status(r, keys, "drop")
    assert meta.status is Status.FINISHED, meta.error
    assert await transcript_words(r, keys, "drop") == expected_words(150)
    conns = emulator.connections
    assert len(conns) > 1 and all(c.closed_by_fault for c in conns[:-1])
    assert not conns[-1].closed_by_fault
    finals = await read_finals(r, keys, "drop")
    ends = [t.end for _, t in finals]
    assert ends == sorted(ends)
    assert finals[-1][1].end == pytest.approx(15.0)  # times re-based across reconnects


async def test_vendor_dying_right_after_a_final_loses_no_final(
        worker: Transcriber, emulator: WatermarkEmulator, r: aioredis.Redis, keys: Keys) -> None:
    # The final's write races the failed send of the next chunk: the write must land (or be
    # redone) and the replayed copy must not be taken for a duplicate.
    emulator.faults.drop_after_final = lambda n: n < 8
    await create(r, keys, "race", vendor="voxq-ws")
    await publish(r, keys, "race", watermark_pcm(60))
    meta = await wait_status(r, keys, "race")
    assert meta.status is Status.FINISHED, meta.error
    assert await transcript_words(r, keys, "race") == expected_words(60)
    assert sum(c.closed_by_fault for c in emulator.connections) == 8


async def test_stalled_vendor_is_detected_and_replayed(
        worker: Transcriber, emulator: WatermarkEmulator, r: aioredis.Redis, keys: Keys,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.vendors.voxqws.stt import VoxqWsRecognizer

    monkeypatch.setattr(VoxqWsRecognizer, "ping_interval", 0.3)
    monkeypatch.setattr(VoxqWsRecognizer, "ping_timeout", 0.5)
    emulator.faults.stall_after_frames = lambda n: 25 if n == 0 else None
    await create(r, keys, "stall", vendor="voxq-ws")
    await publish(r, keys, "stall", watermark_pcm(60))
    meta = await wait_status(r, keys, "stall")
    assert meta.status is Status.FINISHED, meta.error
    assert await transcript_words(r, keys, "stall") == expected_words(60)
    assert emulator.connections[0].closed_by_fault and len(emulator.connections) == 2


async def test_handshake_5xx_is_retried(worker: Transcriber, emulator: WatermarkEmulator,
                                       r: aioredis.Redis, keys: Keys) -> None:
    emulator.faults.refuse_status = lambda n: 503 if n < 2 else None
    await create(r, keys, "h5", vendor="voxq-ws")
    await publish(r, keys, "h5", watermark_pcm(30))
    meta = await wait_status(r, keys, "h5")
    assert meta.status is Status.FINISHED, meta.error
    assert await transcript_words(r, keys, "h5") == expected_words(30)


async def test_auth_refusal_fails_once_with_reason(
        worker: Transcriber, emulator: WatermarkEmulator, r: aioredis.Redis, keys: Keys) -> None:
    emulator.faults.refuse_status = lambda n: 401
    await create(r, keys, "h4", vendor="voxq-ws")
    await publish(r, keys, "h4", watermark_pcm(10))
    meta = await wait_status(r, keys, "h4")
    assert meta.status is Status.FAILED
    assert "401" in meta.error and "voxq-ws" in meta.error
    assert emulator.handshakes == 1  # no retry storm on a non-retryable error


async def test_vendor_error_message_reaches_the_session(
        worker: Transcriber, emulator: WatermarkEmulator, r: aioredis.Redis, keys: Keys) -> None:
    emulator.faults.error_at_connect = lambda n: ("quota", "monthly quota exhausted", False)
    await create(r, keys, "q", vendor="voxq-ws")
    await publish(r, keys, "q", watermark_pcm(10))
    meta = await wait_status(r, keys, "q")
    assert meta.status is Status.FAILED and "monthly quota exhausted" in meta.error
