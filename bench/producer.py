"""Producer cost per audio hour: 44.1 kHz float32 stereo capture → 16 kHz s16 mono 100 ms
chunks published to Redis, voxq (numpy + soxr + pipelined Publisher) against the per-sample
pure-Python loop tutorials use (average channels, linear-interpolation resample, clamp and
struct.pack per sample, one XADD per chunk), both measured in the same run on the same Redis.

Second figure, sessions per producer core: one producer process publishing many concurrent
real-time sessions through the Publisher library (one Publisher, connection and flush task
per session, 100 ms chunks of 16 kHz mono handed to ``send`` on time by one ticker), pinned
to one core; its CPU per session-second at each count, whether it kept real time, and the
inverse, sessions per core.

Prints one JSON document. Run: ``python bench/producer.py [--voxq-seconds 300]
[--baseline-seconds 30] [--concurrent 200,500,1000] [--concurrent-seconds 15]``;
``--only-concurrent`` skips the conversion comparison.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as `python bench/producer.py`, this file's directory comes first on sys.path and its
# name would shadow the `producer` package it measures: drop that entry.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import argparse
import asyncio
import io
import json
import os
import platform
import struct
import subprocess
import time
from collections.abc import Callable
from functools import partial
from typing import Any, BinaryIO, cast

import numpy as np
import redis

from producer.publisher import Publisher
from producer.sources import raw_source
from voxq.embedded_redis import RedisServer, find_redis_server
from voxq.keys import Keys
from voxq.settings import Settings

SRC_RATE, SRC_CHANNELS = 44100, 2
BUS_RATE, CHUNK_MS = 16000, 100
CHUNK_BYTES = BUS_RATE * CHUNK_MS // 1000 * 2
BLOCK_FRAMES = SRC_RATE * CHUNK_MS // 1000  # a capture callback hands over 100 ms at a time
LOOP_SECONDS = 10


def capture_signal(seconds: int = LOOP_SECONDS) -> bytes:
    """Ten seconds of speech-band test audio (tones + noise, different per channel) as f32le."""
    rng = np.random.default_rng(7)
    t = np.arange(seconds * SRC_RATE) / SRC_RATE
    left = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)
    right = 0.2 * np.sin(2 * np.pi * 1330 * t) + 0.05 * rng.standard_normal(t.size)
    return np.stack([left, right], axis=1).astype("<f4").tobytes()


class LoopedCapture(io.RawIOBase):
    """A read-only stream that repeats a short capture up to a total length (no big buffer)."""

    def __init__(self, loop: bytes, total_bytes: int) -> None:
        self.loop, self.remaining, self.pos = loop, total_bytes, 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self.remaining if n < 0 else min(n, self.remaining)
        out = bytearray()
        while len(out) < n:
            take = min(n - len(out), len(self.loop) - self.pos)
            out += self.loop[self.pos:self.pos + take]
            self.pos = (self.pos + take) % len(self.loop)
        self.remaining -= n
        return bytes(out)


def redis_cpu(r: redis.Redis) -> float:
    """CPU seconds the redis-server process has used so far (INFO cpu)."""
    info: dict[str, Any] = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def measure(r: redis.Redis, work: Callable[[], int]) -> dict[str, float]:
    """Run ``work`` and return its process CPU, wall time and the Redis server's CPU."""
    redis_before, cpu_before = redis_cpu(r), time.process_time()
    wall_before = time.perf_counter()
    chunks = work()
    cpu = time.process_time() - cpu_before
    wall = time.perf_counter() - wall_before
    return {"cpu_s": cpu, "wall_s": wall, "redis_cpu_s": redis_cpu(r) - redis_before,
            "chunks": chunks}


# --- voxq ---------------------------------------------------------------------------------

