"""`local` streaming recognition with pocketsphinx: partials while speaking, one final per
utterance (voice-activity endpointing), each channel of a stereo call decoded on its own.

pocketsphinx holds the GIL while it decodes, so decoding runs on a small thread pool off
the event loop; each decoder loads its own language model (about 90 MB per channel).
"""

from __future__ import annotations

import asyncio
import math
import os
import re
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

from voxq.audio import deinterleave
from voxq.settings import Settings
from voxq.stt_offers.local import LocalOptions
from workers.vendors.base import (
    Recognizer,
    RecognizerConfig,
    Transcript,
    VendorError,
    VendorRejected,
    Word,
)

RATE = 16000
FRAME_SECONDS = 0.01  # pocketsphinx feature frames per second = 100
PARTIAL_EVERY_S = 0.3
_NOT_WORDS = re.compile(r"^(<.*>|\[.*\]|\+\+.*\+\+)$")
_ALT_PRON = re.compile(r"\(\d+\)$")

_pool = ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1),
                           thread_name_prefix="voxq-local-asr")


def confidence(prob: float) -> float:
    """A word's posterior from pocketsphinx as a confidence in [0, 1] (its arithmetic can
    overshoot 1 slightly, e.g. 1.001), rounded to three places; NaN counts as 0."""
    p = float(prob)
    return 0.0 if math.isnan(p) else round(min(1.0, max(0.0, p)), 3)


def _word(text: str) -> str:
    return _ALT_PRON.sub("", text)


class _ChannelDecoder:
    """Endpointer + decoder for one channel; plain synchronous code run on the pool."""

    def __init__(self, channel: int, options: LocalOptions, model_dir: str | None):
        from pocketsphinx import Decoder, Endpointer

        self.channel = channel
        self.ep = Endpointer(window=options.window, vad_mode=options.vad_mode,
                             sample_rate=RATE)
        kwargs: dict[str, Any] = {"samprate": RATE}
        if model_dir:
            d = Path(model_dir)
            kwargs.update(hmm=str(d / "acoustic"), lm=str(d / "model.lm.bin"),
                          dict=str(d / "model.dict"))
        self.dec = Decoder(**kwargs)
        self.buf = bytearray()
        self.utt_start = 0.0
        self.last_partial = ""
        self.last_partial_at = 0.0
        self.frames = 0  # endpointer frames seen; times derive from it (no float drift)

    @property
    def seconds(self) -> float:
        """Audio seconds fed so far."""
        return round(self.frames * self.ep.frame_length, 3)

    def feed(self, pcm: bytes) -> list[Transcript]:
        """Add audio; return the partials and finals it produced."""
        self.buf += pcm
        out: list[Transcript] = []
        fb = self.ep.frame_bytes
        n = len(self.buf) // fb * fb
        view = memoryview(self.buf)
        try:
            for i in range(0, n, fb):
                was_speech = self.ep.in_speech
                speech = self.ep.process(bytes(view[i:i + fb]))
                self.frames += 1
                if speech is None:
                    continue
                if not was_speech:
                    self.dec.start_utt()
                    self.utt_start = self.ep.speech_start
                    self.last_partial = ""
                self.dec.process_raw(speech)
                if not self.ep.in_speech:
                    out.extend(self._final(self.ep.speech_end))
                elif self.seconds - self.last_partial_at >= PARTIAL_EVERY_S:
                    out.extend(self._partial())
        finally:
            view.release()
        del self.buf[:n]
        return out

    def flush(self) -> list[Transcript]:
        """End of audio: finish an utterance still open."""
        if not self.ep.in_speech:
            return []
        # end_stream() takes what is left of a frame; given nothing at all (audio that ended in
        # speech exactly on a frame boundary) pocketsphinx raises IndexError: give it one
        # silent sample instead
        speech = self.ep.end_stream(bytes(self.buf) or bytes(2))
        self.buf.clear()
        if speech:
            self.dec.process_raw(speech)
        return self._final(self.ep.speech_end or self.seconds)

    def _partial(self) -> list[Transcript]:
        self.last_partial_at = self.seconds
        hyp = self.dec.hyp()
        text = hyp.hypstr.strip() if hyp is not None else ""
        if not text or text == self.last_partial:
            return []
        self.last_partial = text
        return [Transcript(text=text, is_final=False, start=round(self.utt_start, 3),
                           end=self.seconds, channel=self.channel)]

    def _final(self, end: float) -> list[Transcript]:
        self.dec.end_utt()
        hyp = self.dec.hyp()
        text = hyp.hypstr.strip() if hyp is not None else ""
        if not text:
            return []
        words = tuple(
            Word(text=_word(s.word),
                 start=round(self.utt_start + s.start_frame * FRAME_SECONDS, 3),
                 end=round(self.utt_start + (s.end_frame + 1) * FRAME_SECONDS, 3),
                 confidence=confidence(s.prob))
            for s in self.dec.seg() if not _NOT_WORDS.match(s.word)
        )
        return [Transcript(text=text, is_final=True, start=round(self.utt_start, 3),
                           end=round(max(end, self.utt_start), 3), channel=self.channel,
                           words=words)]


class LocalRecognizer(Recognizer):
    """Offline recognition, no credentials: the default engine."""

    name: ClassVar[str] = "local"
    max_replay_speed: ClassVar[float] = 1000.0

    def __init__(self, config: RecognizerConfig, settings: Settings):
        super().__init__(config, settings)
        self._channels: list[_ChannelDecoder] = []
        self._queue: asyncio.Queue[Transcript | BaseException | None] = asyncio.Queue()
        self._closed = False

    @property
    def input_rate(self) -> int:
        """The bundled model is 16 kHz; the worker resamples to it."""
        return RATE

    async def start(self) -> None:
        """Load one decoder per channel (off the loop: it reads model files)."""
        opts = self.config.options
        assert isinstance(opts, LocalOptions)
        loop = asyncio.get_running_loop()
        try:
            self._channels = list(await asyncio.gather(*(
                loop.run_in_executor(_pool, _ChannelDecoder, ch, opts,
                                     self.settings.local_model_dir)
                for ch in range(self.config.channels)
            )))
        except (RuntimeError, OSError, ValueError) as e:
            raise VendorRejected(f"cannot load the pocketsphinx model: {e}",
                                 vendor=self.name) from e

    async def _run(self, fn: Any, *args: Any) -> None:
        try:
            results = await asyncio.get_running_loop().run_in_executor(_pool, fn, *args)
        except (RuntimeError, ValueError, IndexError) as e:  # the session fails, not the worker
            raise VendorError(f"decoder failed: {e}", vendor=self.name) from e
        for t in results:
            self._queue.put_nowait(t)

    async def send(self, pcm: bytes) -> None:
        """Decode a block of interleaved 16 kHz PCM, channel by channel."""
        for dec, data in zip(self._channels, deinterleave(pcm, self.config.channels),
                             strict=True):
            await self._run(dec.feed, data)

    async def finish(self) -> None:
        """Close open utterances; results() ends after their finals."""
        for dec in self._channels:
            await self._run(dec.flush)
        self._queue.put_nowait(None)

    async def results(self) -> AsyncIterator[Transcript]:
        """Partials and finals in the order they were decoded."""
        while True:
            item = await self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    async def close(self) -> None:
        """Drop the decoders and wake a reader still waiting on results."""
        if not self._closed:
            self._closed = True
            self._channels = []
            self._queue.put_nowait(None)
