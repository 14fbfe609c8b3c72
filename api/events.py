"""Live routes on the event hub: a session's events as Server-Sent Events
(/v1/sessions/{id}/events) and as a WebSocket (/v1/sessions/{id}/live), and the lifecycle
firehose of every session (/v1/events).

Every follower costs no Redis connection of its own (see api/hub.py); followers beyond
``max_streams`` get 503 with Retry-After while every other route keeps answering.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, WebSocket
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.websockets import WebSocketDisconnect, WebSocketState

from api import sse
from api.auth import Require, authorize, check_session
from api.errors import short
from api.follow import KEEPALIVE, SessionFollow
from api.hub import EventHub, Kind
from api.models import ErrorOut
from api.sse import Cursor, Disconnected, EventStream, stream_id_key
from api.state import ApiState, api_state, redis_of
from voxq.access import Principal, Scope, tenant_of
from voxq.errors import InvalidInput, InvalidSessionId, MalformedRecord, UnknownSession
from voxq.keys import validate_session_id
from voxq.lifecycle import decode_lifecycle
from voxq.records import Status
from voxq.sessions import get_meta

log = logging.getLogger("voxq.api.events")
router = APIRouter()
ws_router = APIRouter()
Follower = Annotated[Principal, Depends(Require(Scope.SESSIONS_READ, query_token=True))]

MAX_WAIT_SECONDS = 600
STREAM_ID_RE = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
BUSY = "too many live event streams; retry later"
RETRY_AFTER = "5"


def hub_of(state: ApiState) -> EventHub:
    """The process's event hub; RuntimeError before the lifespan started it (a wiring bug)."""
    if state.hub is None:
        raise RuntimeError("the event hub is not running: run the app's lifespan")
    return state.hub


def _busy(state: ApiState) -> bool:
    return state.live_streams >= state.options.max_streams


def _follow(state: ApiState, sid: str, cursor: Cursor | None) -> SessionFollow:
    return SessionFollow(hub_of(state), redis_of(state), state.keys, sid, cursor,
                         state.options.batch, gate=state.follower_gate)


async def _started(state: ApiState, sid: str, cursor: Cursor | None,
                   wait: float) -> SessionFollow:
    """A follow whose first read found the session, waiting up to ``wait`` seconds for it to
    be created; UnknownSession if it does not exist by then. Waiting holds no Redis
    connection: the hub wakes it on the session's ``created`` event."""
    follow = _follow(state, sid, cursor)
    if await follow.start():
        return follow
    if wait <= 0:
        raise UnknownSession(f"no session {sid!r}")
    hub = hub_of(state)
    fut = hub.waiter(sid)
    try:
        if await follow.start():  # created between the first read and the waiter
            return follow
        async with asyncio.timeout(wait):
            await fut
    except TimeoutError:
        raise UnknownSession(f"no session {sid!r} after waiting {wait:g} s") from None
    finally:
        hub.drop_waiter(sid, fut)
    if not await follow.start():
        raise UnknownSession(f"no session {sid!r}")
    return follow


def unreadable_status(e: MalformedRecord, cursor: Cursor) -> str:
    """The one `status` event of a session whose stored record cannot be read."""
    info = {"status": Status.FAILED.value, "error": short(f"stored record cannot be read: {e}")}
    return sse.message("status", json.dumps(info, separators=(",", ":")), cursor.event_id)


def _release(state: ApiState) -> Callable[[], None]:
    """What an ending stream calls: it no longer counts among the live ones."""
    def release() -> None:
        state.live_streams -= 1
    return release


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def _sse(follow: SessionFollow, disconnected: Disconnected,
               keepalive: float) -> AsyncIterator[str]:
    async for ev in follow.events(disconnected, keepalive):
        yield sse.comment() if ev is KEEPALIVE else sse.message(ev.kind, ev.data, ev.id)


WAIT_QUERY = Query(ge=0, le=MAX_WAIT_SECONDS,
                   description="Seconds to wait for a session that does not exist yet "
                               "(a follower may connect before its producer); 0: answer 404 "
                               "at once.")


@router.get(
    "/sessions/{session_id:path}/events", summary="Live partials and finals (SSE)",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}},
              "description": "Events `partial`, `final`, and a last `status` (or `error` when "
                             "a too slow client is cut off); resumable ids."},
        404: {"model": ErrorOut, "description": "No such session (within `wait`)."},
        422: {"model": ErrorOut, "description": "Malformed id or Last-Event-ID."},
        503: {"model": ErrorOut, "description": "Too many live streams (Retry-After)."},
    })
