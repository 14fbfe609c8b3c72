"""The gateway's WebSocket server: routes each endpoint to its dialect, authenticates at the
handshake, answers /healthz, /readyz and /metrics, and drains on SIGTERM (stop accepting, close
raw clients with 1012 so they resume elsewhere, let platform calls finish within the grace)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from producer.ingest.audiohook import handle_audiohook
from producer.ingest.auth import (
    AuthFailed,
    Principal,
    check_audiohook,
    check_twilio,
    presented_key,
)
from producer.ingest.core import CONNECTION_TENANT, CloseCode, Dialect, Gateway
from producer.ingest.file import handle_file
from producer.ingest.jambonz import handle_jambonz
from producer.ingest.jambonz_protocol import SUBPROTOCOL
from producer.ingest.raw import handle_raw
from producer.ingest.twilio import handle_twilio
from voxq import audit
from voxq.access import DEFAULT_TENANT, Denial
from voxq.metrics import INGEST_REJECTS

log = logging.getLogger("voxq.ingest")

Handler = Callable[[ServerConnection, Gateway, Mapping[str, list[str]]], Awaitable[None]]
ROUTES: dict[str, Dialect] = {f"/v1/ingest/{d.value}": d for d in Dialect}
HANDLERS: dict[Dialect, Handler] = {Dialect.RAW: handle_raw, Dialect.FILE: handle_file,
                                    Dialect.TWILIO: handle_twilio,
                                    Dialect.AUDIOHOOK: handle_audiohook,
                                    Dialect.JAMBONZ: handle_jambonz}
#: dialects whose clients can resume: closed with 1012 on drain
RESUMABLE = (Dialect.RAW,)


def _split(path: str) -> tuple[str, dict[str, list[str]]]:
    p, _, qs = path.partition("?")
    return p, parse_qs(qs, keep_blank_values=True)


class IngestServer:
    """Handshake checks and connection dispatch for one gateway process."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.server: Server | None = None
        self._idle = asyncio.Event()  # set whenever a connection ends
        # the tenant each authenticated handshake streams as, until its handler starts
        self._tenants: weakref.WeakKeyDictionary[ServerConnection, str] = \
            weakref.WeakKeyDictionary()

    async def authenticate(self, dialect: Dialect, request: Request,
                           query: Mapping[str, list[str]]) -> Principal:
        """The principal of the request's credential for ``dialect``; AuthFailed without one.
        Platform signatures (Twilio, AudioHook) stream as the default tenant; a key as its own
        tenant (the API's scoped keys need sessions:write)."""
        if self.gw.insecure:
            return Principal("insecure")
        s, h = self.gw.settings, request.headers
        if dialect is Dialect.TWILIO and s.twilio_auth_token is not None:
            base = s.ingest_public_url or f"wss://{h.get('Host', '')}"
            check_twilio(s.twilio_auth_token.get_secret_value(),
                         base.rstrip("/") + request.path, h.get("X-Twilio-Signature"))
            return Principal("twilio")
        if dialect is Dialect.AUDIOHOOK and s.audiohook_api_key is not None:
            secret = s.audiohook_client_secret
            check_audiohook(h, request.path, s.audiohook_api_key.get_secret_value(),
                            secret.get_secret_value() if secret else None, self.gw.nonces)
            return Principal("audiohook")
        key = presented_key(h, query)
        if key is None:
            raise AuthFailed("a key is required: Authorization: Bearer KEY or ?key=KEY")
        return await self.gw.scoped_keys().check(key)

    async def process_request(self, conn: ServerConnection,
                              request: Request) -> Response | None:
        """Health, readiness and metrics over plain HTTP; route, limit and authenticate upgrades."""
        path, query = _split(request.path)
        if path == "/healthz":
            return conn.respond(200, "ok\n")
        if path == "/readyz":
            return conn.respond(503, "draining\n") if self.gw.draining.is_set() else \
                conn.respond(200, "ready\n")
        if path == "/metrics":
            body = generate_latest()
            return Response(200, "OK", Headers([("Content-Type", CONTENT_TYPE_LATEST),
                                                ("Content-Length", str(len(body)))]), body)
        dialect = ROUTES.get(path)
        if dialect is None:
            return conn.respond(404, f"no endpoint {path}; try /v1/ingest/raw\n")
        if self.gw.draining.is_set():
            INGEST_REJECTS.labels(dialect.value, "draining").inc()
            return conn.respond(503, "the gateway is draining\n")
        if self.gw.at_capacity():
            INGEST_REJECTS.labels(dialect.value, "limit").inc()
            return conn.respond(503, "the gateway is full\n")
        try:
            principal = await self.authenticate(dialect, request, query)
        except AuthFailed as e:
            INGEST_REJECTS.labels(dialect.value, "auth").inc()
            peer = conn.remote_address[0] if conn.remote_address else "?"
            log.warning("%s handshake from %s refused: %s", dialect.value, peer, e)
            text = str(e)
            reason = (Denial.NO_KEY if "required" in text or "missing" in text
                      else Denial.SCOPE if "scope" in text
                      else Denial.EXPIRED if "expired" in text else Denial.BAD_KEY)
            await audit.denied(self.gw.scoped_keys().store.r, self.gw.keys, reason.value,
                               route=f"INGEST {request.path.partition('?')[0]}", peer=peer,
                               detail=str(e))
            status = 403 if dialect is Dialect.TWILIO else 401
            return conn.respond(status, f"{e}\n")
        self._tenants[conn] = principal.tenant
        return None

    @staticmethod
    def select_subprotocol(conn: ServerConnection, offered: Sequence[Subprotocol]
                           ) -> Subprotocol | None:
        """jambonz asks for ``audio.jambonz.org``; other clients ask for nothing."""
        return Subprotocol(SUBPROTOCOL) if SUBPROTOCOL in offered else None

    async def handler(self, ws: ServerConnection) -> None:
        """Run the dialect the path names."""
        assert ws.request is not None
        path, query = _split(ws.request.path)
        dialect = ROUTES[path]
        CONNECTION_TENANT.set(self._tenants.pop(ws, DEFAULT_TENANT))
        conns = self.gw.connections[dialect]
        conns.add(ws)
        try:
            await HANDLERS[dialect](ws, self.gw, query)
        finally:
            conns.discard(ws)
            self._idle.set()

    async def start(self, host: str, port: int) -> Server:
        """Listen; returns the server (its sockets tell the port when ``port`` is 0)."""
        s = self.gw.settings
        self.server = await serve(
            self.handler, host, port, process_request=self.process_request,
            max_size=s.ingest_max_message_bytes, max_queue=4, compression=None,
            select_subprotocol=self.select_subprotocol,
            ping_interval=20, ping_timeout=20, close_timeout=5)
        return self.server

    async def drain(self, grace: float) -> None:
        """Stop accepting; close resumable clients with 1012; give the others ``grace`` s."""
        assert self.server is not None
        self.gw.draining.set()
        self.server.close(close_connections=False)
        for d in RESUMABLE:
            for ws in list(self.gw.connections[d]):
                with contextlib.suppress(Exception):
                    await ws.close(CloseCode.RESTART, "gateway restarting: resume elsewhere")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                while any(self.gw.connections[d] for d in Dialect):
                    self._idle.clear()
                    await self._idle.wait()
        for d in Dialect:
            for ws in list(self.gw.connections[d]):
                with contextlib.suppress(Exception):
                    await ws.close(CloseCode.GOING_AWAY, "gateway shutting down")
        async with asyncio.timeout(15):
            await self.server.wait_closed()


async def run_gateway(gw: Gateway, host: str, port: int,
                      ready: Callable[[int], Any] | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then drain."""
    srv = IngestServer(gw)
    server = await srv.start(host, port)
    bound = next(iter(server.sockets)).getsockname()[1]
    log.info("voxq ingest listening on ws://%s:%d/v1/ingest/{raw,file,twilio,audiohook,jambonz}", host,
             bound)
    if ready is not None:
        ready(bound)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("voxq ingest draining (grace %.0f s)", gw.settings.ingest_drain_grace_seconds)
        await srv.drain(gw.settings.ingest_drain_grace_seconds)
        await gw.close()
