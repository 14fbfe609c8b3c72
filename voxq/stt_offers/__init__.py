"""What each streaming recognizer accepts per session: its public contract as pure data and pure
checks, no I/O.

One `RecognitionOffer` per registered recognition vendor (``local``, ``aws``, ``voxq-ws``,
``assemblyai``, ``assemblyai-v2``, ``deepgram``, ``dashscope``, ``volcengine``), each in its own
module here: the option model a session's ``options`` must fit, and the checks of its language,
sample rate, channel count and option combinations, which also complete the options (e.g.
multichannel on for two channels). A mistake is a `VendorOptionError` naming the vendor.

The producer validates a session with `validate_session` when it creates it, without importing
any adapter; each adapter in ``workers/vendors/*/stt.py`` validates through the same contract
and builds its wire messages from the same option model, so the two cannot disagree
(``tests/voxq/test_stt_offers.py`` checks every registered recognizer against it).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from voxq.errors import UnknownVendor, VendorOptionError

if TYPE_CHECKING:
    from pydantic import BaseModel

    from voxq.stt_offers.contract import RecognitionOffer

__all__ = [
    "RECOGNITION_VENDORS",
    "UnknownVendor",
    "VendorOptionError",
    "offer_of",
    "validate_session",
]

#: vendor name → its module here, imported when first asked for (the names cost no import)
_MODULES: Mapping[str, str] = MappingProxyType({
    "local": "local", "aws": "aws", "voxq-ws": "voxqws", "assemblyai": "assemblyai",
    "assemblyai-v2": "assemblyai_v2", "deepgram": "deepgram", "dashscope": "dashscope",
    "volcengine": "volcengine",
})
#: the recognition vendors a session may name (the worker's registry lists exactly these)
RECOGNITION_VENDORS: frozenset[str] = frozenset(_MODULES)


def offer_of(vendor: str) -> RecognitionOffer[Any]:
    """What ``vendor`` accepts per session; UnknownVendor lists the known ones."""
    try:
        module = _MODULES[vendor]
    except KeyError:
        known = ", ".join(sorted(_MODULES))
        raise UnknownVendor(f"unknown recognition vendor {vendor!r}; known: {known}") from None
    offer: RecognitionOffer[Any] = importlib.import_module(f"{__name__}.{module}").OFFER
    return offer


def validate_session(vendor: str, language: str, rate: int, channels: int,
                     options: Mapping[str, Any]) -> BaseModel:
    """A new session's options as ``vendor`` takes them, checked with its language, rate and
    channels, so a mistake fails where the session is created (VendorOptionError,
    UnknownVendor)."""
    return offer_of(vendor).validate(language, rate, channels, options)
