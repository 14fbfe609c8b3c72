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

from producer.publisher import Publisher, session_meta
from producer.sources import (
    file_source,
    iterate_in_thread,
    mic_source,
    raw_source,
    stdin_stream,
)
from voxq.audio import RAW_ENCODINGS, probe_file
from voxq.errors import InvalidAudio, InvalidInput
from voxq.keys import validate_session_id
from voxq.records import SessionMeta
from voxq.redis_conn import redis_url
from voxq.settings import Settings, get_settings

EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


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


async def produce(url: str, meta: SessionMeta, source: Source, *, realtime: bool,
                  progress: bool | None, settings: Settings) -> int:
    """Create the session, publish the source, finish with eos; 130/143 after SIGINT/SIGTERM."""
    loop = asyncio.get_running_loop()
    pub = Publisher(url, settings=settings)
    await pub.open(meta.session_id, meta.vendor, meta.language, meta.rate, meta.channels,
                   meta.chunk_ms, meta.options)
    print(meta.session_id, flush=True)
    # a microphone is paced by its own clock; files and stdin are paced unless --fast
    pacer = Pacer(meta.bytes_per_second, loop.time) if realtime and source.kind != "mic" else None
    display = make_display(source, meta, progress)
    pump = asyncio.create_task(_pump(pub, iterate_in_thread(source.blocks), pacer, display))
    main = asyncio.current_task()
    got: list[int] = []

    def on_signal(signum: int) -> None:
        got.append(signum)
        (pump if len(got) == 1 else main or pump).cancel()

    handled = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal, sig)
            handled.append(sig)
    try:
        try:
            await pump
        except asyncio.CancelledError:
            if not got:
                raise
        except BaseException:
            display.stop()
            await pub.abort()
            raise
        display.stop()
        try:
            await pub.close()
        except asyncio.CancelledError:
            print(f"voxq produce: interrupted again; session {meta.session_id} aborted "
                  "without end of stream", file=sys.stderr)
            return EXIT_INTERRUPTED
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
    if progress or (progress is None and sys.stderr.isatty()):
        print(f"voxq produce: published {pub.stats.chunks} chunks "
              f"({pub.stats.bytes / meta.bytes_per_second:.1f} s of audio) to session "
              f"{meta.session_id}", file=sys.stderr)
    if got:
        return EXIT_TERMINATED if got[0] == signal.SIGTERM else EXIT_INTERRUPTED
    return 0


def run(args: argparse.Namespace) -> int:
    """Validate everything, then publish the chosen source as one session."""
    settings = get_settings()
    options = parse_options(args.option)
    sid = validate_session_id(args.session) if args.session is not None else uuid.uuid4().hex
    meta = session_meta(sid, args.vendor, args.language, args.rate, args.channels,
                        args.chunk_ms or settings.default_chunk_ms, options)
    source = open_source(args, meta, settings)
    with redis_url(settings) as url:
        return asyncio.run(produce(url, meta, source, realtime=not args.fast,
                                   progress=args.progress, settings=settings))


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
    p.add_argument("--rate", type=int, default=16000, help="bus sample rate in Hz (16000)")
    p.add_argument("--channels", type=int, default=1, choices=(1, 2), help="1 or 2 (1)")
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
