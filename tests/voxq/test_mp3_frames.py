"""What an MP3's frames say, in the core: hand-made frames are counted past tags and junk, and
a cached MP3's playing time is read as a decoder sees it."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from voxq.mp3_frames import NotMp3, duration, frames_of, inspect, parse_header, strip_tags

HEADER = bytes.fromhex("FFFB9064")  # MPEG-1 layer III, 128 kbit/s, 44100 Hz, joint stereo


def frame() -> bytes:
    h = parse_header(HEADER)
    assert h is not None
    return HEADER + bytes(h.length - 4)


def test_frames_are_counted_past_tags_and_junk() -> None:
    id3 = b"ID3\x04\x00\x00\x00\x00\x00\x05" + b"x" * 5
    stream = id3 + frame() * 3 + b"\x00junk" + frame() * 2 + b"TAG" + bytes(125)
    bare = strip_tags(stream)
    assert bare == frame() * 3 + b"\x00junk" + frame() * 2  # ID3v2 in front, ID3v1 behind: gone
    info = inspect(stream)
    assert info.frames == 5 and info.sample_rate == 44100 and info.channels == 2
    assert info.seconds == pytest.approx(5 * 1152 / 44100)
    assert len(frames_of(bare)) == 5


def test_not_an_mp3() -> None:
    with pytest.raises(NotMp3, match="no MPEG audio frame"):
        inspect(b"RIFF" + bytes(400))


def test_duration_of_an_encoded_mp3() -> None:
    out = io.BytesIO()
    sf.write(out, np.zeros(24000, np.float32), 24000, format="MP3")
    assert duration(out.getvalue()) == pytest.approx(1.0, abs=0.03)
