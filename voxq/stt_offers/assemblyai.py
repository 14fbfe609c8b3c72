"""`assemblyai`, AssemblyAI Universal Streaming (v3): the per-session query options and the
channels it takes (``docs/protocols/assemblyai.md``, §A2; mono only: a stereo call is one
stream per channel)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from voxq.stt_offers.contract import RecognitionOffer, one_or_two_channels, split_list

__all__ = ["OFFER", "SPEECH_MODELS", "AssemblyAIOptions"]

SPEECH_MODELS = ("universal-streaming-english", "universal-streaming-multilingual", "u3-rt-pro",
                 "whisper-rt", "universal-3-5-pro", "u3-rt-pro-beta-1")
_PRO_MODELS = ("u3-rt-pro", "universal-3-5-pro", "u3-rt-pro-beta-1")


class AssemblyAIOptions(BaseModel):
    """Per-session v3 query options (§A2 of the notes), validated when the session is created."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    speech_model: Literal[SPEECH_MODELS] | None = Field(  # type: ignore[valid-type]
        default=None, description="default: universal-streaming-english for English sessions, "
                                  "universal-streaming-multilingual otherwise")
    format_turns: bool = True
    end_of_turn_confidence_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    min_turn_silence: int | None = Field(default=None, ge=0, le=60_000)
    max_turn_silence: int | None = Field(default=None, ge=0, le=60_000)
    vad_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    keyterms_prompt: tuple[str, ...] | None = None
    prompt: str | None = Field(default=None, min_length=1, max_length=10_000)
    inactivity_timeout: int | None = Field(default=None, ge=5, le=3600)
    language_detection: bool = False
    speaker_labels: bool = False
    max_speakers: int | None = Field(default=None, ge=1, le=10)
    filter_profanity: bool = False

    @field_validator("keyterms_prompt", mode="before")
    @classmethod
    def _terms(cls, value: Any) -> Any:
        """Comma strings become tuples."""
        return split_list(value)

    @field_validator("keyterms_prompt")
    @classmethod
    def _nonempty(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        """At least one term, none blank."""
        if value is not None and (not value or any(not t.strip() for t in value)):
            raise ValueError("needs one or more non-empty terms")
        return value

    @model_validator(mode="after")
    def _combinations(self) -> AssemblyAIOptions:
        """Reject what only makes sense with another option or model."""
        if self.max_speakers is not None and not self.speaker_labels:
            raise ValueError("max_speakers needs speaker_labels")
        if (self.min_turn_silence is not None and self.max_turn_silence is not None
                and self.min_turn_silence > self.max_turn_silence):
            raise ValueError("min_turn_silence must not exceed max_turn_silence")
        if self.prompt is not None and self.speech_model not in _PRO_MODELS:
            raise ValueError(f"prompt needs speech_model {' / '.join(_PRO_MODELS)}")
        if self.end_of_turn_confidence_threshold is not None and self.speech_model is not None \
                and not self.speech_model.startswith("universal-streaming"):
            raise ValueError("end_of_turn_confidence_threshold is for the universal-streaming "
                             "models only")
        return self


def check(language: str, rate: int, channels: int,
          options: AssemblyAIOptions) -> AssemblyAIOptions:
    """Mono or stereo (one connection per channel)."""
    one_or_two_channels("assemblyai", channels)
    return options


OFFER = RecognitionOffer("assemblyai", AssemblyAIOptions, check)
