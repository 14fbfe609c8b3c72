"""Chaos benchmark: N concurrent real-time sessions through real worker processes while
workers are SIGKILLed, vendor sockets drop, Redis restarts and the primary vendor has an
outage; then every transcript is checked word by word against the watermark it was made from.

Sessions run on ``deepgram`` (a watermark emulator speaking Deepgram's protocol) with
``voxq-ws`` (a second watermark emulator) as their fallback. During a vendor outage the
primary cuts every open connection and refuses new ones with 503: sessions switch to the
fallback and replay from their checkpoint, the fleet-wide breaker opens, and after the outage
its probe finds the primary back.

Prints one JSON document: sessions complete and exact, audio seconds lost (must be 0),
duplicated words (must be 0), takeover time p50/p99, vendor switch time p50/p99 (outage start
to the switch on the session's status stream), peak RSS per worker, faults injected.
Baseline in the same run: the same sessions with no faults (``fault_free``), so recovery
cost shows as the difference in completion time.

    python bench/chaos.py            # 50 sessions, 3 minutes of audio each
    python bench/chaos.py --quick    # a few sessions, one fault of each kind, < 3 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from producer.publisher import Publisher  # noqa: E402
from tests.emulators.watermark import WatermarkEmulator, watermark_pcm  # noqa: E402
from voxq.embedded_redis import RedisServer  # noqa: E402
from voxq.keys import Keys  # noqa: E402
from voxq.lifecycle import decode_vendor_switch  # noqa: E402
from voxq.redis_conn import connect  # noqa: E402
from voxq.sessions import get_meta, read_finals  # noqa: E402
from voxq.settings import Settings  # noqa: E402

CHUNK_S = 0.1


def rss_kib(pid: int) -> int:
    """Current resident set size of a process, KiB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Fleet:
    """Worker processes that can be killed and replaced."""

    def __init__(self, env: dict[str, str], logdir: Path, n: int):
        self.env, self.logdir = env, logdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.peak_kib: dict[str, int] = {}
        self.serial = 0
        for _ in range(n):
            self.spawn()

    def spawn(self) -> str:
        name = f"chaos-w{self.serial}"
        self.serial += 1
        log = (self.logdir / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "voxq", "worker", "--name", name], env=self.env,
            stdout=log, stderr=subprocess.STDOUT)
        return name

    def sample_memory(self) -> None:
        for name, p in self.procs.items():
            self.peak_kib[name] = max(self.peak_kib.get(name, 0), rss_kib(p.pid))

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait()
        del self.procs[name]

    def stop(self) -> None:
        for p in self.procs.values():
            p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


async def publish_session(url: str, settings: Settings, sid: str, n_chunks: int,
                          acked: dict[str, int]) -> None:
    """Publish one watermark session at real time through the Publisher library."""
    pub = Publisher(url, settings=settings, retry_timeout=120)
    await pub.open(sid, vendor="deepgram", fallback="voxq-ws")
    t0 = time.monotonic()
    for i in range(n_chunks):
        await pub.send(watermark_pcm(1, start=i))
        ahead = (i + 1) * CHUNK_S - (time.monotonic() - t0)
        if ahead > 0:
            await asyncio.sleep(ahead)
    await pub.close()
    acked[sid] = pub.stats.chunks  # audio chunks Redis acknowledged (eos not counted)


