"""The naive reference worker of the capacity benchmark (kept in bench/ only for comparison).

This is the design tutorials and most open projects use: every session gets its own task,
its own Redis connection and its own blocking ``XREAD BLOCK 0`` on its audio stream, and
relays each entry to the vendor with ``await ws.send``; results are written with plain
XADD (no fencing, no checkpoint: cheaper per chunk than a correct worker, so the
comparison flatters it). It claims sessions from the same control
stream as voxq's worker so the benchmark can drive both with the same producers and sink.

Run: ``python bench/naive_worker.py --redis-url URL --ws-url URL [--prefix cap]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import argparse
import asyncio
import json
import resource
from typing import Any
from urllib.parse import urlencode

import redis.asyncio as aioredis
import websockets

GROUP = "transcribers"


class NaiveWorker:
    """Claims sessions and runs one task (with one connection and one XREAD) per session."""

    def __init__(self, url: str, ws_url: str, prefix: str) -> None:
        self.url, self.ws_url, self.prefix = url, ws_url, prefix
        # a pool as large as the sessions: redis-py's default (100) would fail result writes
        # once more than 100 sessions write at once, which is not what is being compared
        self.r = aioredis.Redis.from_url(url, max_connections=20000)
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Claim new control entries forever and start a task for each."""
        control = f"{self.prefix}:sessions"
        try:
            await self.r.xgroup_create(control, GROUP, id="0", mkstream=True)
        except aioredis.ResponseError:
            pass
        while True:
            resp: Any = await self.r.xreadgroup(GROUP, "naive", {control: ">"}, count=100,
                                                block=1000)
            for _key, entries in resp or ():
                for eid, fields in entries:
                    sid = fields[b"sid"].decode()
                    t = asyncio.create_task(self.session(sid, eid))
                    self.tasks.add(t)
                    t.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        """Forget a finished session task; say why if it failed (a lost session would
        otherwise only show as backlog)."""
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            print(f"naive session failed: {task.exception()!r}", file=sys.stderr, flush=True)

    async def session(self, sid: str, control_id: bytes) -> None:
        """Relay one session: XREAD BLOCK on its own connection, one ws.send per chunk."""
        tag = f"{self.prefix}:{{{sid}}}"
        conn = aioredis.Redis.from_url(self.url)  # this session's own connection
        query = urlencode({"session": sid, "rate": 16000, "channels": 1, "language": "en-US"})
        async with websockets.connect(f"{self.ws_url}?{query}", max_size=2**20) as ws:
            await ws.recv()  # ready
            results = asyncio.create_task(self.results(ws, tag))
            last: Any = "0-0"
            while True:
                resp: Any = await conn.xread({f"{tag}:audio": last}, block=0)
                for _key, entries in resp:
                    for eid, fields in entries:
                        last = eid
                        if b"eos" in fields:
                            await ws.send(json.dumps({"type": "finish"}))
                            await results
                            await self.r.hset(f"{tag}:meta", "status", "finished")
                            await self.r.xack(f"{self.prefix}:sessions", GROUP, control_id)
                            await conn.aclose()
                            return
                        await ws.send(fields[b"pcm"])

    async def results(self, ws: Any, tag: str) -> None:
        """Write each final the vendor sends with a plain XADD."""
        async for msg in ws:
            d = json.loads(msg)
            if d.get("type") == "done":
                return
            if d.get("type") == "result" and d.get("final"):
                await self.r.xadd(f"{tag}:final", {"text": d["text"], "start": d["start"],
                                                    "end": d["end"]})


def main() -> None:
    """Parse options and run until killed."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--redis-url", required=True)
    ap.add_argument("--ws-url", required=True)
    ap.add_argument("--prefix", default="cap")
    ap.add_argument("--uvloop", action="store_true", help="run on uvloop (as voxq's worker does)")
    args = ap.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    w = NaiveWorker(args.redis_url, args.ws_url, args.prefix)
    if args.uvloop:
        import uvloop

        uvloop.run(w.run())
    else:
        asyncio.run(w.run())


if __name__ == "__main__":
    main()
