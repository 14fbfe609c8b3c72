"""Cancellation always wins: the audio reader and session runners, cancelled at random points
of their work (connecting, relaying, writing results, finishing, idle) many times over while
other processes keep the CPU busy, always stop, and leave no task of theirs behind; and a
worker stops even while its Redis answers nothing."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.emulators.common import silence, tone
from tests.emulators.deepgram import DeepgramEmulator
from tests.support import cpu_load, create, publish
from voxq.aio import cancel_and_wait
from voxq.embedded_redis import RedisServer
from voxq.keys import Keys
from voxq.records import SessionMeta
from voxq.redis_conn import connect
from voxq.settings import Settings
from workers.audio_reader import AudioReader
from workers.ownership import Ownership, checkpoint_from_meta
from workers.session_runner import Context, SessionRunner
from workers.transcriber import Transcriber

pytestmark = pytest.mark.slow

ITERATIONS = 200
#: a cancelled task that is not done this long after the cancel is taken as hung (not a speed
#: target: a cancellation takes a loop turn or a socket close when nothing swallows it)
HANG_S = 20.0
#: where the work of a task lives: none of these may outlive a cancelled runner or reader
OWNED = ("SessionRunner.", "DeepgramRecognizer.", "AudioReader.")
AUDIO = tone(500, 0.25) + silence(0.15) + tone(1200, 0.25) + silence(0.15)


@pytest.fixture
def busy_cpu() -> Iterator[None]:
    """Two busy-looping processes for the duration of the test (killed in teardown)."""
    with cpu_load(2):
        yield


@pytest.fixture
async def emu() -> AsyncIterator[DeepgramEmulator]:
    async with DeepgramEmulator() as emulator:
        yield emulator


def random_delay(rng: random.Random) -> float:
    """Seconds before a cancel: at once, within the first steps, or anywhere in a session's
    life (0.8 s of audio relayed in one burst, then its finals)."""
    pick = rng.random()
    if pick < 0.2:
        return 0.0
    if pick < 0.6:
        return rng.uniform(0.0, 0.03)
    return rng.uniform(0.0, 0.5)


async def cancel_bounded(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and fail, never hang, if it is still running ``HANG_S`` later."""
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=HANG_S)
    assert done, f"{task.get_name()} ignored its cancellation for {HANG_S}s: {task.get_stack()}"
    if not task.cancelled() and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]


def owned_tasks() -> list[asyncio.Task[Any]]:
    """Live tasks running reader, runner or recognizer code."""
    return [t for t in asyncio.all_tasks() if not t.done()
            and getattr(t.get_coro(), "__qualname__", "").startswith(OWNED)]


async def test_reader_and_runners_always_stop_when_cancelled_under_load(
        busy_cpu: None, emu: DeepgramEmulator, r: aioredis.Redis, keys: Keys,
        settings: Settings) -> None:
    assert settings.redis_url
    rng = random.Random(12)
    s = emu.configure(settings, idle_timeout_seconds=5.0)
    own = Ownership(r, keys, "w-cancel")
    read_r = connect(settings.redis_url)
    outcomes: dict[str, int] = {}
    try:
        for i in range(ITERATIONS):
            sid = f"c{i}"
            await create(r, keys, sid, vendor="deepgram")
            await publish(r, keys, sid, AUDIO)
            epoch = await own.claim(sid)
            h: Any = await r.hgetall(keys.meta(sid))
            meta = SessionMeta.from_hash(h)
            reader = AudioReader(read_r)
            ctx = Context(r, keys, s, own, reader)
            runner = SessionRunner(ctx, meta, epoch, "0-1", checkpoint_from_meta(h, meta.channels))
            reading = asyncio.create_task(reader.run(), name=f"reader-{i}")
            running = asyncio.create_task(runner.run(), name=f"runner-{i}")
            plan = sorted([(random_delay(rng), "reader", reading), (random_delay(rng), "runner", running)],
                          key=lambda x: x[0])
            waited = 0.0
            for at, what, task in plan:
                await asyncio.sleep(at - waited)
                waited = at
                state = "done" if task.done() else "cancelled"
                await cancel_bounded(task)
                outcomes[f"{what} {state}"] = outcomes.get(f"{what} {state}", 0) + 1
            assert not owned_tasks(), owned_tasks()
            assert keys.audio(sid) not in reader._subs  # the runner unsubscribed on its way out
            assert not reader._conns  # the reader gave its connection back
    finally:
        await own.aclose()
        await read_r.aclose()
    print(f"\n{ITERATIONS} iterations: {outcomes}")
    # the random points did reach both tasks while they were still working
    assert outcomes.get("reader cancelled", 0) > ITERATIONS // 2
    assert outcomes.get("runner cancelled", 0) > ITERATIONS // 4


async def test_a_worker_stops_while_its_redis_is_frozen(emu: DeepgramEmulator, prefix: str) -> None:
    """SIGTERM (here: the stop event) while Redis answers nothing (SIGSTOPped): the worker hands
    off what it can within its bounds and returns; the claims go stale for others instead."""
    keys = Keys(prefix)
    with RedisServer() as server:
        s = emu.configure(Settings(redis_url=server.url, prefix=prefix))
        w = Transcriber(s, server.url, name="w-frozen")
        stop = asyncio.Event()
        task = asyncio.create_task(w.run(stop))
        r = connect(server.url)
        try:
            await create(r, keys, "fz", vendor="deepgram")
            await publish(r, keys, "fz", AUDIO, eos=False)  # a call still going on
            async with asyncio.timeout(HANG_S * 6):
                while "fz" not in w.held:
                    await asyncio.sleep(0.02)
            assert server.proc is not None
            os.kill(server.proc.pid, signal.SIGSTOP)
            try:
                stop.set()
                done, _ = await asyncio.wait({task}, timeout=HANG_S * 6)
                assert done, f"the worker did not stop: {task.get_stack()}"
                task.result()
            finally:
                os.kill(server.proc.pid, signal.SIGCONT)
        finally:
            await cancel_and_wait([task])
            await r.aclose()
