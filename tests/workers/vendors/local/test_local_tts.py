"""The offline `local` speech engine: espeak-ng from the espeakng-loader wheel (ctypes) or an
espeak-ng binary, MP3 at the requested rate through libsndfile, parameters mapped, clear errors."""

from __future__ import annotations

import shutil

import pytest

from voxq.settings import Settings
from workers.tts import mp3join
from workers.vendors.base import SynthesisRequest, VendorRejected
from workers.vendors.local import tts as local
from workers.vendors.local.tts import LocalSynthesizer, espeak_params

HAS_LIBRARY = local._Library.get() is not None
HAS_BINARY = shutil.which("espeak-ng") is not None
TEXT = "Hello from the local engine. It needs no network."


def test_parameters_map_to_espeak_ranges() -> None:
    assert espeak_params(SynthesisRequest(text="x")) == (175, 100, 50)
    assert espeak_params(SynthesisRequest(text="x", speed=2.0, volume=0.5, pitch=1.5)) == (350, 50, 75)
    assert espeak_params(SynthesisRequest(text="x", speed=0.1, volume=9, pitch=9)) == (80, 200, 99)


@pytest.mark.parametrize("use_library", [
    pytest.param(True, marks=pytest.mark.skipif(not HAS_LIBRARY, reason="espeakng-loader not installed")),
    pytest.param(False, marks=pytest.mark.skipif(not HAS_BINARY, reason="no espeak-ng binary")),
])
async def test_synthesizes_mp3_at_the_requested_rate_and_speed(use_library: bool) -> None:
    synth = LocalSynthesizer(Settings(), use_library=use_library)
    normal = await synth.synthesize(SynthesisRequest(text=TEXT, sample_rate=16000))
    fast = await synth.synthesize(SynthesisRequest(text=TEXT, sample_rate=16000, speed=2.0))
    info = mp3join.inspect(normal)
    assert info.sample_rate == 16000 and info.channels == 1
    slow_s, fast_s = mp3join.duration(normal), mp3join.duration(fast)
    assert 2.0 < slow_s < 6.0 and fast_s < slow_s * 0.7
    for voice in ("en-gb", "de", "cmn"):
        assert mp3join.duration(await synth.synthesize(SynthesisRequest(text="123", voice=voice))) > 0.2


@pytest.mark.parametrize("use_library", [
    pytest.param(True, marks=pytest.mark.skipif(not HAS_LIBRARY, reason="espeakng-loader not installed")),
    pytest.param(False, marks=pytest.mark.skipif(not HAS_BINARY, reason="no espeak-ng binary")),
])
async def test_every_voice_of_the_offer_is_one_this_espeak_ng_speaks(use_library: bool) -> None:
    # the core's offer (voxq.tts_offers) lists local's voices statically, so the API never runs
    # espeak-ng: this is where the list meets the installed espeak-ng
    synth = LocalSynthesizer(Settings(), use_library=use_library)
    for voice in synth.voices():
        mp3 = await synth.synthesize(SynthesisRequest(text="1", voice=voice, sample_rate=16000))
        assert mp3join.duration(mp3) > 0.1, voice


async def test_refusals_are_clear() -> None:
    synth = LocalSynthesizer(Settings())
    assert synth.voices()[0] == "en-us" and "en-gb" in synth.voices()
    with pytest.raises(VendorRejected, match="unknown voice 'klingon'"):
        await synth.synthesize(SynthesisRequest(text="x", voice="klingon"))
    with pytest.raises(VendorRejected, match="sample rate 11025"):
        await synth.synthesize(SynthesisRequest(text="x", sample_rate=11025))
    with pytest.raises(VendorRejected, match="empty"):
        await synth.synthesize(SynthesisRequest(text="   "))


async def test_missing_binary_names_both_ways_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _: None)
    synth = LocalSynthesizer(Settings(), use_library=False)
    with pytest.raises(VendorRejected, match="pip install espeakng-loader"):
        await synth.synthesize(SynthesisRequest(text="x"))
    broken = LocalSynthesizer(Settings(), binary="/nonexistent/espeak-ng", use_library=False)
    with pytest.raises(VendorRejected, match="cannot run /nonexistent/espeak-ng"):
        await broken.synthesize(SynthesisRequest(text="x"))
