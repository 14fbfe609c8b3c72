"""`aws` speech: Amazon Polly SynthesizeSpeech over HTTPS with httpx, signed with SigV4.

``POST https://polly.REGION.amazonaws.com/v1/speech`` with a JSON body (``Engine``,
``OutputFormat: mp3``, ``SampleRate`` as a string, ``Text``, ``TextType``, ``VoiceId``); the
answer's body is the MP3 (``Content-Type: audio/mpeg``). Facts are from botocore's Polly service
model (``botocore/data/polly/2016-06-10/service-2.json``: rest-json, signing name ``polly``, the
operation's errors and their HTTP statuses, the mp3 sample rates, the 6000 total / 3000 billed
character limit) and AWS's common rest-json error shape (``x-amzn-ErrorType`` header, JSON body
with ``message``). Speed, volume and pitch have no request fields: when any differs from 1 the
text is sent as SSML inside ``<prosody>`` (pitch is refused up front for the neural, long-form and
generative engines, which do not support it). What Polly offers (voices by engine, rates, the
per-call limit, that refusal) is the core's ``voxq.tts_offers``, which the API plans with.

Secrets: the keys only sign; the signature and session token travel in headers, never in URLs,
logs or error messages.
"""

from __future__ import annotations

import json
import math
import ssl
from datetime import UTC, datetime
from typing import ClassVar
from xml.sax.saxutils import escape

import httpx

from voxq.settings import Settings
from voxq.tts_offers import POLLY_NEURAL_VOICES
from workers.vendors.aws.settings import AwsSettings
from workers.vendors.aws.sigv4 import SigV4Error, sign_headers
from workers.vendors.base import (
    OfferedSynthesizer,
    SynthesisRequest,
    VendorAuthError,
    VendorError,
    VendorRejected,
    VendorRetryable,
)

__all__ = ["PollySynthesizer", "polly_error", "request_body", "warm_up"]

SERVICE = "polly"
PATH = "/v1/speech"
_RETRYABLE_TYPES = frozenset({"ThrottlingException", "ServiceFailureException",
                              "ServiceUnavailableException", "ServiceUnavailable",
                              "InternalFailure", "InternalServerError", "RequestTimeout",
                              "RequestTimeoutException", "TooManyRequestsException"})
_AUTH_TYPES = frozenset({"UnrecognizedClientException", "InvalidSignatureException",
                         "MissingAuthenticationTokenException", "ExpiredTokenException",
                         "AccessDeniedException", "IncompleteSignatureException",
                         "InvalidClientTokenId", "SignatureDoesNotMatch"})


_ssl: ssl.SSLContext | None = None


def _ssl_context() -> ssl.SSLContext:
    """One TLS context per process (building one loads the CA bundle: ~20 ms)."""
    global _ssl
    if _ssl is None:
        _ssl = httpx.create_ssl_context()
    return _ssl


def warm_up() -> None:
    """Build the TLS context and load what httpx imports lazily (its transport, anyio's asyncio
    backend: ~150 ms together), so the RQ worker does it once before forking instead of in
    every work horse."""
    import asyncio

    import anyio
    import anyio.lowlevel

    async def touch() -> None:
        anyio.Lock()
        await anyio.lowlevel.checkpoint()

    httpx.AsyncClient(verify=_ssl_context())
    asyncio.run(touch())


def _percent(ratio: float) -> str:
    return f"{round(ratio * 100)}%"


def _decibels(ratio: float) -> str:
    db = 20 * math.log10(ratio)
    return f"{db:+.1f}dB"


def request_body(request: SynthesisRequest, engine: str) -> dict[str, str]:
    """The SynthesizeSpeech JSON body; SSML with ``<prosody>`` when speed/volume/pitch ≠ 1."""
    prosody = {}
    if request.speed != 1.0:
        prosody["rate"] = _percent(request.speed)
    if request.volume != 1.0:
        prosody["volume"] = _decibels(request.volume)
    if request.pitch != 1.0:
        prosody["pitch"] = f"{round((request.pitch - 1) * 100):+d}%"
    body = {"Engine": engine, "OutputFormat": "mp3", "SampleRate": str(request.sample_rate),
            "VoiceId": request.voice or POLLY_NEURAL_VOICES[0], "TextType": "text", "Text": request.text}
    if prosody:
        attrs = " ".join(f'{name}="{value}"' for name, value in prosody.items())
        body["TextType"] = "ssml"
        body["Text"] = f"<speak><prosody {attrs}>{escape(request.text)}</prosody></speak>"
    return body


