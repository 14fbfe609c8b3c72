"""`voxq tts` (one-off or batch synthesis to files) and `voxq tts-worker` (the RQ worker).

`voxq tts "text" -o out.mp3` runs the synthesizer in this process (no Redis, no RQ). `voxq tts
--batch lines.txt -o dir/` does the same for each non-blank line with bounded concurrency and a
progress bar, writing ``dir/NNNN.mp3`` named by line number: no worker, queue or Redis has to be
running, so it works offline with the `local` engine, and a failed line is reported without
stopping the others (exit status 1 if any failed). Bulk jobs that should survive this process go
through the API (`POST /v1/tts/batch`) and `voxq tts-worker` instead.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voxq.errors import InvalidInput, VoxqError
from voxq.redis_conn import connect_sync, redis_url, rq_url
from voxq.settings import Settings, get_settings

if TYPE_CHECKING:
    from workers.tts.jobs import TtsRequest

log = logging.getLogger("voxq.tts")


def _ratio(text: str) -> float:
    """argparse type: a positive float."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def register_tts(sub: argparse._SubParsersAction) -> None:
    """Add `voxq tts`."""
    p = sub.add_parser(
        "tts", help="synthesise text to MP3 here (one text, or --batch a file of lines)",
        description="Synthesise speech to MP3 with a vendor adapter in this process "
                    "(no Redis or worker needed). Batch mode writes one MP3 per non-blank line.")
    p.add_argument("text", nargs="?", help="text to speak ('-' reads stdin)")
    p.add_argument("-o", "--output", required=True,
                   help="output .mp3 file, or directory with --batch")
    p.add_argument("--batch", metavar="LINES.txt", help="synthesise every non-blank line of a file")
    p.add_argument("--vendor", default=None, help="speech vendor (default VOXQ_TTS_DEFAULT_VENDOR)")
    p.add_argument("--voice", default=None, help="vendor voice (default: the vendor's first)")
    p.add_argument("--speed", type=_ratio, default=1.0, help="speaking rate, 1.0 = normal")
    p.add_argument("--volume", type=_ratio, default=1.0, help="loudness, 1.0 = normal")
    p.add_argument("--pitch", type=_ratio, default=1.0, help="pitch, 1.0 = normal")
    p.add_argument("--rate", type=int, default=24000, help="sample rate in Hz (default 24000)")
    p.add_argument("-j", "--jobs", type=int, default=4,
                   help="lines synthesised at once with --batch (default 4)")
    p.add_argument("--list-voices", action="store_true", help="print the vendor's voices and exit")
    p.set_defaults(func=run_tts)


def register_tts_worker(sub: argparse._SubParsersAction) -> None:
    """Add `voxq tts-worker`."""
    p = sub.add_parser("tts-worker", help="run an RQ worker for TTS jobs (with the retry scheduler)",
                       description="Run an RQ worker on the TTS queue; its scheduler re-enqueues "
                                   "jobs whose retry backoff has passed.")
    p.add_argument("--queue", default=None, help="RQ queue (default VOXQ_TTS_QUEUE, `tts`)")
    p.add_argument("--name", default=None, help="worker name (default: RQ's host-pid)")
    p.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    p.add_argument("--max-jobs", type=int, default=None, help="exit after this many jobs")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve /metrics here (default VOXQ_TTS_METRICS_PORT; unset: off)")
    p.add_argument("--no-fork", action="store_true",
                   help="run jobs in the worker process (RQ SimpleWorker): less per-job overhead, "
                        "no isolation between jobs (default: one forked work horse per job)")
    p.set_defaults(func=run_tts_worker)


# --- voxq tts ---------------------------------------------------------------------------------

def _request(args: argparse.Namespace, text: str) -> TtsRequest:
    """The request the flags describe; InvalidInput naming each bad flag."""
    from pydantic import ValidationError

    from workers.tts.jobs import TtsRequest

    try:
        return TtsRequest(text=text, vendor=args.vendor, voice=args.voice, speed=args.speed,
                          volume=args.volume, pitch=args.pitch, sample_rate=args.rate)
    except ValidationError as e:
        reasons = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
        raise InvalidInput(reasons or "invalid request") from None


async def _one(settings: Settings, args: argparse.Namespace, text: str) -> tuple[bytes, float]:
    from workers.tts import jobs, mp3join

    plan = jobs.plan(_request(args, text), settings)
    synth = jobs.make_synthesizer(plan.vendor, settings)
    mp3 = await jobs.synthesize_text(synth, plan.synthesis,
                                     timeout=settings.tts_vendor_timeout_seconds)
    return mp3, mp3join.duration(mp3)


def run_tts(args: argparse.Namespace) -> int:
    """`voxq tts`: write one MP3, or one per line with --batch."""
    from workers.tts import jobs

    settings = get_settings()
    if args.list_voices:
        vendor = args.vendor or settings.tts_default_vendor
        print("\n".join(jobs.make_synthesizer(vendor, settings).voices()))
        return 0
    if args.batch:
        if args.text:
            raise InvalidInput("give either TEXT or --batch, not both")
        return asyncio.run(_batch(settings, args))
    if not args.text:
        raise InvalidInput("give the TEXT to speak (or --batch LINES.txt)")
    out = Path(args.output)
    _check_folder(out.parent, f"cannot write {out}")
    text = sys.stdin.read() if args.text == "-" else args.text
    mp3, seconds = asyncio.run(_one(settings, args, text))
    try:
        out.write_bytes(mp3)
    except OSError as e:
        raise InvalidInput(f"cannot write {out}: {e.strerror}") from None
    print(f"{out}: {seconds:.2f}s, {len(mp3)} bytes", file=sys.stderr)
    return 0


