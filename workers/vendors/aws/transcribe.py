"""`aws` streaming recognition: Amazon Transcribe over its WebSocket API (StartStreamTranscription).

One presigned WebSocket per AWS stream (``shared/protocols/aws-transcribe.md``): audio goes out as
unsigned event-stream AudioEvents in binary frames (never text frames: the service answers those
with ``BadRequestException: Unexpected WebSocket frame received.``), TranscriptEvents come back and
become voxq ``Transcript``s, an exception message ends the stream with a typed ``VendorError``.

Three things the service imposes are handled here rather than by the worker:

* chunking: audio is re-cut into 100 ms AudioEvents (the AWS sample's size, inside the 50-200 ms
  recommendation, far below the 1 s / 32 KB ceiling);
* the 15 s no-audio timeout: when no audio was sent for ``keepalive_after`` seconds a short run
  of digital silence is sent (the notes' workaround; there is no keep-alive message). That
  silence is part of AWS's timeline but not of the session's, so result times are mapped back;
* the 4 h stream limit: past ``rollover_after`` seconds the adapter opens a fresh presigned
  stream at the next utterance boundary (no partial open, no loud audio after the last final),
  or at ``rollover_deadline`` regardless; the old stream gets the empty AudioEvent and is drained
  before any result of the new one is yielded, and new times are offset by the audio already sent.

Secrets: credentials come from Settings (SecretStr); neither they nor the presigned URL's query
(signature, security token) appear in logs or errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)

from voxq import __version__
from voxq.settings import Settings
from workers.vendors.aws import eventstream as es
from workers.vendors.aws.eventstream import audio_event
from workers.vendors.aws.sigv4 import (
    MAX_PRESIGN_EXPIRES,
    TRANSCRIBE_PATH,
    SigV4Error,
    presign_transcribe_url,
    transcribe_host,
)
from workers.vendors.base import (
    Recognizer,
    RecognizerConfig,
    Transcript,
    VendorAuthError,
    VendorError,
    VendorOptionError,
    VendorRejected,
    VendorRetryable,
    Word,
)
from workers.vendors.redaction import vendor_text, websocket_logger

log = logging.getLogger(__name__)

__all__ = [
    "LANGUAGES",
    "AwsTranscribeOptions",
    "AwsTranscribeRecognizer",
    "exception_error",
    "query_params",
]

#: streaming language codes of the Transcribe model enum the notes verified (§3)
LANGUAGES: tuple[str, ...] = (
    "en-US", "en-GB", "es-US", "fr-CA", "fr-FR", "en-AU", "it-IT", "de-DE", "pt-BR", "ja-JP",
    "ko-KR", "zh-CN", "hi-IN", "th-TH",
)
MIN_RATE, MAX_RATE = 8000, 48000
MAX_EVENT_BYTES = 32 * 1024
"""Largest AudioEvent payload (older model docs: 32 KB; current docs: at most 1 s of audio)."""
PII_ENTITY_TYPES = frozenset({
    "BANK_ACCOUNT_NUMBER", "BANK_ROUTING", "CREDIT_DEBIT_NUMBER", "CREDIT_DEBIT_CVV",
    "CREDIT_DEBIT_EXPIRY", "PIN", "EMAIL", "ADDRESS", "NAME", "PHONE", "SSN", "ALL",
})
LOUD_RMS = 328.0
"""A 10 ms block this loud (about -40 dBFS) may be speech: no roll-over right after it."""
MAX_SERVER_FRAME = 1 << 20
"""Largest WebSocket message accepted from the service (TranscriptEvents are a few KB)."""

_NAME_RE = r"^[0-9a-zA-Z._-]+$"
_LIST_NAME_RE = re.compile(r"^[a-zA-Z0-9,\-._]+$")
_CHANNEL_RE = re.compile(r"^ch_(\d+)$")
_LOWER_LANGUAGES = {code.lower(): code for code in LANGUAGES}

Name = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=_NAME_RE)]

# exception types (:exception-type or :error-code) that a new stream can get past
_RETRYABLE_TYPES = frozenset({
    "LimitExceededException", "InternalFailureException", "ServiceUnavailableException",
    "ThrottlingException",
})
# types that say the credentials or the signature are wrong
_AUTH_TYPES = frozenset({
    "UnrecognizedClientException", "InvalidSignatureException", "IncompleteSignatureException",
    "AccessDeniedException", "ExpiredTokenException", "MissingAuthenticationTokenException",
    "InvalidClientTokenId", "SignatureDoesNotMatch", "ExpiredToken",
})
_AUDIO_TIMEOUT_TEXT = "no new audio was received"


# --- options --------------------------------------------------------------------------------------


def _split_list(value: Any) -> Any:
    """Accept a comma-separated string (as `voxq produce --option` gives) as well as a list."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


