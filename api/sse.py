"""Server-Sent Events: the wire format, the resumable event id, and a light streaming response.

An event id carries both stream positions, `<final_id>;<partial_id>`, so a client that
reconnects with `Last-Event-ID` gets exactly the entries of both streams after them.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, replace

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from voxq.errors import InvalidInput

_STREAM_ID = r"[0-9]{1,20}-[0-9]{1,20}"
EVENT_ID_RE = re.compile(rf"({_STREAM_ID});({_STREAM_ID})")


def stream_id_key(eid: str) -> tuple[int, int]:
    """A Redis stream id as a sortable (milliseconds, sequence) pair."""
    ms, _, seq = eid.partition("-")
    return int(ms), int(seq or 0)


MAX_U64 = (1 << 64) - 1  # each part of a Redis stream id is an unsigned 64-bit number

@dataclass(frozen=True, slots=True)
class Cursor:
    """Positions in the final and partial streams up to which events were sent."""

    final: str = "0-0"
    partial: str = "0-0"

    @property
    def event_id(self) -> str:
        """The SSE id naming this position."""
        return f"{self.final};{self.partial}"

    @classmethod
    def parse(cls, raw: str) -> Cursor:
        """Parse an event id this API sent; InvalidInput for anything else."""
        m = EVENT_ID_RE.fullmatch(raw.strip())
        if m is None:
            raise InvalidInput(
                f"malformed Last-Event-ID {raw[:60]!r}: expected '<final_id>;<partial_id>'")
        for part in (m.group(1), m.group(2)):
            if any(int(n) > MAX_U64 for n in part.split("-")):
                raise InvalidInput(f"malformed Last-Event-ID {raw[:60]!r}: a stream id part "
                                   "is larger than 2^64 - 1")
        return cls(final=m.group(1), partial=m.group(2))

    def advanced(self, kind: str, eid: str) -> Cursor:
        """The cursor after sending entry `eid` of the `final` or `partial` stream."""
        return replace(self, final=eid) if kind == "final" else replace(self, partial=eid)


def message(event: str, data: str, event_id: str | None = None) -> str:
    """One SSE message; each line of `data` becomes its own `data:` field."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    body = "".join(f"data: {line}\n" for line in data.split("\n"))
    return f"{head}event: {event}\n{body}\n"


def comment(text: str = "keep-alive") -> str:
    """An SSE comment (ignored by clients; keeps proxies from closing an idle stream)."""
    return f": {text}\n\n"


DETACH = "voxq.detached_streams"  # scope key: where routes hand their EventStream over

#: asks whether the client has gone (without waiting)
Disconnected = Callable[[], Awaitable[bool]]


def disconnect_check(receive: Receive) -> Disconnected:
    """A check whether the client has left, from the connection's ``receive`` alone (a
    Request would keep the whole scope alive for as long as the stream runs)."""
    return Request({"type": "http"}, receive).is_disconnected


class EventStream(Response):
    """A ``text/event-stream`` response that writes each chunk of ``body`` straight to the
    server's ``send``, then calls ``on_close`` once however it ended.

    Why not Starlette's StreamingResponse: a follower holds its response for minutes or hours,
    and everything the response runs inside stays alive with it. Under uvicorn (ASGI spec 2.3)
    StreamingResponse opens a task group with a second task waiting for the client's
    disconnect, and the route runs inside FastAPI's whole middleware and routing chain (a
    dozen coroutine frames and three exit stacks); held by thousands of followers that is most
    of the API's memory. Under :func:`run_detaching` this response is handed over when the
    route returns, and runs in the connection's own task once that chain has unwound. A
    departed client is noticed by the stream's own ``disconnected`` check (at its next
    keep-alive). Status, headers and body are the same as StreamingResponse's.
    """

    media_type = "text/event-stream"

    def __init__(self, body: Callable[[Disconnected], AsyncIterator[str]],
                 on_close: Callable[[], None] | None = None,
                 headers: Mapping[str, str] | None = None):
        self.status_code = 200
        self.background = None
        self._body = body
        self._on_close = on_close
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        detached = scope.get(DETACH)
        if detached is not None:
            detached.append(self)  # run_detaching runs it once the route has returned
            return
        await self.run(receive, send)

    async def run(self, receive: Receive, send: Send) -> None:
        """Send the head, every chunk of the body, and the end."""
        body = self._body(disconnect_check(receive))
        try:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
            async for chunk in body:
                await send({"type": "http.response.body", "body": chunk.encode(),
                            "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            aclose = getattr(body, "aclose", None)
            if aclose is not None:
                await aclose()
            on_close, self._on_close = self._on_close, None
            if on_close is not None:
                on_close()
        if self.background is not None:
            await self.background()

    def close_unsent(self) -> None:
        """Release what the stream holds when it will never run (its request failed)."""
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()


async def run_detaching(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """Call ``app``; an :class:`EventStream` its route handed over runs after ``app`` (its
    middleware and routing chain) has returned, so a long-lived follower keeps only this
    frame and its own generators alive."""
    if scope["type"] != "http":
        await app(scope, receive, send)
        return
    detached: list[EventStream] = []
    # the app works on a copy: what routing puts in the scope (exit stacks, path parameters,
    # the matched route) is released when it returns, not held by the stream
    try:
        await app({**scope, DETACH: detached}, receive, send)
    except BaseException:
        for stream in detached:
            stream.close_unsent()
        raise
    if detached:
        await detached[0].run(receive, send)
