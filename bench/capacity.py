"""Capacity benchmark: live 16 kHz sessions per worker core at real time, voxq's worker
against the naive one-task-one-XREAD-one-connection-per-session design, in the same run.

Processes: its own redis-server, a voxq-ws sink (bench/capacity_sink.py) that timestamps
every chunk it receives and answers a final now and then, load producers
(bench/capacity_load.py) publishing N sessions at real-time pace in 100 ms chunks, and one
worker process pinned to one core; everything else is pinned to the other core(s). The
ramp raises N step by step; for each N it reports relay latency (producer XADD → sink
receipt, one clock) p50/p99/max, worker CPU %, RSS and RSS per session, Redis ops/s, and
whether the backlog (chunks acknowledged by Redis but not yet at the sink) grew.

Figures: ``capacity`` — the largest N holding p99 ≤ 50 ms without backlog growth for the
whole window; ``cpu_per_session_second`` — worker core-seconds per session-second at the
highest N sustained (its inverse is sessions per core). On a 2-core machine the harness may
saturate first; the report says so, and the CPU cost per session is then the figure that
holds. Also: worker RSS per idle session, Redis bytes per audio minute, and end-to-end
latency from XADD to the result on the API's SSE stream (``voxq api``).

Other processes on the machine (other people's test runs) disturb latency: before each
window the harness waits for a quiet machine, reports how long the worker waited for its
core (schedstat) and how much CPU went to processes outside the benchmark, and measures a
failed window again when that noise explains the failure (every attempt is reported).

    python bench/capacity.py             # full ramp, 60 s windows (20-40 minutes)
    python bench/capacity.py --quick     # short windows, a few steps (< 2 minutes)
"""

from __future__ import annotations

import sys
from pathlib import Path

if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import IO, Any
from urllib.parse import urlsplit

import numpy as np
import redis

from voxq.embedded_redis import RedisServer, free_port
from voxq.keys import Keys
from voxq.records import SessionMeta
from voxq.redis_conn import connect
from voxq.sessions import create_session

BENCH = Path(__file__).resolve().parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
P99_TARGET_MS = 50.0
NOISE_WAIT_PCT = 3.0  # worker runnable but waiting for its core, % of the window
NOISE_OTHER_PCT = 25.0  # CPU used outside the benchmark, % of one core
HARNESS_BUSY_LIMIT = 0.85  # harness cores busier than this: queueing there, not the worker
NOISE_QUIET = 0.15  # before a window: wait until others use less than this share of a core
E2E_TARGET_MS = 20.0
RATE, CHUNK_MS = 16000, 100
PCM_BYTES_PER_MINUTE = RATE * 2 * 60


# --- process plumbing ---------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc/PID/stat."""
    try:
        rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def run_delay(pid: int) -> float:
    """Seconds the process's main thread spent runnable but waiting for a CPU (schedstat):
    time other processes took from the worker's core."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def rss_kib(pid: int) -> int:
    """Resident set size of a process, KiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def core_busy(cpus: set[int] | None) -> float:
    """Busy seconds of these cores so far (all processes), from /proc/stat."""
    total = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *vals = line.split()
        if name.startswith("cpu") and name != "cpu" and (cpus is None or int(name[3:]) in cpus):
            v = [int(x) for x in vals]
            total += v[0] + v[1] + v[2] + v[5] + v[6] + v[7]  # user nice system irq softirq steal
    return total / CLK_TCK


def cpu_sets() -> tuple[set[int] | None, set[int] | None]:
    """(worker cpus, harness cpus): one core for the worker, the others for the harness."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return {cpus[0]}, set(cpus[1:])


def pin(pid: int, cpus: set[int] | None) -> None:
    """Pin a process to cpus (no-op without a set)."""
    if cpus:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, cpus)


class Child:
    """A bench child process driven by JSON lines on its stdin/stdout."""

    def __init__(self, args: list[str], log: IO[bytes], env: dict[str, str] | None = None):
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=log, env=env, text=True, bufsize=1)
        self.hello = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.proc.args!r} exited ({self.proc.poll()})")
        out: dict[str, Any] = json.loads(line)
        return out

    def send(self, **cmd: Any) -> None:
        """Send a command without waiting for its answer."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def ask(self, **cmd: Any) -> dict[str, Any]:
        """Send a command and wait for its answer."""
        self.send(**cmd)
        return self._read()

    def reply(self) -> dict[str, Any]:
        """The answer to a command sent earlier."""
        return self._read()

    def close(self) -> None:
        """Ask it to quit; kill it if it does not."""
        with contextlib.suppress(Exception):
            self.send(cmd="quit")
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def redis_cpu(info: dict[str, Any]) -> float:
    """CPU seconds from INFO (all sections)."""
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def top_commands(stats: dict[str, Any], n: int) -> dict[str, Any]:
    """The commands that used the most Redis CPU since the server started (the whole ramp
    so far): calls and µs per call."""
    rows = sorted(((k.removeprefix("cmdstat_"), v) for k, v in stats.items()),
                  key=lambda kv: -kv[1]["usec"])[:n]
    return {k: {"calls": v["calls"], "usec_per_call": v["usec_per_call"]} for k, v in rows}