def _language(code: str) -> str | None:
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
        return _split_list(value)

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
            canonical = _language(code)
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
        canonical = _language(value)
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


def query_params(config: RecognizerConfig) -> dict[str, str]:
    """The Transcribe query parameters of one stream (everything but the SigV4 ones)."""
    opts = config.options
    assert isinstance(opts, AwsTranscribeOptions)
    params: dict[str, str] = {"media-encoding": "pcm", "sample-rate": str(config.rate)}
    if opts.identify_language:
        params["identify-language"] = "true"
    elif opts.identify_multiple_languages:
        params["identify-multiple-languages"] = "true"
    else:
        params["language-code"] = _language(config.language) or config.language
    if opts.enable_channel_identification:
        params["enable-channel-identification"] = "true"
        params["number-of-channels"] = str(config.channels)
    if opts.show_speaker_label:
        params["show-speaker-label"] = "true"
    if opts.enable_partial_results_stabilization:
        params["enable-partial-results-stabilization"] = "true"
    simple: dict[str, str | None] = {
        "vocabulary-name": opts.vocabulary_name,
        "vocabulary-filter-name": opts.vocabulary_filter_name,
        "vocabulary-filter-method": opts.vocabulary_filter_method,
        "partial-results-stability": opts.partial_results_stability,
        "content-identification-type": opts.content_identification_type,
        "content-redaction-type": opts.content_redaction_type,
        "language-model-name": opts.language_model_name,
        "preferred-language": opts.preferred_language,
    }
    params.update({k: v for k, v in simple.items() if v is not None})
    lists = {
        "pii-entity-types": opts.pii_entity_types,
        "language-options": opts.language_options,
        "vocabulary-names": opts.vocabulary_names,
        "vocabulary-filter-names": opts.vocabulary_filter_names,
    }
    params.update({k: ",".join(v) for k, v in lists.items() if v})
    return params


# --- errors ---------------------------------------------------------------------------------------


def exception_error(kind: str, message: str) -> VendorError:
    """The VendorError for an AWS exception message: retryable only if a new stream can help."""
    message = message or "(no message)"
    if kind in _RETRYABLE_TYPES or (kind == "BadRequestException" and _AUDIO_TIMEOUT_TEXT in message):
        return VendorRetryable(message, vendor="aws", code=kind)
    if kind in _AUTH_TYPES:
        return VendorAuthError(message, vendor="aws", code=kind)
    return VendorRejected(message, vendor="aws", code=kind)


_SIGNED_QUERY = re.compile(r"(X-Amz-(?:Signature|Security-Token|Credential)=)[^&\s\"']*")


def _clean(text: str, secrets: tuple[str, ...]) -> str:
    """One bounded line of vendor text with any echoed secret or canonical request removed."""
    for marker in ("The Canonical String", "The String-to-Sign"):
        text = text.split(marker, 1)[0]
    return vendor_text(text, secrets, (_SIGNED_QUERY,))


def _handshake_error(status: int, headers: Mapping[str, str], body: bytes,
                     secrets: tuple[str, ...]) -> VendorError:
    """Map an HTTP answer to the upgrade to a VendorError (auth, retryable or rejected)."""
    raw = body.decode("utf-8", errors="replace")
    text = raw
    with contextlib.suppress(ValueError):
        doc = json.loads(raw)
        if isinstance(doc, dict):
            found = doc.get("message", doc.get("Message"))
            if isinstance(found, str):
                text = found
    kind = (headers.get("x-amzn-ErrorType") or "").split(":", 1)[0].strip() or None
    detail = _clean(text, secrets)
    message = f"HTTP {status} at the WebSocket handshake" + (f": {detail}" if detail else "")
    code: str | int = kind or status
    if status in (401, 403) or (kind in _AUTH_TYPES):
        return VendorAuthError(message, vendor="aws", code=code)
    if status in (408, 429) or status >= 500 or kind in _RETRYABLE_TYPES:
        return VendorRetryable(message, vendor="aws", code=code)
    return VendorRejected(message, vendor="aws", code=code)


