"""The one interface every vendor adapter implements, its result types and its errors.

A `Recognizer` is one streaming recognition session: the worker sends it s16le PCM at the
rate it asked for and iterates its results (partial and final `Transcript`s, times in
seconds from the first byte it was sent). A `Synthesizer` turns text into MP3 bytes.
Errors say whether a retry can help, so the worker never retries what cannot succeed.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel

from voxq.errors import VendorOptionError, VoxqError
from voxq.records import Transcript, Word
from voxq.redaction import redact
from voxq.settings import Settings
from voxq.stt_offers import validate_session
from voxq.stt_offers.contract import NoOptions
from voxq.tts_offers import SynthesisRequest, TextLimit, offer_of

__all__ = [
    "NoOptions",
    "OfferedSynthesizer",
    "Recognizer",
    "RecognizerConfig",
    "SynthesisRequest",
    "Synthesizer",
    "Transcript",
    "VendorAuthError",
    "VendorError",
    "VendorOptionError",
    "VendorRejected",
    "VendorRetryable",
    "Word",
    "error_kind",
]


# --- errors -------------------------------------------------------------------------------
# VendorOptionError (a session the vendor would refuse, raised when it is created) is the core's,
# with the contracts that raise it (voxq.stt_offers); it is re-exported here.

class VendorError(VoxqError):
    """A vendor session failed. ``retryable`` says whether a new attempt can succeed."""

    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, vendor: str = "", code: str | int | None = None):
        message = redact(message)  # vendors echo requests: keys must not ride along
        super().__init__(message)
        self.message = message
        self.vendor = vendor
        self.code = code

    def __str__(self) -> str:
        where = f"{self.vendor}: " if self.vendor else ""
        code = f"{self.code}: " if self.code not in (None, "") else ""
        return f"{where}{code}{self.message}"


class VendorRetryable(VendorError):
    """Transient: a dropped socket, a 5xx, throttling, a limit that a new session resets."""

    retryable = True


class VendorRejected(VendorError):
    """The vendor refused the request itself (bad parameter, bad audio): retrying won't help."""


class VendorAuthError(VendorRejected):
    """Credentials missing, wrong or expired."""


def error_kind(e: VendorError) -> str:
    """The class of a vendor error as a metric label: retryable, auth or rejected."""
    if e.retryable:
        return "retryable"
    return "auth" if isinstance(e, VendorAuthError) else "rejected"


# --- configuration ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RecognizerConfig:
    """What one recognition session needs to know, from the session's meta."""

    session_id: str
    rate: int
    channels: int
    language: str
    options: BaseModel = field(default_factory=NoOptions)


# --- interfaces ---------------------------------------------------------------------------

class Recognizer(abc.ABC):
    """One streaming recognition session with a vendor (one socket, usually)."""

    name: ClassVar[str]
    #: fastest replay the vendor tolerates, as a multiple of real time, after a burst of
    #: ``replay_burst_seconds`` of audio sent at once
    max_replay_speed: ClassVar[float] = 4.0
    replay_burst_seconds: ClassVar[float] = 1.0

    def __init__(self, config: RecognizerConfig, settings: Settings):
        self.config = config
        self.settings = settings

    @property
    def input_rate(self) -> int:
        """Sample rate the vendor wants; the worker resamples bus audio to it."""
        return self.config.rate

    @classmethod
    def validate_options(cls, language: str, rate: int, channels: int,
                         options: Mapping[str, Any]) -> BaseModel:
        """The session's options as the vendor's contract in the core parses and checks them
        (``voxq.stt_offers``, the same the producer checks with); raise VendorOptionError."""
        return validate_session(cls.name, language, rate, channels, options)

    @abc.abstractmethod
    async def start(self) -> None:
        """Open the vendor session; raise VendorError if it cannot be opened."""

    @abc.abstractmethod
    async def send(self, pcm: bytes) -> None:
        """Send interleaved s16le PCM at ``input_rate`` (any length; the adapter re-chunks)."""

    def send_nowait(self, pcm: bytes) -> bool:
        """Send PCM at once if the socket takes it without waiting; False: use ``send``.

        Optional fast path (the worker relays a chunk inline instead of waking a task per
        chunk); adapters that do not override it always get ``send``."""
        return False

    @abc.abstractmethod
    async def finish(self) -> None:
        """No more audio: ask the vendor for its last finals; ``results()`` then ends."""

    @abc.abstractmethod
    def results(self) -> AsyncIterator[Transcript]:
        """Results as they arrive; raises VendorError if the session fails."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Abort and release everything; safe to call twice and after a failure."""

    async def __aenter__(self) -> Recognizer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Synthesizer(abc.ABC):
    """Text in, MP3 bytes out."""

    name: ClassVar[str]
    #: longest text one vendor call accepts, in characters, of a synthesizer without an offer
    #: in the core (a registered vendor's limit is its offer's: `OfferedSynthesizer`)
    max_chars: ClassVar[int] = 1000

    def __init__(self, settings: Settings):
        self.settings = settings

    @abc.abstractmethod
    def voices(self) -> list[str]:
        """Voice names this vendor offers; the first is the default."""

    def sample_rates(self) -> tuple[int, ...]:
        """Output rates this vendor offers."""
        return (8000, 16000, 22050, 24000)

    def text_limit(self) -> TextLimit:
        """What one call accepts (longer text is split into several calls)."""
        return TextLimit(max_chars=self.max_chars)

    def variant(self) -> str:
        """What besides the request shapes the audio (engine, model), for the cache key."""
        return ""

    def check_request(self, request: SynthesisRequest) -> None:
        """Refuse (InvalidInput) what the vendor would refuse, before a job is queued."""
        return None

    @abc.abstractmethod
    async def synthesize(self, request: SynthesisRequest) -> bytes:
        """MP3 bytes of ``request.text`` (within ``text_limit()``)."""


class OfferedSynthesizer(Synthesizer):
    """A registered speech vendor's adapter: its voices, rates, text limit, variant and refusals
    are its offer in the core (``voxq.tts_offers``), the same one the API plans requests with."""

    def __init__(self, settings: Settings):
        super().__init__(settings)
        self.offer = offer_of(self.name, settings)

    def voices(self) -> list[str]:
        """The offer's voices; the first is the default."""
        return list(self.offer.voices)

    def sample_rates(self) -> tuple[int, ...]:
        """The offer's output rates."""
        return self.offer.sample_rates

    def text_limit(self) -> TextLimit:
        """The offer's limit of one call."""
        return self.offer.limit

    def variant(self) -> str:
        """The offer's variant (engine, model, cluster), part of the cache key."""
        return self.offer.variant

    def check_request(self, request: SynthesisRequest) -> None:
        """The offer's refusals (e.g. pitch on Polly's neural engine), as InvalidInput."""
        self.offer.check(request)
