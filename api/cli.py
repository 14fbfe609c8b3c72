"""`voxq api`: serve the HTTP API with uvicorn (embedded Redis when REDIS_URL is unset)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Iterator
from types import FrameType

import uvicorn
from fastapi import FastAPI
from prometheus_client import start_http_server

from api.app import create_app
from api.connection_guard import ConnectionLimits, ensure_descriptors, guarded_protocol
from voxq.redis_conn import redis_url
from voxq.settings import Settings, get_settings

log = logging.getLogger("voxq.api")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `api` subcommand to the `voxq` parser."""
    settings = get_settings()
    p = sub.add_parser("api", help="serve the HTTP API (sessions, transcripts, live events)",
                       description="Serve voxq's HTTP API; OpenAPI docs at /docs.")
    p.add_argument("--host", default=None,
                   help=f"address to bind (default VOXQ_API_HOST, {settings.api_host})")
    p.add_argument("--port", type=port_number, default=None,
                   help=f"port to bind, 0 = any free one (default VOXQ_API_PORT, "
                        f"{settings.api_port})")
    p.set_defaults(func=run)


def port_number(text: str) -> int:
    """argparse type: an integer 0-65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} is outside 0-65535")
    return value


def bind(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket on host:port (bound here so port 0 resolves before we print)."""
    family, kind, proto, _, addr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(addr)
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    """The http:// URL a bound socket serves."""
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


class _Stop(Exception):
    """Raised by the signal handler below to unwind after uvicorn's graceful shutdown."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Let SIGINT/SIGTERM end the block normally (exit 0) so cleanup such as stopping the
    embedded Redis always runs: uvicorn re-raises the signal after its graceful shutdown, and
    SIGTERM's default action would otherwise kill the process before any `finally`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    except _Stop:
        pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class ApiServer(uvicorn.Server):
    """uvicorn's server, which ends every live follower's stream as it starts to shut down:
    the streams finish cleanly (clients resume with their last event id) instead of running
    until the graceful timeout and being cancelled, each with a traceback in the log."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        state = getattr(getattr(self.config.app, "state", None), "api", None)
        hub = getattr(state, "hub", None)
        if hub is not None:
            told = hub.close_followers()
            if told:
                log.info("ending %d live followers before shutting down", told)
        await super().shutdown(sockets)


def server_config(app: FastAPI, settings: Settings, limits: ConnectionLimits) -> uvicorn.Config:
    """uvicorn's configuration: the guarded h11 protocol and every limit from settings; logs go
    through voxq's handlers (log_config=None), where repeated records are bounded."""
    return uvicorn.Config(
        app, http=guarded_protocol(limits), log_config=None,
        log_level=settings.log_level.lower(), access_log=False, proxy_headers=False,
        timeout_graceful_shutdown=5, timeout_keep_alive=settings.api_keepalive_timeout_seconds,
        h11_max_incomplete_event_size=settings.api_max_header_bytes,
        backlog=settings.api_backlog)


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted; prints the URL once listening."""
    settings = get_settings()
    host = args.host or settings.api_host
    port = settings.api_port if args.port is None else args.port
    cap = ensure_descriptors(settings.api_max_connections, settings.api_backlog,
                             configured="api_max_connections" in settings.model_fields_set)
    if settings.api_max_followers >= cap and settings.model_fields_set & {
            "api_max_followers", "api_max_connections"}:
        log.warning("VOXQ_API_MAX_FOLLOWERS (%d) is not below the connection cap (%d): "
                    "followers past the cap are closed instead of answered 503; raise "
                    "VOXQ_API_MAX_CONNECTIONS above it", settings.api_max_followers, cap)
    limits = ConnectionLimits(header_timeout=settings.api_header_timeout_seconds,
                              body_timeout=settings.api_body_timeout_seconds,
                              max_connections=cap)
    with stop_on_signals(), redis_url(settings) as url:
        sock = bind(host, port, settings.api_backlog)
        app = create_app(settings, url)
        if settings.api_metrics_port is not None:
            # /metrics without a key, on a port only Prometheus reaches (k8s NetworkPolicy)
            start_http_server(settings.api_metrics_port, addr=host)
            print(f"voxq api: metrics on port {settings.api_metrics_port}", flush=True)
        config = server_config(app, settings, limits)
        base = url_of(sock)
        print(f"voxq api: listening on {base} (console at {base}/, docs at {base}/docs)",
              flush=True)
        try:
            ApiServer(config).run(sockets=[sock])
        finally:
            sock.close()
    return 0