# --- one design's run ---------------------------------------------------------------------

@dataclass
class Config:
    """What a run does."""

    steps: list[int]
    window_s: float
    warmup_s: float
    producers: int
    final_every: int
    idle_sessions: int
    e2e_sessions: int
    e2e_window_s: float
    naive_uvloop: bool
    attempts: int = 3
    quiet_wait_s: float = 60.0
    worker_env: dict[str, str] = field(default_factory=dict)
    worker_script: str | None = None
    trace: str | None = None
    connect_timeout_s: float = 120.0


@dataclass
class Rig:
    """Redis, sink and producers of one run, on the harness cores."""

    redis: RedisServer
    sink: Child
    producers: list[Child]
    logdir: Path
    harness: set[int] | None
    prefix: str
    sessions: int = 0
    extra: list[Child] = field(default_factory=list)

    @property
    def ws_url(self) -> str:
        """The sink's voxq-ws URL."""
        return f"ws://127.0.0.1:{self.sink.hello['port']}/v1/listen"

    def pids(self) -> list[int]:
        """Processes of the harness (for its CPU use)."""
        assert self.redis.proc is not None
        return [self.redis.proc.pid, self.sink.proc.pid, *(p.proc.pid for p in self.producers)]

    def add(self, n: int) -> None:
        """Grow to ``n`` sessions, spread over the producers."""
        sids = [f"c{i:05d}" for i in range(self.sessions, n)]
        for k, p in enumerate(self.producers):
            p.send(cmd="add", sids=sids[k::len(self.producers)])
        for p in self.producers:
            p.reply()
        self.sessions = n

    def acked(self, reset: bool = False) -> tuple[int, list[dict[str, Any]]]:
        """Chunks Redis acknowledged over all producers, and their stats."""
        stats = [p.ask(cmd="stats", reset=reset) for p in self.producers]
        return sum(s["acked"] for s in stats), stats

    def close(self) -> None:
        """Stop everything this rig started."""
        for c in [*self.extra, *self.producers, self.sink]:
            c.close()
        self.redis.close()


def start_rig(cfg: Config, logdir: Path, harness: set[int] | None, prefix: str,
              final_every: int) -> Rig:
    """Redis, the sink and the producers, pinned to the harness cores."""
    server = RedisServer().start()
    assert server.proc is not None
    pin(server.proc.pid, harness)
    log = (logdir / f"{prefix}-rig.log").open("ab")
    sink = Child([sys.executable, str(BENCH / "capacity_sink.py"), "--port", str(free_port()),
                  "--final-every", str(final_every)], log)
    pin(sink.proc.pid, harness)
    producers = []
    for _ in range(cfg.producers):
        p = Child([sys.executable, str(BENCH / "capacity_load.py"), "--redis-url", server.url,
                   "--prefix", prefix], log)
        pin(p.proc.pid, harness)
        producers.append(p)
    return Rig(server, sink, producers, logdir, harness, prefix)


def start_worker(design: str, rig: Rig, cpus: set[int] | None, cfg: Config,
                 name: str) -> subprocess.Popen[bytes]:
    """The worker under test, pinned to its core."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOXQ_", "REDIS_"))}
    env.update({"REDIS_URL": rig.redis.url, "VOXQ_PREFIX": rig.prefix, "VOXQ_WS_URL": rig.ws_url,
                "VOXQ_LOG_LEVEL": "WARNING", "VOXQ_MAX_SESSIONS": "20000",
                "PYTHONUNBUFFERED": "1", **cfg.worker_env})
    if design == "voxq":
        args = [sys.executable, "-m", "voxq", "worker", "--name", name]
        if cfg.worker_script:  # profiling: a wrapper that runs the same worker
            args = [sys.executable, cfg.worker_script, name]
    else:
        args = [sys.executable, str(BENCH / "naive_worker.py"), "--redis-url", rig.redis.url,
                "--ws-url", rig.ws_url, "--prefix", rig.prefix]
        if cfg.naive_uvloop:
            args.append("--uvloop")
    log = (rig.logdir / f"{name}.log").open("ab")
    proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
    pin(proc.pid, cpus)
    return proc


def wait_live(rig: Rig, n: int, timeout: float) -> bool:
    """Wait until the sink holds ``n`` live sessions."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if rig.sink.ask(cmd="stats")["live"] >= n:
            return True
        time.sleep(0.25)
    return False


