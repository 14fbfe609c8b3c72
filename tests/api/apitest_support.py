"""Helpers for the API tests: an in-process client with the app's lifespan, a uvicorn server in
a thread, and writers that play the producer and the worker on the real test Redis."""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import redis.asyncio as aioredis
import uvicorn
from fastapi import FastAPI

from api.state import ApiOptions, ApiState
from voxq.embedded_redis import free_port
from voxq.keys import Keys
from voxq.records import SessionMeta, Status, Transcript, encode_transcript
from voxq.sessions import create_session

FAST = ApiOptions(poll_seconds=0.1)


@asynccontextmanager
async def asgi_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client for `app`, with the app's lifespan running around it."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
            yield c


async def add_session(r: aioredis.Redis, keys: Keys, sid: str, *, channels: int = 1,
                      created: float = 0.0, status: Status = Status.ACTIVE,
                      **fields: object) -> SessionMeta:
    """Create a session as a producer would, then set its status as a worker would."""
    meta = SessionMeta(session_id=sid, channels=channels, created=created,
                       **fields)  # type: ignore[arg-type]
    meta = await create_session(r, keys, meta)
    await set_status(r, keys, sid, status)
    return meta


async def set_status(r: aioredis.Redis, keys: Keys, sid: str, status: Status,
                     error: str = "") -> None:
    """Write the status (and error) into the meta hash and the session's status stream, as the
    worker does in one script."""
    async with r.pipeline(transaction=True) as p:
        p.hset(keys.meta(sid), mapping={"status": status.value, "error": error,
                                        "updated": repr(time.time())})
        p.xadd(keys.status(sid), {"status": status.value, "error": error})
        await p.execute()


async def add_final(r: aioredis.Redis, keys: Keys, sid: str, seq: int, text: str,
                    start: float, end: float, channel: int = 0) -> str:
    """XADD one final segment; returns its stream id."""
    t = Transcript(text=text, is_final=True, start=start, end=end, channel=channel, seq=seq)
    fields: dict[Any, Any] = dict(encode_transcript(t))
    eid = await r.xadd(keys.final(sid), fields)
    return eid.decode() if isinstance(eid, bytes) else str(eid)


async def add_partial(r: aioredis.Redis, keys: Keys, sid: str, text: str, start: float,
                      end: float, result_id: str = "r1") -> str:
    """XADD one partial hypothesis; returns its stream id."""
    t = Transcript(text=text, is_final=False, start=start, end=end, result_id=result_id)
    fields: dict[Any, Any] = dict(encode_transcript(t))
    eid = await r.xadd(keys.partial(sid), fields)
    return eid.decode() if isinstance(eid, bytes) else str(eid)


@dataclass
class LiveServer:
    """A uvicorn server running the API in a background thread."""

    url: str
    app: FastAPI

    @property
    def state(self) -> ApiState:
        """The app's shared state (to watch the live stream count)."""
        state: ApiState = self.app.state.api
        return state


def serve_in_thread(app: FastAPI) -> Iterator[LiveServer]:
    """Run `app` under uvicorn on a free port until the generator is closed."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, name="api-under-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield LiveServer(url=f"http://127.0.0.1:{port}", app=app)
    finally:
        server.should_exit = True
        thread.join(15)


@dataclass
class RawAnswer:
    """What a raw HTTP exchange got back."""

    status: int
    head: bytes
    body: bytes
    sent: int  # body bytes the client managed to send before the answer (or a reset)


def _split_url(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("http://").partition(":")
    return host, int(port)


def raw_exchange(url: str, head: bytes, parts: Iterable[bytes] = (), timeout: float = 20.0
                 ) -> RawAnswer:
    """Send a request head, then body parts until the server answers or closes the
    connection, then read its answer: shows whether the server decided before the body
    was complete (a server that answers early stops the sending)."""
    sock = socket.create_connection(_split_url(url), timeout=timeout)
    sent = 0
    try:
        sock.sendall(head)
        for part in parts:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                sock.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(part)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head_bytes, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head_bytes.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    finally:
        sock.close()
    status = int(head_bytes.split(b" ", 2)[1]) if head_bytes.startswith(b"HTTP/") else 0
    return RawAnswer(status, head_bytes, body, sent)


def post_head(path: str, length: int | None, extra: str = "") -> bytes:
    """The head of a JSON POST: with Content-Length, or chunked when ``length`` is None."""
    framing = (f"Content-Length: {length}\r\n" if length is not None
               else "Transfer-Encoding: chunked\r\n")
    return (f"POST {path} HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
            f"{framing}{extra}\r\n").encode()


def chunked(parts: Iterable[bytes]) -> Iterator[bytes]:
    """Body parts in chunked transfer coding (without the final empty chunk)."""
    for part in parts:
        yield f"{len(part):x}\r\n".encode() + part + b"\r\n"
