"""What each speech vendor offers is one contract in the core: the worker registry names the same
vendors, every adapter reports exactly its offer (voices, rates, limit, variant, refusals) under
each configuration that changes it, and the checks and the catalog say what the vendor takes."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from voxq.errors import InvalidInput
from voxq.settings import Settings
from voxq.tts_jobs import TtsRequest
from voxq.tts_offers import (
    ACCEPTED,
    CONTROLS,
    Control,
    Offer,
    SynthesisRequest,
    TextLimit,
    UnknownSpeechVendor,
    catalog,
    offer_of,
    speech_vendors,
)
from workers.tts import jobs
from workers.vendors.registry import SYNTHESIZERS, synthesizer_class

CONFIGURATIONS: list[dict[str, Any]] = [
    {},
    {"aws_polly_engine": "standard"},
    {"aws_polly_engine": "long-form"},
    {"aws_polly_engine": "generative"},
    {"dashscope_tts_model": "cosyvoice-v1"},
    {"volcengine_tts_cluster": "volcano_icl", "volcengine_tts_resource_id": "seed-tts-2.0"},
]
#: values of each control a request may carry (``TtsRequest``'s bounds, 1.0, and between)
PROBES = {c: sorted({ACCEPTED[c].min, 0.3, 0.49, 0.5, 0.75, 1.0, 1.2, 1.5, ACCEPTED[c].max}
                    - {v for v in (0.3, 0.49) if v < ACCEPTED[c].min}) for c in CONTROLS}


def refusal(check: Any, request: SynthesisRequest) -> str | None:
    """The InvalidInput message of ``check(request)``, or None when it accepts."""
    try:
        check(request)
    except InvalidInput as e:
        return str(e)
    return None


def test_the_core_names_the_registered_synthesizers() -> None:
    assert speech_vendors() == sorted(SYNTHESIZERS)
    with pytest.raises(UnknownSpeechVendor, match="unknown speech vendor 'nope'; known: aws, dashscope, "
                                                  "local, volcengine, volcengine-v3"):
        offer_of("nope", Settings())


@pytest.mark.parametrize("change", CONFIGURATIONS)
@pytest.mark.parametrize("vendor", sorted(SYNTHESIZERS))
def test_every_adapter_reports_exactly_its_offer(vendor: str, change: dict[str, Any]) -> None:
    settings = Settings().model_copy(update=change)
    offer = offer_of(vendor, settings)
    synth = synthesizer_class(vendor)(settings)
    assert synth.voices() == list(offer.voices)
    assert synth.sample_rates() == offer.sample_rates
    assert jobs.text_limit_of(synth) == offer.limit
    assert synth.variant() == offer.variant
    for control, values in PROBES.items():
        for value in values:
            request = dataclasses.replace(SynthesisRequest(text="x"), **{control: value})
            assert refusal(synth.check_request, request) == refusal(offer.check, request), (control, value)


def test_offers_depend_on_the_configuration_that_shapes_them() -> None:
    base = Settings()
    standard = base.model_copy(update={"aws_polly_engine": "standard"})
    assert offer_of("aws", base).variant == "neural" and offer_of("aws", standard).variant == "standard"
    assert "Hans" in offer_of("aws", standard).voices and "Hans" not in offer_of("aws", base).voices
    assert offer_of("aws", base).voices[0] == "Joanna"
    v1 = base.model_copy(update={"dashscope_tts_model": "cosyvoice-v1"})
    assert offer_of("dashscope", base).voices[0] == "longxiaochun_v2"
    assert offer_of("dashscope", v1).voices[0] == "longxiaochun" and offer_of("dashscope", v1).variant == "cosyvoice-v1"
    assert offer_of("volcengine-v3", base).variant == "auto"
    assert offer_of("volcengine-v3", base.model_copy(
        update={"volcengine_tts_resource_id": "seed-tts-2.0"})).variant == "seed-tts-2.0"
    assert offer_of("volcengine", base).variant == base.volcengine_tts_cluster


def test_limits_of_one_call() -> None:
    s = Settings()
    assert offer_of("aws", s).limit == TextLimit(1500)
    assert offer_of("dashscope", s).limit == TextLimit(2000, han_weight=2)
    assert offer_of("volcengine", s).limit == offer_of("volcengine-v3", s).limit == TextLimit(300, 1024)
    assert offer_of("local", s).limit == TextLimit(2000)


def test_refusals_say_what_the_vendor_takes() -> None:
    s = Settings()
    polly = offer_of("aws", s)
    assert refusal(polly.check, SynthesisRequest(text="x", pitch=1.2)) == (
        "pitch is not supported by Polly's neural engine (only by the standard engine); "
        "leave pitch at 1.0")
    assert refusal(polly.check, SynthesisRequest(text="x", speed=2.0, volume=0.1)) is None
    standard = offer_of("aws", s.model_copy(update={"aws_polly_engine": "standard"}))
    assert refusal(standard.check, SynthesisRequest(text="x", pitch=1.2)) is None
    v3 = offer_of("volcengine-v3", s)
    assert refusal(v3.check, SynthesisRequest(text="x", volume=0.3)) == (
        "volcengine-v3 volume must be between 0.5 and 2.0")
    assert refusal(v3.check, SynthesisRequest(text="x", volume=0.5, pitch=2.0)) is None


def test_controls_lie_within_what_the_api_accepts() -> None:
    fields = TtsRequest.model_fields
    for control in CONTROLS:
        bounds = {type(m).__name__: getattr(m, type(m).__name__.lower()) for m in fields[control].metadata}
        assert (bounds["Ge"], bounds["Le"]) == (ACCEPTED[control].min, ACCEPTED[control].max)
    for vendor in speech_vendors():
        for control, c in offer_of(vendor, Settings()).controls.items():
            assert ACCEPTED[control].min <= c.min <= 1.0 <= c.max <= ACCEPTED[control].max, vendor


def test_inconsistent_offers_are_refused() -> None:
    limit = TextLimit(10)
    with pytest.raises(ValueError, match="inconsistent"):
        Offer("v", (), (8000,), limit)
    with pytest.raises(ValueError, match="inconsistent"):
        Offer("v", ("a",), (8000,), limit, refused={"tempo": "no"})
    with pytest.raises(ValueError, match="inconsistent"):
        Offer("v", ("a",), (8000,), limit, narrowed={"pitch": Control(0.8, 1.2)}, refused={"pitch": "no"})


def test_catalog_lists_every_vendor_for_the_form() -> None:
    s = Settings().model_copy(update={"tts_max_text_chars": 777, "tts_default_vendor": "aws"})
    body = catalog(s)
    assert body["default"] == "aws"
    by_name = {v["name"]: v for v in body["vendors"]}
    assert sorted(by_name) == speech_vendors()
    local = by_name["local"]
    assert local["voices"][0] == "en-us" and local["sample_rates"] == [8000, 16000, 22050, 24000,
                                                                        32000, 44100, 48000]
    assert local["max_chars"] == 777
    assert local["controls"] == {"speed": {"min": 0.5, "max": 2.0, "default": 1.0},
                                 "volume": {"min": 0.1, "max": 2.0, "default": 1.0},
                                 "pitch": {"min": 0.5, "max": 2.0, "default": 1.0}}
    assert set(by_name["aws"]["controls"]) == {"speed", "volume"}  # neural: no pitch
    assert by_name["volcengine-v3"]["controls"]["volume"] == {"min": 0.5, "max": 2.0, "default": 1.0}
    assert by_name["volcengine"]["sample_rates"] == [8000, 16000, 24000]
