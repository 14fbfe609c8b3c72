"""`volcengine`, the Doubao big-model streaming ASR (``sauc``): the per-session options, the
modes and the languages each recognises (``docs/protocols/volcengine.md``, §4.4)."""

from __future__ import annotations

import json
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from voxq.errors import VendorOptionError
from voxq.stt_offers.contract import RecognitionOffer, one_or_two_channels

__all__ = ["MODES", "NOSTREAM_LANGUAGES", "OFFER", "VolcengineOptions", "stream_language"]

MODES = ("bigmodel", "bigmodel_async", "bigmodel_nostream")
#: languages the nostream mode documents (the list in the docs ends with "…": other
#: well-formed codes are passed through)
NOSTREAM_LANGUAGES = ("zh-CN", "en-US", "ja-JP", "id-ID", "es-MX", "pt-BR", "de-DE", "fr-FR",
                      "ko-KR", "fil-PH", "ms-MY", "th-TH", "ar-SA")
_LANGUAGE_RE = re.compile(r"^([a-z]{2,3})(?:[-_]([A-Za-z]{2}|\d{3}))?$", re.IGNORECASE)
_AUTO = ("", "auto")


def _json_text(value: str | None) -> str | None:
    """A field the service takes as a JSON *string*: it must parse."""
    if value is None:
        return None
    try:
        json.loads(value)
    except ValueError as e:
        raise ValueError(f"must be a JSON string: {e}") from None
    return value


Name = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class VolcengineOptions(BaseModel):
    """Per-session options of the ``volcengine`` recognizer (§4.4), checked at session creation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["bigmodel", "bigmodel_async", "bigmodel_nostream"] = "bigmodel_async"
    result_type: Literal["full", "single"] = "single"
    enable_itn: bool | None = None
    enable_punc: bool | None = None
    enable_ddc: bool | None = None
    enable_nonstream: bool | None = None
    end_window_size: int | None = Field(default=None, ge=200)
    force_to_speech_time: int | None = Field(default=None, ge=1)
    vad_segment_duration: int | None = Field(default=None, ge=1)
    enable_accelerate_text: bool | None = None
    accelerate_score: int | None = Field(default=None, ge=0, le=20)
    output_zh_variant: Literal["traditional", "tw", "hk"] | None = None
    boosting_table_id: Name | None = None
    boosting_table_name: Name | None = None
    correct_table_id: Name | None = None
    correct_table_name: Name | None = None
    context: str | None = Field(default=None, max_length=100_000)
    sensitive_words_filter: str | None = Field(default=None, max_length=100_000)
    uid: Name | None = None

    @field_validator("context", "sensitive_words_filter")
    @classmethod
    def _json_strings(cls, value: str | None) -> str | None:
        """These travel as JSON strings; malformed JSON is refused here, not by the service."""
        return _json_text(value)

    @model_validator(mode="after")
    def _combinations(self) -> VolcengineOptions:
        """Options that only one mode accepts."""
        if self.enable_nonstream is not None and self.mode != "bigmodel_async":
            raise ValueError("enable_nonstream is for mode bigmodel_async only")
        if self.accelerate_score is not None and not self.enable_accelerate_text:
            raise ValueError("accelerate_score needs enable_accelerate_text")
        return self


def stream_language(language: str, mode: str) -> str | None:
    """The ``audio.language`` to send (nostream only; None = the default zh/en + dialects);
    ValueError for a language the mode cannot recognise."""
    code = language.strip()
    if code.lower() in _AUTO:
        return None
    m = _LANGUAGE_RE.match(code)
    if m is None:
        raise ValueError(f"language {language!r} is not a language code such as zh-CN")
    base = m.group(1).lower()
    if mode != "bigmodel_nostream":
        if base not in ("zh", "en", "yue"):
            raise ValueError(f"language {language!r}: the streaming modes recognise Chinese "
                             "(with dialects) and English; use mode=bigmodel_nostream for "
                             "other languages")
        return None
    for known in NOSTREAM_LANGUAGES:
        if known.lower() == code.lower().replace("_", "-"):
            return known
    if m.group(2) is None:
        for known in NOSTREAM_LANGUAGES:
            if known.split("-")[0] == base:
                return known
        raise ValueError(f"language {language!r}: give a region as well (e.g. {base}-XX)")
    return f"{base}-{m.group(2).upper()}"


def check(language: str, rate: int, channels: int, options: VolcengineOptions) -> VolcengineOptions:
    """Check the language for the chosen mode, and the channels."""
    try:
        stream_language(language, options.mode)
    except ValueError as e:
        raise VendorOptionError(f"volcengine: {e}") from None
    one_or_two_channels("volcengine", channels)
    return options


OFFER = RecognitionOffer("volcengine", VolcengineOptions, check)
