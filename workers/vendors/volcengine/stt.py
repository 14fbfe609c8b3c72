"""`volcengine` streaming recognition: the Doubao big-model streaming ASR (``sauc``) over its
binary WebSocket protocol (``docs/protocols/volcengine.md``, "sauc session limits"; all of §4 there).

One WebSocket per channel (the service's results carry no channel, so a two-channel call is
two mono streams whose results are tagged 0 and 1). Each stream: handshake with the
``X-Api-*`` headers → a gzip JSON full client request → the server's first response → 200 ms
audio-only requests (16 kHz s16le mono; the worker resamples) → the last packet (empty, last
flag, negative sequence when sequences are on) → the final response (last flag) → close.

No audio for a while (a producer pause, a hold) would earn ``45000081`` (timed out waiting
for a packet): after ``keepalive_after`` seconds without audio the adapter sends
``keepalive_seconds`` of digital silence; that silence is in the vendor's timeline but not the
session's, so result times are mapped back. Error frames end the session with the vendor's
code and message, retryable or not by code (§4.6).

Secrets: the access token / API key travel only in handshake headers; they are redacted from
the websockets library's debug log and from any handshake error body.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import ClassVar

from websockets.exceptions import ConnectionClosed

from voxq.aio import within
from voxq.stt_offers.volcengine import VolcengineOptions
from workers.vendors.base import (
    Transcript,
    VendorAuthError,
    VendorError,
    VendorRejected,
    VendorRetryable,
)
from workers.vendors.redaction import vendor_text
from workers.vendors.volcengine import frames, sauc
from workers.vendors.volcengine.settings import VolcengineSettings
from workers.vendors.ws_stt import Endpoint, Frame, Link, SessionLimits, WebSocketRecognizer, where_of

log = logging.getLogger(__name__)

__all__ = ["VolcengineRecognizer", "frame_error", "handshake_error"]

VENDOR = "volcengine"
MAX_SERVER_FRAME = 4 << 20
"""Largest WebSocket message accepted from the service (responses are a few KB)."""


def _clean(text: str, secrets: tuple[str, ...]) -> str:
    """One bounded line of vendor text with any echoed secret removed."""
    return vendor_text(text, secrets)


def frame_error(code: int, message: str, secrets: tuple[str, ...] = ()) -> VendorError:
    """The VendorError of an error frame: retryable, auth or rejected by its code."""
    text = _clean(message, secrets) or "(no message)"
    kind = sauc.classify(code)
    cls = {"retryable": VendorRetryable, "auth": VendorAuthError}.get(kind, VendorRejected)
    return cls(text, vendor=VENDOR, code=code)


def handshake_error(status: int, body: bytes, secrets: tuple[str, ...] = ()) -> VendorError:
    """Map a refused upgrade (HTTP status and body) to a VendorError."""
    text, code = frames.refusal_detail(body)
    detail = _clean(text, secrets)
    message = f"HTTP {status} at the WebSocket handshake" + (f": {detail}" if detail else "")
    if status in (401, 403) or (code is not None and sauc.classify(code) == "auth"):
        return VendorAuthError(message, vendor=VENDOR, code=code or status)
    if status in (408, 429) or status >= 500:
        return VendorRetryable(message, vendor=VENDOR, code=code or status)
    return VendorRejected(message, vendor=VENDOR, code=code or status)


class VolcengineRecognizer(WebSocketRecognizer):
    """Volcengine big-model streaming ASR, one binary-protocol WebSocket per channel."""

    name: ClassVar[str] = VENDOR
    #: no maximum stream length is stated; an unstated packet wait ends it (45000081)
    limits: ClassVar[SessionLimits] = SessionLimits()
    multichannel: ClassVar[bool] = False  # results carry no channel: one mono stream each
    redact_headers: ClassVar[tuple[str, ...]] = ("x-api-access-key", "x-api-key",
                                                 "authorization")
    max_server_frame: ClassVar[int] = MAX_SERVER_FRAME
    time_digits: ClassVar[int] = 4
    audio_before_end: ClassVar[bool] = True  # the service refuses a stream with no audio

    # Tunables; class attributes so tests (and instances) can shrink them.
    chunk_seconds: float | None = 0.2  # audio per packet (the docs' best value for bigmodel)
    min_send_seconds: float = 0.2  # smaller leftovers wait for more audio (or the keep-alive)
    keepalive_after: float = 4.0  # seconds without audio before silence is sent
    keepalive_seconds: float = 0.2  # silence per keep-alive packet
    use_sequence: bool = True  # number packets (the vendor demo's way) or not (the doc table's)
    compress: bool = True  # gzip requests (the vendor demo's way)
    ping_interval: float | None = None
    drain_timeout: float = 30.0  # after the last packet, wait this long for the last response

    @property
    def input_rate(self) -> int:
        """The service takes 16 kHz only; the worker resamples."""
        return sauc.RATE

    # --- hooks -----------------------------------------------------------------------------------

    async def endpoint(self, channel: int | None) -> Endpoint:
        """The mode's endpoint with the ``X-Api-*`` headers (§4.2); VendorAuthError naming the
        variables when none are set."""
        conf = VolcengineSettings.of(self.settings)
        headers, self._secrets = conf.asr_headers()
        options = self.config.options
        assert isinstance(options, VolcengineOptions)
        url = sauc.endpoint(conf.asr_url, options.mode)
        return Endpoint(url=url, where=where_of(url), headers=headers)

    def _decode(self, raw: str | bytes) -> frames.Frame:
        """One server message as a frame; garbage is a retryable protocol failure."""
        if isinstance(raw, str):
            raise VendorRetryable("the service sent a text frame; it only sends binary frames",
                                  vendor=self.name)
        try:
            return frames.decode(raw, max_payload=MAX_SERVER_FRAME)
        except frames.FrameError as e:
            raise VendorRetryable(f"undecodable frame from the service: {e}",
                                  vendor=self.name) from None

    def _sequence(self, link: Link, last: bool = False) -> int | None:
        """The next packet's sequence number (negative on the last), or None without them."""
        if not self.use_sequence:
            return None
        link.notes["sequence"] += 1
        return -link.notes["sequence"] if last else link.notes["sequence"]

    async def greet(self, link: Link) -> None:
        """Send the full client request and read the server's first response."""
        options = self.config.options
        assert isinstance(options, VolcengineOptions)
        link.notes.update(sequence=1, state=sauc.StreamState())
        language = sauc.stream_language(self.config.language, options.mode)
        body = sauc.request_body(options, uid=self.config.session_id, language=language)
        try:
            with contextlib.suppress(ConnectionClosed):  # an error frame may be waiting
                await link.ws.send(frames.full_client_request(
                    body, sequence=1 if self.use_sequence else None, compress=self.compress))
            first = self._decode(await within(link.ws.recv(), self.open_timeout))
        except (ConnectionClosed, TimeoutError) as e:
            raise VendorRetryable(f"no answer to the full client request ({type(e).__name__})",
                                  vendor=self.name) from None
        if first.type is frames.MessageType.ERROR:
            raise frame_error(first.error_code or 0, first.error_message, self._secrets)
        if first.type is not frames.MessageType.FULL_SERVER_RESPONSE:
            raise VendorRetryable(f"unexpected first frame {first.type.name}", vendor=self.name)

    def encode_audio(self, link: Link, pcm: bytes) -> Frame:
        """One audio-only request."""
        return frames.audio_only_request(pcm, sequence=self._sequence(link),
                                         compress=self.compress)

    def end_frames(self, link: Link) -> Sequence[Frame]:
        """The last packet: empty, last flag, negative sequence."""
        return (frames.audio_only_request(b"", sequence=self._sequence(link, last=True),
                                          last=True, compress=self.compress),)

    def decode(self, link: Link, frame: Frame) -> Iterable[Transcript]:
        """A full server response becomes Transcripts; an error frame fails the session; the
        last response ends the stream."""
        f = self._decode(frame)
        if f.type is frames.MessageType.ERROR:
            raise frame_error(f.error_code or 0, f.error_message, self._secrets)
        if f.type is not frames.MessageType.FULL_SERVER_RESPONSE:
            return ()  # nothing else is documented for ASR; ignore rather than fail
        try:
            response = sauc.response_of(f.json())
        except (frames.FrameError, sauc.ProtocolError) as e:
            raise VendorRetryable(f"malformed response from the service: {e}",
                                  vendor=self.name) from None
        if f.is_last:
            link.done = True
        return sauc.to_transcripts(response, link.notes["state"], link.channel or 0, f.is_last)

    def closed(self, link: Link, code: int | None, reason: str) -> VendorError | None:
        """Every close before the last response is retried."""
        return VendorRetryable(f"the connection closed before the last response "
                               f"(code {code or 1006})", vendor=self.name)

    def handshake_error(self, status: int, headers: Mapping[str, str], body: bytes) -> VendorError:
        """Volcengine's JSON or text body."""
        return handshake_error(status, body, self._secrets)
