"""`assemblyai-v2`, AssemblyAI's legacy real-time API: the per-session options and the channels
it takes (``docs/protocols/assemblyai.md``, §B1-B2; mono only: a stereo call is one stream per
channel)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from voxq.stt_offers.contract import RecognitionOffer, one_or_two_channels, split_list

__all__ = ["MAX_WORD_BOOST_CHARS", "OFFER", "AssemblyAIV2Options"]

MAX_WORD_BOOST_CHARS = 2500


class AssemblyAIV2Options(BaseModel):
    """Per-session v2 options (§B1-B2 of the notes), validated when the session is created."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    word_boost: tuple[str, ...] | None = None
    disable_partial_transcripts: bool = False
    end_utterance_silence_threshold: int | None = Field(default=None, ge=0, le=20_000)
    enable_extra_session_information: bool = False

    @field_validator("word_boost", mode="before")
    @classmethod
    def _terms(cls, value: Any) -> Any:
        """Comma strings become tuples."""
        return split_list(value)

    @field_validator("word_boost")
    @classmethod
    def _boost(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        """Non-empty terms whose JSON encoding fits the service's 2500 characters."""
        if value is None:
            return None
        if not value or any(not t.strip() for t in value):
            raise ValueError("needs one or more non-empty terms")
        if len(json.dumps(list(value))) > MAX_WORD_BOOST_CHARS:
            raise ValueError(f"at most {MAX_WORD_BOOST_CHARS} characters as JSON")
        return value


def check(language: str, rate: int, channels: int,
          options: AssemblyAIV2Options) -> AssemblyAIV2Options:
    """Mono or stereo (one connection per channel)."""
    one_or_two_channels("assemblyai-v2", channels)
    return options


OFFER = RecognitionOffer("assemblyai-v2", AssemblyAIV2Options, check)
