"""What each speech vendor offers: its public contract as pure data and pure checks, no I/O.

One `Offer` per registered speech vendor (``local``, ``aws``, ``dashscope``, ``volcengine``,
``volcengine-v3``): its voices (the first is its default), output sample rates, what one vendor
call accepts (`TextLimit`), which of speed, volume and pitch it takes and in which range, the
*variant* (engine, model, cluster) that shapes its audio and so belongs in the content cache's
key, and the refusals a request meets before it is queued (pitch on Polly's neural engines).
Offers that depend on configuration are built from the core `Settings`.

The API plans requests and describes vendors from here without importing any adapter; each
adapter in ``workers/vendors/*/tts.py`` reads the same offer, so the two cannot disagree
(``tests/voxq/test_tts_offers.py`` checks every registered adapter against it).
"""

from __future__ import annotations

import functools
import importlib.util
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from voxq.errors import InvalidInput, UnknownVendor
from voxq.settings import Settings

__all__ = [
    "ACCEPTED",
    "CONTROLS",
    "Control",
    "Offer",
    "SynthesisRequest",
    "TextLimit",
    "UnknownSpeechVendor",
    "catalog",
    "offer_of",
    "speech_vendors",
]


# --- one request --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SynthesisRequest:
    """One text-to-speech request."""

    text: str
    voice: str | None = None
    speed: float = 1.0
    volume: float = 1.0
    pitch: float = 1.0
    sample_rate: int = 24000
    format: str = "mp3"


def _is_han(ch: str) -> bool:
    """Han ideographs (CJK unified, extensions, compatibility) — billed double by CosyVoice."""
    return unicodedata.name(ch, "").startswith(("CJK UNIFIED", "CJK COMPATIBILITY IDEOGRAPH"))


@dataclass(frozen=True, slots=True)
class TextLimit:
    """What one vendor call accepts: characters (Han counted ``han_weight`` times), UTF-8 bytes."""

    max_chars: int
    max_bytes: int | None = None
    han_weight: int = 1

    def __post_init__(self) -> None:
        if self.max_chars < max(1, self.han_weight) or (self.max_bytes is not None and self.max_bytes < 4):
            raise ValueError("a text limit must allow at least one character")

    def units(self, text: str) -> int:
        """The text's length as the vendor counts characters."""
        if self.han_weight == 1:
            return len(text)
        return len(text) + (self.han_weight - 1) * sum(1 for ch in text if _is_han(ch))

    def fits(self, text: str) -> bool:
        """True when one vendor call accepts ``text``."""
        if self.units(text) > self.max_chars:
            return False
        return self.max_bytes is None or len(text.encode("utf-8")) <= self.max_bytes


# --- controls -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Control:
    """The range a vendor takes one control in, as a ratio (1.0 = normal)."""

    min: float
    max: float
    default: float = 1.0

    def as_dict(self) -> dict[str, float]:
        """The range as GET /v1/tts/vendors shows it."""
        return {"min": self.min, "max": self.max, "default": self.default}


CONTROLS = ("speed", "volume", "pitch")
ACCEPTED: Mapping[str, Control] = MappingProxyType({
    "speed": Control(0.5, 2.0), "volume": Control(0.1, 2.0), "pitch": Control(0.5, 2.0)})
"""What the API accepts for each control (``voxq.tts_jobs.TtsRequest``); a vendor offers this
range, a narrower one, or only 1.0."""


@dataclass(frozen=True, slots=True)
class Offer:
    """What one speech vendor accepts, and what besides the request shapes its audio."""

    vendor: str
    voices: tuple[str, ...]
    """Voice names; the first is the default."""
    sample_rates: tuple[int, ...]
    limit: TextLimit
    """What one vendor call accepts (longer text is split into several calls)."""
    variant: str = ""
    """Engine, model or cluster: part of the content cache's key."""
    narrowed: Mapping[str, Control] = field(default_factory=dict)
    """Controls taken in a narrower range than ``ACCEPTED``."""
    refused: Mapping[str, str] = field(default_factory=dict)
    """Controls the vendor does not take (only 1.0), with why, as the refusal says it."""

    def __post_init__(self) -> None:
        unknown = (set(self.narrowed) | set(self.refused)) - set(CONTROLS)
        if unknown or set(self.narrowed) & set(self.refused) or not self.voices or not self.sample_rates:
            raise ValueError(f"inconsistent offer of {self.vendor!r}")

    @property
    def controls(self) -> dict[str, Control]:
        """Each control the vendor takes, with its range (a refused one is absent)."""
        return {c: self.narrowed.get(c, ACCEPTED[c]) for c in CONTROLS if c not in self.refused}

    def check(self, request: SynthesisRequest) -> None:
        """Refuse what the vendor would refuse (InvalidInput), before a job is queued."""
        controls = self.controls
        for name in CONTROLS:
            value: float = getattr(request, name)
            if name in self.refused:
                if value != 1.0:
                    raise InvalidInput(f"{name} is {self.refused[name]}; leave {name} at 1.0")
                continue
            c = controls[name]
            if not c.min <= value <= c.max:
                raise InvalidInput(f"{self.vendor} {name} must be between {c.min!r} and {c.max!r}")