async def run(args: argparse.Namespace, faults: bool) -> dict[str, Any]:
    """One run; returns its figures."""
    tmp = Path(tempfile.mkdtemp(prefix="voxq-chaos-"))
    redis = RedisServer(appendonly=True).start()
    emu = WatermarkEmulator(idle_timeout=30).start()
    primary = WatermarkEmulator(idle_timeout=30, dialect="deepgram", key="chaos-key").start()
    rng = random.Random(args.seed)
    if faults:  # a share of vendor connections drop at a random point
        for e in (emu, primary):
            e.faults.drop_after_frames = (
                lambda n: rng.randint(20, 400) if rng.random() < args.drop_rate else None)
    prefix = "chaos"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("VOXQ_")},
           "REDIS_URL": redis.url, "VOXQ_PREFIX": prefix, "VOXQ_WS_URL": emu.url,
           "VOXQ_DEEPGRAM_URL": primary.url, "DEEPGRAM_API_KEY": "chaos-key",
           "VOXQ_BREAKER_THRESHOLD": str(args.breaker_threshold),
           "VOXQ_BREAKER_PROBE_SECONDS": str(args.probe_seconds),
           "VOXQ_LOG_LEVEL": "WARNING"}
    settings = Settings(redis_url=redis.url, prefix=prefix)
    keys = Keys(prefix)
    fleet = Fleet(env, tmp, args.workers)
    r = connect(redis.url)
    n_chunks = int(args.seconds / CHUNK_S)
    acked: dict[str, int] = {}
    takeovers: list[float] = []
    outages: list[float] = []  # wall-clock start of each vendor outage
    injected: Counter[str] = Counter()
    t_start = time.monotonic()
    sids = [f"s{i:04d}" for i in range(args.sessions)]
    producers = []
    for sid in sids:
        producers.append(asyncio.create_task(
            publish_session(redis.url, settings, sid, n_chunks, acked)))
        await asyncio.sleep(args.stagger / max(1, args.sessions))

    async def owners() -> dict[str, str]:
        out = {}
        for sid in sids:
            try:
                out[sid] = (await get_meta(r, keys, sid)).owner
            except Exception:  # Redis restarting: skip this sample
                pass
        return out

    async def measure_takeover(victim: str, theirs: list[str], t_kill: float) -> None:
        pending = set(theirs)
        while pending and time.monotonic() - t_kill < 60:
            now_owners = await owners()
            for sid in list(pending):
                if now_owners.get(sid) not in (None, victim):
                    takeovers.append(time.monotonic() - t_kill)
                    pending.discard(sid)
            await asyncio.sleep(0.05)

    async def chaos() -> None:
        plan = (["kill"] * args.kills + ["redis"] * args.redis_restarts
                + ["outage"] * args.vendor_outages)
        rng.shuffle(plan)
        gap = args.seconds / (len(plan) + 1)
        measurers = []
        for what in plan:
            await asyncio.sleep(gap * rng.uniform(0.6, 1.2))
            if what == "kill":
                owned = await owners()
                busy = sorted({o for o in owned.values() if o in fleet.procs})
                victim = rng.choice(busy or sorted(fleet.procs))
                theirs = [s for s, o in owned.items() if o == victim]
                fleet.kill(victim)
                t_kill = time.monotonic()
                fleet.spawn()
                injected["worker_sigkill"] += 1
                measurers.append(asyncio.create_task(measure_takeover(victim, theirs, t_kill)))
            elif what == "outage":
                outages.append(time.time())
                primary.down = True
                injected["vendor_outage"] += 1
                measurers.append(asyncio.create_task(end_outage()))
            else:
                await asyncio.to_thread(redis.restart, 1.0)
                injected["redis_restart"] += 1
        await asyncio.gather(*measurers)

    async def end_outage() -> None:
        await asyncio.sleep(args.outage_seconds)
        primary.down = False

    async def sampler() -> None:
        while True:
            fleet.sample_memory()
            await asyncio.sleep(0.5)

    sampling = asyncio.create_task(sampler())
    chaos_task = asyncio.create_task(chaos()) if faults else None
    await asyncio.gather(*producers)
    if chaos_task:
        await chaos_task
    late: list[str] = []
    if faults and outages and args.late_sessions:
        # after the outage: once the probe interval has passed, new sessions probe the primary,
        # the first final closes its breaker, and the rest run on it again
        await asyncio.sleep(args.probe_seconds + 1.0)
        late = [f"late{i:02d}" for i in range(args.late_sessions)]
        late_chunks = int(args.late_seconds / CHUNK_S)
        for sid in late:
            await publish_session(redis.url, settings, sid, late_chunks, acked)
        sids += late
    deadline = time.monotonic() + 120 + args.seconds
    results: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            metas = [await get_meta(r, keys, sid) for sid in sids]
        except Exception:
            await asyncio.sleep(0.5)
            continue
        if all(m.status.terminal for m in metas):
            break
        await asyncio.sleep(0.5)
    t_done = time.monotonic() - t_start
    sampling.cancel()
    exact = lost_words = dup_words = complete = 0
    switch_s: list[float] = []
    late_on_primary = 0
    by_vendor: Counter[str] = Counter()
    for sid in sids:
        meta = await get_meta(r, keys, sid)
        for eid, fields in await r.xrange(keys.status(sid)):
            ev = decode_vendor_switch(fields)
            at = int(eid.split(b"-")[0]) / 1000
            started = [t for t in outages if t <= at]
            if ev is not None and ev["from"] == "deepgram" and started:
                switch_s.append(at - started[-1])
        vendors = {t.vendor or "?" for _, t in await read_finals(r, keys, sid)}
        by_vendor.update(t.vendor or "?" for _, t in await read_finals(r, keys, sid))
        if sid in late and vendors == {"deepgram"}:
            late_on_primary += 1
        words = [w for _, t in await read_finals(r, keys, sid) for w in t.text.split()]
        idx = [int(w[1:]) for w in words if w.startswith("w")]
        expected = acked[sid] if sid in acked else n_chunks
        counts = Counter(idx)
        dup_words += sum(c - 1 for c in counts.values() if c > 1)
        lost_words += sum(1 for i in range(expected) if i not in counts)
        complete += meta.status.value == "finished"
        exact += idx == list(range(expected))
    injected["vendor_drop"] = sum(c.closed_by_fault for c in emu.connections + primary.connections)
    breaker_open = await r.hexists(keys.breaker("deepgram"), "open")  # the hash also counts while closed
    fleet.stop()
    emu.stop()
    primary.stop()
    await r.aclose()
    redis.close()
    takeovers.sort()
    switch_s.sort()

    def pct(p: float, xs: list[float] = takeovers) -> float | None:
        return round(xs[min(len(xs) - 1, int(p * len(xs)))], 3) if xs else None

    results = {
        "sessions": len(sids), "complete": complete, "exact": exact,
        "audio_seconds_lost": round(lost_words * CHUNK_S, 1),
        "duplicated_words": dup_words,
        "takeover_s": {"p50": pct(0.5), "p99": pct(0.99), "max": takeovers[-1] if takeovers
                       else None, "n": len(takeovers)},
        "vendor_switch_s": {"p50": pct(0.5, switch_s), "p99": pct(0.99, switch_s),
                            "max": round(switch_s[-1], 3) if switch_s else None,
                            "n": len(switch_s)},
        "finals_by_vendor": dict(by_vendor),
        "breaker_open_at_end": bool(breaker_open),
        "late_sessions": {"n": len(late), "on_primary_only": late_on_primary},
        "peak_rss_mib_per_worker": round(max(fleet.peak_kib.values(), default=0) / 1024, 1),
        "faults": dict(injected), "wall_s": round(t_done, 1),
        "vendor_connections": {"deepgram": len(primary.connections),
                               "voxq-ws": len(emu.connections)},
    }
    return results