async def events(
    session_id: str,
    request: Request,
    state: Annotated[ApiState, Depends(api_state)],
    principal: Follower,
    last_event_id: Annotated[str | None, Header(include_in_schema=False)] = None,
    last_event_id_q: Annotated[str | None, Query(
        alias="last_event_id", description="Fallback for the Last-Event-ID header.")] = None,
    wait: Annotated[float, WAIT_QUERY] = 0,
) -> Response:
    """Stream the session's events; without Last-Event-ID, replay the finals so far first."""
    sid = validate_session_id(session_id)
    resume = last_event_id or last_event_id_q
    try:
        cursor = Cursor.parse(resume) if resume else None
    except InvalidInput as e:
        raise HTTPException(422, str(e)) from e
    await check_session(state, request, principal, sid)
    try:
        await get_meta(redis_of(state), state.keys, sid)
    except MalformedRecord as e:
        # The session can never be followed: say so in the stream's last event and end it.
        log.warning("events of %s: %s", sid, e)
        return StreamingResponse(
            iter([unreadable_status(e, cursor or Cursor())]), media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"})
    except UnknownSession:
        pass  # not created yet: the follow below waits for it (?wait=) or answers 404
    if _busy(state):
        raise HTTPException(503, BUSY, headers={"Retry-After": RETRY_AFTER})
    state.live_streams += 1
    try:
        follow = await _started(state, sid, cursor, wait)
        await check_session(state, request, principal, sid)  # created while waiting
    except BaseException:
        state.live_streams -= 1
        raise
    keepalive = state.options.keepalive_seconds
    return EventStream(lambda disconnected: _sse(follow, disconnected, keepalive),
                       _release(state), SSE_HEADERS)


@router.get(
    "/events", summary="Lifecycle firehose of every session (SSE)",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}},
              "description": "One event per lifecycle change, named by the status "
                             "(`created`, `active`, `finished`, `failed`, `abandoned`), data "
                             "`{session_id, status, error, vendor, time}`."},
        503: {"model": ErrorOut, "description": "Too many live streams (Retry-After)."},
    })
async def firehose(
    request: Request,
    state: Annotated[ApiState, Depends(api_state)],
    principal: Follower,
    status: Annotated[list[Status] | None, Query(
        description="Only these statuses (repeat the parameter for several).")] = None,
    last_event_id: Annotated[str | None, Header(include_in_schema=False)] = None,
    last_event_id_q: Annotated[str | None, Query(
        alias="last_event_id", description="Fallback for the Last-Event-ID header: resume "
                                           "after this event (the lifecycle stream is capped)."
    )] = None,
) -> Response:
    """Every session's lifecycle events from now on, or from after Last-Event-ID."""
    resume = (last_event_id or last_event_id_q or "").strip()
    if resume and not STREAM_ID_RE.fullmatch(resume):
        raise HTTPException(422, f"malformed Last-Event-ID {resume[:60]!r}: expected a "
                                 "lifecycle event id such as 1700000000000-0")
    if _busy(state):
        raise HTTPException(503, BUSY, headers={"Retry-After": RETRY_AFTER})
    hub = hub_of(state)
    wanted = frozenset(s.value for s in status or ())
    state.live_streams += 1
    keepalive = state.options.keepalive_seconds
    r = redis_of(state)
    tenants: dict[str, str] = {}  # session id -> tenant (a tenant never changes)

    async def visible(sid: str) -> bool:
        """Whether the session's events may reach this follower (its tenant's only)."""
        if principal.all_tenants:
            return True
        if sid not in tenants:
            if len(tenants) > 10_000:
                tenants.clear()
            tenants[sid] = tenant_of(await r.hget(state.keys.meta(sid), "tenant"))
        return tenants[sid] == principal.tenant

    async def stored() -> AsyncIterator[tuple[str, dict[str, object]]]:
        """Lifecycle events stored after ``resume`` (read in pages on the route pool)."""
        after = resume
        while True:
            async with state.follower_gate or asyncio.Semaphore(1):
                page: Any = await r.xrange(state.keys.lifecycle, min=f"({after}",
                                           count=state.options.batch)
            for eid_raw, fields in page or ():
                after = eid_raw.decode()
                try:
                    ev = decode_lifecycle(fields)
                except MalformedRecord:
                    continue
                if (not wanted or ev.status.value in wanted) and await visible(ev.session_id):
                    d = ev.to_dict()
                    vendor = ev.vendor or hub.vendor_of(ev.session_id)
                    if not vendor:
                        raw = await r.hget(state.keys.meta(ev.session_id), "vendor")
                        vendor = raw.decode() if isinstance(raw, bytes) else (raw or "")
                    d["vendor"] = vendor
                    yield after, d
            if len(page or ()) < state.options.batch:
                return

    # joined before the head is sent and the catch-up read, so nothing is lost in between
    follower = hub.join_firehose(wanted)

    async def stream(disconnected: Disconnected) -> AsyncIterator[str]:
        last = resume or "0-0"
        try:
            if resume:
                async for eid, data in stored():
                    last = eid
                    yield sse.message(str(data["status"]), json.dumps(
                        data, separators=(",", ":")), eid)
            while True:
                if not await follower.wait(keepalive):
                    if await disconnected():
                        return
                    yield sse.comment()
                    continue
                for kind, eid, data in follower.take():
                    if kind is Kind.LIFECYCLE and stream_id_key(eid) > stream_id_key(last) \
                            and await visible(str(data["session_id"])):
                        yield sse.message(data["status"], json.dumps(
                            data, separators=(",", ":")), eid)
                if follower.closed:
                    return  # the API is shutting down
                if follower.overflowed:
                    yield sse.message("error", json.dumps(
                        {"error": "slow_consumer", "detail": "this follower fell too far "
                         "behind and was cut off; reconnect"}))
                    return
        finally:
            hub.leave(follower)

    release = _release(state)

    def close() -> None:  # also when the stream never runs
        hub.leave(follower)
        release()

    return EventStream(stream, close, SSE_HEADERS)


