"""What each streaming recognizer accepts per session is one contract in the core: the worker
registry names the same vendors, every recognizer validates a session exactly as the core does
(the same options, completed the same way, or the same error with the same message), the
producer refuses what the core refuses with the same message, and the core stays pure."""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

import pytest
from pydantic import BaseModel

from producer.publisher import session_meta
from voxq.errors import InvalidInput, UnknownVendor, VendorOptionError
from voxq.records import MAX_RATE, MIN_RATE
from voxq.stt_offers import RECOGNITION_VENDORS, offer_of, validate_session
from voxq.stt_offers.contract import RecognitionOffer
from workers.vendors import base
from workers.vendors import registry as worker_registry
from workers.vendors.registry import RECOGNIZERS, recognizer_class

CORE = Path(__file__).resolve().parents[2] / "voxq" / "stt_offers"


class Case(NamedTuple):
    """One session: accepted when ``refusal`` is None (then ``then`` are fields of the options
    it gets), else refused with a message that starts with ``refusal``."""

    language: str
    rate: int
    channels: int
    options: dict[str, Any]
    refusal: str | None = None
    then: Mapping[str, Any] = MappingProxyType({})


AWS_LANGUAGES = ("en-US, en-GB, es-US, fr-CA, fr-FR, en-AU, it-IT, de-DE, pt-BR, ja-JP, ko-KR, "
                 "zh-CN, hi-IN, th-TH")

