"""Planning a TTS request: validate it against its vendor's offer (``voxq.tts_offers``) and resolve
every default, before anything is written or queued.

The API plans each request it accepts, the worker runs the stored plan, and ``voxq tts`` plans
what it synthesises at once; none of them needs a vendor adapter for it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from voxq.errors import InvalidInput
from voxq.settings import Settings
from voxq.tts_cache import cache_digest
from voxq.tts_jobs import TextTooLong, TtsRequest
from voxq.tts_offers import SynthesisRequest, offer_of

__all__ = ["Plan", "plan"]


@dataclass(frozen=True, slots=True)
class Plan:
    """A validated request: which vendor, with every default resolved."""

    vendor: str
    variant: str
    synthesis: SynthesisRequest
    use_cache: bool

    @property
    def voice(self) -> str:
        """The voice, as the record shows it."""
        return self.synthesis.voice or ""

    @property
    def chars(self) -> int:
        """Characters of text."""
        return len(self.synthesis.text)

    @property
    def digest(self) -> str:
        """Content-cache key of this request."""
        return cache_digest(self.vendor, self.variant, self.synthesis)

    def to_json(self) -> str:
        """The plan as stored in the job record."""
        s = self.synthesis
        return json.dumps({"vendor": self.vendor, "variant": self.variant, "cache": self.use_cache,
                           "text": s.text, "voice": s.voice, "speed": s.speed, "volume": s.volume,
                           "pitch": s.pitch, "sample_rate": s.sample_rate, "format": s.format},
                          ensure_ascii=False)

    @classmethod
    def from_json(cls, blob: str | bytes) -> Plan:
        """Inverse of :meth:`to_json`."""
        d = json.loads(blob)
        return cls(vendor=d["vendor"], variant=d["variant"], use_cache=bool(d["cache"]),
                   synthesis=SynthesisRequest(text=d["text"], voice=d["voice"], speed=d["speed"],
                                              volume=d["volume"], pitch=d["pitch"],
                                              sample_rate=d["sample_rate"], format=d["format"]))


def plan(request: TtsRequest, settings: Settings) -> Plan:
    """Validate a request and resolve its defaults; InvalidInput (TextTooLong) says what is wrong."""
    text = request.text
    if not text.strip():
        raise InvalidInput("text is empty")
    if len(text) > settings.tts_max_text_chars:
        raise TextTooLong(f"text is {len(text)} characters; the limit is "
                          f"{settings.tts_max_text_chars} (VOXQ_TTS_MAX_TEXT_CHARS)")
    if "\0" in text:
        raise InvalidInput("text contains a NUL character")
    vendor = request.vendor or settings.tts_default_vendor
    offer = offer_of(vendor, settings)
    voice = request.voice or offer.voices[0]
    if voice not in offer.voices:
        raise InvalidInput(f"unknown voice {voice!r} for vendor {vendor!r}; "
                           f"voices: {', '.join(offer.voices)}")
    if request.sample_rate not in offer.sample_rates:
        raise InvalidInput(f"sample_rate {request.sample_rate} is not offered by vendor {vendor!r}; "
                           f"rates: {', '.join(map(str, offer.sample_rates))}")
    synthesis = SynthesisRequest(text=text, voice=voice, speed=request.speed, volume=request.volume,
                                 pitch=request.pitch, sample_rate=request.sample_rate,
                                 format=request.format)
    offer.check(synthesis)  # vendor-specific refusals (e.g. pitch on Polly's neural engine)
    return Plan(vendor=vendor, variant=offer.variant, synthesis=synthesis, use_cache=request.cache)
