"""/v1/webhooks (subscriptions to every session's end events, and optionally each final) and
/v1/sessions/{id}/webhooks (each delivery attempt of a session: status code, time, outcome)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from api.auth import Require, check_session, hide_other_tenant
from api.json_body import JsonLimits, read_model
from api.models import ErrorOut
from api.state import ApiState, api_state, redis_of
from api.webhooks import (
    SESSION_EVENTS,
    WebhookKeys,
    env_targets,
    parse_events,
    shown_url,
    subscription_secret,
)
from voxq.access import Principal, Scope, tenant_of
from voxq.errors import InvalidInput
from voxq.keys import validate_session_id
from voxq.records import WEBHOOK_URL_RE

router = APIRouter()
Manager = Annotated[Principal, Depends(Require(Scope.WEBHOOKS_MANAGE))]

OFF = "webhooks are off: set VOXQ_WEBHOOK_SECRET"


Event = Literal["session.finished", "session.failed", "session.abandoned", "transcript.final"]


class WebhookIn(BaseModel):
    """A new subscription."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2000, pattern=WEBHOOK_URL_RE.pattern,
                     description="http(s) URL that receives POSTs")
    include_transcript: bool = Field(
        default=False, description="Put the final transcript's segments into each end event.")
    events: list[Event] = Field(
        default=["session.abandoned", "session.failed", "session.finished"], min_length=1,
        max_length=4,
        description="Events to receive: the session's end (session.finished, session.failed, "
                    "session.abandoned) and each final segment as it is recognised "
                    "(transcript.final).")


class WebhookOut(BaseModel):
    """A subscription (its secret only in the answer that created it)."""

    id: str
    url: str
    include_transcript: bool = False
    events: list[str] = Field(default_factory=lambda: sorted(SESSION_EVENTS))
    secret: str | None = Field(default=None, description="whsec_… to verify signatures "
                                                         "(shown once)")


class AttemptOut(BaseModel):
    """One delivery attempt."""

    id: str = Field(description="The message's webhook-id (the same for every attempt).")
    event: str
    url: str
    attempt: int
    status_code: int | None
    error: str
    time: float
    outcome: str = Field(description="delivered, retrying, gave_up or unsubscribed")


class AttemptsOut(BaseModel):
    """A session's webhook delivery attempts, oldest first."""

    session_id: str
    attempts: list[AttemptOut]


def _master(state: ApiState) -> str:
    secret = state.settings.webhook_secret
    if secret is None:
        raise HTTPException(409, OFF)
    return secret.get_secret_value()


SUBSCRIPTION_LIMITS = JsonLimits(max_bytes=128 * 1024, max_values=16, max_depth=2)


@router.post("/webhooks", response_model=WebhookOut, status_code=201,
             summary="Subscribe a URL to every session's end events (and finals)",
             responses={409: {"model": ErrorOut, "description": OFF},
                        413: {"model": ErrorOut, "description": "Body too large."},
                        422: {"model": ErrorOut, "description": "Not a valid subscription."}},
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": WebhookIn.model_json_schema()}}}})
async def subscribe(request: Request,
                    state: Annotated[ApiState, Depends(api_state)],
                    principal: Manager) -> WebhookOut:
    """Events session.finished, session.failed and session.abandoned (the default) and
    transcript.final, signed with the secret in this answer (Standard Webhooks); a 410 answer
    from the receiver unsubscribes it."""
    body = await read_model(request, WebhookIn, SUBSCRIPTION_LIMITS)
    master = _master(state)
    sub_id = uuid.uuid4().hex
    events: list[str] = sorted(set(body.events))
    record = {"url": body.url, "include_transcript": body.include_transcript,
              "events": events, "created": time.time(), "tenant": principal.write_tenant}
    await redis_of(state).hset(WebhookKeys(state.keys.prefix).subs, sub_id,
                               json.dumps(record, separators=(",", ":")))
    return WebhookOut(id=sub_id, url=body.url, include_transcript=body.include_transcript,
                      events=events, secret=subscription_secret(master, sub_id))


@router.get("/webhooks", response_model=list[WebhookOut], summary="Webhook subscriptions")
async def subscriptions(state: Annotated[ApiState, Depends(api_state)],
                        principal: Manager) -> list[WebhookOut]:
    """VOXQ_WEBHOOK_URLS (ids `env:…`, shown to admins) and the API's subscriptions of the
    key's tenant; URLs without query."""
    env_events = sorted(parse_events(state.settings.webhook_events))
    out = [WebhookOut(id=t, url=shown_url(u),
                      include_transcript=state.settings.webhook_include_transcript,
                      events=env_events)
           for t, u in env_targets(state.settings)] if principal.all_tenants else []
    subs: Any = await redis_of(state).hgetall(WebhookKeys(state.keys.prefix).subs)
    for sub_id, raw in sorted((subs or {}).items()):
        try:
            d = json.loads(raw)
            if not principal.sees(tenant_of(d.get("tenant"))):
                continue
            events = sorted(parse_events(d["events"])) if "events" in d else sorted(
                SESSION_EVENTS)
            out.append(WebhookOut(id=sub_id.decode(), url=shown_url(str(d["url"])),
                                  include_transcript=bool(d.get("include_transcript")),
                                  events=events))
        except (ValueError, KeyError, TypeError, InvalidInput):
            continue
    return out


@router.delete("/webhooks/{sub_id}", status_code=204, summary="Unsubscribe",
               responses={404: {"model": ErrorOut, "description": "No such subscription."}})
async def unsubscribe(sub_id: str, request: Request,
                      state: Annotated[ApiState, Depends(api_state)],
                      principal: Manager) -> Response:
    """Remove an API subscription of the key's tenant (pending deliveries to it are dropped)."""
    subs = WebhookKeys(state.keys.prefix).subs
    raw: Any = await redis_of(state).hget(subs, sub_id[:64])
    if raw is not None and not principal.all_tenants:
        try:
            owner = tenant_of(json.loads(raw).get("tenant"))
        except (ValueError, AttributeError):
            owner = ""
        if owner != principal.tenant:
            raise await hide_other_tenant(state, request, principal,
                                          f"no webhook subscription {sub_id[:64]!r}")
    if not await redis_of(state).hdel(subs, sub_id[:64]):
        raise HTTPException(404, f"no webhook subscription {sub_id[:64]!r}")
    return Response(status_code=204)


@router.get("/sessions/{session_id:path}/webhooks", response_model=AttemptsOut,
            summary="A session's webhook delivery attempts",
            responses={422: {"model": ErrorOut, "description": "Malformed session id."}})
async def session_attempts(session_id: str, request: Request,
                           state: Annotated[ApiState, Depends(api_state)],
                           principal: Annotated[Principal, Depends(
                               Require(Scope.SESSIONS_READ))]) -> AttemptsOut:
    """Each attempt's status code (null: no answer), time and outcome, oldest first."""
    sid = validate_session_id(session_id)
    try:
        await check_session(state, request, principal, sid)
    except HTTPException:  # another tenant's: answered like a session without attempts
        return AttemptsOut(session_id=sid, attempts=[])
    raw: Any = await redis_of(state).lrange(WebhookKeys(state.keys.prefix).attempts(sid), 0, -1)
    attempts = []
    for item in raw or []:
        try:
            attempts.append(AttemptOut.model_validate_json(item))
        except ValueError:
            continue
    return AttemptsOut(session_id=sid, attempts=attempts)