async def _refuse(websocket: WebSocket, code: int, detail: str,
                  headers: dict[str, str] | None = None) -> None:
    """Refuse the handshake with an HTTP answer like the SSE route's (the server's WebSocket
    denial response), or close with 1008 where the server cannot send one."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(
            JSONResponse({"detail": detail}, status_code=code, headers=headers))
    else:
        await websocket.close(1008, detail[:120])


@ws_router.websocket("/sessions/{session_id:path}/live")
async def live(websocket: WebSocket, session_id: str, after: str | None = None,
               wait: float = 0) -> None:
    """The session's events as JSON messages `{"event", "id", "data"}` over a WebSocket,
    resumable with `?after=<id>`; closes with 1000 after the `status` event. A refused
    handshake answers like the SSE route: 401, 404, 422 or 503 (Retry-After)."""
    state: ApiState = websocket.app.state.api
    try:
        principal = await authorize(state, websocket, Scope.SESSIONS_READ.value,
                                    query_token=True)
    except HTTPException as e:
        await _refuse(websocket, e.status_code, str(e.detail), dict(e.headers or {}))
        return
    try:
        sid = validate_session_id(session_id)
        cursor = Cursor.parse(after) if after else None
    except (InvalidSessionId, InvalidInput) as e:
        await _refuse(websocket, 422, str(e))
        return
    if _busy(state):
        await _refuse(websocket, 503, BUSY, {"Retry-After": RETRY_AFTER})
        return
    state.live_streams += 1
    try:
        try:
            follow = await _started(state, sid, cursor, min(max(wait, 0.0), MAX_WAIT_SECONDS))
            await check_session(state, websocket, principal, sid)
        except UnknownSession as e:
            await _refuse(websocket, 404, str(e))
            return
        except HTTPException as e:
            await _refuse(websocket, e.status_code, str(e.detail))
            return
        await websocket.accept()
        # The client sends nothing; a receive that returns means it left (checked on idle).
        gone = asyncio.ensure_future(websocket.receive())

        async def disconnected() -> bool:
            return gone.done()

        try:
            async for ev in follow.events(disconnected, state.options.keepalive_seconds):
                if ev is KEEPALIVE:
                    continue
                await websocket.send_text(
                    f'{{"event":"{ev.kind}","id":"{ev.id}","data":{ev.data}}}')
            if websocket.application_state is WebSocketState.CONNECTED and not gone.done():
                # 1012: the server restarts (reconnect with ?after=); 1000: the session ended
                await websocket.close(1012 if hub_of(state).closing else 1000)
        finally:
            gone.cancel()
    except (WebSocketDisconnect, RuntimeError) as e:  # the client left mid-send
        log.debug("live %s: client left (%s)", session_id[:128], e)
    finally:
        state.live_streams -= 1


# The WebSocket route checks its credential itself (above); this states what it requires for
# the fail-closed check and the route list (api.auth.required_scope).
setattr(ws_router.routes[-1], "voxq_scope", Scope.SESSIONS_READ.value)  # noqa: B010
