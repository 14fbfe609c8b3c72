"""Vendor adapters by name, imported lazily so a worker never loads a vendor it does not use
(and an unknown name is a clear error that lists the known ones). What a recognition session
may ask for is checked by the core's contracts (``voxq.stt_offers``), the producer's too."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from voxq.errors import UnknownVendor
from voxq.settings import Settings
from voxq.stt_offers import validate_session as validate_offered_session
from workers.vendors.base import Recognizer, RecognizerConfig, Synthesizer

RECOGNIZERS: dict[str, str] = {
    "local": "workers.vendors.local.stt:LocalRecognizer",
    "aws": "workers.vendors.aws.stt:AwsTranscribeRecognizer",
    "voxq-ws": "workers.vendors.voxqws.stt:VoxqWsRecognizer",
    "assemblyai": "workers.vendors.assemblyai.stt:AssemblyAIRecognizer",
    "assemblyai-v2": "workers.vendors.assemblyai.v2.stt:AssemblyAIV2Recognizer",
    "deepgram": "workers.vendors.deepgram.stt:DeepgramRecognizer",
    "dashscope": "workers.vendors.dashscope.stt:DashScopeRecognizer",
    "volcengine": "workers.vendors.volcengine.stt:VolcengineRecognizer",
}

SYNTHESIZERS: dict[str, str] = {
    "local": "workers.vendors.local.tts:LocalSynthesizer",
    "aws": "workers.vendors.aws.tts:PollySynthesizer",
    "dashscope": "workers.vendors.dashscope.tts:CosyVoiceSynthesizer",
    "volcengine": "workers.vendors.volcengine.tts:VolcengineTtsSynthesizer",
    "volcengine-v3": "workers.vendors.volcengine.tts:VolcengineV3Synthesizer",
}


def _load(table: Mapping[str, str], name: str, kind: str) -> Any:
    try:
        target = table[name]
    except KeyError:
        known = ", ".join(sorted(table)) or "none"
        raise UnknownVendor(f"unknown {kind} vendor {name!r}; known: {known}") from None
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def recognizer_class(name: str) -> type[Recognizer]:
    """The Recognizer class registered as ``name``."""
    cls: type[Recognizer] = _load(RECOGNIZERS, name, "recognition")
    return cls


def synthesizer_class(name: str) -> type[Synthesizer]:
    """The Synthesizer class registered as ``name``."""
    cls: type[Synthesizer] = _load(SYNTHESIZERS, name, "speech")
    return cls


def validate_session(vendor: str, language: str, rate: int, channels: int,
                     options: Mapping[str, Any]) -> BaseModel:
    """Check vendor and options with the core's contract of the vendor (no adapter loaded)."""
    return validate_offered_session(vendor, language, rate, channels, options)


def create_recognizer(vendor: str, session_id: str, language: str, rate: int, channels: int,
                      options: Mapping[str, Any], settings: Settings) -> Recognizer:
    """A new, not yet started, recognizer for one session."""
    cls = recognizer_class(vendor)
    parsed = cls.validate_options(language, rate, channels, options)
    config = RecognizerConfig(session_id=session_id, rate=rate, channels=channels,
                              language=language, options=parsed)
    return cls(config, settings)
