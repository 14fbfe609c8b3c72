"""Ingest gateway capacity: sessions per gateway core at real time, per dialect, with the p99 of
frame received → XADD acknowledged, against the naive server (bench/ingest_naive.py: one task per
socket, np.frombuffer per frame, one awaited XADD per frame) in the same run on the same Redis.

Each run holds N concurrent real-time connections for ``--seconds``: raw (float32 16 kHz mono,
100 ms frames), Twilio (20 ms JSON media messages, both tracks), AudioHook (100 ms stereo PCMU).
The server runs as its own process; its CPU time over the window (from /proc) gives the share of a
core it used, and sessions per core = N / that share (an extrapolation: on a shared machine the
run stays below saturation). Latency: the gateway's own histogram (voxq_ingest_ack_latency_seconds,
read from /metrics; p99 is the upper edge of the bucket it falls in) and, for the naive server, its
exact per-frame timings bucketed the same way.

Prints one JSON document. Run: ``python bench/ingest.py [--short] [--seconds 20]
[--raw 400] [--twilio 100] [--audiohook 200]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]  # bench/ first on sys.path would not shadow anything, but keep it tidy

import argparse
import asyncio
import base64
import contextlib
import http.client
import json
import os
import platform
import re
import signal
import subprocess
import time
import uuid
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection, connect

from voxq.embedded_redis import RedisServer, free_port

REPO = Path(__file__).resolve().parent.parent
BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 10.0)
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def metrics(port: int) -> dict[str, float]:
    """The gateway's ack-latency histogram: cumulative counts by bucket edge."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    out = {}
    for le, v in re.findall(r'voxq_ingest_ack_latency_seconds_bucket\{le="([^"]+)"\} (\S+)', text):
        out[le] = float(v)
    return out


def p99_from_buckets(before: dict[str, float], after: dict[str, float]) -> float | None:
    """Upper edge (ms) of the bucket holding the 99th percentile of what arrived in between."""
    total = after.get("+Inf", 0) - before.get("+Inf", 0)
    if total <= 0:
        return None
    for le in [str(b) for b in BUCKETS] + ["+Inf"]:
        if after.get(le, 0) - before.get(le, 0) >= 0.99 * total:
            return float("inf") if le == "+Inf" else float(le) * 1000
    return None


def bucket_p99(lat: list[float]) -> float | None:
    """The same bucketed p99 from exact timings."""
    if not lat:
        return None
    x = np.sort(np.asarray(lat))
    p = x[min(len(x) - 1, int(0.99 * len(x)))]
    return next((b * 1000 for b in BUCKETS if p <= b), float("inf"))


# --- load: N real-time clients per dialect -------------------------------------------------------

RAW_FRAME = (np.sin(np.arange(1600) / 7) * 0.2).astype("<f4").tobytes()     # 100 ms f32 16 kHz
PCMU_20MS = base64.b64encode(bytes([0x7F] * 160)).decode()          # 20 ms μ-law near silence
STEREO_PCMU = bytes([0x7F, 0xFF] * 800)                                      # 100 ms stereo


async def open_raw(url: str, i: int) -> ClientConnection:
    ws = await connect(f"{url}/v1/ingest/raw?session=b{i}-{uuid.uuid4().hex[:8]}&format=f32",
                       compression=None)
    await ws.send(RAW_FRAME)
    await ws.recv()  # ready: the session exists before the window opens
    return ws


async def open_naive_raw(url: str, i: int) -> ClientConnection:
    return await connect(f"{url}/v1/ingest/raw", compression=None)


async def open_twilio(url: str, i: int) -> ClientConnection:
    ws = await connect(f"{url}/v1/ingest/twilio", compression=None)
    await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
    await ws.send(json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": f"MZ{i}",
                              "start": {"streamSid": f"MZ{i}", "accountSid": "AC",
                                        "callSid": f"CA{i}-{uuid.uuid4().hex[:8]}",
                                        "tracks": ["inbound", "outbound"], "customParameters": {},
                                        "mediaFormat": {"encoding": "audio/x-mulaw",
                                                        "sampleRate": 8000, "channels": 1}}}))
    return ws


OPENED_MS: list[float] = []  # AudioHook open sent → opened received, per session


