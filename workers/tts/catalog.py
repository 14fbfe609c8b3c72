"""What each speech vendor offers a TTS form: voices, output rates, and which of speed, volume and
pitch it accepts in which range (GET /v1/tts/vendors), read from the vendor adapters themselves."""

from __future__ import annotations

import dataclasses
from typing import Any

from voxq.errors import InvalidInput
from voxq.settings import Settings
from workers.tts import jobs
from workers.tts.jobs import TtsRequest
from workers.vendors.base import SynthesisRequest, Synthesizer

_CONTROLS = ("speed", "volume", "pitch")


def _accepts(synth: Synthesizer, control: str, value: float) -> bool:
    """Does the vendor take ``control`` at ``value`` (its own pre-queue check, if any)?"""
    check = getattr(synth, "check_request", None)
    if not callable(check):
        return True
    try:
        change: dict[str, Any] = {control: value}
        check(dataclasses.replace(SynthesisRequest(text="x"), **change))
    except InvalidInput:
        return False
    return True


def vendor_info(name: str, settings: Settings) -> dict[str, Any]:
    """One vendor as the TTS form needs it: voices (first = default), output rates, and each
    of speed/volume/pitch with the range this vendor accepts, or absent if it has none."""
    synth = jobs.make_synthesizer(name, settings)
    fields = TtsRequest.model_fields
    controls: dict[str, dict[str, float]] = {}
    for control in _CONTROLS:
        low, high = _bounds(fields[control].metadata)
        if not _accepts(synth, control, 1.5 if high >= 1.5 else high):
            continue
        low = next((v for v in (low, 0.5, 0.75) if v >= low and _accepts(synth, control, v)), 1.0)
        controls[control] = {"min": low, "max": high, "default": 1.0}
    return {"name": name, "voices": synth.voices(), "sample_rates": list(jobs.sample_rates_of(synth)),
            "max_chars": settings.tts_max_text_chars, "controls": controls}


def _bounds(metadata: list[Any]) -> tuple[float, float]:
    """(ge, le) of a pydantic field's constraints."""
    low = next((float(m.ge) for m in metadata if getattr(m, "ge", None) is not None), 0.0)
    high = next((float(m.le) for m in metadata if getattr(m, "le", None) is not None), 1.0)
    return low, high


def vendors(settings: Settings) -> dict[str, Any]:
    """Every registered vendor (``vendor_info``), and the default one; a vendor whose
    configuration cannot be loaded is listed with ``error`` instead of voices."""
    out = []
    for name in jobs.known_vendors():
        try:
            out.append(vendor_info(name, settings))
        except (InvalidInput, ValueError) as e:
            out.append({"name": name, "voices": [], "sample_rates": [], "controls": {},
                        "error": str(e)})
    return {"default": settings.tts_default_vendor, "vendors": out}