# --- the vendors --------------------------------------------------------------------------------

LOCAL_VOICES = ("en-us", "en-gb", "de", "fr", "es", "it", "pt", "pt-br", "nl", "sv", "da", "fi",
                "pl", "cs", "ru", "uk", "tr", "el", "cmn", "yue", "ja", "ko", "hi", "ar", "vi", "id")
"""espeak-ng voice (language) names offered; the first is the default. A static list, so the API
never runs espeak-ng; a test checks that the installed espeak-ng speaks every one."""
LOCAL_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)

POLLY_RATES = (8000, 16000, 22050, 24000, 44100, 48000)
"""Rates botocore's Polly service model documents for mp3."""
POLLY_NEURAL_VOICES = (
    "Joanna", "Matthew", "Danielle", "Gregory", "Ivy", "Kendra", "Kimberly", "Salli", "Joey",
    "Justin", "Kevin", "Ruth", "Stephen", "Amy", "Emma", "Brian", "Arthur", "Olivia", "Aria",
    "Ayanda", "Niamh", "Kajal", "Vicki", "Daniel", "Hannah", "Lea", "Remi", "Gabrielle", "Liam",
    "Lucia", "Sergio", "Mia", "Andres", "Lupe", "Pedro", "Bianca", "Adriano", "Camila", "Vitoria",
    "Thiago", "Ines", "Laura", "Takumi", "Kazuha", "Tomoko", "Seoyeon", "Zhiyu", "Hiujin", "Hala",
    "Zayd", "Elin", "Ida", "Suvi", "Ola", "Sofie", "Lisa", "Isabelle", "Burcu", "Jitka",
)
"""Voices offered with the neural engine (the default); Joanna first."""
POLLY_STANDARD_VOICES = (
    "Joanna", "Matthew", "Ivy", "Justin", "Kendra", "Kimberly", "Salli", "Joey", "Amy", "Brian",
    "Emma", "Russell", "Nicole", "Raveena", "Aditi", "Geraint", "Celine", "Mathieu", "Chantal",
    "Marlene", "Vicki", "Hans", "Conchita", "Enrique", "Lucia", "Mia", "Miguel", "Penelope",
    "Lupe", "Carla", "Bianca", "Giorgio", "Mizuki", "Takumi", "Seoyeon", "Zhiyu", "Lotte",
    "Ruben", "Liv", "Naja", "Mads", "Maja", "Jacek", "Jan", "Ewa", "Ines", "Cristiano", "Camila",
    "Vitoria", "Ricardo", "Carmen", "Tatyana", "Maxim", "Astrid", "Filiz", "Gwyneth", "Dora",
    "Karl", "Zeina",
)
POLLY_LONG_FORM_VOICES = ("Danielle", "Gregory", "Ruth")
POLLY_GENERATIVE_VOICES = ("Ruth", "Matthew", "Danielle", "Stephen", "Amy", "Olivia", "Lea", "Remi",
                           "Vicki", "Daniel", "Lucia", "Sergio", "Mia", "Andres", "Lupe", "Pedro")
POLLY_VOICES_BY_ENGINE: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "neural": POLLY_NEURAL_VOICES, "standard": POLLY_STANDARD_VOICES,
    "long-form": POLLY_LONG_FORM_VOICES, "generative": POLLY_GENERATIVE_VOICES})
POLLY_LIMIT = TextLimit(max_chars=1500)
"""Polly bills at most 3000 characters and accepts 6000 with SSML per call; 1500 leaves room for
the prosody wrapper and XML escapes."""

COSYVOICE_RATES = (8000, 16000, 22050, 24000, 44100, 48000)
COSYVOICE_V2_VOICES = ("longxiaochun_v2", "longxiaoxia_v2", "longwan_v2", "longcheng_v2",
                       "longhua_v2", "longshu_v2", "loongbella_v2")
"""cosyvoice-v2 system voices offered (longxiaochun_v2 is the notes' example)."""
COSYVOICE_V1_VOICES = ("longxiaochun", "longxiaoxia", "longwan", "longcheng", "longhua", "longshu",
                       "loongbella", "longyue", "longfei", "longjielidou", "longtong", "longxiang",
                       "loongstella")
"""cosyvoice-v1 system voices offered."""
COSYVOICE_LIMIT = TextLimit(max_chars=2000, han_weight=2)
"""The service takes 20 000 per message, Han characters counting 2 (``docs/protocols/dashscope.md``,
"continue-task"); smaller pieces keep one failure cheap and progress fine-grained."""

