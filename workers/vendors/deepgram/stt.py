"""`deepgram`: Deepgram live streaming (``/v1/listen``) as hooks of the WebSocket base.

Audio goes out as the worker sends it (binary linear16 frames, never empty: an empty frame
would end the stream); a two-channel session is one connection with ``channels=2`` and
``multichannel=true``. During a pause a ``KeepAlive`` text message goes out every
``keepalive_after`` seconds (Deepgram closes with NET-0001 after 10 s without a frame); if no
audio at all was sent yet, 100 ms of silence goes first instead (KeepAlive alone may not hold
a stream that never had audio) and is removed from result times. At the end ``Finalize`` then
``CloseStream``: the last finals and ``Metadata`` come back and the service closes with 1000.
``finalize()`` flushes Deepgram's buffer mid-session. Facts: ``docs/protocols/deepgram.md``.

Secrets: the key (``Authorization: Token``) or JWT (``Authorization: Bearer``) comes from
Settings (SecretStr) and is redacted from the websockets library's debug lines and errors.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import ClassVar
from urllib.parse import urlsplit

from workers.vendors.base import (
    Transcript,
    VendorError,
    VendorRejected,
    VendorRetryable,
)
from workers.vendors.deepgram import protocol as dg
from workers.vendors.deepgram.settings import DeepgramSettings
from workers.vendors.ws_stt import Endpoint, Frame, Link, SessionLimits, WebSocketRecognizer, where_of

__all__ = ["DeepgramRecognizer"]


class DeepgramRecognizer(WebSocketRecognizer):
    """Deepgram live streaming: one connection per session, multichannel for two channels."""

    name: ClassVar[str] = "deepgram"
    #: Deepgram's documented ceiling is 1.25x real time
    max_replay_speed: ClassVar[float] = 1.25
    replay_burst_seconds: ClassVar[float] = 1.0
    #: no maximum session length is documented; 10 s without a frame ends the stream
    limits: ClassVar[SessionLimits] = SessionLimits(max_silence=10.0)
    redact_headers: ClassVar[tuple[str, ...]] = ("authorization", "sec-websocket-protocol")

    keepalive_after: float = 4.0  # the docs say every 3-5 s; the service waits 10 s
    keepalive_seconds: float = 0.1  # silence sent when a keep-alive is due before any audio
    request_id: str | None = None

    @property
    def options(self) -> dg.DeepgramOptions:
        """The session's validated options."""
        opts = self.config.options
        assert isinstance(opts, dg.DeepgramOptions)
        return opts

    # --- hooks ---------------------------------------------------------------------------------

    async def endpoint(self, channel: int | None) -> Endpoint:
        """``/v1/listen`` with the session's query; the JWT (Bearer) if set, else the key."""
        conf = DeepgramSettings.of(self.settings)
        auth, self._secrets = conf.authorization()
        base = conf.url
        parts = urlsplit(base)
        where = where_of(base)
        if parts.scheme not in ("ws", "wss"):
            raise VendorRejected(f"invalid Deepgram URL {where!r}: needs ws:// or wss://",
                                 vendor=self.name)
        c = self.config
        url = dg.build_url(base, dg.query_params(c.language, c.rate, c.channels, self.options))
        return Endpoint(url=url, where=where, headers={"Authorization": auth})

    async def greet(self, link: Link) -> None:
        """Note the request id Deepgram gives the stream (no message is awaited)."""
        r = link.ws.response
        self.request_id = r.headers.get("dg-request-id") if r is not None else None

    def keepalive(self, link: Link) -> Frame | None:
        """``KeepAlive``; before any audio, silence instead (None)."""
        return dg.KEEPALIVE if link.timeline.frames else None

    def end_frames(self, link: Link) -> Sequence[Frame]:
        """``Finalize`` then ``CloseStream``."""
        return (dg.FINALIZE, dg.CLOSE_STREAM)

    def decode(self, link: Link, frame: Frame) -> Iterable[Transcript]:
        """Results become Transcripts; Metadata and Error are kept for the close."""
        try:
            msg = dg.decode_server(frame)
        except dg.ProtocolError as e:
            raise VendorRetryable(f"malformed message from the service: {e}",
                                  vendor=self.name) from None
        if isinstance(msg, dg.Results):
            t = dg.to_transcript(msg, self.config.channels)
            return () if t is None else (t,)
        if isinstance(msg, dg.Metadata):
            link.notes["metadata"] = msg
        elif isinstance(msg, dg.ErrorMessage):
            link.notes["error"] = msg.text
        return ()

    def closed(self, link: Link, code: int | None, reason: str) -> VendorError | None:
        """A clean close after CloseStream counts only with the summary, and only if it says
        the service heard (about) all the audio sent."""
        if link.ended and code == 1000:
            meta: dg.Metadata | None = link.notes.get("metadata")
            if meta is None:
                return VendorRetryable("the service closed the stream without its summary "
                                       "(Metadata)", vendor=self.name, code=1000)
            sent = link.timeline.frames / link.timeline.rate
            if meta.duration is not None and meta.duration + 1.0 < sent:
                return VendorRetryable(f"the service processed {meta.duration:.1f} s of the "
                                       f"{sent:.1f} s of audio sent", vendor=self.name, code=1000)
            return None
        return dg.close_error(code, reason, link.notes.get("error"), self._secrets)

    def handshake_error(self, status: int, headers: Mapping[str, str], body: bytes) -> VendorError:
        """Deepgram's ``dg-error`` / JSON body and request id in the message."""
        return dg.handshake_error(status, headers, body, self._secrets)

    async def finalize(self) -> None:
        """Ask Deepgram to finalise what it has buffered now (``Finalize``)."""
        await self.transmit_all(dg.FINALIZE)
