"""MP3 in and out: frame parsing, validation, encoding, and joining parts into one playable file.

Joining long text synthesised in pieces must give one MP3 that plays as a single file with the
right duration: no second ID3/Xing/LAME header in the middle, no half frames, no gap or click at
a join. The main path decodes every part through soundfile (libsndfile + mpg123, which drops the
encoder delay and padding the LAME tag declares), resamples a part if its rate differs, fades
4 ms in and out around each join (a sample-exact join of two independently encoded waveforms
can otherwise click), and encodes once. Without MP3 support in libsndfile the fallback
concatenates whole MPEG frames: tags and info frames of every part are stripped and one fresh
Xing/Info frame with the total frame and byte count is put in front, so players still compute the
duration; only each part's own encoder delay/padding (a few ms of silence) stays at the joins.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from voxq.errors import InvalidAudio

__all__ = [
    "FrameHeader",
    "Mp3Info",
    "can_encode",
    "concat_frames",
    "decode",
    "duration",
    "encode",
    "inspect",
    "join",
    "strip_tags",
]

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
FADE_SECONDS = 0.004
ENCODE_QUALITY = 0.6  # libsndfile compression level for MP3 (0 best .. 1 smallest)


class _NotMp3(InvalidAudio):
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


def _is_info_frame(frame: bytes, header: FrameHeader) -> bool:
    """True for a Xing/Info (VBR/LAME) or VBRI header frame, which carries no audio."""
    off = 4 + (2 if header.protected else 0)
    return frame[off + header.side_info:off + header.side_info + 4] in (b"Xing", b"Info") or (
        frame[36:40] == b"VBRI")


def _frames(stream: bytes) -> list[tuple[int, FrameHeader]]:
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
    frames = _frames(stream)
    if not frames:
        raise _NotMp3("not an MP3 stream (no MPEG audio frame found)")
    first_off, first = frames[0]
    has_info = _is_info_frame(stream[first_off:first_off + first.length], first)
    audio = frames[1:] if has_info else frames
    if not audio:
        raise _NotMp3("MP3 stream has a header frame but no audio frames")
    rates = {h.sample_rate for _, h in audio}
    chans = {h.channels for _, h in audio}
    if len(rates) != 1 or len(chans) != 1:
        raise _NotMp3(f"MP3 frames disagree: rates {sorted(rates)}, channels {sorted(chans)}")
    samples = sum(h.samples for _, h in audio)
    return Mp3Info(frames=len(audio), sample_rate=first.sample_rate, channels=first.channels,
                   seconds=samples / first.sample_rate,
                   audio_bytes=sum(h.length for _, h in audio), has_info_frame=has_info)


def can_encode() -> bool:
    """True when this libsndfile reads and writes MP3 (libsndfile ≥ 1.1 with LAME and mpg123)."""
    return "MP3" in sf.available_formats()


def decode(data: bytes) -> tuple[np.ndarray, int]:
    """MP3 bytes as float32 samples shaped (frames, channels), and their rate."""
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise InvalidAudio(f"cannot decode MP3: {e}") from e
    return samples, int(rate)


def encode(samples: np.ndarray, rate: int) -> bytes:
    """Float32 or int16 samples, shaped (frames,) or (frames, channels), as constant-bitrate MP3."""
    if len(samples) == 0:
        raise InvalidAudio("no audio to encode")
    out = io.BytesIO()
    try:
        sf.write(out, samples, rate, format="MP3", bitrate_mode="CONSTANT",
                 compression_level=ENCODE_QUALITY)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise InvalidAudio(f"cannot encode MP3 at {rate} Hz: {e}") from e
    return out.getvalue()


def duration(data: bytes) -> float:
    """Playing time in seconds, as a decoder sees it (gapless trim applied when declared)."""
    try:
        info = sf.info(io.BytesIO(data))
        if info.frames > 0 and info.samplerate > 0:
            return float(info.frames) / float(info.samplerate)
    except (sf.LibsndfileError, RuntimeError, TypeError):
        pass
    return inspect(data).seconds


def _resample(samples: np.ndarray, src: int, dst: int) -> np.ndarray:
    """Samples at ``dst`` Hz (soxr, high quality)."""
    if src == dst:
        return samples
    import soxr

    return np.asarray(soxr.resample(samples, src, dst), dtype="float32").reshape(-1, samples.shape[1])


def _fade(samples: np.ndarray, rate: int, head: bool, tail: bool) -> np.ndarray:
    """Raised-cosine fade over FADE_SECONDS at the head and/or tail (length unchanged)."""
    n = min(len(samples) // 2, max(1, round(FADE_SECONDS * rate)))
    if n < 2 or not (head or tail):
        return samples
    out = samples.copy()
    ramp = (0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, n, dtype=np.float32)))[:, None]
    if head:
        out[:n] *= ramp
    if tail:
        out[-n:] *= ramp[::-1]
    return out


def join(parts: Sequence[bytes], sample_rate: int | None = None) -> bytes:
    """One MP3 holding ``parts`` in order (see the module docstring for how and why)."""
    if not parts:
        raise InvalidAudio("nothing to join")
    for i, part in enumerate(parts):
        try:
            inspect(part)
        except InvalidAudio as e:
            raise InvalidAudio(f"part {i + 1} of {len(parts)}: {e}") from None
    if len(parts) == 1:
        return parts[0]
    if not can_encode():
        return concat_frames(parts)
    decoded = [decode(part) for part in parts]
    rate = sample_rate or decoded[0][1]
    channels = max(s.shape[1] for s, _ in decoded)
    pieces = []
    last = len(decoded) - 1
    for i, (samples, src) in enumerate(decoded):
        samples = _resample(samples, src, rate)
        if samples.shape[1] != channels:
            samples = np.repeat(samples.mean(axis=1, keepdims=True), channels, axis=1)
        pieces.append(_fade(samples, rate, head=i > 0, tail=i < last))
    return encode(np.concatenate(pieces), rate)


def _info_frame(first: bytes, frames: int, nbytes: int, vbr: bool) -> bytes:
    """A Xing (VBR) or Info (CBR) frame like the header ``first`` (no CRC, no padding)
    declaring the stream's audio frames and bytes; empty if such a frame is too small."""
    (word,) = struct.unpack(">I", first)
    word = (word | (1 << 16)) & ~(1 << 9)  # protection bit set = no CRC; no padding
    header_bytes = struct.pack(">I", word)
    header = parse_header(header_bytes)
    assert header is not None
    length = header.length
    off = 4 + header.side_info
    if off + 16 > length:
        return b""  # too small to carry the tag (very low bitrates): players estimate instead
    frame = bytearray(length)
    frame[:4] = header_bytes
    frame[off:off + 4] = b"Xing" if vbr else b"Info"
    struct.pack_into(">III", frame, off + 4, 0x3, frames, nbytes + length)
    return bytes(frame)


