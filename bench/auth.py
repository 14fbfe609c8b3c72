"""Access-control benchmark: latency of one small request (GET /v1/sessions/{id}) on a real
`voxq api` with authentication off (the baseline), with a scoped API key, and with a browser
token, in the same run on the same Redis. With a key or token each request also verifies the
credential (one HGETALL), takes from the key's rate-limit bucket (one Lua call) and checks the
session's tenant (one HMGET).

    python bench/auth.py                  # 2000 requests per mode
    python bench/auth.py --requests 500

Prints one JSON object. The APIs run on an embedded Redis this script starts.
"""

from __future__ import annotations

import sys
from pathlib import Path

if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from typing import Any

import httpx

from voxq.access import KeyStore, Scope
from voxq.embedded_redis import RedisServer, free_port
from voxq.keys import Keys
from voxq.records import SessionMeta
from voxq.redis_conn import connect
from voxq.sessions import create_session


def start_api(redis_url: str, log: Path, **env: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    e = {k: v for k, v in os.environ.items() if not k.startswith("VOXQ_")}
    e.update(REDIS_URL=redis_url, VOXQ_LOG_LEVEL="WARNING", **env)
    proc = subprocess.Popen([sys.executable, "-m", "voxq", "api", "--port", str(port)], env=e,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while b"listening on" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"voxq api did not start:\n{log.read_text()}")
        time.sleep(0.1)
    return proc, f"http://127.0.0.1:{port}"


async def seed(url: str, prefix: str, with_key: bool, tenant: str) -> str | None:
    r = connect(url)
    try:
        keys = Keys(prefix)
        await create_session(r, keys, SessionMeta(session_id="bench-1", tenant=tenant))
        if not with_key:
            return None
        _, secret = await KeyStore(r, keys).create(tenant, {Scope.SESSIONS_READ})
        return secret
    finally:
        await r.aclose()


def stats(samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples)
    return {"mean_ms": round(statistics.fmean(ms), 3), "p50_ms": round(ms[len(ms) // 2], 3),
            "p99_ms": round(ms[int(len(ms) * 0.99) - 1], 3)}


def measure(base: str, headers: dict[str, str], n: int) -> dict[str, float]:
    with httpx.Client(base_url=base, headers=headers) as c:
        for _ in range(50):  # warm up: connection, caches
            assert c.get("/v1/sessions/bench-1").status_code == 200
        samples = []
        for _ in range(n):
            t = time.perf_counter()
            resp = c.get("/v1/sessions/bench-1")
            samples.append(time.perf_counter() - t)
            assert resp.status_code == 200, resp.text
    return stats(samples)


def run(n: int) -> dict[str, Any]:
    with RedisServer() as redis, tempfile.TemporaryDirectory() as tmp:
        secret = asyncio.run(seed(redis.url, "on", True, "acme"))
        asyncio.run(seed(redis.url, "off", False, ""))
        assert secret is not None
        off, off_url = start_api(redis.url, Path(tmp) / "off.log", VOXQ_PREFIX="off")
        on, on_url = start_api(redis.url, Path(tmp) / "on.log", VOXQ_PREFIX="on",
                               VOXQ_TOKEN_SECRET="bench-token-secret",
                               VOXQ_RATE_LIMIT_PER_SECOND="1000000")
        try:
            key = {"Authorization": f"Bearer {secret}"}
            token = httpx.post(f"{on_url}/v1/tokens", headers=key).json()["token"]
            # interleaved rounds, so a slow moment of the machine hits every mode alike
            rounds: dict[str, list[dict[str, float]]] = {"auth_off": [], "key": [], "token": []}
            for _ in range(4):
                rounds["auth_off"].append(measure(off_url, {}, n // 4))
                rounds["key"].append(measure(on_url, key, n // 4))
                rounds["token"].append(measure(on_url, {"Authorization": f"Bearer {token}"},
                                               n // 4))
        finally:
            for p in (off, on):
                p.terminate()
                p.wait(15)
    out: dict[str, Any] = {"requests_per_mode": n // 4 * 4, "route": "GET /v1/sessions/{id}",
                           "python": platform.python_version(), "cpus": os.cpu_count()}
    for mode, parts in rounds.items():
        out[mode] = {k: round(statistics.median(p[k] for p in parts), 3)
                     for k in ("mean_ms", "p50_ms", "p99_ms")}
    base = out["auth_off"]["p50_ms"]
    for mode in ("key", "token"):
        out[mode]["p50_overhead_ms"] = round(out[mode]["p50_ms"] - base, 3)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=2000, help="requests per mode")
    a = p.parse_args()
    print(json.dumps(run(a.requests), indent=2))


if __name__ == "__main__":
    main()
