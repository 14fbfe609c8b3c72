"""The raw-PCM dialect's wire format, without sockets: configuration from the query string and
an optional first JSON text frame, end-of-stream markers, and frame → bus PCM conversion
(docs/protocols/ingest.md, "Raw PCM clients")."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import numpy as np

from producer.ingest.core import CloseCode, Rejected, SessionSpec
from voxq.audio import float_to_s16

END_BINARY = b"END_OF_AUDIO"  # WhisperLive's end marker
END_TEXT = "Done"             # the seed tutorial's and sherpa-onnx's end marker


class SampleFormat(StrEnum):
    """How the client encodes samples."""

    F32 = "f32"
    S16 = "s16"

    @property
    def width(self) -> int:
        """Bytes per sample."""
        return 4 if self is SampleFormat.F32 else 2


@dataclass(frozen=True, slots=True)
class RawConfig:
    """What a raw client declared (defaults: float32, 16 kHz, mono, the default vendor)."""

    session: str | None = None
    fmt: SampleFormat = SampleFormat.F32
    rate: int = 16000
    channels: int = 1
    vendor: str = "local"
    language: str = "en-US"
    options: dict[str, Any] = field(default_factory=dict)
    results: bool = False
    resume: bool = False
    fallback: tuple[str, ...] = ()  # vendors to switch to when ``vendor`` fails

    def spec(self) -> SessionSpec:
        """The session this configuration asks for (the bus carries the client's own rate)."""
        return SessionSpec(self.session, self.rate, self.channels, self.vendor, self.language,
                           self.options, fallback=self.fallback)

    @property
    def frame_bytes(self) -> int:
        """Bytes of one sample frame (all channels)."""
        return self.fmt.width * self.channels


def _flag(v: str) -> bool:
    if v.lower() in ("1", "true", "yes", "on"):
        return True
    if v.lower() in ("0", "false", "no", "off", ""):
        return False
    raise Rejected(f"{v!r} is not a boolean (use 1 or 0)", CloseCode.POLICY, "config")


def _int(name: str, v: object) -> int:
    try:
        if isinstance(v, bool):
            raise ValueError
        return int(v)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise Rejected(f"{name} must be an integer, not {v!r}", CloseCode.POLICY, "config") from None


def _format(v: str) -> SampleFormat:
    aliases = {"f32": "f32", "f32le": "f32", "float32": "f32", "s16": "s16", "s16le": "s16",
               "int16": "s16", "pcm16": "s16"}
    if v.lower() not in aliases:
        raise Rejected(f"unknown sample format {v!r}: use f32 or s16", CloseCode.UNSUPPORTED,
                       "config")
    return SampleFormat(aliases[v.lower()])


def config_from_query(query: Mapping[str, list[str]]) -> RawConfig:
    """The configuration in ``?session=&format=&rate=&channels=&vendor=&fallback=&language=``
    ``&option=k=v`` (``fallback``: vendors to switch to, comma-separated)."""
    def one(name: str) -> str | None:
        v = query.get(name)
        return v[-1] if v else None

    cfg = RawConfig()
    changes: dict[str, Any] = {}
    if (v := one("session")) is not None:
        changes["session"] = v
    if (v := one("format")) is not None:
        changes["fmt"] = _format(v)
    if (v := one("rate")) is not None:
        changes["rate"] = _int("rate", v)
    if (v := one("channels")) is not None:
        changes["channels"] = _int("channels", v)
    if (v := one("vendor")) is not None:
        changes["vendor"] = v
    if (v := one("language")) is not None:
        changes["language"] = v
    if (v := one("fallback")) is not None:
        changes["fallback"] = tuple(x.strip() for x in v.split(",") if x.strip())
    if (v := one("results")) is not None:
        changes["results"] = _flag(v)
    if (v := one("resume")) is not None:
        changes["resume"] = _flag(v)
    options: dict[str, Any] = {}
    for pair in query.get("option", []):
        k, sep, raw = pair.partition("=")
        if not sep or not k.strip():
            raise Rejected(f"option {pair!r} is not of the form key=value", CloseCode.POLICY,
                           "config")
        try:
            options[k.strip()] = json.loads(raw)
        except ValueError:
            options[k.strip()] = raw
    if options:
        changes["options"] = options
    return _checked(replace(cfg, **changes))


def _checked(cfg: RawConfig) -> RawConfig:
    if cfg.channels not in (1, 2):
        raise Rejected(f"channels must be 1 or 2, not {cfg.channels}", CloseCode.UNSUPPORTED,
                       "config")
    if not 8000 <= cfg.rate <= 48000:
        raise Rejected(f"rate {cfg.rate} Hz is outside 8000-48000 Hz", CloseCode.UNSUPPORTED,
                       "config")
    return cfg


class TextKind(StrEnum):
    """What a text frame means."""

    END = "end"
    CONFIG = "config"


def parse_text(text: str) -> tuple[TextKind, dict[str, Any]]:
    """Classify a text frame: an end marker (``Done``, ``{"eof" : 1}``) or a JSON configuration."""
    if text.strip() == END_TEXT:
        return TextKind.END, {}
    try:
        d = json.loads(text)
    except ValueError:
        raise Rejected(f"text frame is neither {END_TEXT!r} nor JSON", CloseCode.UNSUPPORTED,
                       "protocol") from None
    if not isinstance(d, dict):
        raise Rejected("a JSON text frame must be an object", CloseCode.UNSUPPORTED, "protocol")
    if d.get("eof") in (1, True, "1"):
        return TextKind.END, {}
    return TextKind.CONFIG, d


def apply_config(cfg: RawConfig, d: Mapping[str, Any]) -> RawConfig:
    """Merge a first-frame configuration: vosk's ``{"config": {"sample_rate": N}}`` (vosk sends
    int16), or voxq's own fields (``session, format, rate, channels, vendor, fallback, language,
    options``)."""
    changes: dict[str, Any] = {}
    vosk = d.get("config")
    if isinstance(vosk, dict):
        changes["fmt"] = SampleFormat.S16
        if "sample_rate" in vosk:
            changes["rate"] = _int("sample_rate", vosk["sample_rate"])
    for name, attr in (("session", "session"), ("vendor", "vendor"), ("language", "language")):
        if name in d:
            if not isinstance(d[name], str):
                raise Rejected(f"{name} must be a string", CloseCode.POLICY, "config")
            changes[attr] = d[name]
    if "fallback" in d:
        fb = d["fallback"]
        if isinstance(fb, str):
            fb = fb.split(",")
        if not isinstance(fb, list) or not all(isinstance(x, str) for x in fb):
            raise Rejected("fallback must be a comma-separated string or a list of vendor "
                           "names", CloseCode.POLICY, "config")
        changes["fallback"] = tuple(x.strip() for x in fb if x.strip())
    if "format" in d:
        changes["fmt"] = _format(str(d["format"]))
    for name in ("rate", "sample_rate"):
        if name in d:
            changes["rate"] = _int(name, d[name])
    if "channels" in d:
        changes["channels"] = _int("channels", d["channels"])
    if "options" in d:
        if not isinstance(d["options"], dict):
            raise Rejected("options must be an object", CloseCode.POLICY, "config")
        changes["options"] = {**cfg.options, **d["options"]}
    return _checked(replace(cfg, **changes))


def to_bus_pcm(frame: bytes, cfg: RawConfig) -> bytes:
    """A binary frame → s16le bus PCM; Rejected if it is not whole sample frames or not finite."""
    if len(frame) % cfg.frame_bytes:
        raise Rejected(f"a {len(frame)}-byte frame is not a whole number of {cfg.fmt} frames of "
                       f"{cfg.channels} channel(s)", CloseCode.INVALID, "audio")
    if cfg.fmt is SampleFormat.S16:
        return frame
    x = np.frombuffer(frame, dtype="<f4")
    if not np.isfinite(x).all():
        raise Rejected("f32 frame holds NaN or infinite samples", CloseCode.INVALID, "audio")
    return float_to_s16(x).tobytes()  # clipped to [-1, 1], never wrapped
