"""The watermark code survives the bus and decodes exactly; the emulator transcribes it."""

import numpy as np

from tests.emulators.watermark import decode_window, watermark_pcm


def test_every_index_decodes_exactly() -> None:
    for rate in (8000, 16000, 48000):
        n = 40
        pcm = np.frombuffer(watermark_pcm(n, rate, start=65490), "<i2")
        w = rate // 10
        got = [decode_window(pcm[i * w:(i + 1) * w], rate) for i in range(n)]
        assert got == [65490 + i for i in range(n)]


def test_silence_is_no_word() -> None:
    assert decode_window(np.zeros(1600, "<i2"), 16000) is None
