"""Slow-client benchmark: /healthz latency of a real `voxq api` with no load (the baseline), while
N sockets each hold a half-sent request head, and while more sockets than the connection cap
do; and how long the server takes to close the slow ones.

    python bench/slow_clients.py                  # 500 slow sockets, cap 2000, 200 over a cap of 100
    python bench/slow_clients.py --slow 1500      # more (the soft open-file limit is raised)

Prints one JSON object. The API runs on an embedded Redis it starts itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import argparse
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import tempfile
import time
from typing import Any

import httpx

from voxq.embedded_redis import RedisServer, free_port

SLOW_HEAD = b"GET /healthz HTTP/1.1\r\nHost: api\r\n"


def start_api(redis_url: str, log: Path, **env: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    e = {k: v for k, v in os.environ.items() if not k.startswith("VOXQ_")}
    e.update(REDIS_URL=redis_url, **env)
    proc = subprocess.Popen([sys.executable, "-m", "voxq", "api", "--port", str(port)], env=e,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while b"listening on" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"voxq api did not start:\n{log.read_text()}")
        time.sleep(0.1)
    return proc, port


def latencies(port: int, n: int) -> dict[str, float]:
    out = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30.0) as c:
        for _ in range(n):
            t0 = time.perf_counter()
            ok = c.get("/healthz", headers={"connection": "close"}).status_code == 200
            out.append((time.perf_counter() - t0) * 1000 if ok else float("inf"))
    out.sort()
    return {"n": n, "p50_ms": round(statistics.median(out), 2),
            "p95_ms": round(out[int(0.95 * (n - 1))], 2), "max_ms": round(out[-1], 2)}


def open_slow(port: int, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(SLOW_HEAD)
        socks.append(s)
    return socks


def seconds_until_closed(socks: list[socket.socket], limit: float) -> float | None:
    t0 = time.monotonic()
    pending = list(socks)
    for s in pending:
        s.settimeout(0.01)
    while pending and time.monotonic() - t0 < limit:
        still = []
        for s in pending:
            try:
                if s.recv(4096):
                    still.append(s)  # the 408 answer; EOF follows
            except TimeoutError:
                still.append(s)
            except ConnectionResetError:
                pass
        pending = still
    return None if pending else round(time.monotonic() - t0, 2)


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def run(slow: int, over_cap: int, cap: int, header_timeout: float) -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = slow + over_cap + 512
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, need), hard))
    out: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}
    with RedisServer() as redis, tempfile.TemporaryDirectory() as tmp:
        proc, port = start_api(redis.url, Path(tmp) / "a.log",
                               VOXQ_API_HEADER_TIMEOUT_SECONDS=str(header_timeout))
        try:
            out["baseline_healthz"] = latencies(port, 50)
            t0 = time.monotonic()
            socks = open_slow(port, slow)
            opened = round(time.monotonic() - t0, 2)
            time.sleep(0.5)  # let the server accept the last ones
            out["slow_sockets"] = {"n": slow, "open_seconds": opened,
                                   "server_fds": fds(proc.pid),
                                   "healthz_meanwhile": latencies(port, 50)}
            out["slow_sockets"]["closed_after_seconds"] = seconds_until_closed(
                socks, header_timeout + 60)
            out["slow_sockets"]["header_timeout_seconds"] = header_timeout
            for s in socks:
                s.close()
        finally:
            proc.terminate()
            proc.wait(15)
        proc, port = start_api(redis.url, Path(tmp) / "b.log", VOXQ_API_MAX_CONNECTIONS=str(cap),
                               VOXQ_API_HEADER_TIMEOUT_SECONDS="300")
        try:
            socks = open_slow(port, cap + over_cap)
            samples = []
            for _ in range(30):  # 3 s: the burst of accepts, then eviction settles it
                samples.append(fds(proc.pid))
                time.sleep(0.1)
            out["over_cap"] = {"cap": cap, "slow_sockets": cap + over_cap,
                               "server_fds_peak": max(samples), "server_fds_settled": samples[-1],
                               "healthz_meanwhile": latencies(port, 50)}
            for s in socks:
                s.close()
        finally:
            proc.terminate()
            proc.wait(15)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slow", type=int, default=500)
    p.add_argument("--over-cap", type=int, default=200)
    p.add_argument("--cap", type=int, default=100)
    p.add_argument("--header-timeout", type=float, default=5.0)
    a = p.parse_args()
    print(json.dumps(run(a.slow, a.over_cap, a.cap, a.header_timeout), indent=2))


if __name__ == "__main__":
    main()