def main() -> None:
    """Parse options, run the fault-free baseline and the chaos run, print JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="few sessions, one fault of each kind")
    ap.add_argument("--sessions", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=180, help="audio per session")
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--kills", type=int, default=4)
    ap.add_argument("--redis-restarts", type=int, default=1)
    ap.add_argument("--vendor-outages", type=int, default=1,
                    help="outages of the primary vendor (deepgram) during the run")
    ap.add_argument("--outage-seconds", type=float, default=10.0,
                    help="how long each primary vendor outage lasts")
    ap.add_argument("--breaker-threshold", type=int, default=5,
                    help="VOXQ_BREAKER_THRESHOLD of the workers")
    ap.add_argument("--probe-seconds", type=float, default=3.0,
                    help="VOXQ_BREAKER_PROBE_SECONDS of the workers")
    ap.add_argument("--late-sessions", type=int, default=3,
                    help="sessions started one after another once the outage is over (they "
                         "should probe the primary, close its breaker and stay on it)")
    ap.add_argument("--late-seconds", type=float, default=5.0, help="audio per late session")
    ap.add_argument("--drop-rate", type=float, default=0.1, help="share of vendor sockets dropped")
    ap.add_argument("--stagger", type=float, default=5.0, help="seconds over which sessions start")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-baseline", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.sessions, args.seconds, args.kills, args.redis_restarts = 6, 40, 1, 1
        args.vendor_outages = 1
        args.drop_rate, args.no_baseline = 0.3, True
    chaos = asyncio.run(run(args, faults=True))
    out: dict[str, Any] = {
        "bench": "chaos",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": platform.python_version()},
        "config": {k: getattr(args, k) for k in ("sessions", "seconds", "workers", "kills",
                                                  "redis_restarts", "vendor_outages",
                                                  "outage_seconds", "breaker_threshold",
                                                  "probe_seconds", "drop_rate", "seed")},
        "claim_timeout_s": Settings().claim_timeout_seconds,
        "chaos": chaos,
    }
    if not args.no_baseline:
        out["fault_free"] = asyncio.run(run(args, faults=False))
    out["ok"] = (chaos["audio_seconds_lost"] == 0 and chaos["duplicated_words"] == 0
                 and chaos["exact"] == chaos["sessions"])
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
