"""Audio in, bus PCM out: read files and raw PCM, mix channels, resample with soxr, chunk.

Everything is vectorised with numpy (no per-sample Python). Bus audio is s16le, interleaved
when stereo, at 8-48 kHz. Streaming converters keep memory bounded for hours-long input.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
import soxr

from voxq.errors import InvalidAudio

RawEncoding = Literal["s16le", "f32le", "mulaw"]
RAW_ENCODINGS: tuple[RawEncoding, ...] = ("s16le", "f32le", "mulaw")


def _mulaw_table() -> np.ndarray:
    """G.711 μ-law byte → linear float in [-1, 1], decoded once for all 256 codes."""
    u = ~np.arange(256, dtype=np.uint8)
    sign = (u & 0x80) != 0
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = ((mantissa.astype(np.int32) << 3) + 0x84) << exponent.astype(np.int32)
    linear = np.where(sign, 0x84 - magnitude, magnitude - 0x84)
    return (linear / 32768.0).astype(np.float32)


MULAW_TO_FLOAT = _mulaw_table()


def decode_raw(data: bytes | memoryview, encoding: RawEncoding, channels: int) -> np.ndarray:
    """Raw interleaved PCM bytes → float32 array of shape (frames, channels)."""
    if channels < 1:
        raise InvalidAudio(f"channels must be at least 1, not {channels}")
    if encoding == "s16le":
        width = 2
    elif encoding == "f32le":
        width = 4
    elif encoding == "mulaw":
        width = 1
    else:
        raise InvalidAudio(f"unknown raw encoding {encoding!r}: use one of {RAW_ENCODINGS}")
    frame = width * channels
    if len(data) % frame:
        raise InvalidAudio(
            f"{len(data)} bytes is not a whole number of {encoding} frames of {channels} channel(s)"
        )
    if encoding == "s16le":
        x = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    elif encoding == "f32le":
        x = np.frombuffer(data, dtype="<f4").astype(np.float32)
        if not np.isfinite(x).all():
            raise InvalidAudio("f32le audio contains NaN or infinite samples")
    else:
        x = MULAW_TO_FLOAT[np.frombuffer(data, dtype=np.uint8)]
    return x.reshape(-1, channels)


def float_to_s16(x: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] → int16 with clipping (round to nearest)."""
    y = np.rint(np.clip(x, -1.0, 32767 / 32768) * 32768.0)
    return y.astype("<i2")


def mix_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """(frames, n) → (frames, channels): average down to mono, duplicate mono up to stereo."""
    n = x.shape[1]
    if n == channels:
        return x
    if channels == 1:
        return x.mean(axis=1, keepdims=True, dtype=np.float32)
    if n == 1:
        return np.repeat(x, channels, axis=1)
    raise InvalidAudio(f"cannot map {n} channels to {channels}; give mono or stereo input")


@dataclass(frozen=True, slots=True)
class AudioInfo:
    """What a file holds."""

    rate: int
    channels: int
    frames: int

    @property
    def seconds(self) -> float:
        """Duration in seconds."""
        return self.frames / self.rate if self.rate else 0.0


