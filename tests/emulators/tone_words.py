"""Deterministic "recognition" for the AssemblyAI and Deepgram emulators: tones become words.

The scheme is the AWS emulator's tone code, vendor-neutral: audio is cut into 10 ms blocks; a
block whose RMS is at least ``silence_rms`` (500) is loud; loud blocks less than ``word_gap``
(50 ms) apart form one word, named by its dominant frequency rounded to 100 Hz
(``tone500`` for a 500 Hz beep). Word times come from block counts, so a tone that starts at
1.00 s and lasts 0.5 s is the word ``tone500`` from 1.0 to 1.5 s. A word's confidence is
``round(0.5 + 0.5 * min(1, peak / 32767), 2)`` (amplitude 16384 → 0.75) and its speaker index
is 0 below 1000 Hz, 1 from 1000 Hz up. Each vendor emulator decides when the quiet after a word
closes an utterance (its own end-of-turn / endpointing / end-of-utterance setting).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from voxq.aio import within


@dataclass
class ToneWord:
    """One loud run: blocks ``start`` (inclusive) to ``end`` (exclusive)."""

    start: int
    end: int
    block: int
    rate: int
    parts: list[np.ndarray] = field(default_factory=list)
    peak: int = 0
    _freq: float | None = None

    @property
    def start_s(self) -> float:
        """Start in seconds from the first sample fed."""
        return round(self.start * self.block / self.rate, 4)

    @property
    def end_s(self) -> float:
        """End in seconds from the first sample fed."""
        return round(self.end * self.block / self.rate, 4)

    @property
    def frequency(self) -> float:
        """Dominant frequency of the loud blocks (zero-padded, windowed FFT peak)."""
        if self._freq is not None:
            return self._freq
        x = np.concatenate(self.parts).astype(np.float64)
        nfft = max(16384, 1 << (len(x) - 1).bit_length())
        spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)), nfft))
        return float((int(np.argmax(spectrum[1:])) + 1) * self.rate / nfft)

    def close(self) -> None:
        """The word will not grow any more: cache its frequency."""
        self._freq = self.frequency

    @property
    def text(self) -> str:
        """``tone<Hz rounded to 100>``."""
        return f"tone{round(self.frequency / 100) * 100}"

    @property
    def confidence(self) -> float:
        """0.5 plus half the peak's share of full scale."""
        return round(0.5 + 0.5 * min(1.0, self.peak / 32767), 2)

    @property
    def speaker(self) -> int:
        """0 for words below 1000 Hz, 1 otherwise."""
        return 0 if self.frequency < 1000 else 1


