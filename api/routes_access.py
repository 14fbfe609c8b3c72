"""/v1/keys (admins manage API keys), /v1/tokens (short-lived browser tokens), /v1/whoami and
/v1/audit (admins read the audit log)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from api.auth import ANY, Require
from api.json_body import JsonLimits, read_model
from api.models import ErrorOut
from api.state import ApiState, api_state, redis_of
from voxq import audit, tokens
from voxq.access import (
    NAME_MAX,
    KeyStore,
    Kind,
    Principal,
    Scope,
    parse_scopes,
    scope_names,
    validate_tenant,
)
from voxq.errors import InvalidInput, MalformedRecord

router = APIRouter()
State = Annotated[ApiState, Depends(api_state)]
Admin = Annotated[Principal, Depends(Require(Scope.ADMIN))]
Anyone = Annotated[Principal, Depends(Require(ANY))]
LIMITS = JsonLimits(max_bytes=128 * 1024, max_values=256, max_depth=3)
ScopeName = Field(pattern="^(sessions:read|sessions:write|tts:read|tts:write|webhooks:manage"
                          "|metrics:read|admin)$")


class KeyIn(BaseModel):
    """A new API key."""

    model_config = ConfigDict(extra="forbid")

    tenant: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$", description="The key's tenant.")
    scopes: list[Annotated[str, ScopeName]] = Field(min_length=1, max_length=7)
    name: str = Field(default="", max_length=NAME_MAX)
    expires_in_seconds: float | None = Field(default=None, ge=60, le=10 * 365 * 86400,
                                           description="Lifetime; null: no expiry.")


class KeyOut(BaseModel):
    """A key as listings show it (never its secret or hash)."""

    id: str
    tenant: str
    name: str | None
    scopes: list[str]
    created: float
    expires: float | None
    last_used: float | None


class KeyCreated(KeyOut):
    """A new key, with its secret: shown once, never stored."""

    secret: str


class TokenIn(BaseModel):
    """What a browser token may do; it can only narrow what the presented credential holds."""

    model_config = ConfigDict(extra="forbid")

    ttl_seconds: float = Field(default=tokens.MAX_TTL_SECONDS, ge=1,
                               le=tokens.MAX_TTL_SECONDS)
    scopes: list[Annotated[str, ScopeName]] | None = Field(default=None, min_length=1,
                                                           max_length=7)
    sessions: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,128}$")]] | None = Field(
        default=None, max_length=tokens.MAX_SESSIONS)


class TokenOut(BaseModel):
    """A signed token (send it as `Authorization: Bearer` or `?token=`)."""

    token: str
    expires_at: float
    tenant: str
    scopes: list[str]
    sessions: list[str] | None


class WhoAmI(BaseModel):
    """Who the presented credential is."""

    auth: bool
    tenant: str | None
    scopes: list[str]
    name: str | None
    expires_at: float | None


KEYS_OFF = ("authentication is off: create the first key with `voxq keys create` or set "
            "VOXQ_API_KEY (the API never turns authentication on for an anonymous caller)")
_REFUSED: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "No such key."},
    409: {"model": ErrorOut, "description": "Tokens are off (no VOXQ_TOKEN_SECRET or "
                                            "VOXQ_API_KEY)."}}


@router.get("/keys", response_model=list[KeyOut], summary="API keys (admin)")
async def list_keys(state: State, principal: Admin,
                    tenant: Annotated[str | None, Query(
                        pattern=r"^[A-Za-z0-9._-]{1,64}$")] = None) -> list[KeyOut]:
    """Every key, or one tenant's, oldest first: never a secret."""
    recs = await KeyStore(redis_of(state), state.keys).all(tenant)
    return [KeyOut(**r.public()) for r in recs]


