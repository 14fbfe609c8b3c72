"""Real MP3 audio for the speech emulators: a tone whose length follows the text, so tests can
check the decoded duration of what a client joined together."""

from __future__ import annotations

import functools
import io
import math
import re

import numpy as np
import soundfile as sf

SECONDS_PER_CHAR = 0.02
MIN_SECONDS = 0.2
_SPEAKABLE = re.compile(r"\w", re.UNICODE)


def speech_seconds(text: str, speed: float = 1.0) -> float:
    """Length of the emulated speech for ``text``: 20 ms per word character (≥ 0.2 s), / speed."""
    chars = len(_SPEAKABLE.findall(text))
    return round(max(MIN_SECONDS, chars * SECONDS_PER_CHAR) / speed, 3)


@functools.lru_cache(maxsize=256)
def mp3_tone(seconds: float, rate: int, freq: float = 440.0, amplitude: float = 0.3) -> bytes:
    """A sine of ``freq`` Hz lasting ``seconds`` at ``rate`` as MP3 (libsndfile, VBR, LAME tag)."""
    n = round(seconds * rate)
    t = np.arange(n, dtype=np.float64) / rate
    x = (amplitude * np.sin(2 * math.pi * freq * t)).astype(np.float32)
    out = io.BytesIO()
    sf.write(out, x, rate, format="MP3")
    return out.getvalue()


def mp3_for(text: str, rate: int, speed: float = 1.0, freq: float = 440.0) -> bytes:
    """The MP3 an emulator answers for ``text``."""
    return mp3_tone(speech_seconds(text, speed), rate, freq)