def probe_file(path: str | Path) -> AudioInfo:
    """Rate, channels and length of an audio file that libsndfile can read."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise InvalidAudio(f"cannot read audio file {str(path)!r}: {e}") from e
    return AudioInfo(rate=int(info.samplerate), channels=int(info.channels),
                     frames=int(info.frames))


def read_file(path: str | Path) -> tuple[np.ndarray, int]:
    """Whole file → (float32 (frames, channels), rate). For short files; see iter_file_blocks."""
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise InvalidAudio(f"cannot read audio file {str(path)!r}: {e}") from e
    return data, int(rate)


def iter_file_blocks(path: str | Path, block_frames: int = 16384) -> Iterator[np.ndarray]:
    """Stream a file as float32 (frames, channels) blocks so memory stays bounded.

    Reads libsndfile sequentially (``sf_readf_float``): python-soundfile's ``read`` seeks to
    where it expects to be after every block, and libsndfile seeks MP3 only approximately,
    so block-wise reads through it skip and pad audio (a 1 kHz tone came out at ~1007 Hz).
    """
    try:
        from soundfile import _ffi, _snd  # private, but stable for years
    except ImportError:  # pragma: no cover - a soundfile without them: exact except for MP3
        _ffi = _snd = None
    try:
        with sf.SoundFile(str(path)) as f:
            while True:
                if _snd is None:
                    block = f.read(block_frames, dtype="float32", always_2d=True)
                    n = len(block)
                else:
                    block = np.empty((block_frames, f.channels), dtype=np.float32)
                    n = _snd.sf_readf_float(f._file, _ffi.cast("float *", block.ctypes.data),
                                            block_frames)
                    if _snd.sf_error(f._file):
                        err = _ffi.string(_snd.sf_strerror(f._file)).decode(errors="replace")
                        raise InvalidAudio(f"cannot decode audio file {str(path)!r}: {err}")
                if n <= 0:
                    return
                yield block[:n]
    except (sf.LibsndfileError, RuntimeError) as e:
        raise InvalidAudio(f"cannot read audio file {str(path)!r}: {e}") from e


class Converter:
    """Streaming float (frames, n) at one rate → s16le bytes at another rate and channel count.

    Keeps soxr's filter state between blocks, so a long input converted block by block is
    identical to converting it at once (no clicks at block edges).
    """

    def __init__(self, src_rate: int, dst_rate: int, dst_channels: int, quality: str = "HQ"):
        if src_rate <= 0 or dst_rate <= 0:
            raise InvalidAudio("sample rates must be positive")
        self.src_rate, self.dst_rate, self.dst_channels = src_rate, dst_rate, dst_channels
        self._stream = (
            None if src_rate == dst_rate
            else soxr.ResampleStream(src_rate, dst_rate, dst_channels, dtype="float32",
                                     quality=quality)
        )

    def process(self, block: np.ndarray, last: bool = False) -> bytes:
        """Convert one block; ``last=True`` flushes the resampler's tail."""
        x = np.ascontiguousarray(mix_channels(block, self.dst_channels), dtype=np.float32)
        if self._stream is not None:
            x = self._stream.resample_chunk(x, last=last)
        return float_to_s16(x).tobytes()


def convert(x: np.ndarray, src_rate: int, dst_rate: int, dst_channels: int) -> bytes:
    """One-shot conversion of a whole float (frames, n) array to bus PCM bytes."""
    return Converter(src_rate, dst_rate, dst_channels).process(x, last=True)


def convert_pcm(pcm: bytes, src_rate: int, dst_rate: int, channels: int) -> bytes:
    """Resample s16le PCM (for vendors that need another rate than the bus carries)."""
    if src_rate == dst_rate:
        return pcm
    return convert(decode_raw(pcm, "s16le", channels), src_rate, dst_rate, channels)


def chunk_bytes_for(rate: int, channels: int, chunk_ms: int) -> int:
    """Bytes of one chunk of ``chunk_ms`` of s16 audio."""
    return rate * chunk_ms // 1000 * channels * 2


class Chunker:
    """Cut a byte stream into fixed-size chunks; the remainder comes out on flush."""

    def __init__(self, chunk_size: int):
        if chunk_size <= 0:
            raise InvalidAudio("chunk size must be positive")
        self.chunk_size = chunk_size
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Add bytes and yield every whole chunk now available."""
        self._buf += data
        n = len(self._buf) // self.chunk_size * self.chunk_size
        if n:
            view = memoryview(self._buf)
            for i in range(0, n, self.chunk_size):
                yield bytes(view[i:i + self.chunk_size])
            view.release()
            del self._buf[:n]

    def flush(self) -> Iterator[bytes]:
        """Yield what is left (a short last chunk), if anything."""
        if self._buf:
            yield bytes(self._buf)
            self._buf.clear()


def deinterleave(pcm: bytes, channels: int) -> list[bytes]:
    """Interleaved s16le → one s16le byte string per channel."""
    if channels == 1:
        return [pcm]
    a = np.frombuffer(pcm, dtype="<i2").reshape(-1, channels)
    return [np.ascontiguousarray(a[:, c]).tobytes() for c in range(channels)]
