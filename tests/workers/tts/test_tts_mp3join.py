"""MP3 parsing and joining: parts become one file that decodes to exactly the sum of the parts,
with a single header frame, no click at the joins, and a frame-level fallback that still tells
players the right length."""

from __future__ import annotations

import io
import math
import struct

import numpy as np
import pytest
import soundfile as sf

from voxq.errors import InvalidAudio
from workers.tts import mp3join


def tone(seconds: float, rate: int = 24000, freq: float = 440.0, amp: float = 0.4,
         phase: float = 0.0) -> np.ndarray:
    """A sine as float32 samples."""
    t = np.arange(round(seconds * rate)) / rate
    return (amp * np.sin(2 * math.pi * freq * t + phase)).astype(np.float32)


def mp3(seconds: float, rate: int = 24000, **kw: float) -> bytes:
    """A tone as MP3 the way libsndfile writes it (VBR, Xing + LAME tag)."""
    out = io.BytesIO()
    sf.write(out, tone(seconds, rate, **kw), rate, format="MP3")
    return out.getvalue()


def decode(data: bytes) -> tuple[np.ndarray, int]:
    x, rate = sf.read(io.BytesIO(data), dtype="float32")
    return x, rate


def test_parse_header_known_values() -> None:
    h = mp3join.parse_header(bytes.fromhex("FFFB9064"))
    assert h is not None
    assert (h.version, h.layer, h.bitrate, h.sample_rate, h.channels) == (1, 3, 128, 44100, 2)
    assert h.length == 417 and h.samples == 1152 and not h.protected
    h2 = mp3join.parse_header(bytes.fromhex("FFF384C4"))  # MPEG-2 layer III 64 kbit/s 24 kHz mono
    assert h2 is not None
    assert (h2.version, h2.sample_rate, h2.bitrate, h2.channels, h2.samples) == (2, 24000, 64, 1, 576)
    assert h2.length == 72 * 64000 // 24000
    for bad in ("FFFB0064", "FFFBF064", "FFFB9C64", "FFE99064", "00000000", "FFF9"):
        assert mp3join.parse_header(bytes.fromhex(bad)) is None


def test_inspect_reads_frames_and_the_info_frame() -> None:
    info = mp3join.inspect(mp3(1.0, 16000))
    assert info.sample_rate == 16000 and info.channels == 1 and info.has_info_frame
    assert info.frames * 576 / 16000 == pytest.approx(info.seconds)
    assert 1.0 <= info.seconds < 1.2  # encoder delay and padding included before gapless trim


def test_strip_tags_removes_id3v2_id3v1_and_ape() -> None:
    body = mp3(0.3)
    id3v2 = b"ID3\x04\x00\x10" + bytes([0, 0, 0, 20]) + bytes(20) + b"3DI" + bytes(7)  # with footer
    id3v1 = b"TAG" + bytes(125)
    ape = b"APETAGEX" + struct.pack("<IIII", 2000, 32 + 16, 0, 0) + bytes(8)
    ape_block = bytes(16) + ape  # 16 bytes of items, then the footer (size counts items + footer)
    tagged = id3v2 + body + ape_block + id3v1
    assert mp3join.strip_tags(tagged) == body
    assert mp3join.inspect(tagged).frames == mp3join.inspect(body).frames


def test_not_mp3_is_invalid_audio() -> None:
    for junk in (b"", b"hello world" * 50, bytes(4096), b"RIFF" + bytes(100)):
        with pytest.raises(InvalidAudio):
            mp3join.inspect(junk)


def test_one_part_is_returned_unchanged() -> None:
    part = mp3(0.5)
    assert mp3join.join([part]) is part


