"""Load producer for the capacity benchmark: many real-time sessions from one process.

Sessions are created the way every producer creates them (voxq.sessions.create_session:
meta, index, control entry); their audio is then published at real-time pace, one 100 ms
chunk per session per 100 ms, spread evenly over the period in 2 ms slots. Each slot's
chunks leave as one pipelined write of hand-encoded XADD commands on one connection, and
replies are counted off the raw byte stream: the producer must stay cheaper than the worker
it feeds.
The first 8 bytes of every chunk carry ``time.time()`` taken just before the write
(little-endian float64), for the sink to measure relay latency on the same clock.

Control: JSON lines on stdin (``add``, ``stats``, ``eos``, ``quit``), JSON answers on stdout.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, bench/ comes first on sys.path and bench/producer.py would shadow the
# `producer` package: drop that entry (voxq is installed, the repo root is not needed).
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import argparse
import asyncio
import json
import os
import resource
import struct
import threading
import time
from array import array
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from voxq.keys import Keys
from voxq.records import SessionMeta
from voxq.redis_conn import connect
from voxq.sessions import create_session

TICK_S = 0.002
_D = struct.Struct("<d")


def bulk(b: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(b), b)


class Session:
    """One published session: its pre-encoded XADD prefix and next sequence number."""

    __slots__ = ("done", "key", "prefix", "seq")

    def __init__(self, key: str) -> None:
        self.key = key
        k = key.encode()
        self.prefix = b"*7\r\n$4\r\nXADD\r\n" + bulk(k) + b"$1\r\n*\r\n$3\r\nseq\r\n"
        self.seq = 0
        self.done = False


class Load:
    """The publishing loop and its counters."""

    def __init__(self, url: str, keys: Keys, rate: int, chunk_ms: int, vendor: str) -> None:
        self.url, self.keys, self.vendor = url, keys, vendor
        self.rate, self.chunk_ms = rate, chunk_ms
        self.period = chunk_ms / 1000
        self.n_slots = max(1, round(self.period / TICK_S))
        self.slots: list[list[Session]] = [[] for _ in range(self.n_slots)]
        self.count = 0
        chunk_bytes = rate * chunk_ms // 1000 * 2
        rng = np.random.default_rng(1)
        body = (rng.standard_normal(chunk_bytes // 2) * 300).astype("<i2").tobytes()
        self.pcm_head = b"$3\r\npcm\r\n$%d\r\n" % chunk_bytes
        self.pcm_tail = body[8:] + b"\r\n"
        self.sent = 0
        self.acked = 0
        self.errors = 0
        self.first_error = ""
        self.late: array[float] = array("d")
        self.writer: asyncio.StreamWriter | None = None
        self.reader: asyncio.StreamReader | None = None
        self.stopped = False

    async def open(self) -> None:
        """Connect the raw publishing connection and start its reply counter."""
        u = urlsplit(self.url)
        self.reader, self.writer = await asyncio.open_connection(u.hostname, u.port or 6379)
        asyncio.get_running_loop().create_task(self._replies())
        asyncio.get_running_loop().create_task(self._publish())

    async def add(self, sids: list[str]) -> int:
        """Create sessions (as any producer does) and start publishing them."""
        r = connect(self.url)
        try:
            for sid in sids:
                await create_session(r, self.keys, SessionMeta(
                    session_id=sid, vendor=self.vendor, rate=self.rate, channels=1,
                    chunk_ms=self.chunk_ms))
                s = Session(self.keys.audio(sid))
                self.slots[(self.count * 7 + self.count // self.n_slots) % self.n_slots].append(s)
                self.count += 1
        finally:
            await r.aclose()
        return self.count

    async def _replies(self) -> None:
        """Count XADD replies (bulk-string ids) and errors off the raw byte stream."""
        assert self.reader is not None
        buf = b""
        while True:
            data = await self.reader.read(1 << 16)
            if not data:
                return
            buf += data
            pos = 0
            while True:
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    break
                kind = buf[pos:pos + 1]
                if kind == b"$":
                    n = int(buf[pos + 1:end])
                    stop = end + 2 + max(n, 0) + (2 if n >= 0 else 0)
                    if len(buf) < stop:
                        break
                    self.acked += 1
                    pos = stop
                    continue
                if kind == b"-":
                    self.errors += 1
                    self.first_error = self.first_error or buf[pos + 1:end].decode(
                        errors="replace")
                pos = end + 2
            buf = buf[pos:]

    async def _publish(self) -> None:
        """Every tick, publish the chunks of the sessions due in that slot."""
        assert self.writer is not None
        t0 = time.monotonic()
        k = 0
        head, tail = self.pcm_head, self.pcm_tail
        while not self.stopped:
            due = t0 + k * TICK_S
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
                now = time.monotonic()
            self.late.append(now - due)
            parts: list[bytes] = []
            # catch up every slot that fell due meanwhile, oldest first
            while t0 + k * TICK_S <= now:
                for s in self.slots[k % self.n_slots]:
                    if not s.done:
                        seq = b"%d" % s.seq
                        parts.append(s.prefix)
                        parts.append(b"$%d\r\n%s\r\n" % (len(seq), seq))
                        parts.append(head)
                        parts.append(b"")  # the stamp goes here
                        parts.append(tail)
                        s.seq += 1
                k += 1
            if parts:
                stamp = _D.pack(time.time())
                parts[3::5] = [stamp] * (len(parts) // 5)
                self.writer.write(b"".join(parts))
                self.sent += len(parts) // 5
                if self.writer.transport.get_write_buffer_size() > 1 << 22:
                    await self.writer.drain()

    async def eos(self) -> int:
        """Stop publishing and append the end marker to every session."""
        self.stopped = True
        assert self.writer is not None
        parts = []
        for slot in self.slots:
            for s in slot:
                s.done = True
                seq = b"%d" % s.seq
                parts.append(b"*7\r\n$4\r\nXADD\r\n" + bulk(s.key.encode()) + b"$1\r\n*\r\n"
                             + bulk(b"seq") + bulk(seq) + bulk(b"eos") + bulk(b"1"))
        self.writer.write(b"".join(parts))
        await self.writer.drain()
        self.sent += len(parts)
        return len(parts)

    def stats(self, reset: bool) -> dict[str, Any]:
        """Counters, and how late the ticks ran (ms) since the last reset."""
        late = np.frombuffer(self.late, dtype=np.float64) if len(self.late) else np.zeros(1)
        ru = resource.getrusage(resource.RUSAGE_SELF)
        out = {"sessions": self.count, "sent": self.sent, "acked": self.acked,
               "errors": self.errors, "first_error": self.first_error,
               "late_p99_ms": round(float(np.percentile(late, 99)) * 1000, 2),
               "late_max_ms": round(float(late.max()) * 1000, 2),
               "cpu_s": ru.ru_utime + ru.ru_stime}
        if reset:
            self.late = array("d")
        return out


async def run(args: argparse.Namespace) -> None:
    """Serve control commands from stdin until quit."""
    load = Load(args.redis_url, Keys(args.prefix), args.rate, args.chunk_ms, args.vendor)
    await load.open()
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str] = asyncio.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line)
        loop.call_soon_threadsafe(lines.put_nowait, '{"cmd":"quit"}')

    threading.Thread(target=read_stdin, daemon=True).start()
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    while True:
        cmd = json.loads(await lines.get())
        what = cmd.get("cmd")
        if what == "quit":
            return
        if what == "add":
            out: dict[str, Any] = {"sessions": await load.add(cmd["sids"])}
        elif what == "stats":
            out = load.stats(bool(cmd.get("reset")))
        elif what == "eos":
            out = {"eos": await load.eos()}
        else:
            out = {"error": f"unknown command {what!r}"}
        print(json.dumps(out), flush=True)


def main() -> None:
    """Parse options and run."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--redis-url", required=True)
    ap.add_argument("--prefix", default="cap")
    ap.add_argument("--rate", type=int, default=16000)
    ap.add_argument("--chunk-ms", type=int, default=100)
    ap.add_argument("--vendor", default="voxq-ws")
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.run(run(args))
    except ImportError:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
