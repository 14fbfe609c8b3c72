"""`voxq produce`: publish a file, stdin or a microphone as one live session on the bus.

Everything the user typed is validated (session id, format, vendor, options, the audio
source) before anything is written to Redis, so a mistake changes nothing. Realtime pacing
(the default) mimics a live call; ``--fast`` publishes as fast as Redis takes it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import signal
import sys
import uuid
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from producer.publisher import Publisher, SessionOutcome, session_meta
from producer.sources import (
    file_source,
    iterate_in_thread,
    mic_source,
    raw_source,
    stdin_stream,
)
from voxq.access import validate_tenant
from voxq.audio import RAW_ENCODINGS, probe_file
from voxq.errors import InvalidAudio, InvalidInput, SessionFailed
from voxq.keys import validate_session_id
from voxq.records import SessionMeta
from voxq.redis_conn import redis_url
from voxq.settings import Settings, get_settings

EXIT_SESSION_FAILED = 1
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
SIGNAL_GRACE_SECONDS = 5.0


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` strings → dict; values are JSON when they parse as JSON, else strings."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InvalidInput(f"option {pair!r} is not of the form key=value")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


class Pacer:
    """Schedules audio against a monotonic clock from the first chunk, so delays never add up."""

    def __init__(self, bytes_per_second: int, clock: Callable[[], float]) -> None:
        self.bytes_per_second = bytes_per_second
        self.clock = clock
        self.start: float | None = None
        self.sent = 0

    def delay(self, nbytes: int) -> float:
        """Seconds to wait before sending the next ``nbytes``: until their audio has 'happened'."""
        now = self.clock()
        if self.start is None:
            self.start = now
        self.sent += nbytes
        return max(0.0, self.start + self.sent / self.bytes_per_second - now)


def rms_dbfs(pcm: bytes) -> float:
    """Level of s16le PCM in dB relative to full scale (-inf clamped to -96)."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    if not x.size:
        return -96.0
    rms = math.sqrt(float(np.mean(x * x))) / 32768.0
    return max(-96.0, 20.0 * math.log10(rms)) if rms > 0 else -96.0


@dataclass
class Source:
    """An opened audio source and how to present it."""

    blocks: Iterator[bytes]
    kind: Literal["file", "stdin", "mic"]
    label: str
    total_seconds: float | None = None


def open_source(args: argparse.Namespace, meta: SessionMeta, settings: Settings) -> Source:
    """Check and open the source the arguments name; InvalidInput/InvalidAudio if unusable."""
    if args.mic:
        if args.path is not None:
            raise InvalidInput("give either PATH or --mic, not both")
        blocks = mic_source(meta.rate, meta.channels, device=_device(args.device))
        return Source(blocks, "mic", "microphone")
    if args.path is None:
        raise InvalidInput("give an audio file PATH, - for raw audio on stdin, or --mic")
    raw_rate = args.raw_rate or meta.rate
    raw_channels = args.raw_channels or meta.channels
    if args.path == "-":
        if sys.stdin is None or sys.stdin.isatty():
            raise InvalidInput("stdin is a terminal: pipe raw audio into `voxq produce -`")
        blocks = raw_source(stdin_stream(), args.raw_format or "s16le", raw_rate, raw_channels,
                            meta.rate, meta.channels)
        return Source(blocks, "stdin", "stdin")
    path = Path(args.path)
    if args.raw_format:
        try:
            size = path.stat().st_size
            stream = path.open("rb")
        except OSError as e:
            raise InvalidAudio(f"cannot read audio file {str(path)!r}: {e.strerror}") from e
        width = {"s16le": 2, "f32le": 4, "mulaw": 1}[args.raw_format] * raw_channels
        total = size / width / raw_rate
        _check_length(total, settings)
        return Source(raw_source(stream, args.raw_format, raw_rate, raw_channels, meta.rate,
                                 meta.channels), "file", path.name, total)
    if not path.exists():
        raise InvalidAudio(f"cannot read audio file {str(path)!r}: no such file")
    info = probe_file(path)
    _check_length(info.seconds, settings)
    return Source(file_source(path, meta.rate, meta.channels), "file", path.name, info.seconds)


def _device(spec: str | None) -> int | str | None:
    if spec is None:
        return None
    return int(spec) if spec.isdigit() else spec