CASES: dict[str, list[Case]] = {
    "local": [
        Case("en-US", 16000, 1, {}),
        Case("en-GB", 8000, 2, {"vad_mode": 0, "window": "0.5"}, then={"window": 0.5}),
        Case("de-DE", 16000, 1, {}, "local: the bundled pocketsphinx model is English (en-*); got "
             "'de-DE'; set VOXQ_LOCAL_MODEL_DIR for another language's model"),
        Case("en-US", 16000, 1, {"vad_mode": 9}, "local: invalid options: vad_mode: "),
        Case("en-US", 16000, 1, {"nope": 1}, "local: invalid options: nope: "),
        Case("fr", 16000, 1, {"vad_mode": -1}, "local: invalid options: vad_mode: "),
    ],
    "aws": [
        Case("en-us", 16000, 2, {}, then={"enable_channel_identification": True}),
        Case("en-US", 8000, 1, {"show_speaker_label": True},
             then={"enable_channel_identification": False}),
        Case("de-DE", 48000, 1, {"content_redaction_type": "PII", "pii_entity_types": "SSN,NAME"},
             then={"pii_entity_types": ("SSN", "NAME")}),
        Case("xx-XX", 16000, 1, {"identify_language": True, "language_options": ["en-us", "es-US"],
                                 "preferred_language": "es-US"},
             then={"language_options": ("en-US", "es-US")}),
        Case("en-US", 96000, 1, {}, "aws: sample rate 96000 Hz is outside 8000-48000 Hz"),
        Case("en-US", 16000, 3, {}, "aws: 3 channels; Transcribe takes 1 or 2"),
        Case("xx-XX", 16000, 1, {}, "aws: language 'xx-XX' is not a Transcribe streaming "
             f"language; supported: {AWS_LANGUAGES}"),
        Case("en-US", 16000, 2, {"enable_channel_identification": False},
             "aws: a 2-channel session needs channel identification"),
        Case("en-US", 16000, 1, {"enable_channel_identification": True},
             "aws: enable_channel_identification needs a 2-channel session"),
        Case("en-US", 16000, 2, {"show_speaker_label": True}, "aws: show_speaker_label cannot be "
             "combined with channel identification (2-channel sessions)"),
        Case("en-US", 16000, 1, {"identify_language": True}, "aws: invalid options: options: "),
        Case("zz", 96000, 3, {"bogus": 1}, "aws: invalid options: bogus: "),
    ],
    "voxq-ws": [
        Case("en-US", 16000, 1, {}),
        Case("zz", 8000, 2, {}),
        Case("en-US", 16000, 1, {"model": "x"}, "voxq-ws: invalid options: model: "),
    ],
    "assemblyai": [
        Case("de-DE", 8000, 2, {"keyterms_prompt": "voxq, Redis", "speech_model": "u3-rt-pro",
                                "prompt": "hi"}, then={"keyterms_prompt": ("voxq", "Redis")}),
        Case("en-US", 16000, 3, {}, "assemblyai: 3 channels; 1 or 2 are supported"),
        Case("en-US", 16000, 1, {"max_speakers": 2}, "assemblyai: invalid options: options: "),
        Case("en-US", 16000, 1, {"speech_model": "nope"}, "assemblyai: invalid options: speech_model: "),
        Case("en-US", 16000, 1, {"keyterms_prompt": ""}, "assemblyai: invalid options: keyterms_prompt: "),
    ],
    "assemblyai-v2": [
        Case("en-US", 16000, 1, {"word_boost": "a,b", "end_utterance_silence_threshold": 700},
             then={"word_boost": ("a", "b")}),
        Case("en-US", 8000, 2, {}),
        Case("en-US", 16000, 3, {}, "assemblyai-v2: 3 channels; 1 or 2 are supported"),
        Case("en-US", 16000, 1, {"word_boost": ["x" * 3000]},
             "assemblyai-v2: invalid options: word_boost: Value error, at most 2500 characters as JSON"),
        Case("en-US", 16000, 1, {"speech_model": "u3-rt-pro"},
             "assemblyai-v2: invalid options: speech_model: "),
    ],
    "deepgram": [
        Case("multi", 48000, 2, {"keyterm": "a,b", "diarize": True, "diarize_model": "latest"},
             then={"multichannel": True, "keyterm": ("a", "b")}),
        Case("en", 16000, 1, {"endpointing": "false"}, then={"multichannel": False, "endpointing": False}),
        Case("english!", 16000, 1, {}, "deepgram: language 'english!' is not a BCP-47 tag such as "
             "en or en-US (or multi)"),
        Case("en-US", 16000, 3, {}, "deepgram: 3 channels; 1 or 2 are supported"),
        Case("en-US", 16000, 2, {"multichannel": False}, "deepgram: a 2-channel session needs "
             "multichannel (each channel is transcribed on its own)"),
        Case("en-US", 16000, 1, {"multichannel": True},
             "deepgram: multichannel needs a 2-channel session"),
        Case("en-US", 16000, 1, {"keyterm": "a", "model": "nova-2"},
             "deepgram: invalid options: options: Value error, keyterm needs a nova-3 model"),
        Case("en-US", 16000, 1, {"keywords": "a:b"}, "deepgram: invalid options: keywords: "),
    ],
    "dashscope": [
        Case("zh-CN", 16000, 2, {"language_hints": "zh,en"}, then={"language_hints": ("zh", "en")}),
        Case("auto", 16000, 1, {"model": "paraformer-realtime-v1"}),
        Case("zh", 8000, 1, {"model": "paraformer-realtime-8k-v2"}),
        Case("en-GB", 16000, 1, {}),
        Case("sv-SE", 16000, 1, {}, "dashscope: language 'sv-SE' is not one paraformer-realtime-v2 "
             "recognises (zh, en, ja, yue, ko, de, fr, ru, or auto)"),
        Case("en-US", 16000, 1, {"model": "paraformer-realtime-v1"}, "dashscope: "
             "paraformer-realtime-v1 recognises Chinese only, not 'en-US'; use paraformer-realtime-v2"),
        Case("zh", 8000, 1, {"model": "paraformer-realtime-v1"}, "dashscope: paraformer-realtime-v1 "
             "takes 16000 Hz audio; a 8000 Hz session cannot supply it (use paraformer-realtime-v2)"),
        Case("zh", 16000, 3, {}, "dashscope: 3 channels; 1 or 2 are supported"),
        Case("zh", 16000, 1, {"phrase_id": "x"}, "dashscope: invalid options: options: "),
    ],
    "volcengine": [
        Case("en-US", 8000, 2, {"mode": "bigmodel"}, then={"mode": "bigmodel"}),
        Case("ja-JP", 16000, 1, {"mode": "bigmodel_nostream"}),
        Case("auto", 16000, 1, {}, then={"mode": "bigmodel_async"}),
        Case("ja-JP", 16000, 1, {}, "volcengine: language 'ja-JP': the streaming modes recognise "
             "Chinese (with dialects) and English; use mode=bigmodel_nostream for other languages"),
        Case("xx", 16000, 1, {"mode": "bigmodel_nostream"},
             "volcengine: language 'xx': give a region as well (e.g. xx-XX)"),
        Case("zh-CN", 16000, 3, {}, "volcengine: 3 channels; 1 or 2 are supported"),
        Case("zh-CN", 16000, 1, {"accelerate_score": 3}, "volcengine: invalid options: options: "),
    ],
}
ALL = [(vendor, case) for vendor, cases in CASES.items() for case in cases]


def outcome(validate: Any, case: Case) -> tuple[type, Any]:
    """(options class, options as data) when accepted, (error class, message) when refused."""
    try:
        parsed = validate(case.language, case.rate, case.channels, case.options)
    except InvalidInput as e:
        return type(e), str(e)
    assert isinstance(parsed, BaseModel)
    return type(parsed), parsed.model_dump()