async def open_audiohook(url: str, i: int) -> ClientConnection:
    sid = str(uuid.uuid4())
    ws = await connect(f"{url}/v1/ingest/audiohook", compression=None,
                       additional_headers={"Audiohook-Session-Id": sid, "X-API-KEY": "bench"})
    await ws.send(json.dumps({"version": "2", "id": sid, "type": "open", "seq": 1, "serverseq": 0,
                              "position": "PT0S", "parameters": {
                                  "organizationId": "o", "conversationId": str(uuid.uuid4()),
                                  "participant": {"id": "p"}, "media": [
                                      {"type": "audio", "format": "PCMU", "rate": 8000,
                                       "channels": ["external", "internal"]}]}}))
    t = time.monotonic()
    await ws.recv()  # opened (the naive server answers nothing; see below)
    OPENED_MS.append((time.monotonic() - t) * 1000)
    return ws


class Load:
    """N connections of one dialect fed on a shared real-time ticker."""

    def __init__(self, dialect: str, n: int) -> None:
        self.dialect, self.n = dialect, n
        self.conns: list[ClientConnection] = []
        self.late_ticks = 0
        self.ticks = 0
        self.seq = 2

    async def open(self, url: str, naive: bool) -> None:
        opener = {"raw": open_raw, "twilio": open_twilio, "audiohook": open_audiohook}[self.dialect]
        if naive and self.dialect == "audiohook":
            opener = open_naive_audiohook
        if naive and self.dialect == "raw":
            opener = open_naive_raw
        for start in range(0, self.n, 50):
            self.conns += await asyncio.gather(*(opener(url, i)
                                                 for i in range(start, min(self.n, start + 50))))

    async def tick(self) -> None:
        if self.dialect == "raw":
            for ws in self.conns:
                await ws.send(RAW_FRAME)
        elif self.dialect == "audiohook":
            for ws in self.conns:
                await ws.send(STEREO_PCMU)
        else:
            ts = str((self.seq - 2) // 2 * 20)
            for i, ws in enumerate(self.conns):
                for track in ("inbound", "outbound"):
                    await ws.send(json.dumps({
                        "event": "media", "sequenceNumber": str(self.seq + (track == "outbound")),
                        "streamSid": f"MZ{i}", "media": {"track": track, "chunk": "1",
                                                         "timestamp": ts, "payload": PCMU_20MS}}))
            self.seq += 2

    async def run(self, seconds: float) -> None:
        period = 0.02 if self.dialect == "twilio" else 0.1
        t0 = time.monotonic()
        k = 0
        while time.monotonic() - t0 < seconds:
            await self.tick()
            self.ticks += 1
            k += 1
            ahead = t0 + k * period - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
            elif ahead < -period:
                self.late_ticks += 1

    async def close(self) -> None:
        for ws in self.conns:
            with contextlib.suppress(Exception):
                ws.transport.abort()


async def open_naive_audiohook(url: str, i: int) -> ClientConnection:
    return await connect(f"{url}/v1/ingest/audiohook", compression=None)


def start_server(kind: str, redis_url: str, port: int, chunk_ms: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ, REDIS_URL=redis_url, VOXQ_INGEST_PORT=str(port),
               VOXQ_INGEST_MAX_SESSIONS="100000", VOXQ_LOG_LEVEL="WARNING",
               VOXQ_DEFAULT_CHUNK_MS=str(chunk_ms))
    cmd = ([sys.executable, "-m", "voxq", "ingest", "--insecure"] if kind == "voxq"
           else [sys.executable, str(REPO / "bench" / "ingest_naive.py"), "--port", str(port),
                 "--redis", redis_url])
    err = open(os.environ.get("BENCH_SERVER_LOG", os.devnull), "ab")
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err)
    err.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            with contextlib.closing(__import__("socket").create_connection(("127.0.0.1", port), 1)):
                return p
        time.sleep(0.1)
    p.kill()
    raise RuntimeError(f"{kind} server did not start")