def _check_length(seconds: float, settings: Settings) -> None:
    if seconds > settings.max_session_seconds:
        raise InvalidInput(f"the audio lasts {seconds:.0f} s, longer than the "
                           f"{settings.max_session_seconds} s a session may last")


class Display(Protocol):
    """Progress shown while publishing."""

    def update(self, pcm: bytes) -> None: ...
    def stop(self) -> None: ...


class _Quiet:
    def update(self, pcm: bytes) -> None:
        pass

    def stop(self) -> None:
        pass


class _FileProgress:
    """Audio seconds published out of the total, on stderr."""

    def __init__(self, source: Source, meta: SessionMeta, force: bool) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.bps = meta.bytes_per_second
        self.published = 0
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(),
            TextColumn("{task.completed:.1f}/{task.total:.1f} s audio"), TimeElapsedColumn(),
            console=Console(stderr=True, force_terminal=force or None), transient=False)
        self.task = self.progress.add_task(f"{source.label} → {meta.session_id}",
                                           total=source.total_seconds)
        self.progress.start()

    def update(self, pcm: bytes) -> None:
        self.published += len(pcm)
        self.progress.update(self.task, completed=self.published / self.bps)

    def stop(self) -> None:
        self.progress.stop()


class _LevelMeter:
    """An RMS dBFS bar for live input, on stderr."""

    WIDTH = 30

    def __init__(self, source: Source, meta: SessionMeta, force: bool) -> None:
        from rich.console import Console
        from rich.live import Live

        self.bps = meta.bytes_per_second
        self.seconds = 0.0
        self.label = f"{source.label} → {meta.session_id}"
        self.live = Live(self._render(-96.0), console=Console(stderr=True,
                                                              force_terminal=force or None),
                         refresh_per_second=10, transient=False)
        self.live.start()

    def _render(self, db: float) -> Any:
        from rich.text import Text

        filled = round((db + 60.0) / 60.0 * self.WIDTH) if db > -60 else 0
        filled = max(0, min(self.WIDTH, filled))
        style = "red" if db > -3 else "yellow" if db > -12 else "green"
        t = Text(f"{self.label} {self.seconds:7.1f} s {db:6.1f} dBFS ", no_wrap=True,
                 overflow="crop")
        t.append("█" * filled, style=style)
        t.append("·" * (self.WIDTH - filled), style="dim")
        return t

    def update(self, pcm: bytes) -> None:
        self.seconds += len(pcm) / self.bps
        self.live.update(self._render(rms_dbfs(pcm)))

    def stop(self) -> None:
        self.live.stop()


def make_display(source: Source, meta: SessionMeta, progress: bool | None) -> Display:
    """A progress bar (files, stdin) or level meter (mic) when stderr is a TTY or forced."""
    show = progress if progress is not None else sys.stderr.isatty()
    if not show:
        return _Quiet()
    force = bool(progress)
    if source.kind == "mic":
        return _LevelMeter(source, meta, force)
    return _FileProgress(source, meta, force)


async def _pump(pub: Publisher, blocks: AsyncGenerator[bytes, None], pacer: Pacer | None,
                display: Display) -> None:
    """Move source blocks into the publisher chunk by chunk, pacing them if asked."""
    step = pub.chunk_bytes
    async with contextlib.aclosing(blocks):
        async for block in blocks:
            for off in range(0, len(block), step):
                piece = block[off:off + step]
                if pacer is not None:
                    wait = pacer.delay(len(piece))
                    if wait > 0:
                        await asyncio.sleep(wait)
                await pub.send(piece)
                display.update(piece)


def _signal_name(signum: int) -> str:
    return "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C" if signum == signal.SIGINT \
        else signal.Signals(signum).name


def _exit_for(signum: int) -> int:
    return EXIT_TERMINATED if signum == signal.SIGTERM else EXIT_INTERRUPTED