_WS_LOG = websocket_logger(__name__, patterns=(_SIGNED_QUERY,))


# --- one AWS stream -------------------------------------------------------------------------------


@dataclass(eq=False)
class _Stream:
    """One WebSocket connection = one AWS stream, and where it sits in the session's audio."""

    ws: ClientConnection
    index: int
    base_frames: int  # session frames sent before this stream's first byte
    rate: int
    opened: float = field(default_factory=time.monotonic)
    frames: int = 0  # frames sent on this stream, keep-alive silence included
    inserted: list[list[int]] = field(default_factory=list)  # [at frame, n frames] of keep-alive
    open_results: set[str] = field(default_factory=set)  # ResultIds whose final is still due
    last_final_end: int = 0  # stream frames
    last_loud_end: int = 0  # stream frames
    ended: bool = False  # the empty AudioEvent was sent
    failure: VendorError | None = None
    results: asyncio.Queue[Transcript | None] = field(default_factory=asyncio.Queue)
    reader: asyncio.Task[None] | None = None

    def to_session(self, seconds: Any) -> float:
        """Map a time of this stream (seconds) to session seconds, dropping keep-alive silence."""
        v = max(0, round(float(seconds) * self.rate))
        shift = 0
        for at, n in self.inserted:
            if v >= at + n:
                shift += n
            elif v > at:
                shift += v - at
            else:
                break
        return (self.base_frames + v - shift) / self.rate

    @property
    def age(self) -> float:
        """Seconds this stream has lasted: wall clock or audio sent, whichever is more."""
        return max(time.monotonic() - self.opened, self.frames / self.rate)


def _channel(value: Any) -> int:
    """``ch_0``/``ch_1`` → 0/1 (absent or unknown: 0)."""
    if isinstance(value, str):
        m = _CHANNEL_RE.match(value)
        if m:
            return int(m.group(1))
    return 0


def _last_loud(pcm: bytes, channels: int, block: int) -> int | None:
    """Frames from the start of ``pcm`` to the end of its last loud 10 ms block, or None."""
    x = np.frombuffer(pcm, dtype="<i2")
    n = len(x) // channels
    if n == 0:
        return None
    frames = x[: n * channels].reshape(n, channels).astype(np.float32)
    blocks = math.ceil(n / block)
    padded = np.zeros((blocks * block, channels), np.float32)
    padded[:n] = frames
    power = (padded.reshape(blocks, block, channels) ** 2).mean(axis=1).max(axis=1)
    loud = np.nonzero(power >= LOUD_RMS * LOUD_RMS)[0]
    if not len(loud):
        return None
    return min(int(loud[-1] + 1) * block, n)


# --- the recognizer -------------------------------------------------------------------------------


