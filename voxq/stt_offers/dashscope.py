"""`dashscope`, Alibaba DashScope Paraformer real-time recognition: the per-session options,
the models with the rates and languages each takes (``docs/protocols/dashscope.md``,
"Paraformer real-time recognition", §2.1-§2.3)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from voxq.errors import VendorOptionError
from voxq.stt_offers.contract import RecognitionOffer, one_or_two_channels, split_list

__all__ = ["DEFAULT_MODEL", "LANGUAGE_HINTS", "MODELS", "OFFER", "V1_MODELS", "V2_MODELS",
           "DashScopeOptions", "model_rate", "session_hints"]

MODELS = ("paraformer-realtime-v2", "paraformer-realtime-8k-v2", "paraformer-realtime-v1",
          "paraformer-realtime-8k-v1")
DEFAULT_MODEL = MODELS[0]
#: sample rate each model takes; None = any rate (§2.1)
_MODEL_RATES: dict[str, int | None] = {
    "paraformer-realtime-v2": None, "paraformer-realtime-8k-v2": 8000,
    "paraformer-realtime-v1": 16000, "paraformer-realtime-8k-v1": 8000,
}
LANGUAGE_HINTS = ("zh", "en", "ja", "yue", "ko", "de", "fr", "ru")
V2_MODELS = frozenset({"paraformer-realtime-v2", "paraformer-realtime-8k-v2"})
V1_MODELS = frozenset({"paraformer-realtime-v1", "paraformer-realtime-8k-v1"})
_AUTO = ("", "auto")

Ident = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")]


class DashScopeOptions(BaseModel):
    """Per-session options of the ``dashscope`` recognizer (§2.3), checked at session creation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: Literal["paraformer-realtime-v2", "paraformer-realtime-8k-v2", "paraformer-realtime-v1",
                   "paraformer-realtime-8k-v1"] = "paraformer-realtime-v2"
    vocabulary_id: Ident | None = None
    phrase_id: Ident | None = None
    language_hints: tuple[Literal["zh", "en", "ja", "yue", "ko", "de", "fr", "ru"], ...] | None = None
    disfluency_removal_enabled: bool | None = None
    semantic_punctuation_enabled: bool | None = None
    max_sentence_silence: int | None = Field(default=None, ge=200, le=6000)
    multi_threshold_mode_enabled: bool | None = None
    punctuation_prediction_enabled: bool | None = None
    inverse_text_normalization_enabled: bool | None = None
    heartbeat: bool = True

    @field_validator("language_hints", mode="before")
    @classmethod
    def _hints(cls, value: Any) -> Any:
        """Comma strings become tuples."""
        return split_list(value)

    @model_validator(mode="after")
    def _per_model(self) -> DashScopeOptions:
        """Reject parameters the chosen model does not take (§2.1, §2.3 "v2 only")."""
        v2_only = ("vocabulary_id", "semantic_punctuation_enabled", "max_sentence_silence",
                   "multi_threshold_mode_enabled", "punctuation_prediction_enabled",
                   "inverse_text_normalization_enabled")
        if self.model in V1_MODELS:
            used = [n for n in v2_only if getattr(self, n) is not None]
            if used:
                raise ValueError(f"{', '.join(used)}: only for the v2 models, not {self.model}")
        if self.language_hints is not None and self.model != "paraformer-realtime-v2":
            raise ValueError(f"language_hints: only paraformer-realtime-v2 takes them, "
                             f"not {self.model}")
        if self.phrase_id is not None and self.model not in V1_MODELS:
            raise ValueError("phrase_id is the v1 models' hot words; v2 models use vocabulary_id")
        if self.semantic_punctuation_enabled and (self.max_sentence_silence is not None
                                                  or self.multi_threshold_mode_enabled):
            raise ValueError("max_sentence_silence / multi_threshold_mode_enabled apply only "
                             "when semantic_punctuation_enabled is false")
        return self


def model_rate(model: str) -> int | None:
    """The sample rate ``model`` requires, or None when it takes any rate."""
    return _MODEL_RATES[model]


def session_hints(language: str, options: DashScopeOptions) -> list[str] | None:
    """``language_hints`` to send: the options' own, else the session language's (v2 only);
    ValueError when the model cannot recognise the session language."""
    code = language.strip().lower().replace("_", "-")
    base = code.split("-")[0]
    if options.model != "paraformer-realtime-v2":
        if code not in _AUTO and base != "zh":
            raise ValueError(f"{options.model} recognises Chinese only, not {language!r}; use "
                             "paraformer-realtime-v2")
        return None
    if options.language_hints is not None:
        return list(options.language_hints)
    if code in _AUTO:
        return None
    if base not in LANGUAGE_HINTS:
        raise ValueError(f"language {language!r} is not one paraformer-realtime-v2 recognises "
                         f"({', '.join(LANGUAGE_HINTS)}, or auto)")
    return [base]


def check(language: str, rate: int, channels: int, options: DashScopeOptions) -> DashScopeOptions:
    """Check the language and the rate for the chosen model, and the channels."""
    try:
        session_hints(language, options)
    except ValueError as e:
        raise VendorOptionError(f"dashscope: {e}") from None
    need = model_rate(options.model)
    if need is not None and rate < need:
        raise VendorOptionError(f"dashscope: {options.model} takes {need} Hz audio; a {rate} Hz "
                                "session cannot supply it (use paraformer-realtime-v2)")
    one_or_two_channels("dashscope", channels)
    return options


OFFER = RecognitionOffer("dashscope", DashScopeOptions, check)