@router.post("/keys", response_model=KeyCreated, status_code=201, summary="Create an API key "
             "(admin)", responses={409: {"model": ErrorOut, "description": KEYS_OFF}},
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": KeyIn.model_json_schema()}}}})
async def create_key(request: Request, state: State, principal: Admin) -> KeyCreated:
    """The new key with its secret, shown only in this answer."""
    body = await read_model(request, KeyIn, LIMITS)
    if not principal.auth:
        raise HTTPException(409, KEYS_OFF)
    expires = time.time() + body.expires_in_seconds if body.expires_in_seconds else None
    try:
        rec, secret = await KeyStore(redis_of(state), state.keys).create(
            validate_tenant(body.tenant), parse_scopes(body.scopes), body.name, expires)
    except InvalidInput as e:
        raise HTTPException(422, str(e)) from None
    await audit.key_admin(redis_of(state), state.keys, "created", key_id=rec.key_id,
                          tenant=rec.tenant, by=principal.key_id)
    return KeyCreated(**rec.public(), secret=secret)


@router.delete("/keys/{key_id}", status_code=204, summary="Revoke an API key (admin)",
               responses={404: _REFUSED[404]})
async def revoke_key(key_id: str, state: State, principal: Admin) -> Response:
    """The key and every token made from it stop working at once."""
    store = KeyStore(redis_of(state), state.keys)
    try:
        rec = await store.get(key_id) if len(key_id) == 12 else None
        unreadable = False
    except MalformedRecord:  # a record nobody can read can still be revoked
        rec, unreadable = None, True
    if (rec is None and not unreadable) or not await store.revoke(key_id):
        raise HTTPException(404, f"no API key {key_id[:40]!r}")
    await audit.key_admin(redis_of(state), state.keys, "revoked", key_id=key_id,
                          tenant=rec.tenant if rec is not None else "", by=principal.key_id)
    return Response(status_code=204)


@router.post("/tokens", response_model=TokenOut, status_code=201,
             summary="A short-lived browser token from a key or token", responses=_REFUSED,
             openapi_extra={"requestBody": {"required": False, "content": {
                 "application/json": {"schema": TokenIn.model_json_schema()}}}})
async def mint_token(request: Request, state: State, principal: Anyone) -> TokenOut:
    """At most 15 minutes, with the presented credential's scopes and sessions or fewer;
    presenting a token renews it (up to 15 minutes from now, while its key lives)."""
    empty = request.headers.get("content-length") in (None, "0") \
        and "transfer-encoding" not in request.headers
    body = TokenIn() if empty else await read_model(request, TokenIn, LIMITS)
    secret = tokens.token_secret(state.settings)
    if secret is None:
        raise HTTPException(409, "tokens are off: set VOXQ_TOKEN_SECRET (or VOXQ_API_KEY)")
    if not principal.auth:
        raise HTTPException(409, "authentication is off: no key, no token needed")
    held = principal.scopes
    if Scope.ADMIN in held:
        held = frozenset(Scope)
    scopes = parse_scopes(body.scopes) if body.scopes is not None else principal.scopes
    missing = scopes - held
    if missing:
        raise HTTPException(403, f"the token cannot have scopes the credential lacks: "
                                 f"{', '.join(scope_names(missing))}")
    sessions = tokens.check_sessions(body.sessions)
    if principal.sessions is not None:
        if sessions is None:
            sessions = principal.sessions
        elif not sessions <= principal.sessions:
            raise HTTPException(403, "the token cannot name sessions the credential is not "
                                     "limited to")
    expires_at = round(time.time() + body.ttl_seconds, 3)
    if principal.kind is Kind.KEY and principal.expires_at is not None:
        expires_at = min(expires_at, principal.expires_at)
    claims = tokens.TokenClaims(principal.key_id, principal.tenant, frozenset(scopes), sessions,
                                expires_at, principal.name)
    return TokenOut(token=tokens.sign(claims, secret), **claims.to_json())  # type: ignore[arg-type]


@router.get("/whoami", response_model=WhoAmI, summary="Who the presented key or token is")
async def whoami(principal: Anyone) -> WhoAmI:
    """Tenant, scopes, name and expiry of the credential; `auth: false` when authentication
    is off."""
    if not principal.auth:
        return WhoAmI(auth=False, tenant=None, scopes=[], name=None, expires_at=None)
    return WhoAmI(auth=True, tenant=principal.tenant, scopes=scope_names(principal.scopes),
                  name=principal.name or None, expires_at=principal.expires_at)


@router.get("/audit", summary="The audit log, newest first (admin)")
async def read_audit(state: State, principal: Admin,
                     limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                     before: Annotated[str | None, Query(
                         pattern=r"^[0-9]{1,20}-[0-9]{1,20}$",
                         description="Entries older than this id (paging).")] = None,
                     ) -> dict[str, Any]:
    """Refused requests (reason, route, key id, tenant, peer) and key administration."""
    return {"entries": await audit.read(redis_of(state), state.keys, limit, before)}
