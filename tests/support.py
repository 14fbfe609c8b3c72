"""Helpers the tests share: publish audio the way a producer does, wait for a session,
run worker processes and stop any child process within a bounded time."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import redis
import redis.asyncio as aioredis

from voxq.aio import within
from voxq.audio import chunk_bytes_for, convert, read_file
from voxq.keys import Keys
from voxq.records import SessionMeta, encode_chunk, encode_eos
from voxq.sessions import create_session, get_meta


def load_pcm(path: Path, rate: int = 16000, channels: int = 1) -> bytes:
    """A file as bus PCM."""
    x, src = read_file(path)
    return convert(x, src, rate, channels)


def stereo(left: bytes, right: bytes) -> bytes:
    """Two mono s16 signals interleaved (the shorter padded with silence)."""
    a = np.frombuffer(left, "<i2")
    b = np.frombuffer(right, "<i2")
    n = max(len(a), len(b))
    out = np.zeros((n, 2), "<i2")
    out[: len(a), 0] = a
    out[: len(b), 1] = b
    return out.tobytes()


async def create(r: aioredis.Redis, keys: Keys, sid: str, **meta: object) -> SessionMeta:
    """Create a session as a producer does."""
    return await create_session(r, keys, SessionMeta(session_id=sid, **meta))  # type: ignore[arg-type]


async def publish(r: aioredis.Redis, keys: Keys, sid: str, pcm: bytes, rate: int = 16000,
                  channels: int = 1, chunk_ms: int = 100, eos: bool = True,
                  realtime: float = 0.0, start_seq: int = 0) -> int:
    """Publish PCM as chunks (pipelined), optionally paced at ``realtime`` × real time."""
    size = chunk_bytes_for(rate, channels, chunk_ms)
    seq = start_seq
    t0 = time.monotonic()
    for i in range(0, len(pcm), size):
        await r.xadd(keys.audio(sid), encode_chunk(seq, pcm[i:i + size]))
        seq += 1
        if realtime:
            ahead = (i + size) / (rate * channels * 2) / realtime - (time.monotonic() - t0)
            if ahead > 0:
                await asyncio.sleep(ahead)
    if eos:
        await r.xadd(keys.audio(sid), encode_eos(seq))
    return seq


async def wait_status(r: aioredis.Redis, keys: Keys, sid: str, timeout: float = 120,
                      statuses: tuple[str, ...] = ("finished", "failed", "abandoned")) -> SessionMeta:
    """Poll the session until it reaches one of ``statuses``."""
    deadline = time.monotonic() + timeout
    meta = None
    while time.monotonic() < deadline:
        try:
            meta = await get_meta(r, keys, sid)
        except (redis.ConnectionError, redis.TimeoutError):  # Redis restarting in a fault test
            await asyncio.sleep(0.1)
            continue
        if meta.status.value in statuses:
            return meta
        await asyncio.sleep(0.1)
    raise AssertionError(f"session {sid} still {meta and meta.status} after {timeout}s")


async def wait_finished(r: aioredis.Redis, keys: Keys, sid: str, timeout: float = 120) -> SessionMeta:
    """Until the session ends, which must be ``finished`` (a failure fails the test with its
    reason at once, not after a timeout)."""
    meta = await wait_status(r, keys, sid, timeout)
    assert meta.status.value == "finished", f"session {sid} {meta.status.value}: {meta.error}"
    return meta


async def run_voxq(*args: str, env: dict[str, str], timeout: float = 120,
                   stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """`python -m voxq ARGS` to its end; killed if it outlives ``timeout`` (TimeoutError) or the
    test is cancelled, so it never outlives the test."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voxq", *args, env=env,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = await within(proc.communicate(stdin), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return subprocess.CompletedProcess(list(args), proc.returncode, out, err)


def start_worker(env: dict[str, str], name: str, *args: str, log: Path | None = None
                 ) -> subprocess.Popen[bytes]:
    """A `voxq worker` OS process."""
    out = log.open("ab") if log else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "voxq", "worker", "--name", name, *args],
                            env=env, stdout=out, stderr=subprocess.STDOUT)


def stop_process(proc: subprocess.Popen[Any], grace: float = 10.0) -> int:
    """SIGTERM, then SIGKILL if it has not exited within ``grace`` seconds; its exit code.
    Never blocks longer than ``grace`` plus the moment a SIGKILL takes."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@contextlib.contextmanager
def cpu_load(processes: int = 2) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``processes`` busy-looping Python children for the duration of the block (killed after)."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