def run_voxq(url: str, settings: Settings, sid: str, seconds: int,
             loop: bytes) -> dict[str, float]:
    """Publish ``seconds`` of capture through raw_source (numpy+soxr) and the Publisher."""
    stream = LoopedCapture(loop, seconds * SRC_RATE * SRC_CHANNELS * 4)
    blocks = raw_source(cast(BinaryIO, stream), "f32le", SRC_RATE, SRC_CHANNELS, BUS_RATE, 1,
                        block_ms=CHUNK_MS)
    pub = Publisher(url, settings=settings)

    async def publish() -> int:
        for block in blocks:
            await pub.send(block)
        await pub.close()
        return pub.stats.chunks

    async def main() -> dict[str, float]:
        # session creation (and the vendor check) is a one-off, outside the measurement
        await pub.open(sid, rate=BUS_RATE, channels=1, chunk_ms=CHUNK_MS)
        r = redis.Redis.from_url(url)
        redis_before, cpu_before = redis_cpu(r), time.process_time()
        wall_before = time.perf_counter()
        chunks = await publish()
        result = {"cpu_s": time.process_time() - cpu_before,
                  "wall_s": time.perf_counter() - wall_before,
                  "redis_cpu_s": redis_cpu(r) - redis_before, "chunks": chunks}
        r.close()
        return result

    return asyncio.run(main())


# --- the tutorial baseline ----------------------------------------------------------------

def run_baseline(r: redis.Redis, key: str, seconds: int, loop: bytes) -> int:
    """Per-sample pure Python: mix, linear-interpolation resample, clamp, pack, XADD each chunk."""
    stream = LoopedCapture(loop, seconds * SRC_RATE * SRC_CHANNELS * 4)
    step = SRC_RATE / BUS_RATE
    pos = 0.0            # read position in input frames, carried across blocks
    prev = 0.0           # last input sample of the previous block (for interpolation)
    out = bytearray()
    seq = 0
    while True:
        block = stream.read(BLOCK_FRAMES * SRC_CHANNELS * 4)
        if not block:
            break
        floats = struct.unpack(f"<{len(block) // 4}f", block)
        mono = [prev]
        for i in range(0, len(floats), 2):
            mono.append((floats[i] + floats[i + 1]) / 2)
        # mono[k] is input frame (k - 1) of this block; interpolate while both neighbours exist
        while pos + 1 < len(mono) - 1:
            i = int(pos)
            frac = pos - i
            y = mono[i + 1] * (1 - frac) + mono[i + 2] * frac
            y = max(-1.0, min(1.0, y))
            out += struct.pack("<h", int(y * 32767))
            pos += step
        pos -= len(mono) - 1
        prev = mono[-1]
        while len(out) >= CHUNK_BYTES:
            r.xadd(key, {"seq": str(seq), "pcm": bytes(out[:CHUNK_BYTES])})
            del out[:CHUNK_BYTES]
            seq += 1
    if out:
        r.xadd(key, {"seq": str(seq), "pcm": bytes(out)})
        seq += 1
    r.xadd(key, {"seq": str(seq), "eos": "1"})
    return seq


# --- many concurrent sessions from one process ----------------------------------------------

TICK_S = 0.002


