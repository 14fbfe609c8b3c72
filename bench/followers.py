"""Live followers benchmark: the API's event hub against the per-follower design it replaced
(bench/per_follower_events.py), in the same run, each as its own API process on its own Redis.

(a) latency: N live sessions, one SSE follower each; the harness XADDs a final stamped with
    its send time to every session once per second (all at once, or in ``--slices`` evenly
    spaced slices); p50/p99 of XADD -> the final read on SSE.
(b) fan-out: F followers over S sessions on one API process: /healthz p99 meanwhile, the API
    process's Redis connections (CLIENT LIST), RSS per follower, and whether every follower
    received every final (and how many were refused or failed).
(c) (a) and (b) for both designs.
(d) webhooks: W sessions ending within a window, one deployment URL whose receiver (in the
    harness) fails 20 % of first attempts with 503: deliveries/s and delivery latency from the
    end event to the successful POST (p50/p99; retries wait the first backoff, 5 s).
Floors, in the same run: RSS per idle connection of a bare uvicorn ASGI app and of an idle
FastAPI StreamingResponse, both with voxq api's server configuration.

RSS per follower is counted after a warm-up and depends on how fast followers arrive
(``--connect-rate``): the requests of a burst are in flight at once, and the memory they
used stays with the process. Each scenario reports the load average and the CPU of the API,
the harness and Redis: the harness (one Python process holding every follower socket)
shares the 2 cores with them, so at thousands of followers the latencies include waiting for
a core.

    python bench/followers.py --quick     # small N, short windows (~2 minutes)
    python bench/followers.py             # the issue's sizes: 500 sessions, 5,000 followers
"""

from __future__ import annotations

import sys
from pathlib import Path

if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import argparse
import asyncio
import base64
import hashlib
import json
import os
import re
import resource
import select
import signal
import subprocess
import tempfile
import time
from typing import Any

from voxq.embedded_redis import RedisServer, free_port
from voxq.keys import Keys
from voxq.lifecycle import announce
from voxq.records import SessionMeta, Status
from voxq.redis_conn import connect
from voxq.sessions import create_session

HARNESS = "followers-bench"
STAMP = re.compile(rb'"text":"t(\d+)"')
PREFIX = "bench"


def pct(xs: list[float], q: float) -> float | None:
    """The q-quantile of xs (nearest rank), rounded; None when empty."""
    if not xs:
        return None
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(q * len(s)))], 2)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


# --- the baseline API (the per-follower design) ----------------------------------------------

def serve_baseline(port: int) -> None:
    """The API of before the hub: its /events route on one client with redis-py's default
    pool, plus the health routes."""
    import importlib.util
    from contextlib import asynccontextmanager

    import uvicorn
    from fastapi import FastAPI

    from api import errors, routes_health, routes_sessions
    from api.state import ApiOptions, ApiState
    spec = importlib.util.spec_from_file_location(
        "per_follower_events", Path(__file__).with_name("per_follower_events.py"))
    assert spec is not None and spec.loader is not None
    per_follower_events = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(per_follower_events)
    from voxq.settings import get_settings

    settings = get_settings()
    url = settings.redis_url or ""
    state = ApiState(settings=settings, keys=Keys(settings.prefix), redis_url=url,
                     options=ApiOptions(max_streams=1000))  # the old default

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        state.redis = connect(url)
        yield
        await state.redis.aclose()

    app = FastAPI(lifespan=lifespan)
    app.state.api = state
    errors.install(app)
    app.include_router(routes_health.router)
    app.include_router(per_follower_events.router, prefix="/v1")
    app.include_router(routes_sessions.router, prefix="/v1")
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


WARM = 100  # followers opened before RSS is first read (first-request allocations)
STEP = 20  # followers opened per 50 ms (--connect-rate sets it)
SLICES = 1  # each second's finals are written in this many evenly spaced slices (--slices)


