"""A strict local emulator of Amazon Transcribe streaming's WebSocket API, for tests.

It is a real WebSocket server (``websockets.asyncio.server``) on a free loopback port that
answers what ``docs/protocols/aws-transcribe.md``, "Emulator checklist", says the service answers (section numbers
below refer to it), so the client is proven against the protocol, not against itself:

Handshake (§1, §2, §8 #1-#6), checked before the upgrade:
  * path other than ``/stream-transcription-websocket`` → HTTP 404;
  * the SigV4 presigned query is verified by an implementation independent of the client's
    (``workers.vendors.aws.sigv4`` is not used): algorithm, credential scope (date, region,
    service ``transcribe``), known access key, ``X-Amz-Expires`` in 1..300, not expired, not
    more than 5 min in the future, signed headers present, signature over the request's own
    ``Host`` header. Failures answer HTTP 403 with a JSON ``{"message"}`` body and an
    ``x-amzn-ErrorType`` header (``auth_failure="http"``, the AWS-wide norm the notes suggest) or,
    with ``auth_failure="frame"``, an upgrade followed by an exception frame (what the docs
    imply: ``UnrecognizedClientException`` for unknown keys). Which one AWS does is [U].

After the upgrade, each problem is one exception message then a close (§6.2, §8 #7-#22):
  * transcription parameters (§3: required ones, ranges, patterns, exclusive combinations,
    unknown parameters) → ``BadRequestException``;
  * a text frame, or a binary frame that is not exactly one well-formed event-stream message →
    ``BadRequestException`` ``Unexpected WebSocket frame received.`` (byte-exact §6.4 frame);
  * a message that is not an AudioEvent → ``BadRequestException``; signed envelopes (§5.3) are
    accepted and their chunk-signature chain and ``:date`` verified;
  * an AudioEvent over 1 s of audio or 32 KB, or audio arriving faster than
    ``realtime_factor`` × real time beyond a ``burst_seconds`` allowance → ``Your stream is too
    big...``; no AudioEvent for ``no_audio_timeout`` (15 s) → the §6.3 timeout text;
  * more than ``max_stream_seconds`` of audio or wall time → ``LimitExceededException``; more
    than ``max_concurrent`` open streams → ``LimitExceededException``; a second stream with the
    same ``session-id`` → ``ConflictException`` on the older one;
  * the empty AudioEvent ends the stream: open utterances get their finals, then a 1000 close.

Recognition: the tone code. Audio is cut into 10 ms blocks per channel; a block whose RMS is at
least ``silence_rms`` (500) is loud. Loud blocks separated by less than ``word_gap`` (50 ms) of
quiet form one word; words separated by less than ``utterance_gap`` (300 ms) form one utterance
(one ResultId). Each word is named by its dominant frequency: ``f"tone{round(f / 100) * 100}"``,
so a 440 Hz beep is ``tone400`` and a 1 kHz one ``tone1000``. Times come from block counts
(StartTime of the first loud block, EndTime of the end of the last one, seconds rounded to
4 decimals), so a tone that starts at 1.00 s and lasts 0.5 s has StartTime 1.0, EndTime 1.5.
After every AudioEvent that extends an open utterance a partial result (``IsPartial: true``,
no Confidence) is sent; when 300 ms of quiet follow it (or at end of stream) the final is sent,
with a ``.`` punctuation item appended and ``Transcript`` = the words joined by spaces + ``.``.
Final items carry ``Confidence = round(0.5 + 0.5 * min(1, peak / 32767), 2)`` (peak: largest
absolute sample of the word, so amplitude 16384 → 0.75). With ``show-speaker-label`` items carry
``Speaker`` "0" for words below 1000 Hz and "1" otherwise; with channel identification every
channel is recognised on its own and results carry ``ChannelId`` ``ch_0``/``ch_1``; with
stabilization items carry ``Stable``. Audio events that produce no result are answered, every
``empty_result_every`` events, by a TranscriptEvent with empty ``Results`` (the service does this).

Fault knobs: ``emulator.faults`` is a queue of :class:`Fault`, one taken per new connection (the
n-th connection gets the n-th fault; connections beyond the queue get none): reject the handshake
with an HTTP status, answer an exception type after N audio events, drop the TCP connection
without a close frame after N audio events, or hang (answer nothing, never close) after N audio
events. ``config.result_delay`` delays every result by that many seconds.
Every connection is recorded in ``emulator.streams`` (parameters, the exact audio received,
results sent, the exception sent) so tests can assert on what crossed the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import re
import struct
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, NoReturn
from urllib.parse import parse_qsl, quote, urlsplit

import numpy as np
from pydantic import SecretStr
from websockets.asyncio.server import Server, ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tests.emulators.common import LOOPBACK, serve_loopback
from voxq.aio import within
from voxq.settings import Settings
from workers.vendors.aws.eventstream import (
    EventStreamError,
    Message,
    Timestamp,
    decode_message,
    exception_message,
    transcript_event,
)

ACCESS_KEY = "AKIDVOXQEMULATOR0001"
SECRET_KEY = "emulator/Secret+Key=NotReal0123456789abcdefgh"
REGION = "us-east-1"
PATH = "/stream-transcription-websocket"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

LANGUAGES = frozenset({
    "en-US", "en-GB", "es-US", "fr-CA", "fr-FR", "en-AU", "it-IT", "de-DE", "pt-BR", "ja-JP",
    "ko-KR", "zh-CN", "hi-IN", "th-TH",
})
PII_TYPES = frozenset({
    "BANK_ACCOUNT_NUMBER", "BANK_ROUTING", "CREDIT_DEBIT_NUMBER", "CREDIT_DEBIT_CVV",
    "CREDIT_DEBIT_EXPIRY", "PIN", "EMAIL", "ADDRESS", "NAME", "PHONE", "SSN", "ALL",
})
KNOWN_PARAMS = frozenset({
    "language-code", "sample-rate", "media-encoding", "vocabulary-name", "session-id",
    "vocabulary-filter-name", "vocabulary-filter-method", "show-speaker-label",
    "enable-channel-identification", "number-of-channels", "enable-partial-results-stabilization",
    "partial-results-stability", "content-identification-type", "content-redaction-type",
    "pii-entity-types", "language-model-name", "identify-language", "language-options",
    "preferred-language", "identify-multiple-languages", "vocabulary-names",
    "vocabulary-filter-names", "user-agent",
})
SIGV4_PARAMS = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires",
                "X-Amz-SignedHeaders", "X-Amz-Signature")

UNEXPECTED_FRAME = "Unexpected WebSocket frame received."
TOO_BIG = "Your stream is too big. Reduce the frame size and try your request again."
BAD_SIGNATURE = ("The request signature we calculated does not match the signature you provided. "
                 "Check your AWS Secret Access Key and signing method. Consult the service "
                 "documentation for details.")
INVALID_TOKEN = "The security token included in the request is invalid."
INCOMPLETE = ("AWS query-string parameters must include 'X-Amz-Algorithm', 'X-Amz-Credential', "
              "'X-Amz-Signature', 'X-Amz-Date', 'X-Amz-SignedHeaders', and 'X-Amz-Expires'. "
              "Re-examine the query-string parameters.")

_NAME = re.compile(r"^[0-9a-zA-Z._-]{1,200}$")
_LIST_NAMES = re.compile(r"^[a-zA-Z0-9,\-._]{1,3000}$")
_UUID = re.compile(r"^[a-fA-F0-9]{8}-[a-fA-F0-9]{4}-[a-fA-F0-9]{4}-[a-fA-F0-9]{4}-[a-fA-F0-9]{12}$")
_AMZ_DATE = "%Y%m%dT%H%M%SZ"


def timeout_message(seconds: float) -> str:
    """The §6.3 no-audio timeout text for a timeout of ``seconds``."""
    return f"Your request timed out because no new audio was received for {seconds:g} seconds."


# --- SigV4, independently of the client's implementation -----------------------------------------


def _enc(text: str) -> str:
    """RFC 3986 percent-encoding with uppercase hex; only A-Za-z0-9-_.~ stay."""
    return quote(text, safe="-_.~")


def canonical_request(path: str, pairs: list[tuple[str, str]], headers: Mapping[str, str],
                      signed: list[str]) -> str:
    """The §2.2 canonical request of a presigned GET (pairs exclude X-Amz-Signature)."""
    query = "&".join(f"{k}={v}" for k, v in sorted((_enc(k), _enc(v)) for k, v in pairs))
    block = "".join(f"{h}:{' '.join(headers[h].split())}\n" for h in signed)
    return "\n".join(("GET", quote(path, safe="/-_.~"), query, block, ";".join(signed),
                      EMPTY_SHA256))


def signing_key(secret: str, day: str, region: str, service: str = "transcribe") -> bytes:
    """The §2.3 HMAC chain."""
    key = ("AWS4" + secret).encode()
    for part in (day, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def expected_signature(key: bytes, amz_date: str, scope: str, request: str) -> str:
    """Hex signature of a canonical request under a derived signing key."""
    to_sign = "\n".join(("AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(request.encode()).hexdigest()))
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class AuthFailure:
    """Why a presigned URL is refused: AWS error type and message."""

    type: str
    message: str


@dataclass(frozen=True)
class Signing:
    """What a verified URL seeds for signed envelopes (§5.3)."""

    key: bytes
    scope: str
    signature: str


def verify_presigned(path: str, query: str, headers: Mapping[str, str], now: datetime,
                     credentials: Mapping[str, str], region: str, max_expires: int = 300,
                     skew: float = 300.0) -> AuthFailure | Signing:
    """Check a presigned request the way §2/§8 #2-#6 describe; the failure or the signing seed."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        return AuthFailure("IncompleteSignatureException", INCOMPLETE)
    amz: dict[str, str] = {}
    for k, v in pairs:
        if k.startswith("X-Amz-"):
            if k in amz:
                return AuthFailure("IncompleteSignatureException", f"{k} is given twice.")
            amz[k] = v
    if any(k not in amz for k in SIGV4_PARAMS):
        return AuthFailure("IncompleteSignatureException", INCOMPLETE)
    if amz["X-Amz-Algorithm"] != "AWS4-HMAC-SHA256":
        return AuthFailure("IncompleteSignatureException",
                           "Unsupported AWS 'algorithm': 'X-Amz-Algorithm'.")
    date_text = amz["X-Amz-Date"]
    try:
        signed_at = datetime.strptime(date_text, _AMZ_DATE).replace(tzinfo=UTC)
    except ValueError:
        return AuthFailure("IncompleteSignatureException", f"Invalid X-Amz-Date {date_text!r}.")
    scope_parts = amz["X-Amz-Credential"].split("/")
    if len(scope_parts) != 5:
        return AuthFailure("IncompleteSignatureException", "Invalid credential scope.")
    access, day, scope_region, service, terminator = scope_parts
    if day != date_text[:8]:
        return AuthFailure("InvalidSignatureException",
                           "Date in Credential scope does not match YYYYMMDD from ISO-8601 "
                           "version of date from HTTP.")
    if scope_region != region:
        return AuthFailure("InvalidSignatureException",
                           f"Credential should be scoped to a valid region, not '{scope_region}'.")
    if service != "transcribe" or terminator != "aws4_request":
        return AuthFailure("InvalidSignatureException",
                           "Credential should be scoped to correct service: 'transcribe'.")
    secret = credentials.get(access)
    if secret is None:
        return AuthFailure("UnrecognizedClientException", INVALID_TOKEN)
    expires_text = amz["X-Amz-Expires"]
    if not expires_text.isdigit() or not 1 <= int(expires_text) <= max_expires:
        return AuthFailure("InvalidSignatureException",
                           f"X-Amz-Expires must be an integer between 1 and {max_expires}.")
    if now > signed_at + timedelta(seconds=int(expires_text)):
        return AuthFailure("InvalidSignatureException",
                           f"Signature expired: {date_text} is now earlier than "
                           f"{(now - timedelta(seconds=int(expires_text))).strftime(_AMZ_DATE)}.")
    if signed_at > now + timedelta(seconds=skew):
        return AuthFailure("InvalidSignatureException",
                           f"Signature not yet current: {date_text} is still later than "
                           f"{(now + timedelta(seconds=skew)).strftime(_AMZ_DATE)}.")
    signed = amz["X-Amz-SignedHeaders"].split(";")
    lowered = {k.lower(): v for k, v in headers.items()}
    if "host" not in signed or signed != sorted(signed) or any(h not in lowered for h in signed):
        return AuthFailure("InvalidSignatureException", BAD_SIGNATURE)
    request = canonical_request(path, [(k, v) for k, v in pairs if k != "X-Amz-Signature"],
                                lowered, signed)
    scope = f"{day}/{region}/transcribe/aws4_request"
    key = signing_key(secret, day, region)
    want = expected_signature(key, date_text, scope, request)
    if not hmac.compare_digest(want, amz["X-Amz-Signature"]):
        return AuthFailure("InvalidSignatureException", BAD_SIGNATURE)
    return Signing(key, scope, want)