def test_join_decodes_to_exactly_the_sum_of_the_parts() -> None:
    parts = [mp3(s) for s in (1.0, 0.37, 2.25, 0.08)]
    joined = mp3join.join(parts)
    x, rate = decode(joined)
    assert rate == 24000 and len(x) == round(3.7 * 24000)
    assert mp3join.duration(joined) == pytest.approx(3.7, abs=1e-6)
    stream = mp3join.strip_tags(joined)
    assert stream == joined  # no ID3 tag anywhere
    frames = mp3join.frames_of(stream)
    info = [mp3join.is_info_frame(stream[off:off + h.length], h) for off, h in frames]
    assert info[0] and not any(info[1:])  # one header frame, at the start only
    assert sum(h.length for _, h in frames) == len(stream)  # whole frames, nothing else


def test_join_resamples_a_part_at_another_rate_to_the_requested_rate() -> None:
    joined = mp3join.join([mp3(0.5, 16000), mp3(0.5, 24000), mp3(0.25, 22050)], sample_rate=24000)
    x, rate = decode(joined)
    assert rate == 24000
    assert len(x) == pytest.approx(1.25 * 24000, abs=2)


def test_join_has_no_click_at_the_seam() -> None:
    # part A ends at a crest, part B starts at a trough: a raw splice jumps by 0.8
    a = tone(0.5 + 0.25 / 440, phase=0.0)
    b = tone(0.5, phase=math.pi * 1.5)
    parts = []
    for x in (a, b):
        out = io.BytesIO()
        sf.write(out, x, 24000, format="MP3")
        parts.append(out.getvalue())
    y, _ = decode(mp3join.join(parts))
    seam = len(a)
    jumps = np.abs(np.diff(y[seam - 240:seam + 240]))
    smooth = np.abs(np.diff(y[2400:4800])).max()
    assert jumps.max() < smooth * 2.5  # no step larger than the tone's own slope allows
    assert abs(y[seam - 1]) < 0.1 and abs(y[seam]) < 0.1  # faded to silence around the seam


def test_join_refuses_a_part_that_is_not_mp3_and_names_it() -> None:
    with pytest.raises(InvalidAudio, match="part 2 of 2"):
        mp3join.join([mp3(0.2), b"<html>error</html>" * 10])
    with pytest.raises(InvalidAudio):
        mp3join.join([])


def test_frame_concatenation_fallback_declares_frames_and_plays_the_sum(
        monkeypatch: pytest.MonkeyPatch) -> None:
    parts = [mp3(s) for s in (1.0, 0.5, 0.75)]
    monkeypatch.setattr(mp3join, "can_encode", lambda: False)
    joined = mp3join.join(parts)
    audio_frames = sum(mp3join.inspect(p).frames for p in parts)
    info = mp3join.inspect(joined)
    assert info.has_info_frame and info.frames == audio_frames
    stream = mp3join.strip_tags(joined)
    header = mp3join.parse_header(stream)
    assert header is not None
    off = 4 + header.side_info
    flags, frames, nbytes = struct.unpack_from(">III", stream, off + 4)
    assert flags == 3 and frames == audio_frames and nbytes == len(stream)
    seconds = mp3join.duration(joined)
    # each part keeps its own encoder delay and padding (a few ms of silence per seam)
    assert 2.25 <= seconds <= 2.25 + 0.06 * len(parts)
    x, _ = decode(joined)
    assert len(x) / 24000 == pytest.approx(seconds, abs=0.03)


def test_frame_concatenation_refuses_mixed_rates() -> None:
    with pytest.raises(InvalidAudio, match="differ"):
        mp3join.concat_frames([mp3(0.3, 16000), mp3(0.3, 24000)])


def test_encode_round_trip_and_refusals() -> None:
    data = mp3join.encode(tone(0.5, 16000), 16000)
    assert mp3join.duration(data) == pytest.approx(0.5, abs=1e-6)
    with pytest.raises(InvalidAudio):
        mp3join.encode(np.zeros(0, np.float32), 16000)
    with pytest.raises(InvalidAudio):
        mp3join.encode(tone(0.1, 16000), 12345)
