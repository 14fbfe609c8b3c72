"""TTS job benchmark: jobs per second and per-job overhead through the whole path
API → RQ → tts-worker → vendor (the Polly emulator) → Redis → API, cold and cached.

Everything is real: an embedded redis-server, `voxq api` (uvicorn) and `voxq tts-worker`
processes, the strict Polly emulator over HTTP in this process. Timings of a job come from its
own record (``created`` → ``started`` → ``finished``, written by the API and the worker), so
polling granularity does not count. Baseline in the same run: the same requests sent straight to
the emulator by the same adapter (signing, HTTP, MP3 generation), one at a time — the vendor's
own cost; overhead = job latency − baseline latency.

Phases: ``sequential`` (one job at a time: pure per-job overhead), ``throughput`` (all jobs
submitted at once to ``--workers`` workers), ``cached`` (the same requests again: the API answers
from the content cache without a worker or the vendor).

    python bench/tts.py                 # 40 jobs, 2 workers, ~200-character texts
    python bench/tts.py --jobs 200 --workers 4 --delay-ms 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from tests.emulators import tts_audio  # noqa: E402
from tests.emulators.polly import EmulatorConfig, PollyEmulator  # noqa: E402
from voxq.embedded_redis import RedisServer  # noqa: E402
from voxq.settings import Settings  # noqa: E402
from workers.vendors.aws.tts import PollySynthesizer  # noqa: E402
from workers.vendors.base import SynthesisRequest  # noqa: E402

WORDS = ("call", "center", "voice", "queue", "agent", "customer", "ticket", "refund", "order",
         "account", "balance", "transfer", "thanks", "please", "hold", "moment")


def machine() -> dict[str, Any]:
    """Where the figures were measured."""
    return {"platform": platform.platform(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "processor": platform.processor() or platform.machine()}


def texts(n: int, chars: int) -> list[str]:
    """``n`` distinct sentences of about ``chars`` characters."""
    out = []
    for i in range(n):
        words = [WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(chars // 6)]
        out.append(f"Job {i}: " + " ".join(words)[:chars] + ".")
    return out


def stats(values: list[float]) -> dict[str, float]:
    """p50 / p90 / p99 / mean in milliseconds."""
    ms = sorted(v * 1000 for v in values)

    def pct(p: float) -> float:
        return round(ms[min(len(ms) - 1, int(p * len(ms)))], 2)

    return {"p50_ms": pct(0.5), "p90_ms": pct(0.9), "p99_ms": pct(0.99),
            "mean_ms": round(statistics.fmean(ms), 2)}


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "voxq", *args], env=env, stdout=log.open("ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)


async def wait_url(log: Path, proc: subprocess.Popen[bytes], timeout: float = 30) -> str:
    """The URL `voxq api` prints once it listens."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = await asyncio.to_thread(log.read_text, errors="replace")
        for line in text.splitlines():
            if "listening on " in line:
                return line.split("listening on ", 1)[1].split()[0]
        if proc.poll() is not None:
            raise RuntimeError(f"voxq api exited: {text}")
        await asyncio.sleep(0.05)
    raise RuntimeError("voxq api did not start")


async def wait_done(client: httpx.AsyncClient, job_id: str, poll: float) -> dict[str, Any]:
    while True:
        body: dict[str, Any] = (await client.get(f"/v1/tts/{job_id}")).json()
        if body["status"] in ("finished", "failed"):
            if body["status"] == "failed":
                raise RuntimeError(f"job failed: {body['error']}")
            return body
        await asyncio.sleep(poll)


