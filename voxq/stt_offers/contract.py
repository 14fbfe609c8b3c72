"""The shape every recognizer's session contract shares: an option model, then checks of the
session (language, rate, channels, option combinations) that may complete the options (pure)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from voxq.errors import VendorOptionError

__all__ = ["NoOptions", "RecognitionOffer", "one_or_two_channels", "parse_options", "split_list"]

M = TypeVar("M", bound=BaseModel)


class NoOptions(BaseModel):
    """Options model of a vendor that takes no per-session options."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def split_list(value: Any) -> Any:
    """A comma-separated string (as `voxq produce --option k=a,b` gives it) becomes a tuple of
    its non-empty stripped parts; a list or anything else is left to the model to validate."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


def parse_options(vendor: str, model: type[M], options: Mapping[str, Any]) -> M:
    """``options`` as ``model``; VendorOptionError lists every problem, each at its option."""
    try:
        return model.model_validate(dict(options))
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'options'}: {err['msg']}"
            for err in e.errors()
        )
        raise VendorOptionError(f"{vendor}: invalid options: {problems}") from e


def one_or_two_channels(vendor: str, channels: int) -> None:
    """Mono or stereo only (a stereo call is one stream per channel, or one multichannel one)."""
    if channels not in (1, 2):
        raise VendorOptionError(f"{vendor}: {channels} channels; 1 or 2 are supported")


def _accept(language: str, rate: int, channels: int, options: M) -> M:
    return options


@dataclass(frozen=True, slots=True)
class RecognitionOffer(Generic[M]):
    """What one streaming recognizer accepts per session: its options (``options_model``) and
    ``check``, which refuses (VendorOptionError) a language, rate, channel count or option
    combination the vendor would refuse, and returns the options completed for the session
    (e.g. multichannel on for two channels)."""

    name: str
    options_model: type[M]
    check: Callable[[str, int, int, M], M] = _accept

    def validate(self, language: str, rate: int, channels: int,
                 options: Mapping[str, Any]) -> M:
        """The session's options, parsed then checked; VendorOptionError says what is refused."""
        parsed = parse_options(self.name, self.options_model, options)
        return self.check(language, rate, channels, parsed)
