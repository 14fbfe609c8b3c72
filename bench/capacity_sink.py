"""A cheap voxq-ws sink for the capacity benchmark: accepts sessions, timestamps every binary
frame it receives and answers a final now and then, in its own process.

It speaks the voxq-ws protocol (workers/vendors/voxqws/protocol.py) over a hand-rolled
WebSocket server on a plain asyncio Protocol, so that it stays cheaper than the worker it
measures: no per-frame task, no per-frame JSON, only the first 8 bytes of each frame are
unmasked. The producer puts its send time (``time.time()`` as little-endian float64) in
those bytes, so relay latency is producer XADD → sink receipt on one clock.

Results are finals only, one every ``--final-every`` frames of a session; their text is
``t<stamp> d<sink delay>`` (the triggering chunk's stamp and how long the sink took to
answer), so an end-to-end probe can subtract the sink's own processing.

Control: one JSON line per command on stdin, one JSON line per answer on stdout:
``{"cmd": "stats", "reset": true}`` → counters and latency percentiles since the last reset.
Run: ``python bench/capacity_sink.py --port P [--final-every 20]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import resource
import struct
import sys
import threading
import time
from array import array
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import numpy as np

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
READY = b'{"type":"ready"}'
DONE = b'{"type":"done"}'
_Q = struct.Struct("<Q")
_D = struct.Struct("<d")


def text_frame(payload: bytes) -> bytes:
    """An unmasked server text frame."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return bytes((0x81, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + n.to_bytes(8, "big") + payload


CLOSE_FRAME = bytes((0x88, 2)) + (1000).to_bytes(2, "big")


class Stats:
    """Process-wide counters; latencies of the current window in one flat array."""

    def __init__(self) -> None:
        self.frames = 0
        self.bytes = 0
        self.finals = 0
        self.sessions = 0
        self.live = 0
        self.finished = 0
        self.lat: array[float] = array("d")
        self.at: array[float] = array("d")  # receipt times, only while tracing
        self.trace = False

    def snapshot(self, reset: bool) -> dict[str, Any]:
        """Counters and latency percentiles (ms) of the window; start a new one if asked."""
        lat = np.frombuffer(self.lat, dtype=np.float64) if len(self.lat) else np.zeros(0)
        out: dict[str, Any] = {
            "frames": self.frames, "bytes": self.bytes, "finals": self.finals,
            "sessions": self.sessions, "live": self.live, "finished": self.finished,
            "n": int(lat.size),
        }
        if lat.size:
            p50, p99, p999 = np.percentile(lat, [50, 99, 99.9]) * 1000
            out.update(p50_ms=round(float(p50), 2), p99_ms=round(float(p99), 2),
                       p999_ms=round(float(p999), 2), max_ms=round(float(lat.max()) * 1000, 2),
                       min_ms=round(float(lat.min()) * 1000, 2))
        ru = resource.getrusage(resource.RUSAGE_SELF)
        out["cpu_s"] = ru.ru_utime + ru.ru_stime
        out["rss_kib"] = ru.ru_maxrss
        if reset:
            self.lat = array("d")
            self.at = array("d")
        return out


STATS = Stats()


