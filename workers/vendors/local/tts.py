"""The offline `local` speech engine: espeak-ng, MP3 through libsndfile; no credentials, no network.

espeak-ng comes from PyPI (``espeakng-loader`` ships ``libespeak-ng`` and its data), so a fresh
machine needs no system package: the library is driven through ctypes in synchronous mode (the
callback collects 16-bit samples). Without that package an ``espeak-ng`` binary on PATH is run
instead (WAV on stdout). The library keeps global state, so one lock serialises syntheses in a
process; the RQ worker runs one job per process anyway.
"""

from __future__ import annotations

import asyncio
import ctypes
import io
import logging
import shutil
import threading
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import soundfile as sf

from voxq.aio import within
from voxq.settings import Settings
from workers.vendors.base import OfferedSynthesizer, SynthesisRequest, VendorRejected, VendorRetryable

log = logging.getLogger("voxq.vendors.local")

_ESPEAK_NAMES = {"en-gb": "en"}
"""Voices whose espeak-ng file name differs from the language tag (libespeak-ng 1.52)."""

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_ESPEAK_RATE, _ESPEAK_VOLUME, _ESPEAK_PITCH = 1, 2, 3
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1
_EE_OK = 0
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.c_void_p)
_lock = threading.Lock()


def espeak_params(request: SynthesisRequest) -> tuple[int, int, int]:
    """espeak-ng rate (words/min, 175 = normal), amplitude (100 = normal) and pitch (50)."""
    rate = max(80, min(450, round(175 * request.speed)))
    amplitude = max(0, min(200, round(100 * request.volume)))
    pitch = max(0, min(99, round(50 * request.pitch)))
    return rate, amplitude, pitch


class _Library:
    """libespeak-ng from the espeakng-loader wheel, initialised once per process."""

    _instance: ClassVar[_Library | None] = None
    _failed: ClassVar[bool] = False

    def __init__(self, lib: ctypes.CDLL, data_dir: str):
        self.lib = lib
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
        self.rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0,
                                          data_dir.encode(), 0)
        if self.rate <= 0:
            raise OSError(f"espeak_Initialize failed ({self.rate})")
        self._chunks: list[bytes] = []

        def collect(wav: Any, count: int, _events: Any) -> int:
            if wav and count > 0:
                self._chunks.append(ctypes.string_at(wav, count * 2))
            return 0

        self._callback = _CALLBACK(collect)  # keep a reference: espeak holds the pointer
        lib.espeak_SetSynthCallback(self._callback)

    @classmethod
    def get(cls) -> _Library | None:
        """The loaded library, or None when espeakng-loader is absent or unusable."""
        if cls._instance is None and not cls._failed:
            try:
                import espeakng_loader

                cls._instance = cls(ctypes.CDLL(espeakng_loader.get_library_path()),
                                    espeakng_loader.get_data_path())
            except (ImportError, OSError, AttributeError, RuntimeError) as e:
                log.info("espeakng-loader unavailable (%s); using an espeak-ng binary", e)
                cls._failed = True
        return cls._instance

    def synthesize(self, text: str, voice: str, rate: int, amplitude: int, pitch: int) -> bytes:
        """s16le mono PCM at ``self.rate``; VendorRejected for an unknown voice."""
        with _lock:
            if self.lib.espeak_SetVoiceByName(_ESPEAK_NAMES.get(voice, voice).encode()) != _EE_OK:
                raise VendorRejected(f"espeak-ng has no voice {voice!r}", vendor="local")
            for parameter, value in ((_ESPEAK_RATE, rate), (_ESPEAK_VOLUME, amplitude),
                                     (_ESPEAK_PITCH, pitch)):
                self.lib.espeak_SetParameter(parameter, value, 0)
            self._chunks = []
            raw = text.encode("utf-8") + b"\0"
            status = self.lib.espeak_Synth(raw, len(raw), 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8,
                                           None, None)
            if status != _EE_OK:
                raise VendorRetryable(f"espeak_Synth failed with status {status}", vendor="local")
            pcm = b"".join(self._chunks)
            self._chunks = []
            return pcm


