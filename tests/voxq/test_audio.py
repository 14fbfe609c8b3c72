"""Audio conversion: formats libsndfile reads, raw PCM and μ-law, channel mixing, soxr
resampling (a sine keeps its frequency), chunking, and streaming equal to one-shot."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voxq.audio import (
    Chunker,
    Converter,
    chunk_bytes_for,
    convert,
    decode_raw,
    deinterleave,
    float_to_s16,
    iter_file_blocks,
    mix_channels,
    probe_file,
    read_file,
)
from voxq.errors import InvalidAudio


def sine(freq: float, rate: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(pcm: bytes, rate: int) -> float:
    x = np.frombuffer(pcm, "<i2").astype(np.float64)
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * rate / len(x))


@pytest.mark.parametrize("src,dst", [(44100, 16000), (48000, 8000), (8000, 16000), (16000, 16000)])
def test_resampling_keeps_frequency_and_duration(src: int, dst: int) -> None:
    x = sine(1000, src, 1.0)[:, None]
    out = convert(x, src, dst, 1)
    assert abs(len(out) // 2 - dst) <= 2
    assert abs(peak_hz(out, dst) - 1000) < 3


def test_resampler_is_a_real_filter_not_averaging() -> None:
    # 7 kHz at 44.1 kHz is above the 4 kHz Nyquist of 8 kHz: a real resampler removes it,
    # naive decimation would alias it into the band.
    out = convert(sine(7000, 44100, 1.0)[:, None], 44100, 8000, 1)
    rms = np.sqrt(np.mean(np.frombuffer(out, "<i2").astype(np.float64) ** 2))
    assert rms < 0.01 * 32768 * 0.5


def test_streaming_equals_one_shot() -> None:
    x = np.stack([sine(440, 44100, 2.0), sine(880, 44100, 2.0)], axis=1)
    whole = convert(x, 44100, 16000, 1)
    conv = Converter(44100, 16000, 1)
    parts = [conv.process(x[i:i + 1000]) for i in range(0, len(x), 1000)]
    parts.append(conv.process(x[:0], last=True))
    streamed = b"".join(parts)
    a, b = np.frombuffer(whole, "<i2"), np.frombuffer(streamed, "<i2")
    assert abs(len(a) - len(b)) <= 2
    n = min(len(a), len(b))
    assert np.max(np.abs(a[:n].astype(int) - b[:n].astype(int))) <= 2


def test_channel_mixing() -> None:
    st = np.array([[0.5, -0.5], [1.0, 0.0]], np.float32)
    assert mix_channels(st, 1).tolist() == [[0.0], [0.5]]
    assert mix_channels(st[:, :1], 2).tolist() == [[0.5, 0.5], [1.0, 1.0]]
    with pytest.raises(InvalidAudio):
        mix_channels(np.zeros((4, 3), np.float32), 2)


def test_raw_formats() -> None:
    s16 = np.array([0, 16384, -32768, 32767], "<i2").tobytes()
    assert decode_raw(s16, "s16le", 1)[:, 0].tolist() == [0, 0.5, -1, 32767 / 32768]
    f32 = np.array([0.25, -0.25], "<f4").tobytes()
    assert decode_raw(f32, "f32le", 2).shape == (1, 2)
    with pytest.raises(InvalidAudio):
        decode_raw(s16[:3], "s16le", 1)
    with pytest.raises(InvalidAudio):
        decode_raw(np.array([np.nan], "<f4").tobytes(), "f32le", 1)
    with pytest.raises(InvalidAudio):
        decode_raw(b"", "alaw", 1)  # type: ignore[arg-type]


def test_mulaw_known_values() -> None:
    # G.711: 0xFF and 0x7F are the two zeros, 0x80 is the largest positive, 0x00 the most negative
    x = decode_raw(bytes([0xFF, 0x7F, 0x80, 0x00]), "mulaw", 1)[:, 0] * 32768
    assert x.tolist() == [0, 0, 32124, -32124]


def test_float_to_s16_clips() -> None:
    assert float_to_s16(np.array([2.0, -2.0, 0.0])).tolist() == [32767, -32768, 0]


@pytest.mark.parametrize("fmt,ext", [("WAV", "wav"), ("FLAC", "flac"), ("OGG", "ogg"),
                                     ("MP3", "mp3")])
def test_files_libsndfile_reads(tmp_path: Path, fmt: str, ext: str) -> None:
    if fmt not in sf.available_formats():
        pytest.skip(f"libsndfile here cannot write {fmt}")
    p = tmp_path / f"a.{ext}"
    sf.write(p, np.stack([sine(500, 44100, 1.0)] * 2, axis=1), 44100, format=fmt)
    info = probe_file(p)
    assert (info.rate, info.channels) == (44100, 2) and abs(info.seconds - 1.0) < 0.1
    data, rate = read_file(p)
    out = convert(data, rate, 16000, 1)
    assert abs(peak_hz(out, 16000) - 500) < 5
    streamed = np.concatenate(list(iter_file_blocks(p, 4096)))
    assert streamed.shape == data.shape and np.array_equal(streamed, data)  # exact, MP3 too


def test_unreadable_file_is_a_clear_error(tmp_path: Path) -> None:
    p = tmp_path / "x.wav"
    p.write_bytes(b"not audio at all")
    with pytest.raises(InvalidAudio, match="cannot read audio file"):
        probe_file(p)
    with pytest.raises(InvalidAudio):
        read_file(tmp_path / "missing.wav")


def test_chunker_and_sizes() -> None:
    assert chunk_bytes_for(16000, 1, 100) == 3200
    assert chunk_bytes_for(8000, 2, 20) == 640
    c = Chunker(4)
    assert list(c.feed(b"abcdef")) == [b"abcd"]
    assert list(c.feed(b"gh")) == [b"efgh"]
    assert list(c.feed(b"i")) == [] and list(c.flush()) == [b"i"]


def test_deinterleave() -> None:
    pcm = np.array([[1, 2], [3, 4]], "<i2").tobytes()
    left, right = deinterleave(pcm, 2)
    assert np.frombuffer(left, "<i2").tolist() == [1, 3]
    assert np.frombuffer(right, "<i2").tolist() == [2, 4]