class SinkProtocol(asyncio.Protocol):
    """One voxq-ws connection: handshake, then frames parsed in bulk straight off the buffer."""

    __slots__ = ("buf", "channels", "final_every", "frames", "last_final", "rate", "seconds",
                 "transport", "upgraded")

    def __init__(self, final_every: int) -> None:
        self.final_every = final_every
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.upgraded = False
        self.rate = 16000
        self.channels = 1
        self.frames = 0  # binary frames on this connection
        self.seconds = 0.0  # audio received, seconds
        self.last_final = 0.0  # end of the last final, seconds

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Remember the transport."""
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        """Count the session out."""
        if self.upgraded:
            STATS.live -= 1
            self.upgraded = False

    def data_received(self, data: bytes) -> None:
        """Parse every complete frame in the buffer; timestamp binary frames on arrival."""
        now = time.time()
        buf = self.buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > 16384:
                    self._refuse(431, "headers too large")
                return
            head = bytes(buf[:end]).decode("latin-1")
            del buf[:end + 4]
            if not self._handshake(head):
                return
        pos, n = 0, len(buf)
        final_every = self.final_every
        lat_append = STATS.lat.append
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            ln = b1 & 0x7F
            hdr = pos + 2
            if ln == 126:
                if n - pos < 4:
                    break
                ln = (buf[pos + 2] << 8) | buf[pos + 3]
                hdr = pos + 4
            elif ln == 127:
                if n - pos < 10:
                    break
                ln = int.from_bytes(buf[pos + 2:pos + 10], "big")
                hdr = pos + 10
            if not b1 & 0x80:
                self._close()  # clients must mask
                return
            start = hdr + 4
            if n < start + ln:
                break
            opcode = b0 & 0x0F
            if opcode == 2:
                if ln >= 8:
                    mask = buf[hdr:hdr + 4]
                    stamp = _D.unpack(_Q.pack(
                        _Q.unpack_from(buf, start)[0] ^ _Q.unpack(mask + mask)[0]))[0]
                    lat_append(now - stamp)
                    if STATS.trace:
                        STATS.at.append(now)
                self.frames += 1
                self.seconds += ln / (2 * self.channels * self.rate)
                STATS.frames += 1
                STATS.bytes += ln
                if self.frames % final_every == 0:
                    self._final(stamp if ln >= 8 else now, now)
            elif opcode == 1:
                mask = buf[hdr:hdr + 4]
                text = bytes(b ^ mask[i & 3] for i, b in enumerate(buf[start:start + ln]))
                if b'"finish"' in text:
                    if self.seconds > self.last_final:
                        self._final(now, now)
                    self._send(DONE)
                    STATS.finished += 1
                    self._close()
                    return
            elif opcode == 8:
                self._close()
                return
            elif opcode == 9:  # ping → pong with the same payload
                mask = buf[hdr:hdr + 4]
                body = bytes(b ^ mask[i & 3] for i, b in enumerate(buf[start:start + ln]))
                assert self.transport is not None
                self.transport.write(bytes((0x8A, len(body))) + body)
            pos = start + ln
        if pos:
            del buf[:pos]

    def _final(self, stamp: float, received: float) -> None:
        """A final covering the audio since the previous one; text carries the stamp."""
        start, end = self.last_final, self.seconds
        self.last_final = end
        delay = time.time() - received
        self._send((f'{{"type":"result","final":true,"text":"t{stamp!r} d{delay:.6f}",'
                    f'"start":{start:.3f},"end":{end:.3f},"channel":0}}').encode())
        STATS.finals += 1

    def _send(self, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(text_frame(payload))

    def _close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(CLOSE_FRAME)
            self.transport.close()

    def _refuse(self, status: int, why: str) -> None:
        assert self.transport is not None
        body = (why + "\n").encode()
        self.transport.write(f"HTTP/1.1 {status} Refused\r\nContent-Length: {len(body)}\r\n"
                             f"Connection: close\r\n\r\n".encode() + body)
        self.transport.close()

    def _handshake(self, head: str) -> bool:
        """Answer the upgrade (101) and send ready; 400 for anything voxq-ws would refuse."""
        lines = head.split("\r\n")
        parts = lines[0].split()
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        key = headers.get("sec-websocket-key")
        if len(parts) < 2 or parts[0] != "GET" or not key:
            self._refuse(400, "not a WebSocket upgrade")
            return False
        q = parse_qs(urlsplit(parts[1]).query)
        try:
            self.rate = int(q["rate"][0])
            self.channels = int(q["channels"][0])
            q["session"][0]
        except (KeyError, ValueError, IndexError):
            self._refuse(400, "rate, channels and session are required")
            return False
        accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
        assert self.transport is not None
        self.transport.write(
            ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             f"Sec-WebSocket-Accept: {accept}\r\n\r\n").encode() + text_frame(READY))
        self.upgraded = True
        STATS.sessions += 1
        STATS.live += 1
        return True


def control(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Answer stdin commands on the loop's thread (stats are read there, without locks)."""
    for line in sys.stdin:
        try:
            cmd = json.loads(line)
        except json.JSONDecodeError:
            continue
        if cmd.get("cmd") == "quit":
            break
        fut = asyncio.run_coroutine_threadsafe(_snapshot(cmd), loop)
        print(json.dumps(fut.result()), flush=True)
    loop.call_soon_threadsafe(stop.set)


async def _snapshot(cmd: dict[str, Any]) -> dict[str, Any]:
    if cmd.get("cmd") == "trace":  # diagnostics: keep receipt times, or dump them with latencies
        if cmd.get("path"):
            np.save(cmd["path"], np.stack([np.frombuffer(STATS.at), np.frombuffer(STATS.lat)
                                           [-len(STATS.at):]]))
        STATS.trace = bool(cmd.get("on"))
        return {"trace": STATS.trace}
    return STATS.snapshot(bool(cmd.get("reset")))


async def serve(port: int, final_every: int) -> None:
    """Listen until stdin closes or says quit."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    server = await loop.create_server(lambda: SinkProtocol(final_every), "127.0.0.1", port,
                                      backlog=4096, reuse_address=True)
    print(json.dumps({"ready": True, "port": port, "pid": os.getpid()}), flush=True)
    threading.Thread(target=control, args=(loop, stop), daemon=True).start()
    await stop.wait()
    server.close()


def main() -> None:
    """Parse options and serve."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--final-every", type=int, default=20, help="frames per final (20 = 2 s)")
    args = ap.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop

        uvloop.run(serve(args.port, args.final_every))
    except ImportError:
        asyncio.run(serve(args.port, args.final_every))


if __name__ == "__main__":
    main()
