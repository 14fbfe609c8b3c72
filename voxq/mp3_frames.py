"""What an MP3's frames say: parsing MPEG audio frame headers, tags and Xing/Info frames, and an
MP3's playing time. Pure parsing (libsndfile only to read a declared gapless length), shared by
the API (the duration of a cached MP3) and the TTS worker's joiner (``workers.tts.mp3join``)."""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import soundfile as sf

from voxq.errors import InvalidAudio

__all__ = ["FrameHeader", "Mp3Info", "NotMp3", "duration", "frames_of", "inspect", "is_info_frame",
           "parse_header", "strip_tags"]

_BITRATES = {
    (1, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (1, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (1, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (2, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (2, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (2, 3): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_RATES = {1: (44100, 48000, 32000), 2: (22050, 24000, 16000), 25: (11025, 12000, 8000)}
_VERSION_BITS = {0b00: 25, 0b10: 2, 0b11: 1}
_LAYER_BITS = {0b01: 3, 0b10: 2, 0b11: 1}


class NotMp3(InvalidAudio):
    """Bytes that are not an MPEG audio stream."""


@dataclass(frozen=True, slots=True)
class FrameHeader:
    """One decoded 4-byte MPEG audio frame header."""

    version: int  # 1, 2 or 25 (MPEG 2.5)
    layer: int
    protected: bool
    bitrate: int  # kbit/s
    sample_rate: int
    padding: bool
    channels: int

    @property
    def samples(self) -> int:
        """PCM samples per channel this frame decodes to."""
        if self.layer == 1:
            return 384
        if self.layer == 3 and self.version != 1:
            return 576
        return 1152

    @property
    def length(self) -> int:
        """Frame length in bytes, header included."""
        if self.layer == 1:
            return (12 * self.bitrate * 1000 // self.sample_rate + self.padding) * 4
        factor = 72 if self.layer == 3 and self.version != 1 else 144
        return factor * self.bitrate * 1000 // self.sample_rate + self.padding

    @property
    def side_info(self) -> int:
        """Bytes of layer III side information (where a Xing/Info tag starts after it)."""
        if self.version == 1:
            return 17 if self.channels == 1 else 32
        return 9 if self.channels == 1 else 17


def parse_header(data: bytes | memoryview, pos: int = 0) -> FrameHeader | None:
    """The frame header at ``pos``, or None if the 4 bytes there are not a valid one."""
    if pos + 4 > len(data):
        return None
    (word,) = struct.unpack_from(">I", data, pos)
    if word >> 21 != 0x7FF:
        return None
    version = _VERSION_BITS.get((word >> 19) & 3)
    layer = _LAYER_BITS.get((word >> 17) & 3)
    bitrate_index = (word >> 12) & 0xF
    rate_index = (word >> 10) & 3
    if version is None or layer is None or bitrate_index in (0, 15) or rate_index == 3:
        return None  # reserved values, or free-format bitrate (not supported)
    table = (1 if version == 1 else 2, layer)
    return FrameHeader(
        version=version,
        layer=layer,
        protected=not (word >> 16) & 1,
        bitrate=_BITRATES[table][bitrate_index],
        sample_rate=_RATES[version][rate_index],
        padding=bool((word >> 9) & 1),
        channels=1 if (word >> 6) & 3 == 3 else 2,
    )


def strip_tags(data: bytes) -> bytes:
    """The MPEG stream without leading ID3v2 tags and trailing ID3v1 / APEv2 tags."""
    start, end = 0, len(data)
    while data[start:start + 3] == b"ID3" and start + 10 <= end:
        size_bytes = data[start + 6:start + 10]
        if any(b & 0x80 for b in size_bytes):
            break
        size = 0
        for b in size_bytes:
            size = (size << 7) | b
        footer = 10 if data[start + 5] & 0x10 else 0
        start += 10 + size + footer
    if end - start >= 128 and data[end - 128:end - 125] == b"TAG":
        end -= 128
    if end - start >= 32 and data[end - 32:end - 24] == b"APETAGEX":
        (size,) = struct.unpack_from("<I", data, end - 20)
        flags = struct.unpack_from("<I", data, end - 12)[0]
        end -= size + (32 if flags & 0x80000000 else 0)
    return data[start:max(start, end)]


def is_info_frame(frame: bytes, header: FrameHeader) -> bool:
    """True for a Xing/Info (VBR/LAME) or VBRI header frame, which carries no audio."""
    off = 4 + (2 if header.protected else 0)
    return frame[off + header.side_info:off + header.side_info + 4] in (b"Xing", b"Info") or (
        frame[36:40] == b"VBRI")


def frames_of(stream: bytes) -> list[tuple[int, FrameHeader]]:
    """(offset, header) of every frame, resynchronising past junk on two consecutive headers."""
    out: list[tuple[int, FrameHeader]] = []
    pos, n = 0, len(stream)
    while pos + 4 <= n:
        header = parse_header(stream, pos)
        if header is not None and pos + header.length <= n:
            following = pos + header.length
            if following == n or following + 4 > n or parse_header(stream, following) is not None or out:
                out.append((pos, header))
                pos = following
                continue
        pos = stream.find(b"\xff", pos + 1)
        if pos < 0:
            break
    return out


@dataclass(frozen=True, slots=True)
class Mp3Info:
    """What the frames of an MP3 say: audio frames, rate, channels, duration before gapless trim."""

    frames: int
    sample_rate: int
    channels: int
    seconds: float
    audio_bytes: int
    has_info_frame: bool


def inspect(data: bytes) -> Mp3Info:
    """Parse an MP3's frames; InvalidAudio if it holds none or they disagree on rate/channels."""
    stream = strip_tags(data)
    frames = frames_of(stream)
    if not frames:
        raise NotMp3("not an MP3 stream (no MPEG audio frame found)")
    first_off, first = frames[0]
    has_info = is_info_frame(stream[first_off:first_off + first.length], first)
    audio = frames[1:] if has_info else frames
    if not audio:
        raise NotMp3("MP3 stream has a header frame but no audio frames")
    rates = {h.sample_rate for _, h in audio}
    chans = {h.channels for _, h in audio}
    if len(rates) != 1 or len(chans) != 1:
        raise NotMp3(f"MP3 frames disagree: rates {sorted(rates)}, channels {sorted(chans)}")
    samples = sum(h.samples for _, h in audio)
    return Mp3Info(frames=len(audio), sample_rate=first.sample_rate, channels=first.channels,
                   seconds=samples / first.sample_rate,
                   audio_bytes=sum(h.length for _, h in audio), has_info_frame=has_info)


def duration(data: bytes) -> float:
    """Playing time in seconds, as a decoder sees it (gapless trim applied when declared)."""
    try:
        info = sf.info(io.BytesIO(data))
        if info.frames > 0 and info.samplerate > 0:
            return float(info.frames) / float(info.samplerate)
    except (sf.LibsndfileError, RuntimeError, TypeError):
        pass
    return inspect(data).seconds