def noisy(m: dict[str, Any]) -> bool:
    """True if processes outside the benchmark took enough CPU to explain a failure."""
    return bool(m.get("worker_runqueue_wait_pct", 0) > NOISE_WAIT_PCT
                or m.get("other_cpu_pct", 0) > NOISE_OTHER_PCT)


def measure_step(rig: Rig, worker: subprocess.Popen[bytes], n: int, cfg: Config,
                 rss_base: int) -> dict[str, Any]:
    """One ramp step at ``n`` sessions: warm up, then measurement windows. A window that
    fails while other processes took the worker's core (or much of the machine) is measured
    again, up to ``cfg.attempts`` windows; every attempt is reported."""
    t_add = time.monotonic()
    rig.add(n)
    connected = wait_live(rig, n, cfg.connect_timeout_s)
    ramp_s = time.monotonic() - t_add
    if not connected:
        return {"sessions": n, "ok": False, "why": f"not all {n} sessions reached the sink",
                "live": rig.sink.ask(cmd="stats")["live"]}
    time.sleep(cfg.warmup_s)
    attempts = []
    for _ in range(cfg.attempts):
        m = measure_window(rig, worker, n, cfg, rss_base)
        attempts.append(m)
        if m["ok"] or not noisy(m):
            break
    step = next((m for m in attempts if m["ok"]), attempts[-1])
    step["ramp_s"] = round(ramp_s, 1)
    step["attempts"] = [{k: m[k] for k in ("ok", "worker_cpu_pct", "worker_runqueue_wait_pct",
                                           "other_cpu_pct")} | {"p99_ms": m["latency_ms"]["p99"]}
                        for m in attempts]
    step["noisy"] = noisy(step)
    return step


def others_cpu(pids: list[int], seconds: float) -> float:
    """CPU (cores) used over ``seconds`` by processes that are not in ``pids``."""
    busy0, ours0 = core_busy(None), sum(cpu_seconds(p) for p in pids)
    time.sleep(seconds)
    return max(0.0, core_busy(None) - busy0 - (sum(cpu_seconds(p) for p in pids) - ours0)) \
        / seconds


