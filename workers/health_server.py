"""A tiny HTTP endpoint for a worker's probes and metrics: `/healthz` (the event loop turns),
`/readyz` (claiming; false while draining) and `/metrics` (Prometheus text).

Liveness never looks at Redis or vendors: a Redis outage must not get healthy workers
restarted, it must let them reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from voxq.aio import within

STALE_HEARTBEAT_S = 10.0


async def serve_health(host: str, port: int, heartbeat: Callable[[], float],
                       ready: Callable[[], bool]) -> asyncio.Server:
    """Start the server; ``heartbeat()`` is the loop's last beat (monotonic seconds)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await within(reader.readline(), 5)
            while (await within(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = line.decode("latin-1").split()
            path = parts[1] if len(parts) > 1 else "/"
            ctype = "text/plain; charset=utf-8"
            if path == "/healthz":
                alive = time.monotonic() - heartbeat() < STALE_HEARTBEAT_S
                status, body = (200, b"ok\n") if alive else (503, b"event loop stalled\n")
            elif path == "/readyz":
                status, body = (200, b"ready\n") if ready() else (503, b"not ready\n")
            elif path == "/metrics":
                status, body, ctype = 200, generate_latest(), CONTENT_TYPE_LATEST
            else:
                status, body = 404, b"not found\n"
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
            writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                         + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    return await asyncio.start_server(handle, host, port)