async def measure(kind: str, dialect: str, n: int, seconds: float, redis_url: str) -> dict[str, Any]:
    port = free_port()
    # A frame's latency includes waiting for its chunk to fill: Twilio's 20 ms messages are
    # published in 20 ms chunks (one XADD per message pair), the others in 100 ms chunks.
    chunk_ms = 20 if dialect == "twilio" else 100
    p = start_server(kind, redis_url, port, chunk_ms)
    load = Load(dialect, n)
    single_open_ms = None
    try:
        if kind == "voxq" and dialect == "audiohook":  # one open alone, before the load
            ws = await open_audiohook(f"ws://127.0.0.1:{port}", -1)
            single_open_ms = round(OPENED_MS.pop(), 1)
            ws.transport.abort()
        await load.open(f"ws://127.0.0.1:{port}", naive=kind == "naive")
        if kind == "voxq":  # every session created (Twilio's open without a reply)
            r = aioredis.from_url(redis_url)
            async with asyncio.timeout(300):
                while await r.zcard("voxq:index") < n:  # noqa: ASYNC110 (Redis state)
                    await asyncio.sleep(0.2)
            await r.flushall()  # the next run counts its own sessions
            await r.aclose()
        await load.run(2.0)  # warm up
        before = await asyncio.to_thread(metrics, port) if kind == "voxq" else {}
        c0, w0, l0 = cpu_seconds(p.pid), time.monotonic(), time.process_time()
        await load.run(seconds)
        c1, w1, l1 = cpu_seconds(p.pid), time.monotonic(), time.process_time()
        after = await asyncio.to_thread(metrics, port) if kind == "voxq" else {}
    finally:
        await load.close()
        p.send_signal(signal.SIGTERM)
        try:
            out, _ = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
    share = (c1 - c0) / (w1 - w0)
    res: dict[str, Any] = {"sessions": n, "chunk_ms": chunk_ms if kind == "voxq" else None,
                           "server_cpu_share": round(share, 3),
                           "load_cpu_share": round((l1 - l0) / (w1 - w0), 3),
                           "late_ticks": load.late_ticks, "ticks": load.ticks}
    if kind == "voxq" and dialect == "audiohook":
        # sessions are opened 50 at a time, so this includes up to 49 others being created
        res["open_to_opened_ms"] = {"alone": single_open_ms,
                                    "p50_of_50_at_once": round(float(np.percentile(OPENED_MS, 50)), 1),
                                    "max_of_50_at_once": round(max(OPENED_MS), 1)}
    if kind == "voxq":
        res["p99_ms_bucket"] = p99_from_buckets(before, after)
        res["acked_frames"] = after.get("+Inf", 0) - before.get("+Inf", 0)
    else:
        text = out.decode().strip().splitlines()
        # CLOCK_MONOTONIC is system-wide on Linux: keep what the server acked inside the window
        lat = [x for t, x in (json.loads(text[-1])["latencies"] if text else []) if w0 <= t <= w1]
        res["p99_ms_bucket"] = bucket_p99(lat)
        res["p99_ms_exact"] = round(float(np.percentile(lat, 99)) * 1000, 2) if lat else None
        res["acked_frames"] = len(lat)
    # audio seconds one latency observation stands for: a raw or AudioHook frame is 100 ms; the
    # gateway observes one Twilio message pair (20 ms), the naive server each message (one track)
    per = 0.1 if dialect != "twilio" else (0.02 if kind == "voxq" else 0.01)
    audio = res["acked_frames"] * per
    sent = n * (w1 - w0)
    res["audio_seconds_acked"] = round(audio, 1)
    res["kept_up"] = round(audio / sent, 3)  # 1.0: everything sent in the window was acked
    # sessions one core carries at real time, from the CPU spent per acked audio second
    res["sessions_per_core"] = round(audio / (c1 - c0)) if c1 > c0 else None
    return res


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    return {"platform": platform.platform(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "loadavg_at_start": [round(x, 2) for x in load]}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"bench": "ingest", "machine": machine(), "seconds": args.seconds,
                           "targets": {"raw_sessions_per_core": 1500,
                                       "twilio_calls_per_core": 300, "p99_ms": 50}}
    with RedisServer() as redis:
        for dialect, n in (("raw", args.raw), ("twilio", args.twilio),
                           ("audiohook", args.audiohook)):
            out[dialect] = {}
            for kind in ("voxq", "naive"):
                out[dialect][kind] = await measure(kind, dialect, n, args.seconds, redis.url)
    return out


if __name__ == "__main__":
    a = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    a.add_argument("--short", action="store_true", help="small counts (100/30/60), 8 s windows")
    a.add_argument("--seconds", type=float, default=20.0)
    a.add_argument("--raw", type=int, default=400)
    a.add_argument("--twilio", type=int, default=100)
    a.add_argument("--audiohook", type=int, default=200)
    args = a.parse_args()
    if args.short:
        args.seconds, args.raw, args.twilio, args.audiohook = 8.0, 100, 30, 60
    try:
        import uvloop  # the load generator only; the servers run on asyncio

        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(main(args)), indent=2))