def wait_quiet(pids: list[int], limit_s: float) -> float:
    """Wait (at most ``limit_s``) until other processes use under NOISE_QUIET of a core; the
    seconds waited. Other engineers' test runs share the machine."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s and others_cpu(pids, 1.0) > NOISE_QUIET:
        pass
    return round(time.monotonic() - t0, 1)


def measure_window(rig: Rig, worker: subprocess.Popen[bytes], n: int, cfg: Config,
                   rss_base: int) -> dict[str, Any]:
    """One measurement window at ``n`` sessions (after waiting for a quiet machine)."""
    waited = wait_quiet([*rig.pids(), worker.pid, os.getpid()], cfg.quiet_wait_s)
    r = redis.Redis.from_url(rig.redis.url)
    pids = rig.pids()
    rig.sink.ask(cmd="stats", reset=True)
    if cfg.trace:
        rig.sink.ask(cmd="trace", on=True)
    acked0, _ = rig.acked(reset=True)
    sink0 = rig.sink.ask(cmd="stats")
    info0 = r.info()
    harness0 = sum(cpu_seconds(p) for p in pids)
    busy0 = core_busy(None)
    hbusy0 = core_busy(rig.harness)
    cpu0, t0 = cpu_seconds(worker.pid), time.monotonic()
    delay0 = run_delay(worker.pid)
    backlog: list[tuple[float, int]] = [(0.0, acked0 - sink0["frames"])]
    rss: list[int] = []
    while time.monotonic() - t0 < cfg.window_s:
        time.sleep(1.0)
        acked, _ = rig.acked()
        backlog.append((time.monotonic() - t0, acked - rig.sink.ask(cmd="stats")["frames"]))
        rss.append(rss_kib(worker.pid))
    cpu1, t1 = cpu_seconds(worker.pid), time.monotonic()
    delay1 = run_delay(worker.pid)
    harness1 = sum(cpu_seconds(p) for p in pids)
    busy1 = core_busy(None)
    hbusy1 = core_busy(rig.harness)
    info1 = r.info()
    cmdstats = r.info("commandstats")
    if cfg.trace:
        rig.sink.ask(cmd="trace", on=False, path=f"{cfg.trace}-{rig.prefix}-{n}.npy")
    sink = rig.sink.ask(cmd="stats", reset=True)
    _, pstats = rig.acked(reset=True)
    r.close()
    wall = t1 - t0
    xs = np.array([b[0] for b in backlog])
    ys = np.array([b[1] for b in backlog], dtype=float)
    slope = float(np.polyfit(xs, ys, 1)[0]) if len(xs) > 2 else 0.0
    growth = slope * wall
    grew = growth > 0.1 * n  # the average session fell behind by 10 ms more over the window
    worker_cpu = (cpu1 - cpu0) / wall
    harness_cpu = (harness1 - harness0) / wall
    late_p99 = max(p["late_p99_ms"] for p in pstats)
    errors = sum(p["errors"] for p in pstats)
    harness_cores = len(rig.harness) if rig.harness else os.cpu_count() or 1
    # the harness cores themselves (Redis, sink, producers, and whatever else runs there)
    harness_busy = (hbusy1 - hbusy0) / wall / harness_cores
    saturated = harness_busy > HARNESS_BUSY_LIMIT or late_p99 > 10.0
    p99 = sink.get("p99_ms", float("inf"))
    rss_now = int(statistics.median(rss)) if rss else 0
    ok = bool(p99 <= P99_TARGET_MS and not grew and errors == 0)
    return {
        "sessions": n,
        "ok": ok,
        "latency_ms": {k: sink.get(f"{k}_ms") for k in ("p50", "p99", "p999", "max")},
        "chunks_measured": sink["n"],
        "worker_cpu_pct": round(100 * worker_cpu, 1),
        "worker_cpu_s_per_session_s": round(worker_cpu / n, 7),
        "worker_rss_mib": round(rss_now / 1024, 1),
        "worker_rss_kib_per_session": round((rss_now - rss_base) / n, 1),
        "redis_ops_per_s": round((info1["total_commands_processed"]
                                  - info0["total_commands_processed"]) / wall),
        "redis_cpu_pct": round(100 * (redis_cpu(info1) - redis_cpu(info0)) / wall, 1),
        "redis_used_memory_mib": round(info1["used_memory"] / 2**20, 1),
        "redis_top_commands_since_start": top_commands(cmdstats, 4),
        "backlog_chunks": {"start": int(ys[0]), "end": int(ys[-1]), "max": int(ys.max()),
                           "growth": round(growth, 1)},
        "backlog_grew": grew,
        "harness_cpu_pct": round(100 * harness_cpu, 1),
        "harness_cores_busy_pct": round(100 * harness_busy, 1),
        "harness_saturated": saturated,
        "producer_late_p99_ms": late_p99,
        "producer_errors": errors,
        "sink_cpu_pct": round(100 * (sink["cpu_s"] - sink0["cpu_s"]) / wall, 1),
        # noise: the worker waiting for its core, and CPU used outside the benchmark
        "worker_runqueue_wait_pct": round(100 * (delay1 - delay0) / wall, 2),
        "other_cpu_pct": round(100 * max(0.0, (busy1 - busy0) - (cpu1 - cpu0)
                                         - (harness1 - harness0)) / wall, 1),
        "window_s": round(wall, 1),
        "waited_for_quiet_s": waited,
    }


def idle_memory(design: str, cfg: Config, logdir: Path, worker_cpus: set[int] | None,
                harness: set[int] | None) -> dict[str, Any]:
    """Worker RSS per idle session (claimed, vendor socket open, no audio flowing)."""
    rig = start_rig(cfg, logdir, harness, f"idle-{design}", 1000)
    worker = start_worker(design, rig, worker_cpus, cfg, f"idle-{design}")
    keys = Keys(rig.prefix)
    warm = 20

    async def create(lo: int, hi: int) -> None:
        r = connect(rig.redis.url)
        for i in range(lo, hi):
            await create_session(r, keys, SessionMeta(session_id=f"i{i:05d}", vendor="voxq-ws"))
        await r.aclose()

    try:
        asyncio.run(create(0, warm))
        if not wait_live(rig, warm, 60):
            return {"error": "warm-up sessions never connected"}
        time.sleep(2)
        rss0 = rss_kib(worker.pid)
        asyncio.run(create(warm, warm + cfg.idle_sessions))
        if not wait_live(rig, warm + cfg.idle_sessions, cfg.connect_timeout_s):
            return {"error": "idle sessions never all connected"}
        time.sleep(3)
        rss1 = rss_kib(worker.pid)
        return {"sessions": cfg.idle_sessions, "rss_before_mib": round(rss0 / 1024, 1),
                "rss_after_mib": round(rss1 / 1024, 1),
                "rss_kib_per_idle_session": round((rss1 - rss0) / cfg.idle_sessions, 1)}
    finally:
        worker.kill()
        worker.wait()
        rig.close()


def run_design(design: str, cfg: Config, logdir: Path, worker_cpus: set[int] | None,
               harness: set[int] | None) -> dict[str, Any]:
    """The whole ramp for one design; stops at the first step that fails."""
    rig = start_rig(cfg, logdir, harness, f"cap-{design}", cfg.final_every)
    worker = start_worker(design, rig, worker_cpus, cfg, f"cap-{design}")
    steps: list[dict[str, Any]] = []
    try:
        time.sleep(1.5)
        rss_base = rss_kib(worker.pid)
        for n in cfg.steps:
            if worker.poll() is not None:
                steps.append({"sessions": n, "ok": False, "why": "worker exited"})
                break
            step = measure_step(rig, worker, n, cfg, rss_base)
            steps.append(step)
            print(f"[{design}] {json.dumps(step)}", file=sys.stderr, flush=True)
            if not step["ok"]:
                break
        for p in rig.producers:
            p.send(cmd="eos")
        for p in rig.producers:
            p.reply()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if rig.sink.ask(cmd="stats")["finished"] >= rig.sessions:
                break
            time.sleep(0.5)
        finished = rig.sink.ask(cmd="stats")["finished"]
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        rig.close()
    return summarize(steps, finished, rss_base)


def summarize(steps: list[dict[str, Any]], finished: int, rss_base: int) -> dict[str, Any]:
    """Capacity, where the ramp stopped and why, and the CPU cost per live session."""
    passed = [s for s in steps if s["ok"]]
    capacity = max((s["sessions"] for s in passed), default=0)
    last = steps[-1] if steps else {}
    if not steps:
        limited = "none"
    elif last.get("ok"):
        limited = "ramp ended (raise --steps)"
    elif last.get("harness_saturated"):
        limited = "harness (Redis, producers and sink share the other core)"
    else:
        limited = "worker"
    basis = passed[-1] if passed else next(
        (s for s in reversed(steps) if "worker_cpu_s_per_session_s" in s
         and not s["harness_saturated"]), None)
    cost = basis["worker_cpu_s_per_session_s"] if basis else None
    return {
        "capacity_sessions": capacity,
        "limited_by": limited,
        "cpu_per_session_second": cost,
        "cpu_basis_sessions": basis["sessions"] if basis else None,
        "sessions_per_core": round(1 / cost) if cost else None,
        "rss_base_mib": round(rss_base / 1024, 1),
        "sessions_finished_cleanly": finished,
        "steps": steps,
    }


# --- Redis bytes per audio minute -----------------------------------------------------------

def redis_bytes() -> dict[str, Any]:
    """MEMORY USAGE of one untrimmed minute of 16 kHz mono audio as producers write it
    (fields seq and pcm), with Redis's default stream node size and with larger nodes."""
    out: dict[str, Any] = {"raw_pcm_bytes_per_minute": PCM_BYTES_PER_MINUTE}
    with RedisServer() as server:
        r = redis.Redis.from_url(server.url)
        for node_bytes in (4096, 16384):
            r.config_set("stream-node-max-bytes", node_bytes)
            row: dict[str, Any] = {}
            for chunk_ms in (20, 100, 200):
                key = Keys("mem").audio(f"m{chunk_ms}-{node_bytes}")
                size = RATE * chunk_ms // 1000 * 2
                pcm = np.random.default_rng(chunk_ms).integers(-3000, 3000, size // 2,
                                                               dtype="<i2").tobytes()
                with r.pipeline(transaction=False) as p:
                    for seq in range(60_000 // chunk_ms):
                        p.xadd(key, {"seq": str(seq), "pcm": pcm})
                    p.execute()
                used = int(r.memory_usage(key, samples=0) or 0)
                row[f"{chunk_ms}ms_chunks"] = {"bytes_per_minute": used,
                                               "ratio_to_pcm": round(used / PCM_BYTES_PER_MINUTE,
                                                                     3)}
            out[f"stream_node_max_bytes_{node_bytes}"] = row
        r.close()
    out["ratio_to_pcm"] = out["stream_node_max_bytes_4096"]["100ms_chunks"]["ratio_to_pcm"]
    out["target_ratio"] = 1.1
    return out


# --- end to end through the API's SSE stream ------------------------------------------------

# an SSE final: its event id starts with the final stream's entry id (Redis time of the
# worker's XADD, ms), its text carries the chunk stamp and the sink's delay
FINAL_RE = re.compile(rb'id: (\d+)-\d+;[^\n]*\nevent: final\ndata: [^\n]*'
                      rb'"text":"t([0-9.e+-]+) d([0-9.]+)"')


class SseProbe:
    """Follows every session's /events from when the sessions exist (so no stream replays a
    backlog later); while recording, each final whose chunk was stamped after recording
    began gives one sample: SSE receipt - chunk stamp - the sink's own delay."""

    def __init__(self, api: str, sids: list[str]):
        self.url = urlsplit(api)
        self.sids = sids
        self.samples: list[float] = []
        self.worker_part: list[float] = []
        self.since = float("inf")
        self.errors: list[str] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Open every stream, spread over a second (as clients arrive, not in lockstep)."""
        for sid in self.sids:
            self.tasks.append(asyncio.create_task(self._follow(sid)))
            await asyncio.sleep(1.0 / len(self.sids))

    async def _follow(self, sid: str) -> None:
        try:
            reader, writer = await asyncio.open_connection(self.url.hostname, self.url.port)
            writer.write(f"GET /v1/sessions/{sid}/events HTTP/1.1\r\nHost: bench\r\n"
                         "Accept: text/event-stream\r\n\r\n".encode())
            buf = b""
            while True:
                data = await reader.read(65536)
                if not data:
                    self.errors.append(f"{sid}: stream ended")
                    return
                now = time.time()
                buf += data
                last = 0
                for m in FINAL_RE.finditer(buf):
                    stamp = float(m.group(2))
                    if stamp >= self.since:
                        self.samples.append(now - stamp - float(m.group(3)))
                        self.worker_part.append(int(m.group(1)) / 1000 - stamp
                                                - float(m.group(3)))
                    last = m.end()
                buf = buf[last:] if last else buf[-4096:]
        except (OSError, asyncio.IncompleteReadError) as e:
            self.errors.append(f"{sid}: {e!r}")

    def begin(self) -> None:
        """Start a recording window."""
        self.samples = []
        self.worker_part = []
        self.since = time.time()

    def end(self) -> dict[str, Any]:
        """Stop recording; percentiles of the window (ms)."""
        self.since = float("inf")
        a = np.array(self.samples) * 1000
        out: dict[str, Any] = {"finals_seen": int(a.size), "stream_errors": self.errors[:5]}
        if a.size:
            p50, p99 = np.percentile(a, [50, 99])
            w50, w99 = np.percentile(np.array(self.worker_part) * 1000, [50, 99])
            out.update(p50_ms=round(float(p50), 2), p99_ms=round(float(p99), 2),
                       max_ms=round(float(a.max()), 2),
                       # split at the final's XADD (its stream id, ms resolution)
                       to_final_xadd_ms={"p50": round(float(w50), 1), "p99": round(float(w99), 1)})
        return out

    async def stop(self) -> None:
        """Close every stream."""
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def sse_window(rig: Rig, probe: SseProbe, n: int, pids: dict[str, int], cfg: Config
                     ) -> dict[str, Any]:
    """One recording window, with the CPU of every process involved."""
    await asyncio.to_thread(rig.sink.ask, cmd="stats", reset=True)
    cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
    busy0, delay0, t0 = core_busy(None), run_delay(pids["worker"]), time.monotonic()
    probe.begin()
    await asyncio.sleep(cfg.e2e_window_s)
    out = probe.end()
    wall = time.monotonic() - t0
    cpu = {k: (cpu_seconds(p) - cpu0[k]) / wall for k, p in pids.items()}
    relay = await asyncio.to_thread(rig.sink.ask, cmd="stats", reset=True)
    ours = sum(cpu.values())
    out["worker_cpu_pct"] = round(100 * cpu["worker"], 1)
    out["api_cpu_pct"] = round(100 * cpu["api"], 1)
    out["harness_cpu_pct"] = round(100 * (ours - cpu["worker"]), 1)
    out["worker_runqueue_wait_pct"] = round(100 * (run_delay(pids["worker"]) - delay0) / wall, 2)
    out["other_cpu_pct"] = round(100 * max(0.0, core_busy(None) - busy0 - ours * wall) / wall, 1)
    out["relay_p50_ms"] = relay.get("p50_ms")
    out["relay_p99_ms"] = relay.get("p99_ms")
    out["sessions"] = n
    out["finals_per_session_second"] = 1.0
    out["target_p99_ms"] = E2E_TARGET_MS
    out["ok"] = out.get("p99_ms", float("inf")) <= E2E_TARGET_MS
    return out


async def e2e_measure(rig: Rig, api: str, n: int, pids: dict[str, int], cfg: Config
                      ) -> dict[str, Any]:
    """Sessions, their SSE streams at once, warm-up, then windows until one is clean."""
    await asyncio.to_thread(rig.add, n)
    probe = SseProbe(api, [f"c{i:05d}" for i in range(n)])
    await probe.start()
    try:
        if not await asyncio.to_thread(wait_live, rig, n, cfg.connect_timeout_s):
            return {"error": "sessions never all connected"}
        await asyncio.sleep(cfg.warmup_s)
        windows = []
        for _ in range(cfg.attempts):
            waited = await asyncio.to_thread(wait_quiet, list(pids.values()), cfg.quiet_wait_s)
            w = await sse_window(rig, probe, n, pids, cfg)
            w["waited_for_quiet_s"] = waited
            windows.append(w)
            if w["ok"] or not noisy(w):
                break
        result = next((w for w in windows if w["ok"]), windows[-1])
        result["attempts"] = [{k: w.get(k) for k in ("ok", "p99_ms", "worker_runqueue_wait_pct",
                                                      "other_cpu_pct")} for w in windows]
        return result
    finally:
        await probe.stop()


E2E_DESIGNS = ("hub", "per-follower")


def end_to_end(cfg: Config, logdir: Path, worker_cpus: set[int] | None,
               harness: set[int] | None, design: str = "hub") -> dict[str, Any]:
    """XADD → final on the API's SSE stream at ``e2e_sessions`` sessions, one final per
    session-second; the API and the SSE client share the harness cores. ``hub``: ``voxq api``
    (its event hub); ``per-follower``: the design it replaced (bench/per_follower_events.py,
    one blocking XREAD on its own pooled connection per follower), the baseline."""
    n = cfg.e2e_sessions
    load0 = os.getloadavg()[0]
    rig = start_rig(cfg, logdir, harness, f"e2e-{design}", 10)
    worker = start_worker("voxq", rig, worker_cpus, cfg, f"e2e-{design}-worker")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOXQ_", "REDIS_"))}
    env.update({"REDIS_URL": rig.redis.url, "VOXQ_PREFIX": rig.prefix,
                "VOXQ_LOG_LEVEL": "WARNING"})
    port = free_port()
    if design == "hub":
        cmd = [sys.executable, "-m", "voxq", "api", "--port", "0"]
    else:
        # every follower holds one pooled connection: the pool must exceed redis-py's default
        # of 100 for 500 followers
        env["REDIS_URL"] = f"{rig.redis.url}?max_connections={2 * n + 100}"
        cmd = [sys.executable, str(BENCH / "followers.py"), "--serve-baseline", str(port)]
    api = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                           stderr=(logdir / f"e2e-{design}-api.log").open("ab"), text=True)
    pin(api.pid, harness)
    try:
        assert api.stdout is not None
        if design == "hub":
            m = re.search(r"http://[0-9.]+:\d+", api.stdout.readline())
            url = m.group(0) if m else None
        else:
            url = f"http://127.0.0.1:{port}" if wait_port(port, 60) else None
        if url is None:
            return {"design": design, "error": "the API did not start"}
        pids = {"worker": worker.pid, "api": api.pid, "harness": os.getpid(), **{
            f"rig{i}": p for i, p in enumerate(rig.pids())}}
        out = {"design": design, **asyncio.run(e2e_measure(rig, url, n, pids, cfg))}
        out["loadavg"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
        return out
    finally:
        api.terminate()
        worker.terminate()
        for p in (api, worker):
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        rig.close()


def wait_port(port: int, timeout: float) -> bool:
    """Whether something listens on 127.0.0.1:``port`` within ``timeout`` seconds."""
    import socket
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return True
        time.sleep(0.1)
    return False


# --- report -----------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    """Where the figures were measured."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    version = subprocess.run(["redis-server", "--version"], capture_output=True,
                             text=True).stdout
    mods = {}
    for name in ("hiredis", "uvloop", "websockets", "redis"):
        try:
            mods[name] = __import__(name).__version__
        except (ImportError, AttributeError):
            mods[name] = None
    return {"platform": platform.platform(), "cpu": model, "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "redis_server": version.split("v=")[1].split()[0] if "v=" in version else version,
            "modules": mods}


