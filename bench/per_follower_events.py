"""The per-follower design the event hub replaced, kept as the baseline of bench/followers.py:
each follower runs its own loop (status HMGET, then a blocking XREAD) on a pooled connection.

The original module's text follows: /v1/sessions/{id}/events, partials and finals live as
Server-Sent Events, resumable.

One XREAD BLOCK covers both the final and the partial stream (same `{SID}` hash tag, so it
is cluster-safe). The session status is read *before* each XREAD: once it is terminal, the
read that follows sees every final the worker wrote before marking it, so the stream ends
with all finals, then one `status` event.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

import redis.asyncio as aioredis
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.responses import StreamingResponse

from api import sse
from api.models import ErrorOut
from api.sse import Cursor
from api.state import ApiOptions, ApiState, api_state, redis_of
from api.transcript_formats import segment_dict
from voxq.errors import InvalidInput, UnknownSession
from voxq.keys import Keys, validate_session_id
from voxq.records import Status, decode_transcript

log = logging.getLogger("voxq.api.events")
router = APIRouter()

Entry = tuple[str, str, Any]  # (kind, stream id, fields)


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def merge_reply(reply: Any, final_key: str) -> list[Entry]:
    """XREAD's answer (RESP2 list or RESP3 dict) as entries of both streams in id order."""
    pairs = reply.items() if isinstance(reply, dict) else (reply or [])
    out: list[Entry] = []
    for key, entries in pairs:
        kind = "final" if _s(key) == final_key else "partial"
        out.extend((kind, _s(eid), fields) for eid, fields in entries)
    out.sort(key=lambda e: (sse.stream_id_key(e[1]), e[0] == "partial"))
    return out


def event_data(fields: Any) -> str:
    """JSON of one transcript entry: the JSON transcript's segment shape, plus result_id."""
    t = decode_transcript(fields)
    d = segment_dict(t, 0)
    d["seq"] = t.seq  # the worker's index of a final; null for partials
    d["result_id"] = t.result_id
    return json.dumps(d, separators=(",", ":"))


def _status(raw: bytes | str | None) -> Status | None:
    try:
        return Status(_s(raw)) if raw is not None else None
    except ValueError:
        return None


async def start_cursor(r: aioredis.Redis, keys: Keys, sid: str) -> Cursor:
    """Where a fresh connection starts: every final so far, and partials from now on."""
    last = await r.xrevrange(keys.partial(sid), count=1)
    newest = last[0][0] if last else None
    return Cursor(final="0-0", partial=_s(newest) if newest is not None else "0-0")


async def session_events(r: aioredis.Redis, keys: Keys, sid: str, cursor: Cursor,
                         opts: ApiOptions,
                         disconnected: Callable[[], Awaitable[bool]]) -> AsyncIterator[str]:
    """SSE messages for one session from `cursor` until it is terminal or the client leaves."""
    fkey, pkey, mkey = keys.final(sid), keys.partial(sid), keys.meta(sid)
    block_ms = max(1, int(opts.poll_seconds * 1000))
    last_sent = time.monotonic()
    while not await disconnected():
        raw_status, raw_error = await r.hmget(mkey, ["status", "error"])
        if raw_status is None:
            log.info("session %s vanished while streaming its events", sid)
            return
        status = _status(raw_status)
        terminal = status is not None and status.terminal
        reply = await r.xread({fkey: cursor.final, pkey: cursor.partial}, count=opts.batch,
                              block=None if terminal else block_ms)
        entries = merge_reply(reply, fkey)
        for kind, eid, fields in entries:
            cursor = cursor.advanced(kind, eid)
            try:
                data = event_data(fields)
            except InvalidInput as e:
                log.warning("skipping malformed %s entry %s of %s: %s", kind, eid, sid, e)
                continue
            yield sse.message(kind, data, cursor.event_id)
            last_sent = time.monotonic()
        if terminal and not entries:
            assert status is not None
            info = {"status": status.value, "error": _s(raw_error) if raw_error else ""}
            yield sse.message("status", json.dumps(info, separators=(",", ":")),
                              cursor.event_id)
            return
        if time.monotonic() - last_sent >= opts.keepalive_seconds:
            yield sse.comment()
            last_sent = time.monotonic()


async def _counted(state: ApiState, stream: AsyncIterator[str]) -> AsyncIterator[str]:
    """Count the stream among the live ones for as long as it runs."""
    state.live_streams += 1
    try:
        async for chunk in stream:
            yield chunk
    finally:
        state.live_streams -= 1
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


@router.get(
    "/sessions/{session_id:path}/events", summary="Live partials and finals (SSE)",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}},
              "description": "Events `partial`, `final`, and a last `status`; resumable ids."},
        404: {"model": ErrorOut, "description": "No such session."},
        422: {"model": ErrorOut, "description": "Malformed id or Last-Event-ID."},
        503: {"model": ErrorOut, "description": "Too many live streams."},
    })
async def events(
    session_id: str,
    request: Request,
    state: Annotated[ApiState, Depends(api_state)],
    last_event_id: Annotated[str | None, Header(include_in_schema=False)] = None,
    last_event_id_q: Annotated[str | None, Query(
        alias="last_event_id", description="Fallback for the Last-Event-ID header.")] = None,
) -> StreamingResponse:
    """Stream the session's events; without Last-Event-ID, replay the finals so far first."""
    sid = validate_session_id(session_id)
    r = redis_of(state)
    resume = last_event_id or last_event_id_q
    try:
        cursor = Cursor.parse(resume) if resume else None
    except InvalidInput as e:
        raise HTTPException(422, str(e)) from e
    if not await r.exists(state.keys.meta(sid)):
        raise UnknownSession(f"no session {sid!r}")
    if state.live_streams >= state.options.max_streams:
        raise HTTPException(503, "too many live event streams; retry later",
                            headers={"Retry-After": "5"})
    if cursor is None:
        cursor = await start_cursor(r, state.keys, sid)
    stream = session_events(r, state.keys, sid, cursor, state.options, request.is_disconnected)
    return StreamingResponse(
        _counted(state, stream), media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