async def _cancel(task: asyncio.Task[Any]) -> None:
    """Cancel a task and wait until it has ended (asking again: on Python 3.11 a library's
    ``asyncio.wait_for`` can swallow one cancellation)."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)
    if not task.cancelled():
        task.exception()  # retrieved: an error it ended with is not logged as unhandled


class _Signals:
    """SIGINT/SIGTERM as events: the first asks to stop, a second to stop at once."""

    def __init__(self, loop: asyncio.AbstractEventLoop, before_open: asyncio.Task[Any] | None):
        self.got: list[int] = []
        self.first = asyncio.Event()
        self.again = asyncio.Event()
        self.before_open = before_open  # cancelled by a signal until the session exists
        self._loop = loop
        self._handled: list[int] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._on, sig)
                self._handled.append(sig)

    def _on(self, signum: int) -> None:
        self.got.append(signum)
        (self.again if self.first.is_set() else self.first).set()
        if self.before_open is not None:
            self.before_open.cancel()

    def remove(self) -> None:
        for sig in self._handled:
            self._loop.remove_signal_handler(sig)


def _unacked_text(pub: Publisher, meta: SessionMeta) -> str:
    s = pub.stats
    return (f"{s.unacked_bytes / meta.bytes_per_second:.1f} s of audio ({s.unacked_chunks} "
            f"chunk(s)) not acknowledged by Redis")


def _report_outcome(outcome: SessionOutcome, sid: str) -> int:
    if outcome.ok:
        return 0
    why = f": {outcome.error}" if outcome.error else ""
    print(f"voxq produce: error: session {sid} {outcome.status.value}{why}", file=sys.stderr)
    return EXIT_SESSION_FAILED


async def produce(url: str, meta: SessionMeta, source: Source, *, realtime: bool,
                  progress: bool | None, settings: Settings, wait: bool = False,
                  grace: float = SIGNAL_GRACE_SECONDS) -> int:
    """Create the session, publish the source, finish with eos, following the session's status.

    Exits 0 when everything was published (and, with ``wait``, the session finished); 1 when
    the session failed or was abandoned (it stops publishing at once); 130/143 after
    SIGINT/SIGTERM, which end it within ``grace`` seconds in every state (a second signal at
    once), saying how much audio Redis did not acknowledge.
    """
    loop = asyncio.get_running_loop()
    signals = _Signals(loop, asyncio.current_task())
    try:
        return await _produce(url, meta, source, signals, realtime=realtime, progress=progress,
                              settings=settings, wait=wait, grace=grace)
    except asyncio.CancelledError:
        if not signals.got:
            raise
        print(f"voxq produce: stopped by {_signal_name(signals.got[0])} before session "
              f"{meta.session_id} was created; nothing published", file=sys.stderr)
        return _exit_for(signals.got[0])
    finally:
        signals.remove()


async def _produce(url: str, meta: SessionMeta, source: Source, signals: _Signals, *,
                   realtime: bool, progress: bool | None, settings: Settings, wait: bool,
                   grace: float) -> int:
    loop = asyncio.get_running_loop()
    sid = meta.session_id
    pub = Publisher(url, settings=settings, tenant=meta.tenant or "default")
    await pub.open(sid, meta.vendor, meta.language, meta.rate, meta.channels, meta.chunk_ms,
                   meta.options, meta.webhook, webhook_finals=meta.webhook_finals)
    signals.before_open = None
    if signals.got:  # a signal during open: the session exists, end it properly below
        signals.first.set()
    print(sid, flush=True)
    # a microphone is paced by its own clock; files and stdin are paced unless --fast
    pacer = Pacer(meta.bytes_per_second, loop.time) if realtime and source.kind != "mic" else None
    display = make_display(source, meta, progress)
    pump = asyncio.create_task(_pump(pub, iterate_in_thread(source.blocks), pacer, display))
    outcome = asyncio.create_task(pub.session_outcome())
    first = asyncio.create_task(signals.first.wait())
    again = asyncio.create_task(signals.again.wait())
    try:
        # 1. publish until the source ends, a signal comes, or the session ends under us
        await asyncio.wait({pump, outcome, first}, return_when=asyncio.FIRST_COMPLETED)
        if not pump.done():
            await _cancel(pump)
        display.stop()
        if outcome.done() and not pump_ok(pump):
            await pub.abort()
            return _ended_early(outcome, sid)
        if pump.done() and not pump.cancelled() and pump.exception() is not None:
            await pub.abort()
            err = pump.exception()
            if isinstance(err, SessionFailed):
                print(f"voxq produce: error: {err}", file=sys.stderr)
                return EXIT_SESSION_FAILED
            raise err  # type: ignore[misc]
        # 2. write what is buffered and eos: bounded by `grace` once a signal came
        closing = asyncio.create_task(pub.close())
        deadline = loop.time() + grace if signals.got else None
        while not closing.done():
            watch: set[asyncio.Task[Any]] = {closing, again}
            if deadline is None:
                watch.add(first)
            if not outcome.done():
                watch.add(outcome)
            timeout = None if deadline is None else max(0.0, deadline - loop.time())
            done, _ = await asyncio.wait(watch, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            if closing in done:
                break
            if outcome in done and not outcome_ok(outcome):
                await _cancel(closing)
                return _ended_early(outcome, sid)
            if first in done and deadline is None:
                deadline = loop.time() + grace
                continue
            if again in done or (deadline is not None and loop.time() >= deadline):
                await _cancel(closing)  # close() aborts and counts what was not acknowledged
                print(f"voxq produce: stopped by {_signal_name(signals.got[0])}: "
                      f"{_unacked_text(pub, meta)}; session {sid} aborted without end of "
                      "stream", file=sys.stderr)
                return _exit_for(signals.got[0])
        err = closing.exception()
        if isinstance(err, SessionFailed):
            print(f"voxq produce: error: {err}", file=sys.stderr)
            return EXIT_SESSION_FAILED
        if err is not None:
            print(f"voxq produce: {_unacked_text(pub, meta)}", file=sys.stderr)
            raise err
        if progress or (progress is None and sys.stderr.isatty()):
            print(f"voxq produce: published {pub.stats.chunks} chunks "
                  f"({pub.stats.bytes / meta.bytes_per_second:.1f} s of audio) to session "
                  f"{sid}", file=sys.stderr)
        if signals.got:
            print(f"voxq produce: stopped by {_signal_name(signals.got[0])}; all "
                  f"{pub.stats.bytes / meta.bytes_per_second:.1f} s of audio published was "
                  f"acknowledged and session {sid} ended with end of stream", file=sys.stderr)
            return _exit_for(signals.got[0])
        # 3. the session's end: reported if already known, awaited with --wait
        if wait and not outcome.done():
            await asyncio.wait({outcome, first}, return_when=asyncio.FIRST_COMPLETED)
            if not outcome.done():
                print(f"voxq produce: stopped waiting for session {sid} "
                      f"({_signal_name(signals.got[0])}); it was fully published",
                      file=sys.stderr)
                return _exit_for(signals.got[0])
        if outcome.done():
            if outcome.exception() is not None:
                raise outcome.exception()  # type: ignore[misc]
            return _report_outcome(outcome.result(), sid)
        return 0
    finally:
        for task in (pump, outcome, first, again):
            await _cancel(task)
        if not pub.closed:
            await pub.abort()


def pump_ok(pump: asyncio.Task[None]) -> bool:
    """True if the pump read the whole source."""
    return pump.done() and not pump.cancelled() and pump.exception() is None


def outcome_ok(outcome: asyncio.Task[SessionOutcome]) -> bool:
    """True if the watched session finished (not failed, abandoned or gone)."""
    return (not outcome.cancelled() and outcome.exception() is None
            and outcome.result().ok)


def _ended_early(outcome: asyncio.Task[SessionOutcome], sid: str) -> int:
    """Report a session that ended (or vanished) before its audio was all published."""
    err = outcome.exception()
    if err is not None:
        print(f"voxq produce: error: {err}", file=sys.stderr)
        return EXIT_SESSION_FAILED
    result = outcome.result()
    if result.ok:  # finished without our eos: nothing we published is missing from it
        return 0
    return _report_outcome(result, sid)


def session_channels(args: argparse.Namespace) -> int:
    """The session's channel count: --channels, else the source's own (1 or 2); a file with
    more channels is an error unless --downmix mixes it to one."""
    if args.downmix:
        if args.channels == 2:
            raise InvalidInput("--downmix mixes to one channel; it cannot go with --channels 2")
        return 1
    if args.channels is not None:
        return int(args.channels)
    if args.mic or args.path is None:
        return 1
    if args.path == "-" or args.raw_format:
        return int(args.raw_channels or 1)
    path = Path(args.path)
    if not path.exists():
        raise InvalidAudio(f"cannot read audio file {str(path)!r}: no such file")
    n = probe_file(path).channels
    if n in (1, 2):
        return n
    raise InvalidAudio(f"audio file {str(path)!r} has {n} channels; a session carries 1 or 2 "
                       "(agent, customer): pass --downmix to mix them into one channel")


def run(args: argparse.Namespace) -> int:
    """Validate everything, then publish the chosen source as one session."""
    settings = get_settings()
    options = parse_options(args.option)
    sid = validate_session_id(args.session) if args.session is not None else uuid.uuid4().hex
    channels = session_channels(args)
    meta = session_meta(sid, args.vendor, args.language, args.rate, channels,
                        args.chunk_ms or settings.default_chunk_ms, options, args.webhook,
                        webhook_finals=args.webhook_finals,
                        tenant=validate_tenant(args.tenant or settings.tenant))
    source = open_source(args, meta, settings)
    with redis_url(settings) as url:
        return asyncio.run(produce(url, meta, source, realtime=not args.fast,
                                   progress=args.progress, settings=settings, wait=args.wait,
                                   grace=args.grace))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `voxq produce`."""
    p = sub.add_parser(
        "produce", help="publish audio from a file, stdin or a microphone as a session",
        description="Create a session and publish its audio to Redis in chunks, then end it.")
    p.add_argument("path", nargs="?", metavar="PATH|-",
                   help="audio file (WAV, FLAC, OGG, MP3, …) or - for raw PCM on stdin")
    p.add_argument("--session", metavar="ID", help="session id (default: a new uuid4 hex)")
    p.add_argument("--vendor", default="local", help="recognition vendor (default: local)")
    p.add_argument("--language", default="en-US", help="language code (default: en-US)")
    p.add_argument("--webhook", default="", metavar="URL",
                   help="POST this session's end event (finished/failed/abandoned) to URL, "
                        "signed with the deployment's VOXQ_WEBHOOK_SECRET")
    p.add_argument("--webhook-finals", action="store_true",
                   help="also POST each final segment to the --webhook URL as it is "
                        "recognised (event transcript.final)")
    p.add_argument("--tenant", default=None, metavar="TENANT",
                   help="the tenant that owns the session (default: VOXQ_TENANT, else "
                        "'default'); only that tenant's API keys can see it")
    p.add_argument("--rate", type=int, default=16000, help="bus sample rate in Hz (16000)")
    p.add_argument("--channels", type=int, default=None, choices=(1, 2),
                   help="1 or 2 (default: the file's own; 1 for stdin and --mic); with two, "
                        "channel 0 is the agent and 1 the customer")
    p.add_argument("--downmix", action="store_true",
                   help="mix a file with more than two channels into one")
    p.add_argument("--chunk-ms", type=int, default=None, metavar="MS",
                   help="chunk duration, 20-200 ms (default: VOXQ_DEFAULT_CHUNK_MS)")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--realtime", dest="fast", action="store_false",
                      help="publish at the pace of a live call (default)")
    pace.add_argument("--fast", dest="fast", action="store_true",
                      help="publish as fast as Redis takes it")
    p.set_defaults(fast=False)
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="vendor option; VALUE is JSON if it parses, else a string (repeatable)")
    p.add_argument("--wait", action="store_true",
                   help="after publishing, wait for the session to end; exit 1 unless it "
                        "finished")
    p.add_argument("--grace", type=float, default=SIGNAL_GRACE_SECONDS, metavar="SECONDS",
                   help="after Ctrl-C/SIGTERM, how long buffered audio and the end of stream "
                        f"may take to reach Redis before giving up (default {SIGNAL_GRACE_SECONDS:g})")
    p.add_argument("--mic", action="store_true", help="capture from a microphone")
    p.add_argument("--device", default=None, help="input device name or index for --mic")
    p.add_argument("--raw-format", choices=RAW_ENCODINGS, default=None,
                   help="read PATH or stdin as headerless PCM (stdin default: s16le)")
    p.add_argument("--raw-rate", type=int, default=None, metavar="HZ",
                   help="rate of the raw input (default: --rate)")
    p.add_argument("--raw-channels", type=int, default=None, choices=(1, 2),
                   help="channels of the raw input (default: --channels)")
    prog = p.add_mutually_exclusive_group()
    prog.add_argument("--progress", dest="progress", action="store_true", default=None,
                      help="show progress on stderr even when it is not a terminal")
    prog.add_argument("--no-progress", dest="progress", action="store_false",
                      help="never show progress")
    p.set_defaults(func=run)
