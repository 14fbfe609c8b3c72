"""Audio sources: files of every container libsndfile writes here, raw stdin formats,
resampling and channel mixing, streaming in blocks, and the microphone's install hint."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.abc
import io
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import soundfile as sf

from producer.sources import file_source, import_sounddevice, iterate_in_thread, raw_source
from voxq.audio import MULAW_TO_FLOAT, convert, read_file
from voxq.errors import InvalidAudio, InvalidInput

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "voxq" / "samples" / "support-call.flac"

# (format, subtype, extension): what the tests write with soundfile
CONTAINERS = [
    ("WAV", "PCM_16", "wav"),
    ("WAV", "FLOAT", "wav"),
    ("FLAC", "PCM_16", "flac"),
    ("OGG", "VORBIS", "ogg"),
    ("MP3", "MPEG_LAYER_III", "mp3"),
]


def _sine(seconds: float, rate: int, freq: float, channels: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    x = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.repeat(x[:, None], channels, axis=1)


def _pcm(blocks: Iterator[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(blocks), dtype="<i2")


def _peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x.astype(np.float64) * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[int(np.argmax(spectrum))])


@pytest.mark.parametrize(("fmt", "subtype", "ext"), CONTAINERS,
                         ids=[f"{f}-{s}" for f, s, _ in CONTAINERS])
def test_file_44k_stereo_to_16k_mono(tmp_path: Path, fmt: str, subtype: str, ext: str) -> None:
    if not sf.check_format(fmt, subtype):
        pytest.skip(f"libsndfile here cannot write {fmt}/{subtype}")
    path = tmp_path / f"tone.{ext}"
    try:
        sf.write(path, _sine(3.0, 44100, 1000.0, 2), 44100, format=fmt, subtype=subtype)
    except (sf.LibsndfileError, RuntimeError) as e:
        pytest.skip(f"libsndfile here cannot write {fmt}/{subtype}: {e}")

    x = _pcm(file_source(path, 16000, 1, block_frames=4096))
    # codecs may pad a little (MP3 adds encoder delay); the length is 3 s within 100 ms
    assert abs(len(x) / 16000 - 3.0) < 0.1
    assert abs(_peak_hz(x, 16000) - 1000.0) < 2.0
    rms = np.sqrt(np.mean((x[4000:-4000] / 32768.0) ** 2))
    assert 0.3 < rms < 0.4  # a 0.5-amplitude sine has RMS 0.354: averaging L+R kept the level


@pytest.mark.parametrize(("fmt", "subtype", "ext"), CONTAINERS,
                         ids=[f"{f}-{s}" for f, s, _ in CONTAINERS])
def test_streaming_in_small_blocks_equals_converting_at_once(tmp_path: Path, fmt: str,
                                                             subtype: str, ext: str) -> None:
    """Block-wise decoding and resampling give the same PCM as the whole file at once
    (MP3 included: soundfile's per-read seek would skip audio there, see _mpeg_blocks)."""
    if not sf.check_format(fmt, subtype):
        pytest.skip(f"libsndfile here cannot write {fmt}/{subtype}")
    path = tmp_path / f"tone.{ext}"
    sf.write(path, _sine(2.0, 44100, 440.0, 2), 44100, format=fmt, subtype=subtype)
    whole, rate = read_file(path)
    expected = np.frombuffer(convert(whole, rate, 16000, 1), dtype="<i2")
    streamed = _pcm(file_source(path, 16000, 1, block_frames=1000))
    assert len(streamed) == len(expected)
    assert np.abs(streamed.astype(int) - expected.astype(int)).max() <= 1


def test_resampling_preserves_frequency_and_duration_exactly(tmp_path: Path) -> None:
    path = tmp_path / "hf.wav"
    sf.write(path, _sine(2.0, 44100, 3000.0, 1), 44100, subtype="FLOAT")
    x = _pcm(file_source(path, 16000, 1, block_frames=1000))  # many small blocks
    assert len(x) == 32000
    assert abs(_peak_hz(x, 16000) - 3000.0) < 1.0


def test_stereo_stays_interleaved_and_mono_is_duplicated(tmp_path: Path) -> None:
    st = np.zeros((16000, 2), dtype=np.float32)
    st[:, 0], st[:, 1] = 0.25, -0.25
    path = tmp_path / "st.wav"
    sf.write(path, st, 16000, subtype="PCM_16")
    x = _pcm(file_source(path, 16000, 2)).reshape(-1, 2)
    assert (x[:, 0] == 8192).all() and (x[:, 1] == -8192).all()

    mono = tmp_path / "mono.wav"
    sf.write(mono, np.full(8000, 0.5, dtype=np.float32), 8000, subtype="PCM_16")
    y = _pcm(file_source(mono, 8000, 2)).reshape(-1, 2)
    assert (y[:, 0] == y[:, 1]).all() and len(y) == 8000


def test_same_rate_file_passes_through_bit_exact() -> None:
    data, rate = sf.read(SAMPLE, dtype="int16")
    assert rate == 16000
    blocks = list(file_source(SAMPLE, 16000, 1, block_frames=8000))
    assert len(blocks) > 30  # streamed, not read whole
    assert b"".join(blocks) == data.astype("<i2").tobytes()


def test_unreadable_files_fail_when_opened(tmp_path: Path) -> None:
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio")
    with pytest.raises(InvalidAudio, match="cannot read audio file"):
        file_source(text, 16000, 1)  # eager: before the first block is asked for
    with pytest.raises(InvalidAudio):
        file_source(tmp_path / "missing.flac", 16000, 1)
    six = tmp_path / "six.wav"
    sf.write(six, np.zeros((100, 6), dtype=np.float32), 16000)
    with pytest.raises(InvalidAudio, match="6 channels"):
        file_source(six, 16000, 2)
    assert len(_pcm(file_source(six, 16000, 1))) == 100  # 6 → mono is fine


# --- raw input ---------------------------------------------------------------------------

def test_raw_s16le_passthrough() -> None:
    pcm = (np.arange(-8000, 8000, dtype="<i2") * 2).tobytes()
    out = b"".join(raw_source(io.BytesIO(pcm), "s16le", 16000, 1, 16000, 1, block_ms=20))
    assert out == pcm


def test_raw_f32le_stereo_to_mono() -> None:
    x = np.zeros((4000, 2), dtype="<f4")
    x[:, 0], x[:, 1] = 0.5, 0.0
    out = _pcm(raw_source(io.BytesIO(x.tobytes()), "f32le", 16000, 2, 16000, 1))
    assert len(out) == 4000 and (out == 8192).all()


def test_raw_mulaw_8k_to_16k() -> None:
    # μ-law codes of an 8 kHz 400 Hz sine, encoded by nearest table value
    t = np.arange(8000) / 8000
    target = 0.5 * np.sin(2 * np.pi * 400 * t)
    codes = np.abs(MULAW_TO_FLOAT[None, :] - target[:, None]).argmin(axis=1).astype(np.uint8)
    out = _pcm(raw_source(io.BytesIO(codes.tobytes()), "mulaw", 8000, 1, 16000, 1))
    assert len(out) == 16000
    assert abs(_peak_hz(out, 16000) - 400.0) < 2.0
    # known G.711 codes decode to their table values
    same = _pcm(raw_source(io.BytesIO(bytes([0x00, 0x80, 0xFF, 0x7F])), "mulaw", 8000, 1,
                           8000, 1))
    assert same.tolist() == [-32124, 32124, 0, 0]


def test_raw_rejects_partial_frames_and_unknown_formats() -> None:
    with pytest.raises(InvalidAudio, match="whole number"):
        b"".join(raw_source(io.BytesIO(b"\x00" * 7), "s16le", 16000, 2, 16000, 1))
    with pytest.raises(InvalidAudio, match="unknown raw format"):
        raw_source(io.BytesIO(b""), "alaw", 8000, 1, 16000, 1)
    with pytest.raises(InvalidAudio, match="NaN"):
        b"".join(raw_source(io.BytesIO(np.array([np.nan], "<f4").tobytes()), "f32le", 16000,
                            1, 16000, 1))
    with pytest.raises(InvalidAudio):
        raw_source(io.BytesIO(b""), "s16le", 16000, 3, 16000, 1)


def test_raw_reads_in_blocks() -> None:
    """A long stream is consumed block by block, never read whole."""

    class Counting(io.BytesIO):
        reads: ClassVar[list[int]] = []

        def read(self, n: int | None = -1) -> bytes:
            self.reads.append(-1 if n is None else n)
            return super().read(n)

    stream = Counting(bytes(16000 * 2 * 10))
    blocks = list(raw_source(stream, "s16le", 16000, 1, 16000, 1, block_ms=100))
    assert len(blocks) == 100 and max(stream.reads) == 3200


# --- microphone --------------------------------------------------------------------------

class _Refuse(importlib.abc.MetaPathFinder):
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "sounddevice":
            raise self.exc


@pytest.mark.parametrize("exc", [ModuleNotFoundError("No module named 'sounddevice'"),
                                 OSError("PortAudio library not found")])
def test_mic_without_sounddevice_or_portaudio_explains_the_fix(
        monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_Refuse(exc), *sys.meta_path])
    with pytest.raises(InvalidInput) as info:
        import_sounddevice()
    msg = str(info.value)
    assert "pip install 'voxq[mic]'" in msg and "libportaudio2" in msg


# --- thread bridge -----------------------------------------------------------------------

async def test_iterate_in_thread_order_errors_and_early_close() -> None:
    got = [x async for x in iterate_in_thread(iter(range(100)), maxsize=2)]
    assert got == list(range(100))

    def broken() -> Iterator[int]:
        yield 1
        raise InvalidAudio("bad block")

    with pytest.raises(InvalidAudio, match="bad block"):
        async for _ in iterate_in_thread(broken()):
            pass

    closed = threading.Event()

    def endless() -> Iterator[int]:
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    async with contextlib.aclosing(iterate_in_thread(endless(), maxsize=1)) as it:
        async for i in it:
            if i == 3:
                break
    await asyncio.to_thread(closed.wait, 30)
    assert closed.is_set()