# --- transcription parameters --------------------------------------------------------------------


def _bool(params: Mapping[str, str], name: str) -> bool | None:
    """A boolean parameter (any case of true/false), None if absent; ValueError if neither."""
    if name not in params:
        return None
    value = params[name].lower()
    if value not in ("true", "false"):
        raise ValueError(f"Value '{params[name]}' at '{name}' failed to satisfy constraint: "
                         "Member must be a boolean")
    return value == "true"


def validate_params(params: Mapping[str, str], languages: frozenset[str],
                    reject_unknown: bool = True) -> str | None:
    """The BadRequestException message §3/§8 #7-#10 give for these parameters, or None."""
    try:
        unknown = sorted(set(params) - KNOWN_PARAMS)
        if unknown and reject_unknown:
            return f"Unrecognized query parameter(s): {', '.join(unknown)}"
        if "media-encoding" not in params or "sample-rate" not in params:
            return "A sample rate and a media encoding are required."
        if params["media-encoding"] not in ("pcm", "ogg-opus", "flac"):
            return (f"Value '{params['media-encoding']}' at 'mediaEncoding' failed to satisfy "
                    "constraint: Member must satisfy enum value set: [pcm, ogg-opus, flac]")
        if params["media-encoding"] != "pcm":
            return "This emulator decodes pcm only."
        rate = params["sample-rate"]
        if not rate.isdigit() or not 8000 <= int(rate) <= 48000:
            return (f"Value '{rate}' at 'sampleRate' failed to satisfy constraint: Member must "
                    "be an integer between 8000 and 48000")
        identify = _bool(params, "identify-language")
        multiple = _bool(params, "identify-multiple-languages")
        chosen = [n for n, on in (("language-code", "language-code" in params),
                                  ("identify-language", bool(identify)),
                                  ("identify-multiple-languages", bool(multiple))) if on]
        if len(chosen) != 1:
            return ("Exactly one of language-code, identify-language or "
                    "identify-multiple-languages must be specified.")
        if "language-code" in params and params["language-code"] not in languages:
            return (f"Value '{params['language-code']}' at 'languageCode' failed to satisfy "
                    "constraint: Member must satisfy enum value set")
        for name in ("vocabulary-name", "vocabulary-filter-name", "language-model-name"):
            if name in params and not _NAME.match(params[name]):
                return f"Value at '{name}' failed to satisfy constraint: Member must satisfy " \
                       "regular expression pattern: ^[0-9a-zA-Z._-]+"
        for name in ("vocabulary-names", "vocabulary-filter-names"):
            if name in params and not _LIST_NAMES.match(params[name]):
                return f"Value at '{name}' failed to satisfy constraint."
        if "session-id" in params and not _UUID.match(params["session-id"]):
            return "Value at 'sessionId' failed to satisfy constraint: Member must be a UUID."
        if params.get("vocabulary-filter-method", "remove") not in ("remove", "mask", "tag"):
            return "Value at 'vocabularyFilterMethod' failed to satisfy constraint."
        if params.get("partial-results-stability", "high") not in ("high", "medium", "low"):
            return "Value at 'partialResultsStability' failed to satisfy constraint."
        _bool(params, "enable-partial-results-stabilization")
        channel_id = _bool(params, "enable-channel-identification")
        speakers = _bool(params, "show-speaker-label")
        if "number-of-channels" in params:
            n = params["number-of-channels"]
            if not n.isdigit() or not 2 <= int(n) <= 2:
                return "Value at 'numberOfChannels' failed to satisfy constraint: Member must " \
                       "be 2."
        if bool(channel_id) != ("number-of-channels" in params):
            return "Channel identification needs enable-channel-identification=true and " \
                   "number-of-channels."
        if channel_id and speakers:
            return "You can't use speaker labels and channel identification in the same request."
        for name in ("content-identification-type", "content-redaction-type"):
            if params.get(name, "PII") != "PII":
                return f"Value at '{name}' failed to satisfy constraint: Member must be PII."
        if "content-identification-type" in params and "content-redaction-type" in params:
            return "You can't use content identification and content redaction in the same request."
        if "pii-entity-types" in params:
            value = params["pii-entity-types"]
            types = [t.strip() for t in value.split(",")]
            if (len(value) > 300 or not re.match(r"^[A-Z_, ]+$", value)
                    or any(t not in PII_TYPES for t in types)):
                return "Value at 'piiEntityTypes' failed to satisfy constraint."
            if not ({"content-identification-type", "content-redaction-type"} & set(params)):
                return "PII entity types need content identification or content redaction."
        options = params.get("language-options")
        if identify or multiple:
            if not options:
                return "Language identification needs language-options."
            codes = options.split(",")
            if (len(options) > 200 or not re.match(r"^[a-zA-Z-,]+$", options) or len(codes) < 2
                    or any(c not in languages for c in codes)):
                return "Value at 'languageOptions' failed to satisfy constraint."
            bases = [c.split("-")[0] for c in codes]
            if len(set(bases)) != len(bases):
                return "You can only include one dialect per language in language-options."
            if identify and ({"language-model-name", "content-redaction-type"} & set(params)):
                return "Language identification can't be combined with custom language models " \
                       "or content redaction."
            if "vocabulary-name" in params:
                return "With language identification use vocabulary-names."
        elif options is not None:
            return "language-options needs identify-language or identify-multiple-languages."
        if "preferred-language" in params:
            if not identify or params["preferred-language"] not in (options or "").split(","):
                return "preferred-language must be one of language-options with identify-language."
        return None
    except ValueError as e:
        return str(e)