async def concurrent_sessions(url: str, settings: Settings, n: int, seconds: float
                              ) -> dict[str, Any]:
    """``n`` Publishers sending 100 ms chunks in real time for ``seconds``: producer CPU per
    session-second and whether every session kept pace (chunks acknowledged on time)."""
    pubs = [Publisher(url, settings=settings) for _ in range(n)]
    for i, pub in enumerate(pubs):
        await pub.open(f"c{n}-{i:05d}", rate=BUS_RATE, channels=1, chunk_ms=CHUNK_MS)
    chunk = (np.random.default_rng(n).standard_normal(CHUNK_BYTES // 2) * 300).astype(
        "<i2").tobytes()
    period = CHUNK_MS / 1000
    slots = max(1, round(period / TICK_S))
    wheel: list[list[Publisher]] = [[] for _ in range(slots)]
    for i, pub in enumerate(pubs):
        wheel[(i * 7 + i // slots) % slots].append(pub)
    r = redis.Redis.from_url(url)
    stop = asyncio.Event()

    async def trim() -> None:  # no worker trims these streams: keep Redis memory flat
        while not stop.is_set():
            await asyncio.sleep(2.0)
            with r.pipeline(transaction=False) as p:
                for pub in pubs:
                    p.xtrim(Keys(settings.prefix).audio(pub.session_id), maxlen=50,
                            approximate=True)
                await asyncio.to_thread(p.execute)

    trimmer = asyncio.create_task(trim())
    late: list[float] = []
    # the event loop's thread only: the trimming thread is not part of the producer
    redis0, cpu0 = redis_cpu(r), time.thread_time()
    t0 = time.monotonic()
    k = 0
    due_chunks = 0
    while True:
        due = t0 + k * TICK_S
        if due - t0 >= seconds:
            break
        now = time.monotonic()
        if due > now:
            await asyncio.sleep(due - now)
            now = time.monotonic()
        late.append(now - due)
        for pub in wheel[k % slots]:
            await pub.send(chunk)
            due_chunks += 1
        k += 1
    cpu = time.thread_time() - cpu0
    wall = time.monotonic() - t0
    acked_on_time = sum(pub.stats.chunks for pub in pubs)
    redis_s = redis_cpu(r) - redis0
    stop.set()
    await trimmer
    for pub in pubs:
        await pub.close()
    r.close()
    per = cpu / (n * wall)
    lat = np.array(late) * 1000
    return {
        "sessions": n,
        "cpu_pct": round(100 * cpu / wall, 1),
        "cpu_s_per_session_second": round(per, 7),
        "sessions_per_core": round(1 / per),
        "kept_real_time": bool(np.percentile(lat, 99) < 20 and acked_on_time >= 0.98 * due_chunks),
        "ticker_late_p99_ms": round(float(np.percentile(lat, 99)), 2),
        "chunks_acked_in_window_pct": round(100 * acked_on_time / max(1, due_chunks), 1),
        "redis_cpu_pct": round(100 * redis_s / wall, 1),
    }


def run_concurrent(url: str, counts: list[int], seconds: float) -> dict[str, Any]:
    """The concurrent-session figure over a ramp of session counts, pinned to one core."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) > 1:
        os.sched_setaffinity(0, {cpus[-1]})
    settings = Settings(redis_url=url, prefix="conc")
    steps = []
    for n in counts:
        step = asyncio.run(concurrent_sessions(url, settings, n, seconds))
        steps.append(step)
        if not step["kept_real_time"]:
            break
    held = [s for s in steps if s["kept_real_time"]]
    basis = held[-1] if held else None
    if len(cpus) > 1:
        os.sched_setaffinity(0, set(cpus))
    return {
        "what": "one producer process, Publisher per session, 16 kHz mono 100 ms chunks, "
                "real time; CPU of its event-loop thread (time.thread_time), pinned to one core",
        "steps": steps,
        "cpu_s_per_session_second": basis["cpu_s_per_session_second"] if basis else None,
        "sessions_per_producer_core": basis["sessions_per_core"] if basis else None,
        "basis_sessions": basis["sessions"] if basis else None,
        "largest_real_time_sessions": basis["sessions"] if basis else 0,
    }


def median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    """The run with the median producer CPU (its own Redis CPU and wall time with it)."""
    return sorted(runs, key=lambda m: m["cpu_s"])[len(runs) // 2]


def machine(r: redis.Redis) -> dict[str, Any]:
    """Where the figures were measured."""
    import soxr

    version = subprocess.run([find_redis_server(), "--version"], capture_output=True,
                             text=True).stdout.strip()
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "soxr": soxr.__version__,
        "redis_server": version.split("v=")[1].split()[0] if "v=" in version else version,
    }


def main() -> None:
    """Run both pipelines and print the JSON comparison."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voxq-seconds", type=int, default=300, help="audio for voxq (300)")
    ap.add_argument("--baseline-seconds", type=int, default=30, help="audio for baseline (30)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each; the median is kept")
    ap.add_argument("--concurrent", type=lambda v: [int(x) for x in v.split(",")],
                    default=[200, 500, 1000, 2000], help="concurrent session counts")
    ap.add_argument("--concurrent-seconds", type=float, default=15.0)
    ap.add_argument("--only-concurrent", action="store_true")
    args = ap.parse_args()
    if args.only_concurrent:
        with RedisServer() as server:
            info = machine(redis.Redis.from_url(server.url))
            print(json.dumps({"benchmark": "producer: concurrent sessions per producer core",
                              "machine": info,
                              "concurrent": run_concurrent(server.url, args.concurrent,
                                                           args.concurrent_seconds)}, indent=2))
        return
    loop = capture_signal()
    started = time.perf_counter()
    with RedisServer() as server:
        settings = Settings(redis_url=server.url, prefix="bench")
        keys = Keys("bench")
        r = redis.Redis.from_url(server.url)
        vxs, bases = [], []
        for i in range(args.repeat):
            vxs.append(run_voxq(server.url, settings, f"voxq-{i}", args.voxq_seconds, loop))
            key = keys.audio(f"baseline-{i}")
            bases.append(measure(r, partial(run_baseline, r, key, args.baseline_seconds, loop)))
        vx, base = median_run(vxs), median_run(bases)
        stream_bytes = int(r.memory_usage(keys.audio("voxq-0"), samples=0) or 0)
        base_bytes = int(r.memory_usage(keys.audio("baseline-0"), samples=0) or 0)
        info = machine(r)
        r.close()
        concurrent = run_concurrent(server.url, args.concurrent, args.concurrent_seconds)

    per_hour_vx = 3600 / args.voxq_seconds
    per_hour_base = 3600 / args.baseline_seconds
    result = {
        "benchmark": "producer: 44.1 kHz f32 stereo -> 16 kHz s16 mono 100 ms chunks -> Redis",
        "machine": info,
        "voxq": {
            "audio_seconds": args.voxq_seconds,
            "chunks": int(vx["chunks"]),
            "cpu_s": round(vx["cpu_s"], 3),
            "wall_s": round(vx["wall_s"], 3),
            "cpu_s_per_audio_hour": round(vx["cpu_s"] * per_hour_vx, 2),
            "redis_cpu_s_per_audio_hour": round(vx["redis_cpu_s"] * per_hour_vx, 2),
            "realtime_factor": round(args.voxq_seconds / vx["cpu_s"], 1),
            "redis_bytes_per_audio_minute": round(stream_bytes / (args.voxq_seconds / 60)),
        },
        "baseline": {
            "what": "per-sample Python mix/linear resample/clamp/struct.pack, XADD per chunk",
            "audio_seconds": args.baseline_seconds,
            "chunks": int(base["chunks"]),
            "cpu_s": round(base["cpu_s"], 3),
            "wall_s": round(base["wall_s"], 3),
            "cpu_s_per_audio_hour": round(base["cpu_s"] * per_hour_base, 2),
            "redis_cpu_s_per_audio_hour": round(base["redis_cpu_s"] * per_hour_base, 2),
            "realtime_factor": round(args.baseline_seconds / base["cpu_s"], 1),
            "redis_bytes_per_audio_minute": round(base_bytes / (args.baseline_seconds / 60)),
        },
        "speedup_cpu": round((base["cpu_s"] * per_hour_base) / (vx["cpu_s"] * per_hour_vx), 1),
        "speedup_redis_cpu": round((base["redis_cpu_s"] * per_hour_base)
                                   / max(vx["redis_cpu_s"] * per_hour_vx, 1e-9), 1),
        "chunks": int(vx["chunks"]),
        "redis_bytes_per_audio_minute": round(stream_bytes / (args.voxq_seconds / 60)),
        "concurrent": concurrent,
        "repeat": args.repeat,
        "run_seconds": round(time.perf_counter() - started, 1),
        "notes": "cpu_s is time.process_time of the producer process (conversion, chunking, "
                 "client); redis_cpu_s is the server's INFO cpu delta; MEMORY USAGE SAMPLES 0 "
                 "of the audio stream gives bytes per audio minute",
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
