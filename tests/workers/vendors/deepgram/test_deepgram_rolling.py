"""Rolling `deepgram` sessions: with the emulator's stream limit shortened to seconds, the
recognizer moves to a fresh stream between utterances and the transcript stays exact."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.emulators.deepgram import STREAM_TOO_LONG, DeepgramEmulator
from tests.emulators.tone_words import Script, drive, formatted, render, utterances
from voxq.settings import Settings
from workers.vendors.base import VendorRetryable
from workers.vendors.deepgram.stt import DeepgramRecognizer
from workers.vendors.registry import create_recognizer

RATE = 16000
EP = 300
SCRIPT: Script = [(0.6, 500 + 100 * i, 0.3) for i in range(10)]  # 9 s, ten utterances


@pytest.fixture
async def emu() -> AsyncIterator[DeepgramEmulator]:
    async with DeepgramEmulator() as emulator:
        emulator.config.max_stream_seconds = 3.0
        yield emulator


def recognizer(emu: DeepgramEmulator, channels: int = 1) -> DeepgramRecognizer:
    s = emu.configure(Settings(redis_url="redis://unused"))
    rec = create_recognizer("deepgram", "roll", "en-US", RATE, channels, {"endpointing": EP}, s)
    assert isinstance(rec, DeepgramRecognizer)
    return rec


async def test_rolls_between_utterances_with_an_exact_transcript(emu: DeepgramEmulator) -> None:
    pcm, words = render(SCRIPT)
    rec = recognizer(emu)
    rec.rollover_after, rec.rollover_deadline = 1.5, 2.8
    got = await drive(rec, pcm, pace=0.03)
    want = [(formatted([w[0] for w in u]), u[0][1], u[-1][2]) for u in utterances(words, EP / 1000)]
    assert [(t.text, t.start, t.end) for t in got if t.is_final] == want
    assert len(emu.streams) >= 3  # at least two rolls
    assert all(s.close == (1000, "") for s in emu.streams)
    assert b"".join(bytes(s.audio) for s in emu.streams) == pcm  # every byte once


async def test_without_rolling_the_limit_ends_the_session(emu: DeepgramEmulator) -> None:
    pcm, _ = render(SCRIPT)
    with pytest.raises(VendorRetryable, match=STREAM_TOO_LONG):
        await drive(recognizer(emu), pcm, pace=0.03)
