"""`aws`, Amazon Transcribe streaming: the per-session options and the languages, rates and
channels the service takes (``docs/protocols/aws-transcribe.md``, "Transcription parameters")."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from voxq.errors import VendorOptionError
from voxq.stt_offers.contract import RecognitionOffer, split_list

__all__ = ["LANGUAGES", "MAX_RATE", "MIN_RATE", "OFFER", "AwsTranscribeOptions", "language_code"]

#: streaming language codes of the Transcribe model enum the notes verified (§3)
LANGUAGES: tuple[str, ...] = (
    "en-US", "en-GB", "es-US", "fr-CA", "fr-FR", "en-AU", "it-IT", "de-DE", "pt-BR", "ja-JP",
    "ko-KR", "zh-CN", "hi-IN", "th-TH",
)
MIN_RATE, MAX_RATE = 8000, 48000
PII_ENTITY_TYPES = frozenset({
    "BANK_ACCOUNT_NUMBER", "BANK_ROUTING", "CREDIT_DEBIT_NUMBER", "CREDIT_DEBIT_CVV",
    "CREDIT_DEBIT_EXPIRY", "PIN", "EMAIL", "ADDRESS", "NAME", "PHONE", "SSN", "ALL",
})

_NAME_RE = r"^[0-9a-zA-Z._-]+$"
_LIST_NAME_RE = re.compile(r"^[a-zA-Z0-9,\-._]+$")
_LOWER_LANGUAGES = {code.lower(): code for code in LANGUAGES}

Name = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=_NAME_RE)]


# --- options --------------------------------------------------------------------------------------


def language_code(code: str) -> str | None:
    """The canonical spelling of a supported language code, or None."""
    return _LOWER_LANGUAGES.get(code.strip().lower())


class AwsTranscribeOptions(BaseModel):
    """Per-session Transcribe query options (§3 of the notes), validated at session creation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vocabulary_name: Name | None = None
    vocabulary_filter_name: Name | None = None
    vocabulary_filter_method: Literal["remove", "mask", "tag"] | None = None
    show_speaker_label: bool = False
    enable_channel_identification: bool | None = Field(
        default=None, description="set automatically: true for 2-channel sessions")
    enable_partial_results_stabilization: bool = False
    partial_results_stability: Literal["high", "medium", "low"] | None = None
    content_identification_type: Literal["PII"] | None = None
    content_redaction_type: Literal["PII"] | None = None
    pii_entity_types: tuple[str, ...] | None = None
    language_model_name: Name | None = None
    identify_language: bool = False
    identify_multiple_languages: bool = False
    language_options: tuple[str, ...] | None = None
    preferred_language: str | None = None
    vocabulary_names: tuple[str, ...] | None = None
    vocabulary_filter_names: tuple[str, ...] | None = None

    @field_validator("pii_entity_types", "language_options", "vocabulary_names",
                     "vocabulary_filter_names", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        """Comma strings become tuples."""
        return split_list(value)

    @field_validator("pii_entity_types")
    @classmethod
    def _pii(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        """Known PII entity types only, at most 300 characters joined."""
        if value is None:
            return None
        unknown = [v for v in value if v not in PII_ENTITY_TYPES]
        if unknown or not value:
            raise ValueError(f"unknown PII entity types {unknown}; known: {sorted(PII_ENTITY_TYPES)}")
        if len(",".join(value)) > 300:
            raise ValueError("at most 300 characters")
        return value

    @field_validator("language_options")
    @classmethod
    def _options(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        """At least two supported codes, one dialect per language, at most 200 characters."""
        if value is None:
            return None
        codes = []
        for code in value:
            canonical = language_code(code)
            if canonical is None:
                raise ValueError(f"unsupported language {code!r}; supported: {', '.join(LANGUAGES)}")
            codes.append(canonical)
        if len(codes) < 2:
            raise ValueError("needs at least two language codes")
        bases = [c.split("-")[0] for c in codes]
        if len(set(bases)) != len(bases):
            raise ValueError("only one dialect per language (e.g. not en-US with en-GB)")
        if len(",".join(codes)) > 200:
            raise ValueError("at most 200 characters")
        return tuple(codes)

    @field_validator("preferred_language")
    @classmethod
    def _preferred(cls, value: str | None) -> str | None:
        """A supported language code."""
        if value is None:
            return None
        canonical = language_code(value)
        if canonical is None:
            raise ValueError(f"unsupported language {value!r}")
        return canonical

    @field_validator("vocabulary_names", "vocabulary_filter_names")
    @classmethod
    def _names(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        """Names of ``[a-zA-Z0-9,-._]``, at most 3000 characters joined."""
        if value is None:
            return None
        joined = ",".join(value)
        if not value or not _LIST_NAME_RE.match(joined) or len(joined) > 3000:
            raise ValueError("1-3000 characters of [a-zA-Z0-9,-._]")
        return value

    @model_validator(mode="after")
    def _combinations(self) -> AwsTranscribeOptions:
        """Reject the combinations the service answers with BadRequestException."""
        identify = self.identify_language or self.identify_multiple_languages
        if self.identify_language and self.identify_multiple_languages:
            raise ValueError("identify_language and identify_multiple_languages are exclusive")
        if self.partial_results_stability and not self.enable_partial_results_stabilization:
            raise ValueError("partial_results_stability needs enable_partial_results_stabilization")
        if self.content_identification_type and self.content_redaction_type:
            raise ValueError("content_identification_type and content_redaction_type are exclusive")
        if self.pii_entity_types and not (self.content_identification_type
                                          or self.content_redaction_type):
            raise ValueError("pii_entity_types needs content_identification_type or "
                             "content_redaction_type")
        if identify and not self.language_options:
            raise ValueError("language identification needs language_options")
        if self.language_options and not identify:
            raise ValueError("language_options is only for language identification")
        if self.preferred_language is not None:
            if not self.identify_language:
                raise ValueError("preferred_language needs identify_language")
            if self.preferred_language not in (self.language_options or ()):
                raise ValueError("preferred_language must be one of language_options")
        if identify and (self.language_model_name or self.content_redaction_type):
            raise ValueError("language identification cannot be combined with a custom "
                             "language model or content redaction")
        if identify and (self.vocabulary_name or self.vocabulary_filter_name):
            raise ValueError("with language identification use vocabulary_names / "
                             "vocabulary_filter_names")
        if (self.vocabulary_names or self.vocabulary_filter_names) and not identify:
            raise ValueError("vocabulary_names / vocabulary_filter_names are for language "
                             "identification; use vocabulary_name / vocabulary_filter_name")
        return self


def check(language: str, rate: int, channels: int,
          options: AwsTranscribeOptions) -> AwsTranscribeOptions:
    """Check language, rate and channels the way the service would; channel identification
    is on exactly for two channels."""
    if not MIN_RATE <= rate <= MAX_RATE:
        raise VendorOptionError(f"aws: sample rate {rate} Hz is outside {MIN_RATE}-{MAX_RATE} Hz")
    if channels not in (1, 2):
        raise VendorOptionError(f"aws: {channels} channels; Transcribe takes 1 or 2")
    identify = options.identify_language or options.identify_multiple_languages
    if not identify and language_code(language) is None:
        raise VendorOptionError(
            f"aws: language {language!r} is not a Transcribe streaming language; "
            f"supported: {', '.join(LANGUAGES)}")
    if options.enable_channel_identification is False and channels == 2:
        raise VendorOptionError("aws: a 2-channel session needs channel identification")
    if options.enable_channel_identification and channels != 2:
        raise VendorOptionError("aws: enable_channel_identification needs a 2-channel session")
    if options.show_speaker_label and channels == 2:
        raise VendorOptionError("aws: show_speaker_label cannot be combined with channel "
                                "identification (2-channel sessions)")
    return options.model_copy(update={"enable_channel_identification": channels == 2})


OFFER = RecognitionOffer("aws", AwsTranscribeOptions, check)
