"""`voxq-ws` recognizer: one WebSocket per session speaking workers.vendors.voxqws.protocol,
as hooks of the WebSocket base (``docs/protocols/README.md``, "voxq-ws")."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import ClassVar
from urllib.parse import urlencode

from websockets.protocol import State

from workers.vendors.base import (
    Transcript,
    VendorAuthError,
    VendorError,
    VendorRejected,
    VendorRetryable,
)
from workers.vendors.voxqws import protocol
from workers.vendors.voxqws.settings import VoxqWsSettings
from workers.vendors.ws_stt import Endpoint, Frame, Link, WebSocketRecognizer, where_of

KEEPALIVE_AFTER_S = 5.0
_MASKS = protocol.MaskSource()


class VoxqWsRecognizer(WebSocketRecognizer):
    """Streams PCM to a voxq-ws server and yields its results."""

    name: ClassVar[str] = "voxq-ws"
    #: a server that stops answering pings (stalled, half-open socket) is dropped and retried
    ping_interval: float | None = 5.0
    ping_timeout: float | None = 10.0
    keepalive_after: float = KEEPALIVE_AFTER_S
    #: a server that never says done after finish is retried
    drain_timeout: float = 30.0

    async def endpoint(self, channel: int | None) -> Endpoint:
        """The configured server with the session in the query, a Bearer key if one is set."""
        conf = VoxqWsSettings.of(self.settings)
        base = conf.url
        if not base:
            raise VendorRejected("no server configured: set VOXQ_WS_URL", vendor=self.name)
        c = self.config
        url = f"{base}{'&' if '?' in base else '?'}" + urlencode(
            {"session": c.session_id, "rate": self.input_rate, "channels": c.channels,
             "language": c.language})
        headers = {}
        if conf.key is not None:
            key = conf.key.get_secret_value()
            self._secrets = (key,)
            headers["Authorization"] = f"Bearer {key}"
        return Endpoint(url=url, where=where_of(base), headers=headers)

    def _error(self, e: protocol.ServerError) -> VendorError:
        cls = VendorRetryable if e.retryable else VendorRejected
        return cls(e.message, vendor=self.name, code=e.code)

    async def greet(self, link: Link) -> None:
        """Wait for the server's ready message."""
        try:
            first = protocol.decode_server(await self.receive(link, 10))
        except protocol.ProtocolError as e:
            raise VendorRetryable(f"bad first message: {e}", vendor=self.name) from e
        if isinstance(first, protocol.ServerError):
            raise self._error(first)
        if first != "ready":
            raise VendorRetryable(f"expected ready, got {first!r}", vendor=self.name)

    def keepalive(self, link: Link) -> Frame | None:
        """The protocol's keepalive message."""
        return protocol.KEEPALIVE

    def end_frames(self, link: Link) -> Sequence[Frame]:
        """``finish``: the server sends its last finals and ``done``."""
        return (protocol.FINISH,)

    def decode(self, link: Link, frame: Frame) -> Iterable[Transcript]:
        """Results as they are; an error message fails the session; ``done`` ends it."""
        try:
            msg = protocol.decode_server(frame)
        except protocol.ProtocolError as e:
            raise VendorRetryable(str(e), vendor=self.name) from None
        if isinstance(msg, Transcript):
            return (msg,)
        if isinstance(msg, protocol.ServerError):
            raise self._error(msg)
        if msg == "done":
            link.done = True
        return ()

    def closed(self, link: Link, code: int | None, reason: str) -> VendorError | None:
        """Any close before ``done`` is retried."""
        if code == 1000:
            return VendorRetryable("server closed the stream early", vendor=self.name, code=code)
        return VendorRetryable(f"connection lost: code {code or 1006}"
                               + (f" {self.clean(reason)}" if reason else ""), vendor=self.name)

    def handshake_error(self, status: int, headers: Mapping[str, str], body: bytes) -> VendorError:
        """401/403 auth, 429/5xx retryable, else rejected."""
        text = self.clean(body.decode(errors="replace"))
        msg = f"handshake refused: HTTP {status}{': ' + text if text else ''}"
        if status in (401, 403):
            return VendorAuthError(msg, vendor=self.name, code=status)
        if status == 429 or status >= 500:
            return VendorRetryable(msg, vendor=self.name, code=status)
        return VendorRejected(msg, vendor=self.name, code=status)

    def send_nowait(self, pcm: bytes) -> bool:
        """One binary frame written straight to the socket when it is open, nothing is buffered
        or being sent, no extension was negotiated and no roll can be due; else False (``send``
        then waits for room or raises the connection's error). The frame is built here, with a
        mask from a pooled strong random source, so a chunk costs one socket write and no
        per-frame getrandom call."""
        gen = self._gen
        if (gen is None or len(gen.links) != 1 or self._buf or self._finished or self._closed
                or self.rollover_after is not None or len(pcm) % self._frame_bytes):
            return False
        link = gen.links[0]
        ws = link.ws
        if (link.failure is not None or ws.protocol.state is not State.OPEN
                or ws.send_in_progress is not None or ws.protocol.extensions
                or ws.protocol.expect_continuation_frame
                or ws.transport.get_write_buffer_size()):
            return False
        ws.transport.write(protocol.client_binary_frame(pcm, _MASKS.next()))
        frames = len(pcm) // self._frame_bytes
        link.timeline.add(frames)
        self._sent_frames += frames
        link.last_sent = time.monotonic()
        return True