class AwsTranscribeRecognizer(Recognizer):
    """Amazon Transcribe streaming: one presigned WebSocket per stream, rolled over before 4 h."""

    name: ClassVar[str] = "aws"
    options_model: ClassVar[type[BaseModel]] = AwsTranscribeOptions
    #: the service wants close to real time; faster delivery can earn "Your stream is too big"
    max_replay_speed: ClassVar[float] = 2.0

    # Tunables; class attributes so tests (and instances) can shrink them.
    chunk_seconds: float = 0.1  # AudioEvent size
    min_send_seconds: float = 0.05  # smaller leftovers wait for the next send (or keep-alive)
    keepalive_after: float = 5.0  # seconds without audio before silence is sent (AWS: 15 s)
    keepalive_seconds: float = 0.1  # silence sent per keep-alive
    rollover_after: float = 13_500.0  # look for an utterance boundary past this stream age
    rollover_deadline: float = 14_220.0  # roll over even mid-utterance (AWS limit: 14 400 s)
    boundary_slack: float = 0.25  # loud audio this close after a final's end still counts as it
    presign_expires: int = MAX_PRESIGN_EXPIRES
    open_timeout: float = 10.0
    close_timeout: float = 2.0
    drain_timeout: float = 30.0  # after the empty AudioEvent, wait this long for the close

    def __init__(self, config: RecognizerConfig, settings: Settings):
        """Not connected yet: start() opens the first stream."""
        super().__init__(config, settings)
        self._frame_bytes = 2 * config.channels
        self._streams: list[_Stream] = []
        self._current: _Stream | None = None
        self._order: asyncio.Queue[_Stream | None] = asyncio.Queue()
        self._lock = asyncio.Lock()
        self._buf = bytearray()
        self._sent_frames = 0  # session frames handed to streams
        self._last_audio = time.monotonic()
        self._keepalive: asyncio.Task[None] | None = None
        self._finished = False
        self._closed = False
        self._secrets: tuple[str, ...] = ()

    # --- configuration ---------------------------------------------------------------------------

    @classmethod
    def validate_options(cls, language: str, rate: int, channels: int,
                         options: Mapping[str, Any]) -> BaseModel:
        """Check options, language, rate and channels the way the service would, at creation."""
        parsed = super().validate_options(language, rate, channels, options)
        assert isinstance(parsed, AwsTranscribeOptions)
        if not MIN_RATE <= rate <= MAX_RATE:
            raise VendorOptionError(f"aws: sample rate {rate} Hz is outside {MIN_RATE}-{MAX_RATE} Hz")
        if channels not in (1, 2):
            raise VendorOptionError(f"aws: {channels} channels; Transcribe takes 1 or 2")
        identify = parsed.identify_language or parsed.identify_multiple_languages
        if not identify and _language(language) is None:
            raise VendorOptionError(
                f"aws: language {language!r} is not a Transcribe streaming language; "
                f"supported: {', '.join(LANGUAGES)}")
        if parsed.enable_channel_identification is False and channels == 2:
            raise VendorOptionError("aws: a 2-channel session needs channel identification")
        if parsed.enable_channel_identification and channels != 2:
            raise VendorOptionError("aws: enable_channel_identification needs a 2-channel session")
        if parsed.show_speaker_label and channels == 2:
            raise VendorOptionError("aws: show_speaker_label cannot be combined with channel "
                                    "identification (2-channel sessions)")
        return parsed.model_copy(update={"enable_channel_identification": channels == 2})

    def _credentials(self) -> tuple[str, str, str | None]:
        """Access key, secret key and optional session token; VendorAuthError if missing."""
        s = self.settings
        access = s.aws_access_key_id.get_secret_value() if s.aws_access_key_id else ""
        secret = s.aws_secret_access_key.get_secret_value() if s.aws_secret_access_key else ""
        token = s.aws_session_token.get_secret_value() if s.aws_session_token else None
        missing = [n for n, v in (("AWS_ACCESS_KEY_ID", access),
                                  ("AWS_SECRET_ACCESS_KEY", secret)) if not v]
        if missing:
            raise VendorAuthError(
                f"AWS credentials are missing: set {' and '.join(missing)} (plus AWS_SESSION_TOKEN "
                "for temporary credentials) in the worker's environment", vendor=self.name)
        self._secrets = tuple(x for x in (secret, token) if x)
        return access, secret, token or None

    def _endpoint(self) -> tuple[str, str, str]:
        """(scheme, host as signed and sent, path) of the service or of the configured override."""
        region = self.settings.aws_region
        override = self.settings.aws_transcribe_endpoint
        try:
            if not override:
                return "wss", transcribe_host(region), TRANSCRIBE_PATH
        except SigV4Error as e:
            raise VendorRejected(str(e), vendor=self.name) from None
        parts = urlsplit(override)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if (parts.scheme not in ("ws", "wss") or not parts.hostname or port == -1
                or parts.query or parts.fragment or parts.username):
            raise VendorRejected("VOXQ_AWS_TRANSCRIBE_ENDPOINT must look like wss://host[:port]",
                                 vendor=self.name)
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        if port is not None and port != (443 if parts.scheme == "wss" else 80):
            host = f"{host}:{port}"
        path = parts.path if parts.path not in ("", "/") else TRANSCRIBE_PATH
        return parts.scheme, host, path

    # --- streams ---------------------------------------------------------------------------------

    async def _open(self, base_frames: int) -> _Stream:
        """Presign a URL for now and open one AWS stream; handshake failures become VendorErrors."""
        access, secret, token = self._credentials()
        scheme, host, path = self._endpoint()
        try:
            url = presign_transcribe_url(
                region=self.settings.aws_region, access_key=access, secret_key=secret,
                session_token=token, params=query_params(self.config), now=datetime.now(UTC),
                expires=self.presign_expires, host=host, scheme=scheme, path=path)
        except SigV4Error as e:  # its messages never carry a secret
            raise VendorAuthError(f"cannot sign the request: {e}", vendor=self.name) from None
        try:
            ws = await connect(
                url, compression=None, open_timeout=self.open_timeout, ping_interval=None,
                close_timeout=self.close_timeout, max_size=MAX_SERVER_FRAME, logger=_WS_LOG,
                user_agent_header=f"voxq/{__version__}")
        except InvalidStatus as e:
            r = e.response
            raise _handshake_error(r.status_code, r.headers, bytes(r.body), self._secrets) from None
        except InvalidURI:
            raise VendorRejected(f"invalid Transcribe endpoint {scheme}://{host}{path}",
                                 vendor=self.name) from None
        except InvalidHandshake as e:
            raise VendorRetryable(f"WebSocket handshake with {host} failed: "
                                  f"{_clean(str(e), self._secrets)}", vendor=self.name) from None
        except (OSError, TimeoutError) as e:
            raise VendorRetryable(f"cannot connect to {host}: {e or type(e).__name__}",
                                  vendor=self.name) from None
        stream = _Stream(ws=ws, index=len(self._streams), base_frames=base_frames,
                         rate=self.config.rate)
        stream.reader = asyncio.create_task(self._read(stream), name=f"aws-read-{stream.index}")
        self._streams.append(stream)
        log.debug("session %s: AWS stream %d open on %s", self.config.session_id, stream.index,
                  host)
        return stream

    def _live(self) -> _Stream:
        """The stream audio goes to; raises its failure if it already failed."""
        stream = self._current
        if stream is None or self._closed:
            raise VendorRetryable("the recognizer is not open", vendor=self.name)
        if stream.failure is not None:
            raise stream.failure
        return stream

    async def _failure_of(self, stream: _Stream) -> VendorError:
        """Why a stream's socket closed under a send: the reader's verdict (an exception frame
        precedes the close), waited for briefly so send and results report the same error."""
        if stream.reader is not None and not stream.reader.done():
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(stream.reader), self.close_timeout)
        return stream.failure or VendorRetryable(
            "the connection closed while sending audio", vendor=self.name)

    async def _transmit(self, stream: _Stream, frame: bytes | str) -> None:
        """Send one WebSocket message on ``stream``; a closed socket raises the stream's error."""
        try:
            await stream.ws.send(frame)
        except ConnectionClosed:
            raise await self._failure_of(stream) from None

    async def _send_audio(self, stream: _Stream, pcm: bytes, keepalive: bool = False) -> None:
        """One AudioEvent; account its frames in the stream's and the session's timelines."""
        frames = len(pcm) // self._frame_bytes
        if not keepalive:
            loud = _last_loud(pcm, self.config.channels, max(1, self.config.rate // 100))
            if loud is not None:
                stream.last_loud_end = stream.frames + loud
        await self._transmit(stream, audio_event(pcm))
        if keepalive:
            last = stream.inserted[-1] if stream.inserted else None
            if last is not None and last[0] + last[1] == stream.frames:
                last[1] += frames
            else:
                stream.inserted.append([stream.frames, frames])
        else:
            self._sent_frames += frames
        stream.frames += frames
        self._last_audio = time.monotonic()

    async def _end(self, stream: _Stream) -> None:
        """Send the empty AudioEvent: the service flushes its finals and closes."""
        if not stream.ended:
            stream.ended = True
            await self._transmit(stream, audio_event(b""))

    def _at_boundary(self, stream: _Stream) -> bool:
        """True between utterances: no partial open and nothing loud sent after the last final."""
        slack = round(self.boundary_slack * self.config.rate)
        return not stream.open_results and stream.last_loud_end <= stream.last_final_end + slack

    async def _maybe_roll(self) -> None:
        """Replace an ageing stream, at an utterance boundary if one comes before the deadline."""
        old = self._live()
        age = old.age
        if age < self.rollover_after:
            return
        if age < self.rollover_deadline and not self._at_boundary(old):
            return
        why = "at an utterance boundary" if self._at_boundary(old) else "deadline, mid-utterance"
        new = await self._open(self._sent_frames)
        self._current = new
        self._order.put_nowait(new)
        log.info("session %s: AWS stream %d rolled over after %.0f s (%s)",
                 self.config.session_id, old.index, age, why)
        try:
            await self._end(old)
        except VendorError:
            pass  # its reader reports the failure when results() reaches it

    # --- audio in --------------------------------------------------------------------------------

    @property
    def _chunk_bytes(self) -> int:
        """Bytes of one AudioEvent: ``chunk_seconds`` of whole frames, never over 32 KB."""
        frames = max(1, round(self.chunk_seconds * self.config.rate))
        return min(frames * self._frame_bytes, MAX_EVENT_BYTES // self._frame_bytes * self._frame_bytes)

    async def _drain_buffer(self, everything: bool) -> None:
        """Send buffered audio in AudioEvents of ``chunk_seconds``; hold a short tail unless
        ``everything``."""
        chunk = self._chunk_bytes
        least = max(self._frame_bytes,
                    round(self.min_send_seconds * self.config.rate) * self._frame_bytes)
        while True:
            whole = len(self._buf) // self._frame_bytes * self._frame_bytes
            if whole == 0 or (whole < least and not everything):
                return
            n = min(whole, chunk)
            piece = bytes(self._buf[:n])
            del self._buf[:n]
            await self._maybe_roll()
            await self._send_audio(self._live(), piece)

    async def start(self) -> None:
        """Open the first stream and start the keep-alive timer."""
        stream = await self._open(0)
        self._current = stream
        self._order.put_nowait(stream)
        self._last_audio = time.monotonic()
        self._keepalive = asyncio.create_task(self._keep_alive(), name="aws-keepalive")

    async def send(self, pcm: bytes) -> None:
        """Queue interleaved s16le PCM and send it in 100 ms AudioEvents."""
        if not pcm:
            return
        async with self._lock:
            self._live()
            self._buf += pcm
            await self._drain_buffer(everything=False)

    async def finish(self) -> None:
        """Send what is buffered and the empty AudioEvent; results() ends after the last finals."""
        async with self._lock:
            if self._finished:
                return
            self._finished = True
            self._live()
            await self._drain_buffer(everything=True)
            self._buf.clear()  # at most a partial sample frame
            await self._end(self._live())
            self._order.put_nowait(None)

    async def _keep_alive(self) -> None:
        """While no audio flows, send a little silence before the service's 15 s timeout."""
        while not (self._finished or self._closed):
            wait = self._last_audio + self.keepalive_after - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            async with self._lock:
                if self._finished or self._closed:
                    return
                if time.monotonic() - self._last_audio < self.keepalive_after:
                    continue
                try:
                    if len(self._buf) >= self._frame_bytes:
                        await self._drain_buffer(everything=True)
                    else:
                        await self._maybe_roll()
                        silence = bytes(max(1, round(self.keepalive_seconds * self.config.rate))
                                        * self._frame_bytes)
                        await self._send_audio(self._live(), silence, keepalive=True)
                except VendorError:
                    return  # the reader, send() and results() report it

    # --- results out -----------------------------------------------------------------------------

    async def _read(self, stream: _Stream) -> None:
        """Decode one stream's messages into its result queue until it closes or fails."""
        decoder = es.Decoder(max_payload_length=MAX_SERVER_FRAME)
        try:
            while True:
                try:
                    if stream.ended:
                        frame = await asyncio.wait_for(stream.ws.recv(), self.drain_timeout)
                    else:
                        frame = await stream.ws.recv()
                except TimeoutError:
                    raise VendorRetryable(
                        f"the service did not end the stream within {self.drain_timeout:g} s "
                        "of the end of the audio", vendor=self.name) from None
                except ConnectionClosed as e:
                    if stream.ended and e.rcvd is not None and not decoder.pending:
                        return  # the service closes after its last finals
                    code = e.rcvd.code if e.rcvd is not None else 1006
                    when = "after" if stream.ended else "before"
                    raise VendorRetryable(
                        f"the connection closed {when} the end of the audio (code {code})",
                        vendor=self.name) from None
                if isinstance(frame, str):
                    raise VendorRetryable("the service sent a text frame; it only sends "
                                          "event-stream binary frames", vendor=self.name)
                try:
                    messages = decoder.feed(frame)
                except es.EventStreamError as e:
                    raise VendorRetryable(f"undecodable event stream from the service: {e}",
                                          vendor=self.name) from None
                for message in messages:
                    self._handle(stream, message)
        except VendorError as e:
            stream.failure = e
        finally:
            stream.results.put_nowait(None)
            if stream.failure is not None:
                with contextlib.suppress(Exception):
                    await stream.ws.close()

    def _handle(self, stream: _Stream, message: es.Message) -> None:
        """Act on one server message: queue transcripts, raise on an exception."""
        kind = message.message_type
        if kind in ("exception", "error"):
            exc = es.parse_exception(message)
            assert exc is not None
            raise exception_error(exc.type, _clean(exc.message, self._secrets))
        if kind == "event" and message.event_type == "TranscriptEvent":
            for t in self._transcripts(stream, message.payload):
                stream.results.put_nowait(t)

    def _transcripts(self, stream: _Stream, payload: bytes) -> list[Transcript]:
        """Map a TranscriptEvent's results (Alternatives[0]) to Transcripts in session time."""
        try:
            doc = json.loads(payload)
            results = (doc.get("Transcript") or {}).get("Results") or []
            out: list[Transcript] = []
            for r in results:
                partial = bool(r.get("IsPartial"))
                rid = r.get("ResultId")
                rid = str(rid) if rid is not None else None
                if rid is not None:
                    if partial:
                        stream.open_results.add(rid)
                    else:
                        stream.open_results.discard(rid)
                if not partial:
                    stream.last_final_end = max(stream.last_final_end,
                                                round(float(r.get("EndTime") or 0) * stream.rate))
                alternatives = r.get("Alternatives") or []
                if not alternatives:
                    continue
                alt = alternatives[0]
                words = tuple(
                    Word(text=str(item["Content"]),
                         start=stream.to_session(item.get("StartTime", 0)),
                         end=stream.to_session(item.get("EndTime", 0)),
                         confidence=(None if item.get("Confidence") is None
                                     else float(item["Confidence"])),
                         speaker=None if item.get("Speaker") is None else str(item["Speaker"]))
                    for item in alt.get("Items") or []
                    if item.get("Type", "pronunciation") == "pronunciation"
                )
                text = str(alt.get("Transcript") or "").strip()
                if not text and not words:
                    continue
                speakers = {w.speaker for w in words}
                out.append(Transcript(
                    text=text, is_final=not partial,
                    start=stream.to_session(r.get("StartTime", 0)),
                    end=stream.to_session(r.get("EndTime", 0)),
                    channel=min(_channel(r.get("ChannelId")), self.config.channels - 1),
                    speaker=speakers.pop() if len(speakers) == 1 else None,
                    words=words, result_id=rid))
            return out
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise VendorRetryable(f"malformed TranscriptEvent from the service: {e}",
                                  vendor=self.name) from None

    async def results(self) -> AsyncIterator[Transcript]:
        """Results stream by stream, in order: an old stream is drained before a newer one."""
        while True:
            stream = await self._order.get()
            if stream is None:
                return
            while True:
                item = await stream.results.get()
                if item is None:
                    break
                yield item
            if stream.failure is not None:
                raise stream.failure

    async def close(self) -> None:
        """Stop the keep-alive and readers and close every socket; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        tasks: list[asyncio.Task[None]] = [t for t in (self._keepalive,) if t is not None]
        for stream in self._streams:
            if stream.reader is not None:
                tasks.append(stream.reader)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for stream in self._streams:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(stream.ws.close(), self.close_timeout)
            with contextlib.suppress(asyncio.QueueFull):
                stream.results.put_nowait(None)
        self._order.put_nowait(None)
