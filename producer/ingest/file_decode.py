"""Incremental decoding of an encoded file that arrives in pieces (WAV, FLAC, OGG Vorbis/Opus,
MP3), with libsndfile, never holding more than a bounded buffer (docs/protocols/ingest.md).

libsndfile reads WAV, OGG and MP3 from a pipe; its FLAC reader does not, but reads strictly ahead
through a virtual file once told a length, so FLAC goes through `StreamFile`. A container whose
reader needs to seek elsewhere cannot be streamed and is refused with a clear error.
"""

from __future__ import annotations

import os
import queue
from collections.abc import Callable
from enum import StrEnum
from typing import Any

import numpy as np
import soundfile as sf

from producer.ingest.core import CloseCode, Rejected

BLOCK_FRAMES = 4096
FAKE_LENGTH = 1 << 40  # what a streamed FLAC reports as its length (it is read ahead only)


class Container(StrEnum):
    """Containers the file endpoint streams."""

    WAV = "wav"
    FLAC = "flac"
    OGG = "ogg"
    MP3 = "mp3"


def sniff(head: bytes) -> Container:
    """The container of a file from its first bytes; Rejected if it is none of the four."""
    if head[:4] in (b"RIFF", b"RIFX", b"RF64") and head[8:12] == b"WAVE":
        return Container.WAV
    if head[:4] == b"fLaC":
        return Container.FLAC
    if head[:4] == b"OggS":
        return Container.OGG
    if head[:3] == b"ID3" or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return Container.MP3
    raise Rejected("not a WAV, FLAC, OGG or MP3 file (unknown header)", CloseCode.UNSUPPORTED,
                   "audio")


class StreamFile:
    """A read-ahead file over pieces put into a bounded queue (None = end). It keeps the last
    ``window`` bytes read, so a reader may look back that far (format detection rereads the
    header); the length query gets a pretended length; any other seek is refused."""

    def __init__(self, pieces: queue.Queue[bytes | None], window: int = 1 << 16) -> None:
        self.pieces = pieces
        self.window = window
        self.kept = bytearray()   # stream bytes [base, base + len(kept))
        self.base = 0
        self.pos = 0
        self.real = 0             # where reading was before a seek to the pretended end
        self.eof = False

    def _fill(self, upto: int) -> None:
        while not self.eof and self.base + len(self.kept) < upto:
            piece = self.pieces.get()
            if piece is None:
                self.eof = True
            else:
                self.kept += piece

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes from the position; blocks until they arrived or the end came."""
        if self.pos == FAKE_LENGTH:
            return b""
        self._fill(self.pos + n if n >= 0 else FAKE_LENGTH)
        i = self.pos - self.base
        out = bytes(self.kept[i:] if n < 0 else self.kept[i:i + n])
        self.pos += len(out)
        drop = self.pos - self.base - self.window
        if drop > 0:
            del self.kept[:drop]
            self.base += drop
        return out

    def readinto(self, b: Any) -> int:
        """Read into a buffer."""
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def tell(self) -> int:
        """The position (the pretended length after a seek to the end)."""
        return self.pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """Back within the kept window, to the pretended end and back; nothing else."""
        if whence == os.SEEK_END and offset == 0:
            if self.pos != FAKE_LENGTH:
                self.real = self.pos
            self.pos = FAKE_LENGTH
            return self.pos
        target = offset if whence == os.SEEK_SET else self.pos + offset
        if self.pos == FAKE_LENGTH and whence == os.SEEK_SET:
            self.pos = self.real
        target = offset if whence == os.SEEK_SET else self.pos + offset
        if not self.base <= target <= self.base + len(self.kept):
            raise OSError("this container cannot be streamed: its reader seeks")
        self.pos = target
        return target


def decode_blocks(source: int | StreamFile, on_open: Callable[[int, int], None],
                  on_block: Callable[[np.ndarray], None]) -> None:
    """Decode sequentially (sf_readf_float, as voxq.audio.iter_file_blocks): report the rate and
    channels once, then each float32 (frames, channels) block. Rejected if it cannot be decoded."""
    from soundfile import _ffi, _snd

    try:
        with sf.SoundFile(source, closefd=False) if isinstance(source, int) else \
                sf.SoundFile(source) as f:
            on_open(int(f.samplerate), int(f.channels))
            while True:
                block = np.empty((BLOCK_FRAMES, f.channels), dtype=np.float32)
                n = _snd.sf_readf_float(f._file, _ffi.cast("float *", block.ctypes.data),
                                        BLOCK_FRAMES)
                if _snd.sf_error(f._file):
                    err = _ffi.string(_snd.sf_strerror(f._file)).decode(errors="replace")
                    raise Rejected(f"cannot decode the file: {err}", CloseCode.INVALID, "audio")
                if n <= 0:
                    return
                on_block(block[:n])
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise Rejected(f"cannot decode the file as it streams: {e}", CloseCode.UNSUPPORTED,
                       "audio") from e