def polly_error(status: int, headers: httpx.Headers, body: bytes) -> VendorError:
    """The VendorError of a non-200 answer, by AWS error type (header or body) and status."""
    kind = headers.get("x-amzn-errortype", "").split(":", 1)[0].strip()
    message = ""
    try:
        doc = json.loads(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        doc = None
    if isinstance(doc, dict):
        kind = kind or str(doc.get("__type", "")).rsplit("#", 1)[-1]
        message = str(doc.get("message") or doc.get("Message") or "")
    if not message:
        message = body.decode("utf-8", errors="replace")
    message = " ".join(message.split())[:300] or f"HTTP {status}"
    code = kind or status
    if kind in _AUTH_TYPES or status in (401, 403):
        return VendorAuthError(message, vendor="aws", code=code)
    if kind in _RETRYABLE_TYPES or status in (408, 429) or status >= 500:
        return VendorRetryable(message, vendor="aws", code=code)
    return VendorRejected(message, vendor="aws", code=code)


class PollySynthesizer(OfferedSynthesizer):
    """Amazon Polly, one SynthesizeSpeech call per piece of text; voices (by engine), rates, the
    text limit and the refusals are the core's offer (``voxq.tts_offers``)."""

    name = "aws"
    timeout: ClassVar[float] = 30.0

    def __init__(self, settings: Settings):
        super().__init__(settings)
        conf = AwsSettings.of(settings)
        self.engine = conf.polly_engine
        endpoint = conf.polly_endpoint or f"https://polly.{conf.region}.amazonaws.com"
        self.url = endpoint.rstrip("/") + PATH

    def _credentials(self) -> tuple[str, str, str | None]:
        return AwsSettings.of(self.settings).credentials()

    async def synthesize(self, request: SynthesisRequest) -> bytes:
        """MP3 of ``request.text`` (within the offer's text limit)."""
        self.check_request(request)
        access, secret, token = self._credentials()
        body = json.dumps(request_body(request, self.engine), ensure_ascii=False).encode("utf-8")
        try:
            headers = sign_headers("POST", self.url, {"Content-Type": "application/json"}, body,
                                   AwsSettings.of(self.settings).region, SERVICE, access, secret, token,
                                   datetime.now(UTC))
        except SigV4Error as e:  # credentials, region or endpoint that cannot be signed
            about_keys = any(word in str(e) for word in ("key", "token"))
            cls = VendorAuthError if about_keys else VendorRejected
            raise cls(f"cannot sign the request: {e} (check VOXQ_AWS_POLLY_ENDPOINT, AWS_REGION)",
                      vendor="aws") from None
        try:
            async with httpx.AsyncClient(timeout=self.timeout, verify=_ssl_context()) as client:
                resp = await client.post(self.url, content=body, headers=headers)
        except httpx.InvalidURL:
            raise VendorRejected(f"invalid endpoint {self.url!r} (VOXQ_AWS_POLLY_ENDPOINT)",
                                 vendor="aws") from None
        except httpx.HTTPError as e:
            raise VendorRetryable(f"cannot reach Polly: {type(e).__name__}: {e}", vendor="aws") from None
        if resp.status_code != 200:
            raise polly_error(resp.status_code, resp.headers, resp.content)
        kind = resp.headers.get("content-type", "")
        if not kind.startswith("audio/mpeg"):
            raise VendorRetryable(f"Polly answered {kind or 'no content type'}, not audio/mpeg",
                                  vendor="aws")
        if not resp.content:
            raise VendorRetryable("Polly answered no audio", vendor="aws")
        return resp.content