def test_the_core_names_the_registered_recognizers() -> None:
    assert sorted(RECOGNITION_VENDORS) == sorted(RECOGNIZERS) == sorted(CASES)
    known = ", ".join(sorted(RECOGNIZERS))
    for check in (lambda: validate_session("nope", "en-US", 16000, 1, {}),
                  lambda: recognizer_class("nope")):
        with pytest.raises(UnknownVendor) as e:
            check()
        assert str(e.value) == f"unknown recognition vendor 'nope'; known: {known}"
    assert worker_registry.UnknownVendor is UnknownVendor
    assert base.VendorOptionError is VendorOptionError and issubclass(VendorOptionError, InvalidInput)


@pytest.mark.parametrize(("vendor", "case"), ALL, ids=[f"{v}-{i}" for i, (v, _) in enumerate(ALL)])
def test_every_recognizer_validates_exactly_as_the_core(vendor: str, case: Case) -> None:
    core = outcome(offer_of(vendor).validate, case)
    assert outcome(recognizer_class(vendor).validate_options, case) == core
    assert outcome(lambda *a: worker_registry.validate_session(vendor, *a), case) == core
    kind, detail = core
    if case.refusal is None:
        assert issubclass(kind, BaseModel), detail
        assert kind is offer_of(vendor).options_model
        assert {k: detail[k] for k in case.then} == dict(case.then)
    else:
        assert kind is VendorOptionError
        assert detail.startswith(case.refusal), detail


#: refused sessions of a format the producer takes (others are refused before the vendor is asked)
REFUSED = [(v, c) for v, c in ALL
           if c.refusal is not None and c.channels in (1, 2) and MIN_RATE <= c.rate <= MAX_RATE]


@pytest.mark.parametrize(("vendor", "case"), REFUSED, ids=[f"{v}-{i}" for i, (v, _) in enumerate(REFUSED)])
def test_the_producer_refuses_a_session_with_the_cores_message(vendor: str, case: Case) -> None:
    with pytest.raises(VendorOptionError) as e:
        session_meta("s", vendor, case.language, case.rate, case.channels, options=case.options)
    assert (VendorOptionError, str(e.value)) == outcome(offer_of(vendor).validate, case)


def test_the_producer_checks_each_fallback_with_its_default_options() -> None:
    meta = session_meta("s", "local", "en-ZA", fallback="deepgram,volcengine")
    assert meta.fallback == ("deepgram", "volcengine")
    with pytest.raises(VendorOptionError) as e:
        session_meta("s", "local", "en-ZA", fallback="deepgram,aws")
    assert str(e.value) == (f"aws: language 'en-ZA' is not a Transcribe streaming language; "
                            f"supported: {AWS_LANGUAGES}")


def test_the_adapters_build_requests_from_the_cores_option_models() -> None:
    from workers.vendors.assemblyai import protocol as assemblyai
    from workers.vendors.assemblyai.v2 import protocol as assemblyai_v2
    from workers.vendors.dashscope import protocol as dashscope
    from workers.vendors.deepgram import protocol as deepgram
    from workers.vendors.local import stt as local
    from workers.vendors.volcengine import sauc as volcengine

    assert deepgram.DeepgramOptions is offer_of("deepgram").options_model
    assert assemblyai.AssemblyAIOptions is offer_of("assemblyai").options_model
    assert assemblyai_v2.AssemblyAIV2Options is offer_of("assemblyai-v2").options_model
    assert dashscope.DashScopeOptions is offer_of("dashscope").options_model
    assert volcengine.VolcengineOptions is offer_of("volcengine").options_model
    assert local.LocalOptions is offer_of("local").options_model
    assert base.NoOptions is offer_of("voxq-ws").options_model
    assert all(isinstance(offer_of(v), RecognitionOffer) and offer_of(v).name == v
               for v in RECOGNITION_VENDORS)


#: what a contract module may import: the standard library it uses, pydantic, the core's errors
#: and its own package (no sockets, no HTTP client, no SDK, nothing of the workers)
PURE = {"__future__", "collections", "dataclasses", "importlib", "json", "re", "types", "typing",
        "pydantic", "voxq.errors", "voxq.stt_offers"}


@pytest.mark.parametrize("path", sorted(CORE.glob("*.py")), ids=lambda p: p.name)
def test_the_contracts_are_pure(path: Path) -> None:
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), path.name)):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    assert imported, path
    strays = {m for m in imported if not any(m == p or m.startswith(f"{p}.") for p in PURE)}
    assert not strays, f"{path.name} imports {sorted(strays)}"
