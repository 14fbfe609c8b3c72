"""/v1/sessions: list sessions, show one, and render its final transcript."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response

from api import transcript_formats as tf
from api.auth import Require, check_session
from api.models import ErrorOut, SessionOut, SessionPage, TranscriptOut
from api.state import ApiState, api_state, redis_of
from voxq.access import Principal, Scope
from voxq.keys import validate_session_id
from voxq.sessions import get_meta, list_sessions, read_finals_skipping

router = APIRouter()
Reader = Annotated[Principal, Depends(Require(Scope.SESSIONS_READ))]

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "No such session."},
    409: {"model": ErrorOut, "description": "The session's stored record cannot be read."},
    422: {"model": ErrorOut, "description": "Malformed session id or parameter."},
}


@router.get("/sessions", response_model=SessionPage, summary="List sessions, newest first")
async def sessions_page(
    state: Annotated[ApiState, Depends(api_state)],
    principal: Reader,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> SessionPage:
    """One page of the session index, newest first; unreadable records are left out and
    counted in `skipped`."""
    page = await list_sessions(redis_of(state), state.keys, offset=offset, limit=limit,
                               tenant=None if principal.all_tenants else principal.tenant)
    return SessionPage(total=page.total, offset=offset, limit=limit, skipped=page.skipped,
                       items=[SessionOut.from_meta(m) for m in page.sessions])


@router.get("/sessions/{session_id:path}/transcript", summary="A session's final transcript",
            response_model=TranscriptOut, responses={
                **NOT_FOUND,
                200: {"content": {tf.MEDIA_TYPES[f].split(";")[0]: {}
                                  for f in (tf.Format.TXT, tf.Format.SRT, tf.Format.VTT)},
                      "description": "JSON, or the requested text format."},
            })
async def transcript(
    session_id: str,
    request: Request,
    state: Annotated[ApiState, Depends(api_state)],
    principal: Reader,
    format: Annotated[tf.Format, Query(description="json, txt, srt or vtt")] = tf.Format.JSON,
) -> Any:
    """The final segments so far, in stream order, in the requested format (entries that
    cannot be read are left out and counted in `skipped`, or the X-Voxq-Skipped header)."""
    sid = validate_session_id(session_id)
    await check_session(state, request, principal, sid)
    r = redis_of(state)
    meta = await get_meta(r, state.keys, sid)
    finals = await read_finals_skipping(r, state.keys, sid)
    segments = [t for _, t in finals.segments]
    if format is tf.Format.JSON:
        return TranscriptOut.model_validate({
            "session_id": sid, "status": meta.status, "skipped": finals.skipped,
            "segments": [tf.segment_dict(t, i) for i, t in enumerate(segments)],
        })
    return Response(tf.render_text(format, segments, meta.channels),
                    media_type=tf.MEDIA_TYPES[format],
                    headers={"X-Voxq-Skipped": str(finals.skipped)})


@router.get("/sessions/{session_id:path}", response_model=SessionOut, responses=NOT_FOUND,
            summary="One session")
async def session(session_id: str, request: Request,
                  state: Annotated[ApiState, Depends(api_state)],
                  principal: Reader) -> SessionOut:
    """The session's public fields."""
    sid = validate_session_id(session_id)
    await check_session(state, request, principal, sid)
    return SessionOut.from_meta(await get_meta(redis_of(state), state.keys, sid))