# --- recognition: the tone code ------------------------------------------------------------------


@dataclass
class _Word:
    """One word being recognised: its loud blocks and what they sound like."""
    start: int  # block index
    end: int  # block index, exclusive
    parts: list[np.ndarray] = field(default_factory=list)
    peak: int = 0
    freq: float | None = None  # cached once the word is closed

    def frequency(self, rate: int) -> float:
        """Dominant frequency of the word's loud blocks (zero-padded, windowed FFT peak)."""
        if self.freq is not None:
            return self.freq
        x = np.concatenate(self.parts).astype(np.float64)
        nfft = max(16384, 1 << (len(x) - 1).bit_length())
        spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)), nfft))
        return float((int(np.argmax(spectrum[1:])) + 1) * rate / nfft)


@dataclass
class _Utterance:
    """Words under one ResultId, until 300 ms of quiet close it."""
    result_id: str
    words: list[_Word] = field(default_factory=list)
    changed: bool = False


@dataclass(frozen=True)
class ResultOptions:
    """What the stream's parameters ask results to carry."""

    channel_id: bool = False
    speakers: bool = False
    stable: bool = False
    language: str | None = None


class ToneChannel:
    """Energy segmentation and tone naming of one channel (see the module docstring)."""

    def __init__(self, rate: int, channel: int, stream: int, options: ResultOptions,
                 silence_rms: float = 500.0, word_gap: float = 0.05, utterance_gap: float = 0.3):
        """Segment one channel of a stream sampled at ``rate``."""
        self.rate = rate
        self.channel = channel
        self.stream = stream
        self.options = options
        self.block = max(1, rate // 100)
        self.threshold = silence_rms
        self.word_gap = max(1, round(word_gap * rate / self.block))
        self.utterance_gap = max(1, round(utterance_gap * rate / self.block))
        self.carry = np.zeros(0, np.int16)
        self.blocks = 0
        self.count = 0
        self.utterance: _Utterance | None = None

    def _time(self, block: int) -> float:
        """Seconds at the start of ``block`` (AWS gives up to 4 decimals)."""
        return round(block * self.block / self.rate, 4)

    def feed(self, samples: np.ndarray) -> list[dict[str, Any]]:
        """Add samples; the results (finals of closed utterances, a partial of the open one)."""
        x = np.concatenate((self.carry, samples))
        n = len(x) // self.block
        self.carry = x[n * self.block:]
        frames = x[: n * self.block].reshape(n, self.block)
        rms = np.sqrt((frames.astype(np.float64) ** 2).mean(axis=1)) if n else np.zeros(0)
        out: list[dict[str, Any]] = []
        for i in range(n):
            b = self.blocks + i
            if rms[i] >= self.threshold:
                utt = self.utterance
                if utt is None:
                    rid = uuid.uuid5(uuid.NAMESPACE_URL, f"voxq-emulator/{self.stream}/"
                                     f"{self.channel}/{self.count}")
                    utt = self.utterance = _Utterance(str(rid))
                    self.count += 1
                if utt.words and b - utt.words[-1].end < self.word_gap:
                    word = utt.words[-1]
                    word.end = b + 1
                else:
                    if utt.words:
                        utt.words[-1].freq = utt.words[-1].frequency(self.rate)
                    word = _Word(b, b + 1)
                    utt.words.append(word)
                word.parts.append(frames[i])
                word.peak = max(word.peak, int(np.abs(frames[i].astype(np.int32)).max()))
                utt.changed = True
            elif self.utterance is not None and b + 1 - self.utterance.words[-1].end >= \
                    self.utterance_gap:
                out.append(self._result(self.utterance, partial=False))
                self.utterance = None
        self.blocks += n
        if self.utterance is not None and self.utterance.changed:
            self.utterance.changed = False
            out.append(self._result(self.utterance, partial=True))
        return out

    def flush(self) -> list[dict[str, Any]]:
        """End of stream: the final of an utterance still open."""
        utt, self.utterance = self.utterance, None
        return [self._result(utt, partial=False)] if utt is not None else []

    def _result(self, utt: _Utterance, partial: bool) -> dict[str, Any]:
        """The §6.1 Result of an utterance, partial or final."""
        items: list[dict[str, Any]] = []
        names = []
        for i, w in enumerate(utt.words):
            freq = w.frequency(self.rate)
            name = f"tone{round(freq / 100) * 100}"
            names.append(name)
            item: dict[str, Any] = {"Content": name, "StartTime": self._time(w.start),
                                    "EndTime": self._time(w.end), "Type": "pronunciation",
                                    "VocabularyFilterMatch": False}
            if not partial:
                item["Confidence"] = round(0.5 + 0.5 * min(1.0, w.peak / 32767), 2)
            if self.options.speakers:
                item["Speaker"] = "0" if freq < 1000 else "1"
            if self.options.stable:
                item["Stable"] = not partial or i < len(utt.words) - 1
            items.append(item)
        text = " ".join(names)
        end = self._time(utt.words[-1].end)
        if not partial:
            text += "."
            items.append({"Content": ".", "StartTime": end, "EndTime": end,
                          "Type": "punctuation", "VocabularyFilterMatch": False})
        result: dict[str, Any] = {
            "ResultId": utt.result_id, "StartTime": self._time(utt.words[0].start),
            "EndTime": end, "IsPartial": partial,
            "Alternatives": [{"Transcript": text, "Items": items, "Entities": []}],
        }
        if self.options.channel_id:
            result["ChannelId"] = f"ch_{self.channel}"
        if self.options.language:
            result["LanguageCode"] = self.options.language
            result["LanguageIdentification"] = [{"LanguageCode": self.options.language,
                                                 "Score": 1.0}]
        return result


# --- configuration, faults, records --------------------------------------------------------------


@dataclass
class EmulatorConfig:
    """Limits and behaviour; tests change fields before (or between) connections."""

    region: str = REGION
    credentials: dict[str, str] = field(default_factory=lambda: {ACCESS_KEY: SECRET_KEY})
    languages: frozenset[str] = LANGUAGES
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    max_expires: int = 300
    clock_skew: float = 300.0
    auth_failure: Literal["http", "frame"] = "http"
    reject_unknown_params: bool = True
    expected_sample_rate: int | None = None  # the service cannot tell; tests can make it
    no_audio_timeout: float = 15.0
    max_chunk_seconds: float = 1.0
    max_chunk_bytes: int = 32 * 1024
    realtime_factor: float | None = 3.0
    burst_seconds: float = 3.0
    max_stream_seconds: float = 14_400.0
    max_concurrent: int = 25
    verify_envelopes: bool = True
    result_delay: float = 0.0
    empty_result_every: int = 10
    silence_rms: float = 500.0
    word_gap: float = 0.05
    utterance_gap: float = 0.3


@dataclass
class Fault:
    """A misbehaviour for one connection: ``http`` rejects the handshake with ``status``;
    ``exception`` sends ``exception_type``/``message`` after ``after_events`` AudioEvents;
    ``abort`` drops the TCP connection (no close frame) after ``after_events`` AudioEvents;
    ``hang`` goes silent after ``after_events`` AudioEvents (no results, no close, ever)."""

    kind: Literal["http", "exception", "abort", "hang"]
    after_events: int = 0
    exception_type: str = "InternalFailureException"
    message: str = "An internal error occurred."
    status: int = 503


@dataclass(eq=False)
class StreamLog:
    """What happened on one connection."""

    index: int
    path: str
    host: str
    params: dict[str, str] = field(default_factory=dict)
    fault: Fault | None = None
    http_status: int | None = None  # set when the handshake was refused
    rejection: AuthFailure | None = None  # auth failure answered after the upgrade
    signing: Signing | None = None
    duplicate_params: list[str] = field(default_factory=list)
    audio: bytearray = field(default_factory=bytearray)
    event_sizes: list[int] = field(default_factory=list)  # payload bytes of each AudioEvent

    @property
    def events(self) -> int:
        """AudioEvents with audio received (the empty end marker not counted)."""
        return len(self.event_sizes)

    results: list[dict[str, Any]] = field(default_factory=list)
    exception: tuple[str, str] | None = None
    ended: bool = False
    closed: bool = False
    ws: ServerConnection | None = None

    @property
    def finals(self) -> list[dict[str, Any]]:
        """Final results sent on this connection."""
        return [r for r in self.results if not r["IsPartial"]]

    @property
    def words(self) -> list[str]:
        """Words of the finals sent, in order."""
        return [i["Content"] for r in self.finals for i in r["Alternatives"][0]["Items"]
                if i["Type"] == "pronunciation"]


class _Closed(Exception):
    """The connection is over (exception sent or client gone)."""


def _date_header(ms: int) -> bytes:
    """The encoded ``:date`` header alone (what §5.3 hashes)."""
    return bytes([5]) + b":date" + b"\x08" + struct.pack(">q", ms)


# --- the server ----------------------------------------------------------------------------------


class AwsTranscribeEmulator:
    """The emulator server; ``async with`` starts it on a free loopback port."""

    def __init__(self, config: EmulatorConfig | None = None):
        """Not listening yet: ``async with`` starts it."""
        self.config = config or EmulatorConfig()
        self.faults: deque[Fault] = deque()
        self.streams: list[StreamLog] = []
        self.active: list[StreamLog] = []
        self.port = 0
        self._pending: dict[ServerConnection, StreamLog] = {}
        self._server: Server | None = None
        self._stack: contextlib.AsyncExitStack | None = None

    @property
    def url(self) -> str:
        """The endpoint to put in ``aws_transcribe_endpoint``."""
        return f"ws://{LOOPBACK}:{self.port}"

    def configure(self, settings: Settings, **changes: Any) -> Settings:
        """``settings`` pointed at this emulator with its (fake) credentials."""
        update: dict[str, Any] = {
            "aws_access_key_id": SecretStr(ACCESS_KEY),
            "aws_secret_access_key": SecretStr(self.config.credentials[ACCESS_KEY]),
            "aws_session_token": None, "aws_region": self.config.region,
            "aws_transcribe_endpoint": self.url,
        }
        update.update(changes)
        return settings.model_copy(update=update)

    async def __aenter__(self) -> AwsTranscribeEmulator:
        """Listen on a free loopback port."""
        self._stack = contextlib.AsyncExitStack()
        self._server, self.port = await self._stack.enter_async_context(serve_loopback(
            self._handler, self._process_request, max_size=1 << 20, max_queue=None,
            close_timeout=2))
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Drop open connections and stop listening."""
        assert self._stack is not None
        for log in list(self.active):
            if log.ws is not None:
                log.ws.transport.abort()
        await self._stack.aclose()

    # --- handshake -------------------------------------------------------------------------------

    @staticmethod
    def _json_response(connection: ServerConnection, status: int, kind: str | None,
                       message: str) -> Response:
        """An HTTP error answer the AWS way: JSON ``message`` and ``x-amzn-ErrorType``."""
        response = connection.respond(status, json.dumps({"message": message}))
        headers = Headers([(k, v) for k, v in response.headers.raw_items()
                           if k.lower() != "content-type"])
        headers["Content-Type"] = "application/json"
        if kind:
            headers["x-amzn-ErrorType"] = kind
        response.headers = headers
        return response

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Route, apply handshake faults and verify the presigned URL before the upgrade."""
        parts = urlsplit(request.path)
        log = StreamLog(index=len(self.streams), path=parts.path,
                        host=request.headers.get("Host", ""))
        self.streams.append(log)
        log.fault = self.faults.popleft() if self.faults else None
        if parts.path != PATH:
            log.http_status = 404
            return self._json_response(connection, 404, None, "Not Found")
        if log.fault is not None and log.fault.kind == "http":
            log.http_status = log.fault.status
            return self._json_response(connection, log.fault.status, log.fault.exception_type,
                                       log.fault.message)
        cfg = self.config
        verdict = verify_presigned(parts.path, parts.query, dict(request.headers.raw_items()),
                                   cfg.clock(), cfg.credentials, cfg.region, cfg.max_expires,
                                   cfg.clock_skew)
        if isinstance(verdict, AuthFailure):
            if cfg.auth_failure == "http":
                log.http_status = 403
                log.exception = (verdict.type, verdict.message)
                return self._json_response(connection, 403, verdict.type, verdict.message)
            log.rejection = verdict
        else:
            log.signing = verdict
        for k, v in parse_qsl(parts.query, keep_blank_values=True):
            if k.startswith("X-Amz-"):
                continue
            if k in log.params:
                log.duplicate_params.append(k)
            log.params[k] = v
        self._pending[connection] = log
        return None

    # --- after the upgrade -----------------------------------------------------------------------

    async def _handler(self, ws: ServerConnection) -> None:
        """Serve one upgraded connection, keeping the active list and log current."""
        log = self._pending.pop(ws)
        log.ws = ws
        self.active.append(log)
        try:
            await self._serve(ws, log)
        except _Closed:
            pass
        finally:
            log.closed = True
            self.active.remove(log)

    async def _fail(self, ws: ServerConnection, log: StreamLog, kind: str,
                    message: str) -> NoReturn:
        """One exception message, then a close (§6.2)."""
        if log.exception is None:
            log.exception = (kind, message)
            with contextlib.suppress(ConnectionClosed):
                await ws.send(exception_message(kind, message))
                await ws.close(1000)
        raise _Closed

    async def _serve(self, ws: ServerConnection, log: StreamLog) -> None:
        """Post-upgrade checks (auth, parameters, quotas), then the stream itself."""
        cfg = self.config
        if log.rejection is not None:
            await self._fail(ws, log, log.rejection.type, log.rejection.message)
        problem = validate_params(log.params, cfg.languages, cfg.reject_unknown_params)
        if problem is None and log.duplicate_params:
            problem = f"Duplicate query parameter(s): {', '.join(log.duplicate_params)}"
        if problem is None and cfg.expected_sample_rate is not None \
                and int(log.params["sample-rate"]) != cfg.expected_sample_rate:
            problem = (f"The sample rate {log.params['sample-rate']} Hz does not match the "
                       f"audio ({cfg.expected_sample_rate} Hz).")
        if problem is not None:
            await self._fail(ws, log, "BadRequestException", problem)
        if len(self.active) > cfg.max_concurrent:
            await self._fail(ws, log, "LimitExceededException",
                             f"You have reached your limit of {cfg.max_concurrent} concurrent "
                             "streams.")
        session = log.params.get("session-id")
        if session is not None:
            for other in list(self.active):
                if other is not log and other.params.get("session-id") == session \
                        and other.ws is not None:
                    with contextlib.suppress(_Closed):
                        await self._fail(other.ws, other, "ConflictException",
                                         "A new stream with the same session ID was started; "
                                         "this stream is terminated.")
        rate = int(log.params["sample-rate"])
        channel_id = (log.params.get("enable-channel-identification", "").lower() == "true")
        channels = int(log.params["number-of-channels"]) if channel_id else 1
        options = ResultOptions(
            channel_id=channel_id,
            speakers=log.params.get("show-speaker-label", "").lower() == "true",
            stable=log.params.get("enable-partial-results-stabilization", "").lower() == "true",
            language=(log.params.get("preferred-language")
                      or log.params.get("language-options", "").split(",")[0]
                      if "language-options" in log.params else None))
        recognizers = [ToneChannel(rate, c, log.index, options, cfg.silence_rms, cfg.word_gap,
                                   cfg.utterance_gap) for c in range(channels)]
        out: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        sender = asyncio.create_task(self._send_results(ws, out))
        try:
            await self._receive(ws, log, rate, channels, recognizers, out)
            out.put_nowait(None)  # the last finals, then the service closes (§7 step 3)
            with contextlib.suppress(TimeoutError):
                await within(asyncio.shield(sender), cfg.result_delay + 5.0)
            with contextlib.suppress(ConnectionClosed):
                await ws.close(1000, "Streaming completed successfully")
        finally:
            if not sender.done():
                sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)

    @staticmethod
    async def _send_results(ws: ServerConnection,
                            out: asyncio.Queue[tuple[float, bytes] | None]) -> None:
        """Send queued TranscriptEvents in order, each not before its due time."""
        while (item := await out.get()) is not None:
            due, data = item
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                await ws.send(data)
            except ConnectionClosed:
                return

    def _queue(self, log: StreamLog, out: asyncio.Queue[tuple[float, bytes] | None],
               results: list[dict[str, Any]]) -> None:
        """Record results and queue one TranscriptEvent each, due after ``result_delay``."""
        due = time.monotonic() + self.config.result_delay
        for result in results:
            log.results.append(result)
            out.put_nowait((due, transcript_event({"Transcript": {"Results": [result]}})))

    async def _apply_fault(self, ws: ServerConnection, log: StreamLog) -> None:
        """Misbehave if this connection's fault is due after the AudioEvents seen so far."""
        fault = log.fault
        if fault is None or fault.kind == "http" or log.events != fault.after_events:
            return
        if fault.kind == "abort":
            log.exception = ("<abort>", "TCP connection dropped without a close frame")
            ws.transport.abort()
            raise _Closed
        if fault.kind == "hang":
            log.exception = ("<hang>", "stopped answering")
            await ws.wait_closed()
            raise _Closed
        await self._fail(ws, log, fault.exception_type, fault.message)

    def _unwrap(self, message: Message, log: StreamLog) -> tuple[Message | None, str | None]:
        """The AudioEvent inside a signed envelope (None: end of stream), or a problem."""
        headers = message.headers
        if ":chunk-signature" not in headers:
            return message, None
        stamp = headers.get(":date")
        signature = headers.get(":chunk-signature")
        if not isinstance(stamp, Timestamp) or not isinstance(signature, bytes) \
                or len(signature) != 32:
            return None, "Invalid signed event: needs :date (timestamp) and :chunk-signature."
        if self.config.verify_envelopes:
            if log.signing is None:
                return None, "Signed events need a signed connection."
            when = stamp.to_datetime()
            now = self.config.clock()
            if abs((now - when).total_seconds()) > 300:
                return None, (f"Signature expired: {when.strftime(_AMZ_DATE)} is now earlier "
                              f"than {(now - timedelta(minutes=5)).strftime(_AMZ_DATE)} "
                              f"({now.strftime(_AMZ_DATE)} - 5 min.)")
            to_sign = "\n".join((
                "AWS4-HMAC-SHA256-PAYLOAD", when.strftime(_AMZ_DATE), log.signing.scope,
                log.signing.signature, hashlib.sha256(_date_header(stamp.value)).hexdigest(),
                hashlib.sha256(message.payload).hexdigest()))
            want = hmac.new(log.signing.key, to_sign.encode(), hashlib.sha256).digest()
            if not hmac.compare_digest(want, signature):
                return None, "The event signature does not match the signature chain."
            log.signing = Signing(log.signing.key, log.signing.scope, want.hex())
        if not message.payload:
            return None, None
        try:
            return decode_message(message.payload), None
        except EventStreamError:
            return None, UNEXPECTED_FRAME

    async def _receive(self, ws: ServerConnection, log: StreamLog, rate: int, channels: int,
                       recognizers: list[ToneChannel],
                       out: asyncio.Queue[tuple[float, bytes] | None]) -> None:
        """Read and check AudioEvents until the end marker; answer partials and finals."""
        cfg = self.config
        opened = time.monotonic()
        last = opened
        first: float | None = None
        frame_bytes = 2 * channels
        carry = b""
        quiet_events = 0
        await self._apply_fault(ws, log)
        while True:
            try:
                remaining = cfg.no_audio_timeout - (time.monotonic() - last)
                frame = await within(ws.recv(), max(remaining, 0.0))
            except TimeoutError:
                await self._fail(ws, log, "BadRequestException",
                                 timeout_message(cfg.no_audio_timeout))
            except ConnectionClosed:
                raise _Closed from None
            if isinstance(frame, str):
                await self._fail(ws, log, "BadRequestException", UNEXPECTED_FRAME)
            try:
                message = decode_message(frame)
            except EventStreamError:
                await self._fail(ws, log, "BadRequestException", UNEXPECTED_FRAME)
            inner, problem = self._unwrap(message, log)
            if problem is not None:
                await self._fail(ws, log, "BadRequestException", problem)
            if inner is not None and (inner.message_type != "event"
                                      or inner.event_type != "AudioEvent"):
                await self._fail(ws, log, "BadRequestException",
                                 f"Unexpected message: expected an AudioEvent event, got "
                                 f"{inner.message_type!r}/{inner.event_type!r}.")
            if inner is None or not inner.payload:  # end of stream (§5.2 / §5.3)
                log.ended = True
                self._queue(log, out, [r for rec in recognizers for r in rec.flush()])
                return
            payload = inner.payload
            now = time.monotonic()
            last = now
            if first is None:
                first = now
            if len(payload) > cfg.max_chunk_bytes or \
                    len(payload) > cfg.max_chunk_seconds * rate * frame_bytes:
                await self._fail(ws, log, "BadRequestException", TOO_BIG)
            log.audio += payload
            log.event_sizes.append(len(payload))
            seconds = len(log.audio) / (rate * frame_bytes)
            if cfg.realtime_factor is not None and \
                    seconds > (now - first) * cfg.realtime_factor + cfg.burst_seconds:
                await self._fail(ws, log, "BadRequestException", TOO_BIG)
            if max(seconds, now - opened) > cfg.max_stream_seconds:
                await self._fail(ws, log, "LimitExceededException",
                                 f"Your stream has exceeded the maximum duration of "
                                 f"{cfg.max_stream_seconds:g} seconds.")
            data = carry + payload
            whole = len(data) // frame_bytes * frame_bytes
            carry = data[whole:]
            samples = np.frombuffer(data[:whole], "<i2").reshape(-1, channels)
            results = [r for c, rec in enumerate(recognizers) for r in rec.feed(samples[:, c])]
            if results:
                self._queue(log, out, results)
            else:
                quiet_events += 1
                if cfg.empty_result_every and quiet_events % cfg.empty_result_every == 1:
                    out.put_nowait((time.monotonic() + cfg.result_delay,
                                    transcript_event({"Transcript": {"Results": []}})))
            await self._apply_fault(ws, log)