VOLCENGINE_V1_VOICES = ("BV001_streaming", "BV002_streaming", "BV700_streaming", "BV701_streaming",
                        "BV406_streaming", "BV407_streaming", "zh_female_cancan_mars_bigtts",
                        "zh_female_shuangkuaisisi_moon_bigtts", "zh_male_wennuanahu_moon_bigtts")
"""v1 voices offered (BV001_streaming and the two *_bigtts ids are the notes' examples)."""
VOLCENGINE_V3_VOICES = ("zh_female_shuangkuaisisi_moon_bigtts", "zh_female_cancan_mars_bigtts",
                        "zh_male_wennuanahu_moon_bigtts", "zh_female_vv_uranus_bigtts")
"""v3 voices offered; the ``_uranus_`` family needs resource ``seed-tts-2.0``."""
VOLCENGINE_V1_RATES = (8000, 16000, 24000)
VOLCENGINE_V3_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)
VOLCENGINE_LIMIT = TextLimit(max_chars=300, max_bytes=1024)
"""At most 1024 UTF-8 bytes per request, under 300 characters advised
(``docs/protocols/volcengine.md``, "v1 request JSON"); v3 text is split the same way."""


@functools.cache
def espeak_build() -> str:
    """Which espeak-ng makes `local`'s audio: ``lib`` (the espeakng-loader wheel, a dependency)
    or ``bin`` (an espeak-ng binary when that package is absent). Decided by whether the package
    is installed, without loading it; the adapter falls back to the binary (and logs it) if an
    installed library cannot load."""
    return "lib" if importlib.util.find_spec("espeakng_loader") is not None else "bin"


def _local(settings: Settings) -> Offer:
    return Offer("local", LOCAL_VOICES, LOCAL_RATES, TextLimit(max_chars=2000), espeak_build())


def _aws(settings: Settings) -> Offer:
    engine = settings.aws_polly_engine
    refused = {} if engine == "standard" else {
        "pitch": f"not supported by Polly's {engine} engine (only by the standard engine)"}
    return Offer("aws", POLLY_VOICES_BY_ENGINE[engine], POLLY_RATES, POLLY_LIMIT, engine,
                 refused=refused)


def _dashscope(settings: Settings) -> Offer:
    model = settings.dashscope_tts_model
    voices = COSYVOICE_V1_VOICES if model == "cosyvoice-v1" else COSYVOICE_V2_VOICES
    return Offer("dashscope", voices, COSYVOICE_RATES, COSYVOICE_LIMIT, model)


def _volcengine(settings: Settings) -> Offer:
    return Offer("volcengine", VOLCENGINE_V1_VOICES, VOLCENGINE_V1_RATES, VOLCENGINE_LIMIT,
                 settings.volcengine_tts_cluster)


def _volcengine_v3(settings: Settings) -> Offer:
    # loudness_rate is -50..100 (docs/protocols/volcengine.md, "v3 payloads"): nothing below 0.5×
    return Offer("volcengine-v3", VOLCENGINE_V3_VOICES, VOLCENGINE_V3_RATES, VOLCENGINE_LIMIT,
                 settings.volcengine_tts_resource_id or "auto",
                 narrowed={"volume": Control(0.5, 2.0)})


_OFFERS: Mapping[str, Callable[[Settings], Offer]] = MappingProxyType({
    "local": _local, "aws": _aws, "dashscope": _dashscope, "volcengine": _volcengine,
    "volcengine-v3": _volcengine_v3})


class UnknownSpeechVendor(UnknownVendor):
    """A speech vendor name that is not registered."""


def speech_vendors() -> list[str]:
    """Registered speech vendor names, sorted (a test keeps them equal to the worker registry)."""
    return sorted(_OFFERS)


def offer_of(vendor: str, settings: Settings) -> Offer:
    """What ``vendor`` offers under ``settings``; UnknownSpeechVendor lists the known ones."""
    try:
        make = _OFFERS[vendor]
    except KeyError:
        raise UnknownSpeechVendor(f"unknown speech vendor {vendor!r}; known: "
                                  f"{', '.join(speech_vendors())}") from None
    return make(settings)


def catalog(settings: Settings) -> dict[str, Any]:
    """Every speech vendor as a TTS form needs it (GET /v1/tts/vendors): voices (the first is
    the default), output rates, the text limit, and each control it takes with its range."""
    out = []
    for name in speech_vendors():
        offer = offer_of(name, settings)
        out.append({"name": name, "voices": list(offer.voices), "sample_rates": list(offer.sample_rates),
                    "max_chars": settings.tts_max_text_chars,
                    "controls": {c: r.as_dict() for c, r in offer.controls.items()}})
    return {"default": settings.tts_default_vendor, "vendors": out}