def _check_folder(folder: Path, what: str) -> None:
    """InvalidInput unless ``folder`` is an existing directory (voxq never creates it silently)."""
    if not folder.is_dir():
        why = "is not a folder" if folder.exists() else "does not exist"
        raise InvalidInput(f"{what}: the folder {folder} {why}")


async def _batch(settings: Settings, args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    try:
        lines = (await asyncio.to_thread(Path(args.batch).read_text, encoding="utf-8")).splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInput(f"cannot read {args.batch}: {e}") from None
    items = [(n, line.strip()) for n, line in enumerate(lines, 1) if line.strip()]
    if not items:
        raise InvalidInput(f"{args.batch} has no non-blank line")
    for _, text in items:  # every line is checked before anything is synthesised
        from workers.tts import jobs

        jobs.plan(_request(args, text), settings)
    outdir = Path(args.output)
    _check_folder(outdir.parent, f"cannot create the output folder {outdir}")
    try:  # the output folder itself may be new; the folder holding it must exist
        await asyncio.to_thread(outdir.mkdir, exist_ok=True)
    except OSError as e:
        raise InvalidInput(f"cannot create the output folder {outdir}: {e.strerror}") from None
    width = max(4, len(str(len(lines))))
    gate = asyncio.Semaphore(max(1, args.jobs))
    failures: list[str] = []
    with Progress(TextColumn("[bold]tts"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), transient=False) as bar:
        task = bar.add_task("tts", total=len(items))

        async def one(lineno: int, text: str) -> None:
            async with gate:
                try:
                    mp3, _ = await _one(settings, args, text)
                    (outdir / f"{lineno:0{width}d}.mp3").write_bytes(mp3)
                except VoxqError as e:
                    failures.append(f"line {lineno}: {e}")
                bar.advance(task)

        await asyncio.gather(*(one(n, t) for n, t in items))
    for failure in failures:
        print(f"voxq tts: {failure}", file=sys.stderr)
    print(f"{outdir}: {len(items) - len(failures)} of {len(items)} lines synthesised",
          file=sys.stderr)
    return 1 if failures else 0


# --- voxq tts-worker --------------------------------------------------------------------------

def _preload_vendors() -> None:
    """Import every synthesizer (and run its ``warm_up``) in the parent, so forked work horses
    start warm instead of importing and initialising on every job."""
    from workers.vendors.registry import SYNTHESIZERS

    for target in SYNTHESIZERS.values():
        try:
            module = importlib.import_module(target.partition(":")[0])
        except ImportError as e:  # a vendor whose dependency is missing fails its own jobs only
            log.warning("speech vendor %s cannot load: %s", target, e)
            continue
        warm = getattr(module, "warm_up", None)
        if callable(warm):
            warm()


def _serve_metrics(port: int) -> None:
    """/metrics of this worker and its forked work horses (prometheus multiprocess mode)."""
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)
    start_http_server(port, registry=registry)


def _one_line_failures(base: type[Any]) -> type[Any]:
    """An RQ worker class that does not log a traceback for a job that failed on purpose (a
    VoxqError: missing credentials, a vendor's refusal): the job's failure callback already
    logged its one-line reason. Anything else still gets RQ's full traceback."""

    class OneLineFailures(base):
        def handle_exception(self, job: Any, *exc_info: Any) -> None:
            if isinstance(exc_info[1] if len(exc_info) > 1 else None, VoxqError):
                return
            super().handle_exception(job, *exc_info)

    OneLineFailures.__name__ = base.__name__
    return OneLineFailures


def run_tts_worker(args: argparse.Namespace) -> int:
    """Work the TTS queue until SIGTERM/SIGINT (RQ's warm shutdown) or, with --burst, empty."""
    from rq import Queue, SimpleWorker, Worker

    from workers.tts import jobs

    settings = get_settings()
    with redis_url(settings) as url:
        queue_url = rq_url(settings, url)  # RQ needs a single Redis: a clear error on a cluster
        jobs.configure(url, queue_url)
        _preload_vendors()
        jobs.warm_up()
        conn = connect_sync(queue_url)
        queue = Queue(args.queue or settings.tts_queue, connection=conn)
        worker_class = _one_line_failures(SimpleWorker if args.no_fork else Worker)
        worker = worker_class([queue], connection=conn, name=args.name)
        port = args.metrics_port if args.metrics_port is not None else settings.tts_metrics_port
        if port is not None:
            _serve_metrics(port)
        print(f"voxq tts-worker: {worker.name} on queue {queue.name}", file=sys.stderr, flush=True)
        worker.work(with_scheduler=True, burst=args.burst, max_jobs=args.max_jobs,
                    logging_level=settings.log_level.upper())
    return 0
