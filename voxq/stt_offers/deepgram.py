"""`deepgram`, Deepgram live streaming (``/v1/listen``): the per-session query options, the
language tags and channels it takes (``docs/protocols/deepgram.md``)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from voxq.errors import VendorOptionError
from voxq.stt_offers.contract import RecognitionOffer, one_or_two_channels, split_list

__all__ = ["OFFER", "REDACT_VALUES", "DeepgramOptions", "valid_language"]

REDACT_VALUES = ("true", "pci", "numbers", "aggressive_numbers", "ssn")
_LANGUAGE = re.compile(r"^(multi|[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*)$")
_MODEL = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


class DeepgramOptions(BaseModel):
    """Per-session ``/v1/listen`` query options (§2 of the notes), validated at creation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(default="nova-3", pattern=_MODEL.pattern)
    interim_results: bool = True
    punctuate: bool = True
    smart_format: bool = False
    endpointing: int | Literal[False] | None = Field(
        default=None, description="ms of silence that ends an utterance, or false")
    utterance_end_ms: int | None = Field(default=None, ge=1, le=60_000)
    vad_events: bool = False
    diarize: bool = False
    diarize_model: Literal["v1", "latest"] | None = None
    multichannel: bool | None = Field(
        default=None, description="set automatically: true for 2-channel sessions")
    keyterm: tuple[str, ...] | None = None
    keywords: tuple[str, ...] | None = None
    search: tuple[str, ...] | None = None
    replace: tuple[str, ...] | None = None
    redact: tuple[Literal[REDACT_VALUES], ...] | None = None  # type: ignore[valid-type]
    numerals: bool | None = None
    profanity_filter: bool | None = None
    filler_words: bool | None = None
    dictation: bool | None = None
    tag: tuple[str, ...] | None = None
    mip_opt_out: bool | None = None

    @field_validator("keyterm", "keywords", "search", "replace", "redact", "tag", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        """Comma strings become tuples."""
        return split_list(value)

    @field_validator("keyterm", "keywords", "search", "replace", "tag")
    @classmethod
    def _terms(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        """One or more non-empty terms."""
        if value is not None and (not value or any(not t.strip() for t in value)):
            raise ValueError("needs one or more non-empty terms")
        return value

    @field_validator("endpointing", mode="before")
    @classmethod
    def _endpointing(cls, value: Any) -> Any:
        """Milliseconds (>= 0) or false; true is not a value Deepgram takes."""
        if value is True or (isinstance(value, str) and value.lower() == "true"):
            raise ValueError("endpointing is milliseconds or false")
        if isinstance(value, str) and value.lower() == "false":
            return False
        if isinstance(value, int) and not isinstance(value, bool) and value < 0:
            raise ValueError("endpointing must be >= 0 ms")
        return value

    @field_validator("keywords")
    @classmethod
    def _keywords(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        """``term`` or ``term:boost`` with a numeric boost."""
        for kw in value or ():
            term, sep, boost = kw.rpartition(":")
            if sep and term:
                try:
                    float(boost)
                except ValueError:
                    raise ValueError(f"keyword {kw!r}: the boost after ':' must be a number") from None
        return value

    @field_validator("replace")
    @classmethod
    def _replace(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        """``find:replacement`` pairs."""
        for pair in value or ():
            if ":" not in pair or not pair.split(":", 1)[0]:
                raise ValueError(f"replace {pair!r} must be find:replacement")
        return value

    @model_validator(mode="after")
    def _combinations(self) -> DeepgramOptions:
        """Reject what Deepgram documents as needing another option or model."""
        if self.utterance_end_ms is not None and not self.interim_results:
            raise ValueError("utterance_end_ms needs interim_results")
        if self.diarize_model is not None and not self.diarize:
            raise ValueError("diarize_model needs diarize")
        if self.keyterm and not self.model.startswith("nova-3"):
            raise ValueError("keyterm needs a nova-3 model")
        return self


def valid_language(language: str) -> bool:
    """A BCP-47 style tag (``en``, ``en-US``) or ``multi``."""
    return bool(_LANGUAGE.match(language))


def check(language: str, rate: int, channels: int, options: DeepgramOptions) -> DeepgramOptions:
    """Check channels and the language tag; multichannel is on exactly for two channels."""
    one_or_two_channels("deepgram", channels)
    if not valid_language(language):
        raise VendorOptionError(f"deepgram: language {language!r} is not a BCP-47 tag "
                                "such as en or en-US (or multi)")
    if options.multichannel is False and channels == 2:
        raise VendorOptionError("deepgram: a 2-channel session needs multichannel (each "
                                "channel is transcribed on its own)")
    if options.multichannel and channels == 1:
        raise VendorOptionError("deepgram: multichannel needs a 2-channel session")
    return options.model_copy(update={"multichannel": channels == 2})


OFFER = RecognitionOffer("deepgram", DeepgramOptions, check)
