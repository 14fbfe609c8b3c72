"""The naive ingest server the tutorials describe, as a baseline for bench/ingest.py: one task per
socket, ``np.frombuffer`` per frame, one XADD per frame awaited before the next (no pipelining,
no chunking). Speaks enough of each dialect to carry the same load: raw float32 frames, Twilio
JSON media (base64 μ-law), AudioHook binary PCMU. Prints its latencies as JSON on SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import signal
import sys
import time

import numpy as np
import redis.asyncio as aioredis
from websockets.asyncio.server import ServerConnection, serve

MULAW = np.array([((~u & 0x0F) << 3 | 0x84) << ((~u >> 4) & 7) for u in range(256)], np.int32)
MULAW = np.where(np.arange(256) & 0x80, MULAW - 0x84, 0x84 - MULAW).astype("<i2")


async def main(port: int, url: str) -> None:
    r = aioredis.from_url(url)
    lat: list[tuple[float, float]] = []  # (monotonic time acked, latency): system-wide clock
    n = 0

    async def handler(ws: ServerConnection) -> None:
        nonlocal n
        n += 1
        key = f"naive:{n}:audio"
        seq = 0
        async for msg in ws:
            t = time.monotonic()
            if isinstance(msg, str):
                d = json.loads(msg)
                if d.get("event") != "media":
                    continue
                pcm = MULAW[np.frombuffer(base64.b64decode(d["media"]["payload"]), np.uint8)]
            elif ws.request and ws.request.path.startswith("/v1/ingest/audiohook"):
                pcm = MULAW[np.frombuffer(msg, np.uint8)]
            else:
                x = np.frombuffer(msg, "<f4")
                pcm = (np.clip(x, -1, 1) * 32767).astype("<i2")
            await r.xadd(key, {"seq": seq, "pcm": pcm.tobytes()})
            seq += 1
            now = time.monotonic()
            lat.append((now, now - t))

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with serve(handler, "127.0.0.1", port, compression=None, max_size=2**20):
        print("ready", flush=True)
        await stop.wait()
    json.dump({"latencies": lat}, sys.stdout)
    sys.stdout.flush()


if __name__ == "__main__":
    a = argparse.ArgumentParser()
    a.add_argument("--port", type=int, required=True)
    a.add_argument("--redis", required=True)
    args = a.parse_args()
    asyncio.run(main(args.port, args.redis))