class ToneSegmenter:
    """Energy segmentation of one channel; closes an utterance after ``utterance_gap`` quiet."""

    def __init__(self, rate: int, utterance_gap: float = 0.3, silence_rms: float = 500.0,
                 word_gap: float = 0.05):
        self.rate = rate
        self.block = max(1, rate // 100)
        self.threshold = silence_rms
        self.word_gap_blocks = max(1, round(word_gap * rate / self.block))
        self.utterance_gap = utterance_gap
        self.carry = np.zeros(0, np.int16)
        self.blocks = 0  # blocks processed
        self.words: list[ToneWord] = []  # words of the open utterance
        self.last_word_end = 0  # block index where the last word of any utterance ended
        self.heard = False  # any word ever

    @property
    def seconds(self) -> float:
        """Audio processed, in seconds (whole blocks)."""
        return round(self.blocks * self.block / self.rate, 4)

    @property
    def quiet_seconds(self) -> float:
        """Seconds since the last loud block (0 while inside a word)."""
        return round((self.blocks - self.last_word_end) * self.block / self.rate, 4)

    def word_open(self) -> bool:
        """True while the last word of the open utterance may still grow."""
        return bool(self.words) and self.blocks - self.words[-1].end < self.word_gap_blocks

    def feed(self, samples: np.ndarray) -> tuple[list[list[ToneWord]], bool]:
        """Add mono samples; the utterances closed meanwhile, and whether the open one changed."""
        x = np.concatenate((self.carry, samples.astype(np.int16)))
        n = len(x) // self.block
        self.carry = x[n * self.block:]
        frames = x[: n * self.block].reshape(n, self.block)
        rms = np.sqrt((frames.astype(np.float64) ** 2).mean(axis=1)) if n else np.zeros(0)
        closed: list[list[ToneWord]] = []
        changed = False
        gap_blocks = max(1, round(self.utterance_gap * self.rate / self.block))
        for i in range(n):
            b = self.blocks + i
            if rms[i] >= self.threshold:
                if self.words and b - self.words[-1].end < self.word_gap_blocks:
                    word = self.words[-1]
                    word.end = b + 1
                else:
                    if self.words:
                        self.words[-1].close()
                    word = ToneWord(b, b + 1, self.block, self.rate)
                    self.words.append(word)
                word.parts.append(frames[i])
                word.peak = max(word.peak, int(np.abs(frames[i].astype(np.int32)).max()))
                self.last_word_end = b + 1
                self.heard = True
                changed = True
            elif self.words and b + 1 - self.words[-1].end >= gap_blocks:
                closed.append(self.take())
        self.blocks += n
        return closed, changed and bool(self.words)

    def take(self) -> list[ToneWord]:
        """Close the open utterance now (end of turn forced, or end of stream)."""
        words, self.words = self.words, []
        for w in words:
            w.close()
        return words


def downmix(samples: np.ndarray) -> np.ndarray:
    """Interleaved frames (n, channels) → one mono int16 channel (the mean)."""
    return samples.astype(np.int32).mean(axis=1).round().astype(np.int16)


# --- test-side helpers: scripts of tones and what the emulators make of them -----------------------

Script = list[tuple[float, float, float]]
"""(quiet before, tone Hz, tone seconds) per word."""

ExpectedWord = tuple[str, float, float]


def render(script: Script, rate: int = 16000, tail: float = 0.5,
           amplitude: int = 16384) -> tuple[bytes, list[ExpectedWord]]:
    """Mono s16le PCM of a script and its words as (name, start, end)."""
    from tests.emulators.common import silence, tone

    pcm = b""
    words: list[ExpectedWord] = []
    t = 0.0
    for gap, freq, seconds in script:
        pcm += silence(gap, rate) + tone(freq, seconds, rate, amplitude)
        t = round(t + gap, 4)
        words.append((f"tone{round(freq / 100) * 100}", t, round(t + seconds, 4)))
        t = round(t + seconds, 4)
    return pcm + silence(tail, rate), words


def utterances(words: list[ExpectedWord], gap: float) -> list[list[ExpectedWord]]:
    """Words grouped as an emulator closes utterances after ``gap`` seconds of quiet."""
    out: list[list[ExpectedWord]] = []
    for w in words:
        if out and round(w[1] - out[-1][-1][2], 4) < gap:
            out[-1].append(w)
        else:
            out.append([w])
    return out


def formatted(names: list[str]) -> str:
    """What the emulators' formatting makes of words: capitalised, with a full stop."""
    text = " ".join(names)
    return text[:1].upper() + text[1:] + "."


async def drive(rec: Any, pcm: bytes, chunk_seconds: float = 0.1, pace: float = 0.0,
                timeout: float = 20.0) -> list[Any]:
    """Start a Recognizer, send ``pcm`` in chunks, finish, and return every result (closed after)."""
    import asyncio

    out: list[Any] = []
    await rec.start()

    async def collect() -> None:
        async for t in rec.results():
            out.append(t)

    task = asyncio.create_task(collect())
    size = round(chunk_seconds * rec.config.rate) * 2 * rec.config.channels
    try:
        for i in range(0, len(pcm), size):
            await rec.send(pcm[i:i + size])
            if pace:
                await asyncio.sleep(pace)
        await rec.finish()
        await within(task, timeout)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await rec.close()
    return out
