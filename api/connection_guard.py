"""Slow or idle clients cannot hold the API's connections: uvicorn's h11 protocol plus a
request-head deadline, a request-body deadline and a cap on open connections.

uvicorn (like h11) has no timeout for reading a request head: a client that sends one header
line and stops holds a file descriptor forever, and enough of them exhaust the process's
descriptors. Here a connection must complete its request head within ``header_timeout`` of
opening (or of its previous answer) and its body within ``body_timeout`` of the head; past
``max_connections`` the connection that has waited longest for a request head is closed to make
room, so clients that send whole requests keep being served while slow ones churn.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from voxq.errors import ConfigError

log = logging.getLogger("voxq.api.connections")

FD_RESERVE = 256  # descriptors the process needs besides client connections (Redis, files)
MIN_CONNECTIONS = 64  # below this a default cap is not worth serving with: an error instead
_TIMEOUT_408 = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                b"connection: close\r\ncontent-length: 41\r\n\r\n"
                b"request head not received within timeout\n")


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """How long a client may take and how many connections the server holds."""

    header_timeout: float = 10.0
    body_timeout: float = 60.0
    max_connections: int = 2000


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with head and body deadlines and a connection cap.

    Use :func:`guarded_protocol` to get a subclass bound to one server's limits."""

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()
    # Connections waiting for a request head, oldest first (shared by one server's connections).
    waiting: ClassVar[OrderedDict[GuardedH11Protocol, None]] = OrderedDict()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch(arm_head=True)
        if len(self.connections) > self.limits.max_connections:
            self._make_room()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch(arm_head=True)

    def connection_lost(self, exc: Exception | None) -> None:
        self._unwatch()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        # An idle keep-alive connection is uvicorn's keep-alive timer's business; the head
        # deadline starts with the first byte of the next request.
        super().on_response_complete()
        self._watch(arm_head=False)

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._unwatch()
        super().handle_websocket_upgrade(event)

    # --- deadlines -------------------------------------------------------------------------

    def _watch(self, arm_head: bool) -> None:
        """Arm the deadline that fits what the client owes now: a head, a body, or nothing.
        A connection waiting for a head (or idle between requests) may be closed at the cap."""
        if self.transport is None or self.transport.is_closing():
            self._unwatch()
            return
        state = self.conn.their_state
        if state is h11.IDLE and (self.cycle is None or self.cycle.response_complete):
            self._cancel_body()
            if self not in self.waiting:
                self.waiting[self] = None
            if arm_head and self._head_timer is None:
                self._head_timer = self.loop.call_later(self.limits.header_timeout,
                                                        self._head_late)
        elif state is h11.SEND_BODY:
            self._cancel_head()
            if self._body_timer is None:
                self._body_timer = self.loop.call_later(self.limits.body_timeout,
                                                        self._body_late)
        else:
            self._unwatch()

    def _cancel_head(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self.waiting.pop(self, None)

    def _cancel_body(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _unwatch(self) -> None:
        self._cancel_head()
        self._cancel_body()

    def _head_late(self) -> None:
        self._head_timer = None
        log.info("closing a connection that sent no complete request head within %g s",
                 self.limits.header_timeout)
        self._close(_TIMEOUT_408 if self.conn.trailing_data[0] else b"")

    def _body_late(self) -> None:
        self._body_timer = None
        log.info("closing a connection whose request body was not complete within %g s",
                 self.limits.body_timeout)
        self._close(b"")

    def _close(self, last_words: bytes) -> None:
        self._unwatch()
        if not self.transport.is_closing():
            if last_words:
                self.transport.write(last_words)
            self.transport.close()

    def _make_room(self) -> None:
        """Over the cap: close the connection that has waited longest for a request head."""
        victim = next(iter(self.waiting), None)
        if victim is None:
            victim = self
        log.warning("%d connections (cap VOXQ_API_MAX_CONNECTIONS=%d): closing the one that "
                    "has waited longest for a request head", len(self.connections),
                    self.limits.max_connections)
        victim._close(b"")


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedH11Protocol]:
    """A protocol class for one uvicorn server (``uvicorn.Config(http=...)``) with ``limits``."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,),
                {"limits": limits, "waiting": OrderedDict(), "__module__": __name__})


def ensure_descriptors(max_connections: int, backlog: int, *, configured: bool = True) -> int:
    """Raise the soft open-file limit so ``max_connections`` fit with room to spare, and return
    the connection cap in force.

    When the hard limit is too low, a cap the operator set (``configured``) is a ConfigError;
    the default cap is lowered to what the hard limit allows, with a warning, so `voxq api`
    starts on a machine (or in a build sandbox) with `ulimit -Hn 1024`.

    The cap holds once the event loop has run the new connections' callbacks; one burst of
    accepts (at most ``backlog`` per loop iteration) can pass it for that moment, so the limit
    leaves room for a backlog's worth on top."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limited = hard != resource.RLIM_INFINITY
    if limited and hard < max_connections + FD_RESERVE:
        fits = hard - FD_RESERVE
        if configured or fits < MIN_CONNECTIONS:
            raise ConfigError(
                f"VOXQ_API_MAX_CONNECTIONS={max_connections} needs {max_connections + FD_RESERVE}"
                f" open files, but the hard limit is {hard}: lower VOXQ_API_MAX_CONNECTIONS or "
                f"raise `ulimit -Hn`")
        log.warning("the open-file hard limit %d holds %d client connections, not the default "
                    "%d: set VOXQ_API_MAX_CONNECTIONS or raise `ulimit -Hn`", hard, fits,
                    max_connections)
        max_connections = fits
    need = max_connections + FD_RESERVE + backlog
    if soft != resource.RLIM_INFINITY and soft < need:
        target = min(need, hard) if limited else need
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < need:
            log.warning("open-file limit %d leaves no room for a full backlog (%d) above "
                        "%d client connections: a burst of connections may be refused "
                        "for a moment", target, backlog, max_connections)
    return max_connections
