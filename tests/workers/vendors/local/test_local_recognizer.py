"""The offline `local` recognizer in process: word confidences stay within [0, 1], and audio
that ends in the middle of speech exactly on a frame boundary still ends with a final (it
used to raise IndexError in pocketsphinx and crash the session runner over and over)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.support import load_pcm
from voxq.settings import Settings
from workers.vendors.base import RecognizerConfig, Transcript
from workers.vendors.local.stt import LocalOptions, LocalRecognizer, confidence

SAMPLE = Path(__file__).resolve().parents[4] / "voxq" / "samples" / "support-call.flac"


def test_confidence_is_clamped_to_the_unit_interval() -> None:
    assert confidence(1.001) == 1.0
    assert confidence(1.0) == 1.0
    assert confidence(0.51234) == 0.512
    assert confidence(-0.0001) == 0.0
    assert confidence(math.nan) == 0.0


async def _recognise(pcm: bytes) -> list[Transcript]:
    rec = LocalRecognizer(RecognizerConfig(session_id="s", rate=16000, channels=1,
                                           language="en-US", options=LocalOptions()),
                          Settings())
    await rec.start()
    try:
        for i in range(0, len(pcm), 3200):
            await rec.send(pcm[i:i + 3200])
        await rec.finish()
        return [t async for t in rec.results()]
    finally:
        await rec.close()


@pytest.mark.parametrize("seconds", [3.0, 3.005])
async def test_audio_ending_in_speech_ends_with_a_final(seconds: float) -> None:
    """3.0 s of the sample stops mid-sentence on a 30 ms frame boundary; 3.005 s does not."""
    pcm = load_pcm(SAMPLE)[:round(seconds * 16000) * 2]
    finals = [t for t in await _recognise(pcm) if t.is_final]
    assert finals, "no final for the utterance cut off by the end of audio"
    assert finals[-1].end == pytest.approx(seconds, abs=0.05)
    words = [w for t in finals for w in t.words]
    assert words and all(0.0 <= w.confidence <= 1.0 for w in words), words