async def open_followers(port: int, sids: list[str], n: int, pid: int,
                         followers: list[Follower]) -> tuple[int, float]:
    """Open ``n`` followers over ``sids`` into ``followers`` (in batches, as clients arrive); how
    many were answered 200, and the API's RSS per follower in KiB, counted from after the
    first WARM (so the first requests' one-off allocations are not spread over followers)."""
    readies: list[asyncio.Event] = []

    async def batch(ks: range) -> None:
        for k in ks:
            f = Follower()
            ev = asyncio.Event()
            readies.append(ev)
            f.task = asyncio.create_task(f.run(port, sids[k % len(sids)], ev))
            followers.append(f)
            if k % STEP == STEP - 1:
                await asyncio.sleep(0.05)
        async with asyncio.timeout(180):
            while not all(ev.is_set() or (f.task and f.task.done())  # noqa: ASYNC110
                          for ev, f in zip(readies, followers, strict=True)):
                await asyncio.sleep(0.2)

    warm = min(WARM, n // 10)
    await batch(range(warm))
    await asyncio.sleep(0.5)
    rss0 = rss_kib(pid)
    warm_ok = sum(1 for ev in readies if ev.is_set())
    await batch(range(warm, n))
    await asyncio.sleep(1.0)
    connected = sum(1 for ev in readies if ev.is_set())
    per = (rss_kib(pid) - rss0) / max(1, connected - warm_ok)
    return connected, round(per, 2)


def serve_floor(kind: str, port: int) -> None:
    """A server with voxq api's uvicorn configuration whose every request is an idle stream:
    ``bare`` a raw ASGI app that sends the head and one comment, then waits for the client to
    leave (what a connection costs in uvicorn alone); ``streaming`` the same through FastAPI and
    Starlette's StreamingResponse over an idle generator (what the API cost per follower
    before api.sse.EventStream)."""
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse

    from api.cli import server_config
    from api.connection_guard import ConnectionLimits
    from voxq.settings import get_settings

    head = [(b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache")]

    async def bare(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": head})
        await send({"type": "http.response.body", "body": b": ok\n\n", "more_body": True})
        while (await receive())["type"] != "http.disconnect":
            pass

    app: Any = bare
    if kind == "streaming":
        app = FastAPI()
        forever = asyncio.Event()

        async def idle() -> Any:
            yield ": ok\n\n"
            await forever.wait()

        @app.get("/v1/sessions/{sid}/events")
        async def events(sid: str) -> StreamingResponse:
            return StreamingResponse(idle(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})

    settings = get_settings()
    limits = ConnectionLimits(max_connections=settings.api_max_connections)
    import uvicorn
    config = server_config(app, settings, limits)
    config.host, config.port = "127.0.0.1", port
    uvicorn.Server(config).run()


async def floor_run(kind: str, connections: int, logdir: Path) -> dict[str, Any]:
    """RSS per idle connection of a floor server (see serve_floor)."""
    load0 = os.getloadavg()[0]
    api = Api(f"floor-{kind}", "", logdir, {})
    followers: list[Follower] = []
    try:
        await asyncio.sleep(0.5)
        connected, per = await open_followers(
            api.port, [f"f{k}" for k in range(100)], connections, api.proc.pid, followers)
        return {"kind": kind, "connections": connected,
                "rss_kib_per_connection": per,
                "loadavg": [round(load0, 2), round(os.getloadavg()[0], 2)]}
    finally:
        for f in followers:
            if f.task is not None:
                f.task.cancel()
        await asyncio.gather(*(f.task for f in followers if f.task), return_exceptions=True)
        api.close()


class Api:
    """One API process (hub or baseline) on its own port."""

    def __init__(self, design: str, redis_url: str, logdir: Path, extra: dict[str, str]):
        self.port = free_port()
        env = {**os.environ, "REDIS_URL": redis_url, "VOXQ_PREFIX": PREFIX,
               "VOXQ_API_PORT": str(self.port), "VOXQ_API_MAX_FOLLOWERS": "100000",
               "VOXQ_API_MAX_CONNECTIONS": "15000", "VOXQ_LOG_LEVEL": "WARNING", **extra}
        if design == "hub":
            cmd = [sys.executable, "-m", "voxq", "api"]
        elif design.startswith("floor-"):
            env["REDIS_URL"] = "redis://127.0.0.1:1/0"  # never used
            cmd = [sys.executable, __file__, "--serve-floor", design.removeprefix("floor-"),
                   str(self.port)]
        else:
            cmd = [sys.executable, __file__, "--serve-baseline", str(self.port)]
        self.log = (logdir / f"api-{design}.log").open("ab")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                import socket
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                select.select([], [], [], 0.1)
        raise RuntimeError(f"{design} API did not start")

    def close(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


class Follower:
    """An SSE follower on a raw socket, timing each stamped final."""

    def __init__(self) -> None:
        self.finals = 0
        self.latencies: list[float] = []
        self.error = ""
        self.task: asyncio.Task[None] | None = None

    async def run(self, port: int, sid: str, ready: asyncio.Event | None) -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        except OSError as e:
            self.error = f"connect: {e.errno}"
            return
        try:
            writer.write(f"GET /v1/sessions/{sid}/events HTTP/1.1\r\nHost: b\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                self.error = head.split(b"\r\n", 1)[0].decode()
                return
            if ready is not None:
                ready.set()
            while chunk := await reader.read(65536):
                now = time.time_ns()
                for m in STAMP.finditer(chunk):
                    self.finals += 1
                    self.latencies.append((now - int(m.group(1))) / 1e6)
        except (OSError, asyncio.IncompleteReadError) as e:
            self.error = f"read: {type(e).__name__}"
        finally:
            writer.close()


async def healthz_probe(port: int, stop: asyncio.Event, out: list[float], errors: list[str]
                        ) -> None:
    """GET /healthz every 50 ms on a fresh connection; latency in ms."""
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(10):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
                head = await reader.readuntil(b"\r\n")
                writer.close()
            if b" 200 " not in head:
                errors.append(head.decode().strip())
            out.append((time.perf_counter() - t0) * 1000)
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as e:
            errors.append(type(e).__name__)
        await asyncio.sleep(0.05)


async def api_clients(r: Any) -> int:
    return sum(1 for c in await r.client_list() if c.get("name") != HARNESS)


async def follow_run(design: str, sessions: int, per_session: int, seconds: float,
                     logdir: Path) -> dict[str, Any]:
    """One scenario: S sessions, F = S * per_session followers, one stamped final per session
    per second for ``seconds``."""
    load0 = os.getloadavg()[0]
    server = RedisServer().start()
    api = None
    followers: list[Follower] = []
    try:
        r = connect(server.url, client_name=HARNESS)
        assert server.proc is not None
        keys = Keys(PREFIX)
        sids = [f"s{i:05d}" for i in range(sessions)]
        for i in range(0, sessions, 100):
            await asyncio.gather(*(create_session(r, keys, SessionMeta(session_id=s))
                                   for s in sids[i:i + 100]))
        api = Api(design, server.url, logdir, {})
        rss_start = rss_kib(api.proc.pid)
        connected, per = await open_followers(
            api.port, sids, sessions * per_session, api.proc.pid, followers)
        rss1 = rss_kib(api.proc.pid)
        stop = asyncio.Event()
        health: list[float] = []
        health_errors: list[str] = []
        probe = asyncio.create_task(healthz_probe(api.port, stop, health, health_errors))
        conns = [await api_clients(r)]
        cpu0, t0, h0 = cpu_s(api.proc.pid), time.monotonic(), resource.getrusage(
            resource.RUSAGE_SELF)
        rcpu0 = cpu_s(server.proc.pid)
        rounds = int(seconds)
        for _ in range(rounds):
            tick = time.monotonic()
            for j in range(SLICES):
                async with r.pipeline(transaction=False) as p:
                    for sid in sids[j::SLICES]:
                        p.xadd(keys.final(sid), {"seq": "0", "text": f"t{time.time_ns()}",
                                                 "start": "0", "end": "1", "ch": "0"})
                    await p.execute()
                await asyncio.sleep(max(0.0, (j + 1) / SLICES - (time.monotonic() - tick)))
            conns.append(await api_clients(r))
        await asyncio.sleep(3.0)  # the last finals arrive
        elapsed = time.monotonic() - t0
        api_cpu = (cpu_s(api.proc.pid) - cpu0) / elapsed
        redis_cpu = (cpu_s(server.proc.pid) - rcpu0) / elapsed
        rss2 = rss_kib(api.proc.pid)
        h1 = resource.getrusage(resource.RUSAGE_SELF)
        harness_cpu = (h1.ru_utime + h1.ru_stime - h0.ru_utime - h0.ru_stime) / elapsed
        stop.set()
        await probe
        lat = [x for f in followers for x in f.latencies]
        complete = sum(1 for f in followers if f.finals == rounds)
        errors: dict[str, int] = {}
        for f in followers:
            if f.error:
                errors[f.error] = errors.get(f.error, 0) + 1
        await r.aclose()
        return {
            "design": design, "sessions": sessions, "followers": len(followers),
            "connected": connected, "finals_per_follower": rounds,
            "followers_with_every_final": complete,
            "final_latency_ms": {"p50": pct(lat, 0.5), "p99": pct(lat, 0.99),
                                 "max": pct(lat, 1.0), "n": len(lat)},
            "healthz_ms": {"p50": pct(health, 0.5), "p99": pct(health, 0.99),
                           "n": len(health), "errors": len(health_errors)},
            "redis_connections_max": max(conns),
            "rss_kib_per_follower": per,
            "rss_kib_per_follower_after_finals": round(
                per + (rss2 - rss1) / max(1, connected), 2),
            "rss_mib": {"started": round(rss_start / 1024, 1), "followers_open":
                        round(rss1 / 1024, 1), "after_finals": round(rss2 / 1024, 1)},
            "api_cpu": round(api_cpu, 3), "harness_cpu": round(harness_cpu, 3),
            "redis_cpu": round(redis_cpu, 3),
            "follower_errors": errors,
            "loadavg": [round(load0, 2), round(os.getloadavg()[0], 2)],
        }
    finally:
        for f in followers:
            if f.task is not None:
                f.task.cancel()
        await asyncio.gather(*(f.task for f in followers if f.task), return_exceptions=True)
        if api is not None:
            api.close()
        server.close()


# --- webhooks --------------------------------------------------------------------------------

class Receiver:
    """A webhook receiver in the harness: fails 20 % of first attempts (by message id)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.got: dict[str, float] = {}  # session -> time of the successful POST
        self.first: set[str] = set()
        self.attempts = 0
        self.failed = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                n = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
                body = await reader.readexactly(n)
                mid = re.search(rb"(?i)webhook-id: *(\S+)", head).group(1)  # type: ignore[union-attr]
                self.attempts += 1
                fail = mid not in self.first and int(hashlib.sha256(mid).hexdigest(), 16) % 5 == 0
                self.first.add(mid)
                if fail:
                    self.failed += 1
                    writer.write(b"HTTP/1.1 503 No\r\ncontent-length: 0\r\n\r\n")
                else:
                    sid = json.loads(body)["data"]["session_id"]
                    self.got.setdefault(sid, time.time())
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


async def webhook_run(sessions: int, window: float, logdir: Path) -> dict[str, Any]:
    """W sessions ending evenly within ``window`` seconds, one deployment webhook URL."""
    load0 = os.getloadavg()[0]
    server = RedisServer().start()
    rc = Receiver()
    srv = await asyncio.start_server(rc.handle, "127.0.0.1", rc.port)
    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    api = Api("hub", server.url, logdir, {"VOXQ_WEBHOOK_SECRET": secret,
                                           "VOXQ_WEBHOOK_URLS": f"http://127.0.0.1:{rc.port}/h"})
    try:
        r = connect(server.url, client_name=HARNESS)
        keys = Keys(PREFIX)
        await asyncio.sleep(2.0)  # the delivery loop's consumer group exists
        ended: dict[str, float] = {}
        t0 = time.monotonic()
        for i in range(sessions):
            sid = f"w{i:05d}"
            await create_session(r, keys, SessionMeta(session_id=sid))
            await r.hset(keys.meta(sid), "status", "finished")
            ended[sid] = time.time()
            await announce(r, keys, sid, Status.FINISHED)
            await asyncio.sleep(max(0.0, t0 + window * (i + 1) / sessions - time.monotonic()))
        deadline = time.monotonic() + 120
        while len(rc.got) < sessions and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        done = time.monotonic() - t0
        lat = [(rc.got[s] - ended[s]) * 1000 for s in rc.got]
        await r.aclose()
        return {"sessions": sessions, "window_s": window, "delivered": len(rc.got),
                "attempts": rc.attempts, "failed_first_attempts": rc.failed,
                "deliveries_per_s": round(len(rc.got) / done, 1),
                "delivery_ms": {"p50": pct(lat, 0.5), "p99": pct(lat, 0.99),
                                "max": pct(lat, 1.0)},
                "note": "failed first attempts wait the first backoff (5 s +- 25 %)",
                "loadavg": [round(load0, 2), round(os.getloadavg()[0], 2)]}
    finally:
        srv.close()
        api.close()
        server.close()


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    logdir = Path(tempfile.mkdtemp(prefix="voxq-followers-"))
    out: dict[str, Any] = {"quick": args.quick, "cpus": os.cpu_count(),
                           "followers_opened_per_s": STEP * 20, "final_slices_per_s": SLICES,
                           "loadavg_at_start": os.getloadavg()[0], "logs": str(logdir),
                           "latency": {}, "fanout": {}}
    if not args.no_floors:
        out["floor"] = {kind: await floor_run(kind, args.fan_sessions * args.per_session,
                                              logdir) for kind in ("bare", "streaming")}
    for design in args.designs.split(","):
        out["latency"][design] = await follow_run(design, args.sessions, 1, args.seconds,
                                                  logdir)
        out["fanout"][design] = await follow_run(design, args.fan_sessions,
                                                 args.per_session, args.seconds, logdir)
    if not args.no_webhooks:
        out["webhooks"] = await webhook_run(args.webhook_sessions, args.webhook_window, logdir)
    out["loadavg_at_end"] = os.getloadavg()[0]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--serve-baseline", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--serve-floor", nargs=2, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--connect-rate", type=int, default=400,
                    help="followers opened per second (a reconnect storm: 4000; RSS per "
                         "follower grows with it, the burst's requests being in flight at once)")
    ap.add_argument("--slices", type=int, default=1,
                    help="write each second's finals in this many evenly spaced slices (1: "
                         "every session's final at the same instant, the worst case; 20: "
                         "spread like sessions that end their phrases independently)")
    ap.add_argument("--no-floors", action="store_true",
                    help="skip the per-connection floors (bare uvicorn, idle StreamingResponse)")
    ap.add_argument("--quick", action="store_true", help="small sizes, short windows")
    ap.add_argument("--designs", default="hub,per-follower")
    ap.add_argument("--sessions", type=int, default=None, help="(a) live sessions (500)")
    ap.add_argument("--fan-sessions", type=int, default=None, help="(b) sessions (500)")
    ap.add_argument("--per-session", type=int, default=None, help="(b) followers each (10)")
    ap.add_argument("--seconds", type=float, default=None, help="finals per follower (20)")
    ap.add_argument("--webhook-sessions", type=int, default=None, help="(d) sessions (1000)")
    ap.add_argument("--webhook-window", type=float, default=None, help="(d) seconds (60)")
    ap.add_argument("--no-webhooks", action="store_true")
    args = ap.parse_args()
    if args.serve_baseline is not None:
        serve_baseline(args.serve_baseline)
        return
    if args.serve_floor is not None:
        serve_floor(args.serve_floor[0], int(args.serve_floor[1]))
        return
    quick = {"sessions": 100, "fan_sessions": 100, "per_session": 5, "seconds": 8,
             "webhook_sessions": 100, "webhook_window": 10}
    full = {"sessions": 500, "fan_sessions": 500, "per_session": 10, "seconds": 20,
            "webhook_sessions": 1000, "webhook_window": 60}
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    global STEP, SLICES
    STEP = max(1, args.connect_rate // 20)
    SLICES = max(1, args.slices)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(json.dumps(asyncio.run(main_async(args)), indent=2))


if __name__ == "__main__":
    main()
