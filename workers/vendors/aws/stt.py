"""`aws` streaming recognition: Amazon Transcribe over its WebSocket API (StartStreamTranscription).

One presigned WebSocket per AWS stream (``docs/protocols/aws-transcribe.md``, "Session limits"): audio goes out as
unsigned event-stream AudioEvents in binary frames (never text frames: the service answers those
with ``BadRequestException: Unexpected WebSocket frame received.``), TranscriptEvents come back and
become voxq ``Transcript``s, an exception message ends the stream with a typed ``VendorError``.

Three things the service imposes are handled here rather than by the worker:

* chunking: audio is re-cut into 100 ms AudioEvents (the AWS sample's size, inside the 50-200 ms
  recommendation, far below the 1 s / 32 KB ceiling);
* the 15 s no-audio timeout: when no audio was sent for ``keepalive_after`` seconds a short run
  of digital silence is sent (the notes' workaround; there is no keep-alive message). That
  silence is part of AWS's timeline but not of the session's, so result times are mapped back;
* the 4 h stream limit: past ``rollover_after`` seconds the base opens a fresh presigned
  stream at the next utterance boundary (no partial open, no loud audio after the last final),
  or at ``rollover_deadline`` regardless; the old stream gets the empty AudioEvent and is drained
  before any result of the new one is yielded, and new times are offset by the audio already sent.

Secrets: credentials come from Settings (SecretStr); neither they nor the presigned URL's query
(signature, security token) appear in logs or errors.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import ClassVar
from urllib.parse import urlsplit

from workers.vendors.aws import eventstream as es
from workers.vendors.aws import protocol
from workers.vendors.aws.eventstream import audio_event
from workers.vendors.aws.protocol import _SIGNED_QUERY
from workers.vendors.aws.settings import AwsSettings
from workers.vendors.aws.sigv4 import (
    MAX_PRESIGN_EXPIRES,
    TRANSCRIBE_PATH,
    SigV4Error,
    presign_transcribe_url,
    transcribe_host,
)
from workers.vendors.base import (
    Transcript,
    VendorAuthError,
    VendorError,
    VendorRejected,
    VendorRetryable,
)
from workers.vendors.ws_stt import Endpoint, Frame, Link, SessionLimits, WebSocketRecognizer, where_of

__all__ = ["AwsTranscribeRecognizer"]


class AwsTranscribeRecognizer(WebSocketRecognizer):
    """Amazon Transcribe streaming: one presigned WebSocket per stream, rolled over before 4 h."""

    name: ClassVar[str] = "aws"
    #: the service wants close to real time; faster delivery can earn "Your stream is too big"
    max_replay_speed: ClassVar[float] = 2.0
    #: 4 h per stream, 15 s without an AudioEvent (docs/protocols/aws-transcribe.md, §7)
    limits: ClassVar[SessionLimits] = SessionLimits(max_session=14_400.0, max_silence=15.0)
    redact_patterns = (_SIGNED_QUERY,)

    # Tunables; class attributes so tests (and instances) can shrink them.
    chunk_seconds: float | None = 0.1  # AudioEvent size
    min_send_seconds: float = 0.05  # smaller leftovers wait for the next send (or keep-alive)
    keepalive_after: float = 5.0  # seconds without audio before silence is sent (AWS: 15 s)
    keepalive_seconds: float = 0.1  # silence sent per keep-alive
    presign_expires: int = MAX_PRESIGN_EXPIRES
    ping_interval: float | None = None
    drain_timeout: float = 30.0  # after the empty AudioEvent, wait this long for the close

    def _credentials(self) -> tuple[str, str, str | None]:
        """Access key, secret key and optional session token; VendorAuthError if missing."""
        access, secret, token = AwsSettings.of(self.settings).credentials()
        self._secrets = tuple(x for x in (secret, token) if x)
        return access, secret, token

    def _endpoint(self) -> tuple[str, str, str]:
        """(scheme, host as signed and sent, path) of the service or of the configured override."""
        conf = AwsSettings.of(self.settings)
        region, override = conf.region, conf.transcribe_endpoint
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

    # --- hooks ----------------------------------------------------------------------------------

    async def endpoint(self, channel: int | None) -> Endpoint:
        """A URL presigned for now; SigV4 problems are credential problems."""
        access, secret, token = self._credentials()
        scheme, host, path = self._endpoint()
        try:
            url = presign_transcribe_url(
                region=AwsSettings.of(self.settings).region, access_key=access, secret_key=secret,
                session_token=token, params=protocol.query_params(self.config),
                now=datetime.now(UTC), expires=self.presign_expires, host=host, scheme=scheme,
                path=path)
        except SigV4Error as e:  # its messages never carry a secret
            raise VendorAuthError(f"cannot sign the request: {e}", vendor=self.name) from None
        return Endpoint(url=url, where=where_of(url))

    async def greet(self, link: Link) -> None:
        """No first message; each stream gets its own event-stream decoder."""
        link.notes.update(decoder=es.Decoder(max_payload_length=self.max_server_frame),
                          open_results=set())

    def encode_audio(self, link: Link, pcm: bytes) -> Frame:
        """One AudioEvent."""
        return audio_event(pcm)

    def end_frames(self, link: Link) -> Sequence[Frame]:
        """The empty AudioEvent: the service flushes its finals and closes."""
        return (audio_event(b""),)

    def idle(self, link: Link) -> bool:
        """No result of this stream still waits for its final."""
        return not link.notes["open_results"]

    def decode(self, link: Link, frame: Frame) -> Iterable[Transcript]:
        """Event-stream messages to Transcripts; an exception message fails the session."""
        if isinstance(frame, str):
            raise VendorRetryable("the service sent a text frame; it only sends "
                                  "event-stream binary frames", vendor=self.name)
        try:
            messages = link.notes["decoder"].feed(frame)
        except es.EventStreamError as e:
            raise VendorRetryable(f"undecodable event stream from the service: {e}",
                                  vendor=self.name) from None
        out: list[Transcript] = []
        for message in messages:
            out += protocol.message_transcripts(message, self.config.channels,
                                                link.notes["open_results"], self._secrets)
        return out

    def closed(self, link: Link, code: int | None, reason: str) -> VendorError | None:
        """The service closes after its last finals; any other close is retried."""
        if link.ended and code is not None and not link.notes["decoder"].pending:
            return None
        when = "after" if link.ended else "before"
        return VendorRetryable(f"the connection closed {when} the end of the audio "
                               f"(code {code or 1006})", vendor=self.name)

    def handshake_error(self, status: int, headers: Mapping[str, str], body: bytes) -> VendorError:
        """x-amzn-ErrorType and the JSON message, signed query values removed."""
        return protocol.handshake_error(status, headers, body, self._secrets)