async def _run_binary(binary: str, text: str, voice: str, rate: int, amplitude: int,
                      pitch: int, timeout: float) -> tuple[np.ndarray, int]:
    """Samples and rate from ``espeak-ng --stdout`` (text on stdin, WAV on stdout)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            binary, "--stdout", "-v", voice, "-s", str(rate), "-a", str(amplitude), "-p", str(pitch),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
    except OSError as e:
        raise VendorRejected(f"cannot run {binary}: {e.strerror or e}", vendor="local") from None
    try:
        out, err = await within(proc.communicate(text.encode("utf-8")), timeout)
    except BaseException as e:  # a timeout or our cancellation: the child must not outlive it
        if proc.returncode is None:
            proc.kill()
            await asyncio.shield(proc.wait())
        if isinstance(e, TimeoutError):
            raise VendorRetryable(f"espeak-ng took longer than {timeout:g}s",
                                  vendor="local") from None
        raise
    message = err.decode("utf-8", "replace").strip()
    if proc.returncode != 0 or not out:
        if "voice" in message.lower():
            raise VendorRejected(f"espeak-ng has no voice {voice!r}", vendor="local")
        raise VendorRetryable(f"espeak-ng failed ({proc.returncode}): {message[:200]}",
                              vendor="local")
    samples, src = sf.read(io.BytesIO(out), dtype="int16")
    return np.asarray(samples), int(src)


def encode_mp3(samples: np.ndarray, rate: int) -> bytes:
    """Float samples as constant-bitrate MP3 through libsndfile (needs libsndfile ≥ 1.1)."""
    out = io.BytesIO()
    try:
        sf.write(out, samples, rate, format="MP3", bitrate_mode="CONSTANT", compression_level=0.6)
    except (sf.LibsndfileError, TypeError, ValueError) as e:
        raise VendorRejected(f"cannot encode MP3 here (libsndfile {sf.__libsndfile_version__} "
                             f"needs MP3 support, 1.1 or newer): {e}", vendor="local") from e
    return out.getvalue()


class LocalSynthesizer(OfferedSynthesizer):
    """espeak-ng → resample → MP3 (libsndfile), fully offline; voices, rates and the text limit
    are the core's offer (``voxq.tts_offers``)."""

    name = "local"

    def __init__(self, settings: Settings, *, binary: str | None = None,
                 use_library: bool = True):
        super().__init__(settings)
        self._binary = binary
        self._use_library = use_library

    async def _pcm(self, request: SynthesisRequest, voice: str) -> tuple[np.ndarray, int]:
        """Mono int16 samples and their rate, from the library or the binary."""
        rate, amplitude, pitch = espeak_params(request)
        library = _Library.get() if self._use_library else None
        if library is not None:
            lib = library
            synth: Callable[[], bytes] = lambda: lib.synthesize(  # noqa: E731
                request.text, voice, rate, amplitude, pitch)
            pcm = await within(asyncio.to_thread(synth),
                               self.settings.tts_vendor_timeout_seconds)
            return np.frombuffer(pcm, "<i2"), library.rate
        binary = self._binary or shutil.which("espeak-ng") or shutil.which("espeak")
        if binary is None:
            raise VendorRejected("the local engine needs espeak-ng: `pip install espeakng-loader` "
                                 "or install the espeak-ng package", vendor="local")
        return await _run_binary(binary, request.text, voice, rate, amplitude, pitch,
                                 self.settings.tts_vendor_timeout_seconds)

    async def synthesize(self, request: SynthesisRequest) -> bytes:
        """MP3 of ``request.text`` at ``request.sample_rate``."""
        voices, rates = self.offer.voices, self.offer.sample_rates
        voice = request.voice or voices[0]
        if voice not in voices:
            raise VendorRejected(f"unknown voice {voice!r}; voices: {', '.join(voices)}",
                                 vendor="local")
        if request.sample_rate not in rates:
            raise VendorRejected(f"sample rate {request.sample_rate} not in {rates}",
                                 vendor="local")
        if not request.text.strip():
            raise VendorRejected("text is empty", vendor="local")
        samples, src = await self._pcm(request, voice)
        if samples.size == 0:
            raise VendorRejected("espeak-ng produced no audio for this text", vendor="local")
        x = samples.astype(np.float32) / 32768.0
        if src != request.sample_rate:
            import soxr

            x = np.asarray(soxr.resample(x, src, request.sample_rate), dtype=np.float32)
        return await asyncio.to_thread(encode_mp3, x, request.sample_rate)