async def baseline(emu: PollyEmulator, items: list[str], settings: Settings) -> dict[str, Any]:
    """The same requests straight to the emulator, one at a time, by the same adapter."""
    tts_audio.mp3_tone.cache_clear()
    synth = PollySynthesizer(emu.configure(settings))
    times = []
    t0 = time.perf_counter()
    for text in items:
        start = time.perf_counter()
        await synth.synthesize(SynthesisRequest(text=text, voice="Joanna"))
        times.append(time.perf_counter() - start)
    wall = time.perf_counter() - t0
    return {"jobs": len(items), "jobs_per_second": round(len(items) / wall, 2), **stats(times),
            "_p50": statistics.median(times)}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"voxq-bench-tts-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    items = texts(args.jobs, args.chars)
    with RedisServer() as redis_server:
        async with PollyEmulator(EmulatorConfig(delay=args.delay_ms / 1000, max_concurrent=1000)) as emu:
            settings = Settings(redis_url=redis_server.url, prefix="benchtts")
            base_env = {k: v for k, v in os.environ.items() if not k.startswith(("VOXQ_", "AWS_"))}
            base_env.update({"REDIS_URL": redis_server.url, "VOXQ_PREFIX": "benchtts",
                             "VOXQ_TTS_QUEUE": "bench-tts", "VOXQ_LOG_LEVEL": "WARNING",
                             "PYTHONUNBUFFERED": "1"})
            api_log = tmp / "api.log"
            api = spawn(["api", "--port", "0"], base_env, api_log)
            worker_args = ["tts-worker", "--no-fork"] if args.no_fork else ["tts-worker"]
            workers = [spawn(worker_args, {**base_env, **emu.env()}, tmp / f"worker{i}.log")
                       for i in range(args.workers)]
            try:
                url = await wait_url(api_log, api)
                base = await baseline(emu, items, settings)
                tts_audio.mp3_tone.cache_clear()
                async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                    await asyncio.sleep(1.0)  # workers registered and listening
                    # warm-up: one job through every worker (imports, first fork, scheduler)
                    warm = [(await client.post("/v1/tts", json={"text": f"warm {i}", "vendor": "aws"})).json()
                            for i in range(args.workers * 2)]
                    for w in warm:
                        await wait_done(client, w["job_id"], 0.01)
                    tts_audio.mp3_tone.cache_clear()

                    seq_items = items[: max(1, min(len(items), args.sequential))]
                    seq = []
                    for text in seq_items:
                        resp = (await client.post("/v1/tts", json={"text": text, "vendor": "aws"})).json()
                        seq.append(await wait_done(client, resp["job_id"], 0.002))
                    seq_latency = [j["finished"] - j["created"] for j in seq]
                    seq_queue = [j["started"] - j["created"] for j in seq]

                    tts_audio.mp3_tone.cache_clear()
                    rest = items[len(seq_items):] or items
                    t0 = time.perf_counter()
                    posted = await asyncio.gather(*(client.post("/v1/tts", json={"text": t, "vendor": "aws",
                                                                                 "cache": False})
                                                    for t in rest))
                    submit_s = time.perf_counter() - t0
                    done = await asyncio.gather(*(wait_done(client, p.json()["job_id"], 0.02) for p in posted))
                    span = max(j["finished"] for j in done) - min(j["created"] for j in done)
                    thr_latency = [j["finished"] - j["created"] for j in done]

                    t0 = time.perf_counter()
                    cached_latency = []
                    for text in seq_items:
                        start = time.perf_counter()
                        resp = (await client.post("/v1/tts", json={"text": text, "vendor": "aws"})).json()
                        assert resp["cached"], resp
                        audio = await client.get(resp["audio_url"])
                        assert audio.status_code == 200
                        cached_latency.append(time.perf_counter() - start)
                    cached_wall = time.perf_counter() - t0
                    vendor_calls = len(emu.successes)
            finally:
                for proc in (api, *workers):
                    proc.terminate()
                for proc in (api, *workers):
                    try:
                        proc.wait(15)
                    except subprocess.TimeoutExpired:
                        proc.kill()
    base_p50 = base.pop("_p50")
    return {
        "bench": "tts",
        "machine": machine(),
        "config": {"jobs": args.jobs, "workers": args.workers, "text_chars": args.chars,
                   "emulator_delay_ms": args.delay_ms, "sequential_jobs": len(seq_items),
                   "worker": "SimpleWorker (--no-fork)" if args.no_fork else "Worker (fork per job)",
                   "vendor": "aws (Polly emulator, HTTP on loopback)"},
        "baseline_direct_vendor_call": base,
        "sequential": {"jobs": len(seq), "latency": stats(seq_latency), "queue_wait": stats(seq_queue),
                       "overhead_vs_baseline_p50_ms": round((statistics.median(seq_latency) - base_p50) * 1000, 2)},
        "throughput": {"jobs": len(done), "workers": args.workers,
                       "jobs_per_second": round(len(done) / span, 2),
                       "submit_seconds": round(submit_s, 3), "latency": stats(thr_latency),
                       "vs_baseline_sequential_rate": round(len(done) / span / base["jobs_per_second"], 2)},
        "cached": {"jobs": len(cached_latency), "jobs_per_second": round(len(cached_latency) / cached_wall, 2),
                   "post_plus_audio_latency": stats(cached_latency),
                   "overhead_vs_baseline_p50_ms": round((statistics.median(cached_latency) - base_p50) * 1000, 2)},
        "vendor_calls": vendor_calls,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=40, help="jobs in the throughput phase (default 40)")
    ap.add_argument("--sequential", type=int, default=10, help="jobs run one at a time (default 10)")
    ap.add_argument("--workers", type=int, default=2, help="tts-worker processes (default 2)")
    ap.add_argument("--chars", type=int, default=200, help="characters per text (default 200)")
    ap.add_argument("--delay-ms", type=float, default=0.0, help="emulated vendor processing time per call")
    ap.add_argument("--no-fork", action="store_true", help="run the workers with --no-fork")
    args = ap.parse_args()
    print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
