"""Rolling `voxq-ws` sessions: the watermark emulator refuses more than 3 s of audio per
connection; the recognizer rolls to fresh connections (continuous watermark audio has no pause,
so at the deadline, mid-utterance) and the transcript stays exact, in session time."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.emulators.tone_words import drive
from tests.emulators.watermark import WatermarkEmulator, expected_words, watermark_pcm
from voxq.settings import Settings
from workers.vendors.base import VendorRetryable
from workers.vendors.registry import create_recognizer
from workers.vendors.voxqws.stt import VoxqWsRecognizer

RATE = 16000
CHUNKS = 80  # 8 s of audio


@pytest.fixture
def emu() -> Iterator[WatermarkEmulator]:
    with WatermarkEmulator(max_connection_seconds=3.0) as emulator:
        yield emulator


def recognizer(emu: WatermarkEmulator) -> VoxqWsRecognizer:
    settings = Settings(redis_url="redis://unused", voxqws_url=emu.url)
    rec = create_recognizer("voxq-ws", "roll", "en-US", RATE, 1, {}, settings)
    assert isinstance(rec, VoxqWsRecognizer)
    return rec


async def test_rolls_before_the_connection_limit_with_an_exact_transcript(
        emu: WatermarkEmulator) -> None:
    pcm = watermark_pcm(CHUNKS, RATE)
    rec = recognizer(emu)
    rec.rollover_after, rec.rollover_deadline = 2.0, 2.5
    got = await drive(rec, pcm, pace=0.01)
    words = [w for t in got if t.is_final for w in t.words]
    assert [w.text for w in words] == expected_words(CHUNKS)
    assert [(w.start, w.end) for w in words] == [
        (round(i / 10, 6), round((i + 1) / 10, 6)) for i in range(CHUNKS)]
    assert len(emu.connections) >= 3  # at least two rolls
    assert sum(len(c.words) for c in emu.connections) == CHUNKS  # each chunk sent once


async def test_without_rolling_the_limit_ends_the_session(emu: WatermarkEmulator) -> None:
    with pytest.raises(VendorRetryable, match="more than 3 s of audio"):
        await drive(recognizer(emu), watermark_pcm(CHUNKS, RATE), pace=0.01)