def main() -> None:
    """Parse options, run both designs and the side measurements, print JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short windows, few steps (< 2 min)")
    ap.add_argument("--steps", type=lambda s: [int(x) for x in s.split(",")], default=None,
                    help="session counts of the ramp, comma-separated")
    ap.add_argument("--naive-steps", type=lambda s: [int(x) for x in s.split(",")],
                    default=None, help="ramp of the naive worker (default: the same)")
    ap.add_argument("--window", type=float, default=None, help="seconds measured per step (60)")
    ap.add_argument("--warmup", type=float, default=None, help="seconds before each window")
    ap.add_argument("--producers", type=int, default=1, help="load producer processes")
    ap.add_argument("--final-every", type=int, default=20, help="chunks per sink final (2 s)")
    ap.add_argument("--designs", default="voxq,naive",
                    help="ramps to run: voxq, naive, both (default) or none ('')")
    ap.add_argument("--no-idle", action="store_true", help="skip RSS per idle session")
    ap.add_argument("--no-e2e", action="store_true", help="skip the SSE end-to-end latency")
    ap.add_argument("--e2e-sessions", type=int, default=500)
    ap.add_argument("--e2e-designs", default=",".join(E2E_DESIGNS),
                    help="API designs of the SSE end-to-end probe: hub (voxq api) and the "
                         "per-follower baseline, in the same run")
    ap.add_argument("--e2e-only", action="store_true",
                    help="only the SSE end-to-end probe (no ramps, idle memory, Redis bytes)")
    ap.add_argument("--worker-env", action="append", default=[], metavar="NAME=VALUE",
                    help="extra environment for the worker under test (repeatable)")
    ap.add_argument("--worker-script", default=None,
                    help="profiling: run this script (argument: worker name) instead of "
                         "`python -m voxq worker`")
    ap.add_argument("--trace", default=None, metavar="PREFIX",
                    help="save each window's receipt times and latencies as PREFIX-*.npy")
    ap.add_argument("--naive-uvloop", action="store_true",
                    help="run the naive worker on uvloop too (default: stock asyncio)")
    args = ap.parse_args()
    if args.e2e_only:
        args.designs, args.no_idle, args.no_e2e = "", True, False
    if args.quick:
        steps = args.steps or [250, 1000, 2000]
        cfg = Config(steps=steps, window_s=args.window or 5, warmup_s=args.warmup or 3,
                     producers=args.producers, final_every=args.final_every, idle_sessions=200,
                     e2e_sessions=args.e2e_sessions, e2e_window_s=5,
                     naive_uvloop=args.naive_uvloop, connect_timeout_s=30, attempts=2,
                     quiet_wait_s=5,
                     worker_env=dict(kv.split("=", 1) for kv in args.worker_env),
                     worker_script=args.worker_script, trace=args.trace)
        naive_steps = args.naive_steps or [250, 500]
    else:
        steps = args.steps or [500, 1000, 1500, 2000, 2500, 3000]
        cfg = Config(steps=steps, window_s=args.window or 60, warmup_s=args.warmup or 10,
                     producers=args.producers, final_every=args.final_every,
                     idle_sessions=1000, e2e_sessions=args.e2e_sessions, e2e_window_s=60,
                     naive_uvloop=args.naive_uvloop,
                     worker_env=dict(kv.split("=", 1) for kv in args.worker_env),
                     worker_script=args.worker_script, trace=args.trace)
        naive_steps = args.naive_steps or [200, 300, 400, 500, 600, 800]
    worker_cpus, harness = cpu_sets()
    if harness:
        os.sched_setaffinity(0, harness)
    logdir = Path(tempfile.mkdtemp(prefix="voxq-capacity-"))
    started = time.monotonic()
    out: dict[str, Any] = {"benchmark": "capacity: live 16 kHz sessions per worker core",
                           "machine": machine(),
                           "config": {"quick": args.quick, "window_s": cfg.window_s,
                                      "warmup_s": cfg.warmup_s, "steps": cfg.steps,
                                      "naive_steps": naive_steps, "producers": cfg.producers,
                                      "chunk_ms": CHUNK_MS, "rate": RATE,
                                      "sink_final_every_chunks": cfg.final_every,
                                      "p99_target_ms": P99_TARGET_MS,
                                      "worker_cpus": sorted(worker_cpus or []),
                                      "harness_cpus": sorted(harness or []),
                                      "naive_loop": "uvloop" if cfg.naive_uvloop else "asyncio",
                                      "logs": str(logdir)}}
    designs = [d for d in args.designs.split(",") if d]
    for design in designs:
        dcfg = cfg if design == "voxq" else Config(**{**cfg.__dict__, "steps": naive_steps})
        out[design] = run_design(design, dcfg, logdir, worker_cpus, harness)
        if not args.no_idle:
            out[design]["idle_memory"] = idle_memory(design, cfg, logdir, worker_cpus, harness)
    if "voxq" in out and "naive" in out:
        v, nv = out["voxq"], out["naive"]
        out["ratio"] = {
            "capacity": round(v["capacity_sessions"] / nv["capacity_sessions"], 2)
            if nv["capacity_sessions"] else None,
            "cpu_per_session_second": round(nv["cpu_per_session_second"]
                                            / v["cpu_per_session_second"], 2)
            if v["cpu_per_session_second"] and nv["cpu_per_session_second"] else None,
        }
    if not args.e2e_only:
        out["redis_bytes_per_audio_minute"] = redis_bytes()
    if not args.no_e2e:
        out["e2e_sse"] = {d: end_to_end(cfg, logdir, worker_cpus, harness, d)
                          for d in args.e2e_designs.split(",") if d}
    out["run_seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
