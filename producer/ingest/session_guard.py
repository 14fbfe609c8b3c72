"""One error path for every dialect: bad input closes the socket with a code and a reason, logs
a line without secrets, counts a reject, and fails the session if one was created; a vanished
client leaves what Redis acknowledged (no eos) for a resume or the idle timeout."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from producer.ingest.core import CloseCode, Dialect, IngestSession, Rejected
from voxq.errors import InvalidInput, RedisUnavailable, SessionExists
from voxq.metrics import INGEST_ACTIVE, INGEST_CONNECTIONS, INGEST_REJECTS

log = logging.getLogger("voxq.ingest")


def close_reason(text: str) -> str:
    """A close reason that fits the 123 bytes a close frame allows."""
    b = text.encode()
    return text if len(b) <= 123 else b[:120].decode(errors="ignore") + "..."


async def close(ws: ServerConnection, code: int, reason: str) -> None:
    """Close the socket, whatever state it is in."""
    with contextlib.suppress(Exception):
        await ws.close(code, close_reason(reason))


@contextlib.asynccontextmanager
async def guarded(ws: ServerConnection, dialect: Dialect,
                  session: Callable[[], IngestSession | None]) -> AsyncIterator[None]:
    """Run one connection's handler under the common error path."""
    INGEST_CONNECTIONS.labels(dialect.value).inc()
    active = INGEST_ACTIVE.labels(dialect.value)
    active.inc()
    peer = ws.remote_address[0] if ws.remote_address else "?"
    try:
        try:
            yield
        except (InvalidInput, SessionExists) as e:
            raise Rejected(str(e), CloseCode.POLICY, "config") from e
    except Rejected as e:
        INGEST_REJECTS.labels(dialect.value, e.kind).inc()
        s = session()
        log.warning("%s connection from %s closed (%d): %s%s", dialect.value, peer, e.code,
                    e.reason, f" [session {s.session_id}]" if s and s.meta else "")
        if s is not None and s.meta is not None and not s.pub.closed:
            await s.fail(e.reason)
        await close(ws, e.code, e.reason)
    except ConnectionClosed:
        s = session()
        if s is not None and s.meta is not None and not s.pub.closed:
            log.info("%s client %s went away mid-session %s: %d frame(s) acknowledged",
                     dialect.value, peer, s.session_id, s.acked_frames)
    except RedisUnavailable as e:
        INGEST_REJECTS.labels(dialect.value, "redis").inc()
        log.error("%s connection from %s: Redis failed: %s", dialect.value, peer, e)
        await close(ws, CloseCode.INTERNAL, "the bus is unavailable; resume later")
    finally:
        active.dec()
        s = session()
        if s is not None and s.meta is not None and not s.pub.closed:
            await s.drop()
        elif s is not None:
            s.release()
