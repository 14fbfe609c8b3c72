"""Faults injected into real processes — workers, producer and Redis each an OS process —
ending every time with the watermark transcript exactly complete: nothing lost, nothing
said twice, one owner at a time. Each test prints how long recovery took."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
import redis.asyncio as aioredis
import soundfile as sf

from tests.emulators.watermark import (
    WatermarkEmulator,
    expected_words,
    random_drops,
    watermark_pcm,
)
from tests.support import create, publish, start_worker, wait_status
from voxq.embedded_redis import RedisServer
from voxq.keys import Keys
from voxq.records import Status
from voxq.redis_conn import connect
from voxq.sessions import read_finals

CLAIM_TIMEOUT = 2.0


@pytest.fixture
def emulator() -> Iterator[WatermarkEmulator]:
    with WatermarkEmulator() as emu:
        yield emu


@pytest.fixture
def fault_env(env: dict[str, str], emulator: WatermarkEmulator) -> dict[str, str]:
    return {**env, "VOXQ_WS_URL": emulator.url,
            "VOXQ_CLAIM_TIMEOUT_SECONDS": str(CLAIM_TIMEOUT), "VOXQ_DRAIN_GRACE_SECONDS": "5"}


class Workers:
    """Named worker processes with their logs."""

    def __init__(self, env: dict[str, str], logdir: Path):
        self.env, self.logdir = env, logdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, *names: str) -> None:
        for n in names:
            self.procs[n] = start_worker(self.env, n, log=self.logdir / f"{n}.log")

    def signal(self, name: str, sig: int) -> None:
        self.procs[name].send_signal(sig)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}"
                         for p in sorted(self.logdir.glob("*.log")))

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
                p.wait()


@pytest.fixture
def workers(fault_env: dict[str, str], tmp_path: Path) -> Iterator[Workers]:
    w = Workers(fault_env, tmp_path)
    yield w
    w.stop_all()


async def owner_after_finals(r: aioredis.Redis, keys: Keys, sid: str, n: int,
                             timeout: float = 120) -> str:
    """Wait until the session has ``n`` finals; return its owner."""
    deadline = time.monotonic() + timeout
    while int(await r.hget(keys.meta(sid), "finals") or 0) < n:
        assert time.monotonic() < deadline, f"{sid}: fewer than {n} finals after {timeout}s"
        await asyncio.sleep(0.02)
    return (await r.hget(keys.meta(sid), "owner")).decode()


async def owner_changes(r: aioredis.Redis, keys: Keys, sid: str, old: str,
                        timeout: float = 120) -> float:
    """Wait until another worker owns the session; return the seconds it took."""
    t0 = time.monotonic()
    while (await r.hget(keys.meta(sid), "owner")).decode() == old:
        assert time.monotonic() - t0 < timeout, f"{sid} never left {old}"
        await asyncio.sleep(0.02)
    return time.monotonic() - t0


async def assert_exact(r: aioredis.Redis, keys: Keys, sid: str, n: int) -> None:
    meta = await wait_status(r, keys, sid, timeout=120)
    assert meta.status is Status.FINISHED, meta.error
    finals = await read_finals(r, keys, sid)
    words = [w for _, t in finals for w in t.text.split()]
    assert words == expected_words(n)
    assert [t.seq for _, t in finals] == list(range(len(finals)))


@pytest.mark.parametrize("n_workers", [2, 3])
async def test_sigkill_owner_mid_session(n_workers: int, workers: Workers, r: aioredis.Redis,
                                        keys: Keys) -> None:
    names = [f"k{i}" for i in range(n_workers)]
    workers.start(*names)
    sids = [f"s{i}" for i in range(2 * n_workers)]
    n = 80
    for sid in sids:
        await create(r, keys, sid, vendor="voxq-ws")
    feeders = [asyncio.create_task(publish(r, keys, sid, watermark_pcm(n), realtime=4))
               for sid in sids]
    victim = await owner_after_finals(r, keys, sids[0], 2)
    workers.signal(victim, signal.SIGKILL)
    took = await owner_changes(r, keys, sids[0], victim)
    await asyncio.gather(*feeders)
    for sid in sids:
        await assert_exact(r, keys, sid, n)
    print(f"\n{n_workers} workers: takeover {took:.2f}s after SIGKILL "
          f"(claim timeout {CLAIM_TIMEOUT}s)")


async def test_sigstopped_owner_is_fenced_after_sigcont(workers: Workers, r: aioredis.Redis,
                                                        keys: Keys) -> None:
    workers.start("p0", "p1")
    n = 80
    await create(r, keys, "stop", vendor="voxq-ws")
    feeder = asyncio.create_task(publish(r, keys, "stop", watermark_pcm(n), realtime=4))
    victim = await owner_after_finals(r, keys, "stop", 2)
    workers.signal(victim, signal.SIGSTOP)
    took = await owner_changes(r, keys, "stop", victim)
    await asyncio.sleep(1.0)
    workers.signal(victim, signal.SIGCONT)  # it wakes up believing it still owns the session
    await feeder
    await assert_exact(r, keys, "stop", n)
    meta = await wait_status(r, keys, "stop")
    assert meta.owner != victim and meta.epoch == 2
    print(f"\nSIGSTOP: taken over in {took:.2f}s; the paused owner wrote nothing after SIGCONT")


async def test_sigterm_hands_off_at_once(workers: Workers, r: aioredis.Redis,
                                        keys: Keys) -> None:
    workers.start("t0", "t1")
    n = 80
    await create(r, keys, "term", vendor="voxq-ws")
    feeder = asyncio.create_task(publish(r, keys, "term", watermark_pcm(n), realtime=4))
    victim = await owner_after_finals(r, keys, "term", 2)
    t0 = time.monotonic()
    workers.signal(victim, signal.SIGTERM)
    took = await owner_changes(r, keys, "term", victim)
    exited = await asyncio.to_thread(workers.procs[victim].wait, 30)
    exit_s = time.monotonic() - t0
    assert exited == 0, workers.logs()
    await feeder
    await assert_exact(r, keys, "term", n)
    print(f"\nSIGTERM: handed off in {took:.2f}s, worker exited in {exit_s:.2f}s")
    # it gave the session away itself; the claim did not have to go stale
    assert f"worker {victim}: handed off 1 session(s)" in workers.logs(), workers.logs()


async def test_vendor_sockets_dropped_at_random_points(workers: Workers, r: aioredis.Redis,
                                                       keys: Keys,
                                                       emulator: WatermarkEmulator) -> None:
    emulator.faults.drop_after_frames = random_drops(random.Random(11), (2, 40), 6)
    workers.start("d0", "d1")
    n = 80
    sids = ["v0", "v1"]
    for sid in sids:
        await create(r, keys, sid, vendor="voxq-ws")
    await asyncio.gather(*(publish(r, keys, sid, watermark_pcm(n), realtime=4) for sid in sids))
    for sid in sids:
        await assert_exact(r, keys, sid, n)
    assert sum(c.closed_by_fault for c in emulator.connections) >= 3  # faults did happen


@pytest.fixture
async def aof_redis() -> AsyncIterator[RedisServer]:
    server = RedisServer(appendonly=True).start()
    yield server
    server.close()


async def test_redis_restart_mid_session(aof_redis: RedisServer, fault_env: dict[str, str],
                                         keys: Keys, tmp_path: Path) -> None:
    env = {**fault_env, "REDIS_URL": aof_redis.url}
    w = Workers(env, tmp_path)
    n = 100
    wav = tmp_path / "wm.wav"
    sf.write(wav, np.frombuffer(watermark_pcm(n), "<i2"), 16000, subtype="PCM_16")
    r = connect(aof_redis.url)
    producer = None
    try:
        w.start("r0", "r1")
        producer = subprocess.Popen(
            [sys.executable, "-m", "voxq", "produce", str(wav), "--session", "rr",
             "--vendor", "voxq-ws", "--realtime"], env=env,
            stdout=(tmp_path / "producer.log").open("wb"), stderr=subprocess.STDOUT)
        await owner_after_finals(r, keys, "rr", 3)
        t0 = time.monotonic()
        await asyncio.to_thread(aof_redis.restart, 1.0)
        assert await asyncio.to_thread(producer.wait, 60) == 0, \
            (tmp_path / "producer.log").read_text()
        await assert_exact(r, keys, "rr", n)
        print(f"\nRedis restart: session complete {time.monotonic() - t0:.2f}s after the "
              "restart began")
    finally:
        if producer and producer.poll() is None:
            producer.kill()
        w.stop_all()
        await r.aclose()