def concat_frames(parts: Sequence[bytes]) -> bytes:
    """Whole audio frames of every part, tags and info frames stripped, behind a new Info frame."""
    body = bytearray()
    headers: list[FrameHeader] = []
    first_header_bytes = b""
    for i, part in enumerate(parts):
        stream = strip_tags(part)
        frames = _frames(stream)
        if not frames:
            raise InvalidAudio(f"part {i + 1} of {len(parts)} has no MPEG audio frame")
        off0, h0 = frames[0]
        if _is_info_frame(stream[off0:off0 + h0.length], h0):
            frames = frames[1:]
        for off, header in frames:
            if headers and (header.sample_rate, header.channels, header.layer) != (
                    headers[0].sample_rate, headers[0].channels, headers[0].layer):
                raise InvalidAudio("MP3 parts differ in sample rate, channels or layer and "
                                   "this libsndfile cannot re-encode them")
            if not first_header_bytes:
                first_header_bytes = stream[off:off + 4]
            headers.append(header)
            body += stream[off:off + header.length]
    if not headers:
        raise InvalidAudio("the MP3 parts hold no audio frames")
    vbr = len({h.bitrate for h in headers}) > 1
    info = _info_frame(first_header_bytes, len(headers), len(body), vbr)
    return info + bytes(body)
