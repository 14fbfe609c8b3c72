"""Helpers the tests share: publish audio the way a producer does, wait for a session,
run worker processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import redis
import redis.asyncio as aioredis

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


def start_worker(env: dict[str, str], name: str, *args: str, log: Path | None = None
                 ) -> subprocess.Popen[bytes]:
    """A `voxq worker` OS process."""
    out = log.open("ab") if log else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "voxq", "worker", "--name", name, *args],
                            env=env, stdout=out, stderr=subprocess.STDOUT)
