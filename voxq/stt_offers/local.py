"""`local` (pocketsphinx): its per-session options, and the bundled model is English."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from voxq.errors import VendorOptionError
from voxq.stt_offers.contract import RecognitionOffer

__all__ = ["OFFER", "LocalOptions"]


class LocalOptions(BaseModel):
    """Per-session options of the local engine."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    vad_mode: int = Field(default=2, ge=0, le=3, description="VAD aggressiveness 0-3")
    window: float = Field(default=0.3, ge=0.1, le=2.0,
                          description="seconds of audio the endpointer decides on")


def check(language: str, rate: int, channels: int, options: LocalOptions) -> LocalOptions:
    """Besides the options, the bundled model only knows English."""
    if not language.lower().startswith("en"):
        raise VendorOptionError(
            f"local: the bundled pocketsphinx model is English (en-*); got {language!r}; "
            "set VOXQ_LOCAL_MODEL_DIR for another language's model")
    return options


OFFER = RecognitionOffer("local", LocalOptions, check)
