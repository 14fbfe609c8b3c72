"""Audio sources for producers: each yields s16le PCM blocks already at the session's rate
and channel count, converting whatever it reads with voxq.audio (numpy + soxr, streamed in
blocks so memory stays bounded however long the input is).

* `file_source`: anything libsndfile reads (WAV, FLAC, OGG/Vorbis/Opus, MP3, …).
* `raw_source`: headerless PCM from a binary stream such as stdin (s16le, f32le, μ-law).
* `mic_source`: a capture device through `sounddevice` (the optional `mic` extra).
* `iterate_in_thread`: run any of these blocking iterators off the event loop.

A WebSocket ingest source (listed in DESIGN.md) is not implemented here yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sys
import threading
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO, TypeVar, cast

import numpy as np

from voxq.audio import (
    RAW_ENCODINGS,
    Converter,
    RawEncoding,
    decode_raw,
    iter_file_blocks,
    probe_file,
)
from voxq.errors import InvalidAudio, InvalidInput

log = logging.getLogger("voxq.producer")

T = TypeVar("T")

RAW_WIDTH: dict[str, int] = {"s16le": 2, "f32le": 4, "mulaw": 1}
MIC_INSTALL_HINT = (
    "microphone capture needs the optional `mic` extra and PortAudio: "
    "run `pip install 'voxq[mic]'` and install PortAudio (e.g. `apt-get install libportaudio2`)"
)


def file_source(path: str | Path, rate: int, channels: int,
                block_frames: int = 16384) -> Iterator[bytes]:
    """Stream an audio file as bus PCM blocks; raises InvalidAudio now if it is unreadable."""
    info = probe_file(path)
    if info.channels < 1:
        raise InvalidAudio(f"audio file {str(path)!r} has no channels")
    if info.channels > 2 and channels == 2:
        raise InvalidAudio(
            f"audio file {str(path)!r} has {info.channels} channels; stereo output needs a "
            "mono or stereo file")
    return _file_blocks(path, info.rate, info.channels, rate, channels, block_frames)


def _file_blocks(path: str | Path, src_rate: int, src_channels: int, rate: int, channels: int,
                 block_frames: int) -> Iterator[bytes]:
    conv = Converter(src_rate, rate, channels)
    for block in iter_file_blocks(path, block_frames):
        out = conv.process(block)
        if out:
            yield out
    tail = conv.process(np.zeros((0, src_channels), dtype=np.float32), last=True)
    if tail:
        yield tail


class FdReader:
    """Blocking exact-length reads from a file descriptor, without Python's buffered-IO lock.

    Why: reading ``sys.stdin.buffer`` in a daemon thread that is still blocked at exit makes
    the interpreter abort ("could not acquire lock for <stdin> at interpreter shutdown");
    ``os.read`` on the descriptor holds no such lock.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes: fewer only at end of input."""
        parts: list[bytes] = []
        got = 0
        while n < 0 or got < n:
            data = os.read(self.fd, 1 << 16 if n < 0 else min(n - got, 1 << 20))
            if not data:
                break
            parts.append(data)
            got += len(data)
        return b"".join(parts)


def stdin_stream() -> BinaryIO:
    """Standard input as an exact-read byte stream that is safe to read from a daemon thread."""
    return cast(BinaryIO, FdReader(sys.stdin.fileno() if sys.stdin is not None else 0))


def raw_source(stream: BinaryIO, encoding: str, src_rate: int, src_channels: int,
               rate: int, channels: int, block_ms: int = 100) -> Iterator[bytes]:
    """Read headerless PCM from a binary stream (e.g. stdin) and convert it to bus PCM."""
    if encoding not in RAW_WIDTH:
        raise InvalidAudio(f"unknown raw format {encoding!r}: use one of {', '.join(RAW_ENCODINGS)}")
    if not (1000 <= src_rate <= 384000):
        raise InvalidAudio(f"raw input rate {src_rate} Hz is not a plausible sample rate")
    if src_channels not in (1, 2):
        raise InvalidAudio(f"raw input must have 1 or 2 channels, not {src_channels}")
    frame = RAW_WIDTH[encoding] * src_channels
    block_bytes = max(1, src_rate * block_ms // 1000) * frame
    return _raw_blocks(stream, cast(RawEncoding, encoding), src_rate, src_channels, rate,
                       channels, block_bytes, frame)


def _raw_blocks(stream: BinaryIO, encoding: RawEncoding, src_rate: int, src_channels: int,
                rate: int, channels: int, block_bytes: int, frame: int) -> Iterator[bytes]:
    conv = Converter(src_rate, rate, channels)
    total = 0
    while True:
        try:
            data = stream.read(block_bytes)
        except OSError as e:
            raise InvalidAudio(f"cannot read raw audio input: {e}") from e
        if not data:
            break
        total += len(data)
        if len(data) % frame:
            # a short read mid-stream is only legal at the very end
            more = stream.read(frame - len(data) % frame)
            data += more or b""
            total += len(more or b"")
            if len(data) % frame:
                raise InvalidAudio(
                    f"raw input ended after {total} bytes, which is not a whole number of "
                    f"{encoding} frames of {src_channels} channel(s)")
        out = conv.process(decode_raw(data, encoding, src_channels))
        if out:
            yield out
    tail = conv.process(np.zeros((0, src_channels), dtype=np.float32), last=True)
    if tail:
        yield tail


def import_sounddevice() -> ModuleType:
    """The sounddevice module, or InvalidInput saying how to install it and PortAudio."""
    try:
        import sounddevice
    except ImportError as e:
        raise InvalidInput(f"{MIC_INSTALL_HINT} ({e})") from e
    except OSError as e:  # sounddevice is installed but the PortAudio library is not
        raise InvalidInput(f"{MIC_INSTALL_HINT} ({e})") from e
    return sounddevice


def mic_source(rate: int, channels: int, device: int | str | None = None, block_ms: int = 100,
               max_queued_blocks: int = 50) -> Iterator[bytes]:
    """Capture from an input device and yield bus PCM blocks (paced by the device clock).

    The device is opened at its own default rate and resampled, because many devices do not
    capture at 8 or 16 kHz. If the consumer falls behind by ``max_queued_blocks`` blocks the
    newest blocks are dropped (and counted in a warning) rather than queued without bound.
    """
    sd = import_sounddevice()
    try:
        info: Any = sd.query_devices(device, "input")
    except (ValueError, sd.PortAudioError) as e:
        raise InvalidInput(f"no usable audio input device {device!r}: {e}") from e
    dev_rate = int(info["default_samplerate"])
    dev_channels = min(channels, int(info["max_input_channels"]))
    if dev_channels < 1 or dev_rate <= 0:
        raise InvalidInput(f"audio device {info['name']!r} cannot capture")
    return _mic_blocks(sd, device, dev_rate, dev_channels, rate, channels, block_ms,
                       max_queued_blocks)


def _mic_blocks(sd: ModuleType, device: int | str | None, dev_rate: int, dev_channels: int,
                rate: int, channels: int, block_ms: int, max_queued: int) -> Iterator[bytes]:
    q: queue.Queue[np.ndarray] = queue.Queue(maxsize=max_queued)
    dropped = 0

    def on_audio(indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        nonlocal dropped
        try:
            q.put_nowait(indata.copy())
        except queue.Full:
            dropped += 1

    conv = Converter(dev_rate, rate, channels)
    try:
        stream = sd.InputStream(device=device, channels=dev_channels, samplerate=dev_rate,
                                dtype="float32", blocksize=max(1, dev_rate * block_ms // 1000),
                                callback=on_audio)
    except sd.PortAudioError as e:
        raise InvalidInput(f"cannot open audio input device {device!r}: {e}") from e
    with stream:
        reported = 0
        while True:
            block = q.get()
            if dropped > reported:
                log.warning("microphone: %d block(s) dropped, the consumer is too slow",
                            dropped - reported)
                reported = dropped
            out = conv.process(block)
            if out:
                yield out


async def iterate_in_thread(it: Iterator[T], maxsize: int = 4) -> AsyncGenerator[T, None]:
    """Pull a blocking iterator in a daemon thread, so reads and conversion never stall the loop.

    At most ``maxsize`` items wait in between (backpressure reaches the reader). Close the
    returned generator (``contextlib.aclosing``) to stop the thread; a thread stuck in a read
    that never returns does not keep the process alive.
    """
    loop = asyncio.get_running_loop()
    q: asyncio.Queue[tuple[int, Any]] = asyncio.Queue(maxsize)
    stop = threading.Event()

    def deliver(kind: int, value: Any) -> bool:
        try:
            fut = asyncio.run_coroutine_threadsafe(q.put((kind, value)), loop)
        except RuntimeError:  # loop closed
            return False
        while not stop.is_set():
            try:
                fut.result(timeout=0.2)
                return True
            except TimeoutError:
                continue
            except Exception:
                return False
        fut.cancel()
        return False

    def pump() -> None:
        try:
            for item in it:
                if stop.is_set() or not deliver(0, item):
                    return
            deliver(1, None)
        except BaseException as e:
            deliver(2, e)
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()

    thread = threading.Thread(target=pump, daemon=True, name="voxq-source")
    thread.start()
    try:
        while True:
            kind, value = await q.get()
            if kind == 0:
                yield value
            elif kind == 1:
                return
            else:
                raise value
    finally:
        stop.set()
