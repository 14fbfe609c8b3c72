"""Amazon Transcribe streaming, pure: the query of one stream, the errors its answers mean and
the mapping of its TranscriptEvents (``docs/protocols/aws-transcribe.md``, "TranscriptEvent"
and "Exceptions"). No sockets here; ``workers.vendors.aws.stt`` drives them."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping
from typing import Any

from voxq.stt_offers.aws import AwsTranscribeOptions, language_code
from workers.vendors.aws import eventstream as es
from workers.vendors.base import (
    RecognizerConfig,
    Transcript,
    VendorAuthError,
    VendorError,
    VendorRejected,
    VendorRetryable,
    Word,
)
from workers.vendors.redaction import vendor_text

__all__ = ["exception_error", "handshake_error", "message_transcripts", "query_params",
           "transcripts"]

_CHANNEL_RE = re.compile(r"^ch_(\d+)$")
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
MAX_EVENT_BYTES = 32 * 1024
"""Largest AudioEvent payload (older model docs: 32 KB; current docs: at most 1 s of audio)."""


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
        params["language-code"] = language_code(config.language) or config.language
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


handshake_error = _handshake_error


# --- transcript events ----------------------------------------------------------------------------


def _channel(value: Any) -> int:
    """``ch_0``/``ch_1`` → 0/1 (absent or unknown: 0)."""
    if isinstance(value, str):
        m = _CHANNEL_RE.match(value)
        if m:
            return int(m.group(1))
    return 0


def _seconds(value: Any) -> float:
    """A time field as float seconds."""
    return float(value)


def transcripts(payload: bytes, channels: int, open_results: set[str]) -> list[Transcript]:
    """A TranscriptEvent's results (Alternatives[0]) as Transcripts timed from the stream's
    first byte; ``open_results`` keeps the ResultIds whose final is still due."""
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
                    open_results.add(rid)
                else:
                    open_results.discard(rid)
            alternatives = r.get("Alternatives") or []
            if not alternatives:
                continue
            alt = alternatives[0]
            words = tuple(
                Word(text=str(item["Content"]),
                     start=_seconds(item.get("StartTime", 0)),
                     end=_seconds(item.get("EndTime", 0)),
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
                start=_seconds(r.get("StartTime", 0)),
                end=_seconds(r.get("EndTime", 0)),
                channel=min(_channel(r.get("ChannelId")), channels - 1),
                speaker=speakers.pop() if len(speakers) == 1 else None,
                words=words, result_id=rid))
        return out
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise VendorRetryable(f"malformed TranscriptEvent from the service: {e}",
                              vendor="aws") from None


def message_transcripts(message: es.Message, channels: int, open_results: set[str],
                        secrets: tuple[str, ...] = ()) -> list[Transcript]:
    """What one event-stream message says: Transcripts of a TranscriptEvent, a VendorError
    raised for an exception or error message, nothing for anything else."""
    kind = message.message_type
    if kind in ("exception", "error"):
        exc = es.parse_exception(message)
        assert exc is not None
        raise exception_error(exc.type, _clean(exc.message, secrets))
    if kind == "event" and message.event_type == "TranscriptEvent":
        return transcripts(message.payload, channels, open_results)
    return []
