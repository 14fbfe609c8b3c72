"""MP3 in and out: validation, encoding, and joining parts into one playable file (frame parsing and
the playing time are the core's ``voxq.mp3_frames``, re-exported here).

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

import numpy as np
import soundfile as sf

from voxq.errors import InvalidAudio

# frame parsing and the playing time live in the core (the API reads a cached MP3's duration)
from voxq.mp3_frames import (
    FrameHeader,
    Mp3Info,
    duration,
    frames_of,
    inspect,
    is_info_frame,
    parse_header,
    strip_tags,
)

__all__ = [
    "FrameHeader",
    "Mp3Info",
    "can_encode",
    "concat_frames",
    "decode",
    "duration",
    "encode",
    "frames_of",
    "inspect",
    "is_info_frame",
    "join",
    "parse_header",
    "strip_tags",
]

FADE_SECONDS = 0.004
ENCODE_QUALITY = 0.6  # libsndfile compression level for MP3 (0 best .. 1 smallest)


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
        frames = frames_of(stream)
        if not frames:
            raise InvalidAudio(f"part {i + 1} of {len(parts)} has no MPEG audio frame")
        off0, h0 = frames[0]
        if is_info_frame(stream[off0:off0 + h0.length], h0):
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
