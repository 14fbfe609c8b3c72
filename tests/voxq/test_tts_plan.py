"""Planning a TTS request in the core: defaults come from the vendor's offer, the offer's variant
is part of the cache key, and the plan survives the record round trip."""

from __future__ import annotations

import pytest

from voxq.errors import InvalidInput
from voxq.settings import Settings
from voxq.tts_jobs import TextTooLong, TtsRequest
from voxq.tts_offers import offer_of, speech_vendors
from voxq.tts_plan import Plan, plan


@pytest.mark.parametrize("vendor", speech_vendors())
def test_defaults_are_the_offers_first_voice(vendor: str) -> None:
    s = Settings()
    offer = offer_of(vendor, s)
    rate = 24000 if 24000 in offer.sample_rates else offer.sample_rates[-1]
    p = plan(TtsRequest(text="Hello.", vendor=vendor, voice="", sample_rate=rate), s)
    assert (p.vendor, p.voice, p.variant) == (vendor, offer.voices[0], offer.variant)
    assert Plan.from_json(p.to_json()) == p


def test_the_variant_separates_cache_entries() -> None:
    s = Settings()
    neural = plan(TtsRequest(text="Hello.", vendor="aws"), s)
    standard = plan(TtsRequest(text="Hello.", vendor="aws"), s.model_copy(update={"aws_polly_engine": "standard"}))
    assert neural.synthesis == standard.synthesis and neural.digest != standard.digest
    assert plan(TtsRequest(text="Hello.", vendor="aws", voice="Joanna"), s).digest == neural.digest


def test_the_default_vendor_applies_and_refusals_name_what_exists() -> None:
    s = Settings().model_copy(update={"tts_default_vendor": "dashscope", "tts_max_text_chars": 10})
    assert plan(TtsRequest(text="你好"), s).voice == "longxiaochun_v2"
    with pytest.raises(TextTooLong, match="11 characters; the limit is 10"):
        plan(TtsRequest(text="x" * 11), s)
    with pytest.raises(InvalidInput, match="unknown voice 'Joanna' for vendor 'dashscope'; voices: longxiaochun_v2"):
        plan(TtsRequest(text="x", voice="Joanna"), s)
    with pytest.raises(InvalidInput, match="rates: 8000, 16000, 24000"):
        plan(TtsRequest(text="x", vendor="volcengine", sample_rate=22050), s)
    with pytest.raises(InvalidInput, match="pitch is not supported by Polly's neural engine"):
        plan(TtsRequest(text="x", vendor="aws", pitch=0.8), s)
