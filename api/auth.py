"""Who a request is, and whether it may do what it asks.

Every route declares what it needs with a dependency: ``Require(Scope.X)`` (a scope),
``Require(ANY)`` (any valid key or token) or ``public`` (no credential: health probes). A route
under /v1 that declares none is refused while authentication is on (fail closed), and the
OpenAPI document states each route's requirement as ``x-required-scope``.

Credentials: ``Authorization: Bearer <key or token>`` on every route; ``?token=`` (a browser
token only, never a key) on the routes that browsers open directly (SSE, WebSocket, audio).
Refusals are audited (voxq.audit): 401 without a valid credential, 403 with the missing scope,
404 for another tenant's object (no enumeration), 429 with Retry-After over the key's rate.
"""

from __future__ import annotations

import hmac
import logging
import math
import time
from collections.abc import Mapping
from typing import Any

from fastapi import HTTPException, Request
from fastapi.routing import APIRoute
from starlette.requests import HTTPConnection
from starlette.routing import BaseRoute

from api.state import ApiState, redis_of
from voxq import audit, ratelimit, tokens
from voxq.access import (
    OFF,
    AccessDenied,
    Denial,
    KeyStore,
    Kind,
    Principal,
    Scope,
    bootstrap_id,
    tenant_of,
)
from voxq.errors import MalformedRecord

log = logging.getLogger("voxq.api.auth")

ANY = "any"  # Require(ANY): any valid credential, no particular scope
PUBLIC = "public"
TOUCH_EVERY_SECONDS = 60.0
CHALLENGE = {"WWW-Authenticate": "Bearer"}
WRONG_KEY = "missing or wrong API key"


def key_matches(expected: str, given: str) -> bool:
    """Constant-time equality of the configured key and the presented one."""
    return hmac.compare_digest(expected.encode(), given.encode())


def bootstrap_key(state: ApiState) -> str:
    """VOXQ_API_KEY, or "" when unset."""
    secret = state.settings.api_key
    return secret.get_secret_value() if secret is not None else ""


async def auth_on(state: ApiState) -> bool:
    """Whether authentication is on: VOXQ_API_KEY is set or any key exists."""
    return bool(bootstrap_key(state)) or await KeyStore(redis_of(state), state.keys).any()


def bearer_of(headers: Mapping[str, str]) -> str | None:
    """The credential of ``Authorization: Bearer X`` (None without one)."""
    scheme, _, value = (headers.get("authorization") or "").partition(" ")
    value = value.strip()
    return value if scheme.lower() == "bearer" and value else None


async def identify(state: ApiState, credential: str | None) -> Principal:
    """The principal a credential stands for (rate limit not yet taken); AccessDenied if it is
    missing while auth is on, unknown, expired, or a token whose key is gone."""
    api_key = bootstrap_key(state)
    store = KeyStore(redis_of(state), state.keys)
    if credential is None:
        if api_key or await store.any():
            raise AccessDenied(Denial.NO_KEY, WRONG_KEY, 401)
        return OFF
    try:
        return await _from_credential(state, store, credential, api_key)
    except AccessDenied:
        if not api_key and not await store.any():
            return OFF  # authentication is off: a credential, if any, is not looked at
        raise


async def _from_credential(state: ApiState, store: KeyStore, credential: str,
                           api_key: str) -> Principal:
    """The principal of a presented key or token (a valid one means auth is on)."""
    if tokens.is_token(credential):
        return await _from_token(state, store, credential, api_key)
    if api_key and key_matches(api_key, credential):
        return Principal(Kind.BOOTSTRAP, scopes=frozenset({Scope.ADMIN}),
                         key_id=bootstrap_id(api_key), name="VOXQ_API_KEY")
    rec = await store.verify(credential)
    if rec is None:
        raise AccessDenied(Denial.BAD_KEY, WRONG_KEY, 401)
    now = time.time()
    if rec.expired(now):
        raise AccessDenied(Denial.EXPIRED, "the API key has expired", 401)
    if rec.last_used is None or now - rec.last_used > TOUCH_EVERY_SECONDS:
        await store.touch(rec.key_id, now)
    return Principal(Kind.KEY, tenant=rec.tenant, scopes=rec.scopes, key_id=rec.key_id,
                     name=rec.name, expires_at=rec.expires)


async def _from_token(state: ApiState, store: KeyStore, token: str, api_key: str) -> Principal:
    secret = tokens.token_secret(state.settings)
    claims = tokens.verify(token, secret) if secret is not None else None
    if claims is None:
        raise AccessDenied(Denial.BAD_KEY, "the token is not valid or has expired", 401)
    if claims.key_id.startswith("boot-"):
        alive = bool(api_key) and claims.key_id == bootstrap_id(api_key)
        held = frozenset({Scope.ADMIN})
    else:
        try:
            rec = await store.get(claims.key_id)
        except MalformedRecord as e:  # nobody can vouch for its scopes: the token is refused
            log.warning("token of key %s refused: %s", claims.key_id, e)
            rec = None
        alive = rec is not None and not rec.expired()
        held = rec.scopes if rec is not None else frozenset()
    if not alive:
        raise AccessDenied(Denial.EXPIRED, "the key this token was made from is revoked or "
                                           "expired", 401)
    scopes = claims.scopes if Scope.ADMIN in held else claims.scopes & held
    return Principal(Kind.TOKEN, tenant=claims.tenant, scopes=scopes, key_id=claims.key_id,
                     name=claims.name, expires_at=claims.expires_at, sessions=claims.sessions)


async def admit(state: ApiState, p: Principal) -> None:
    """Take one request from the principal's bucket; AccessDenied 429 when it is empty."""
    if not p.auth:
        return
    limit = ratelimit.limit_for(p.scopes, state.settings)
    if limit is None:
        return
    wait = await ratelimit.take(redis_of(state), state.keys, p.key_id, limit)
    if wait is not None:
        raise AccessDenied(Denial.RATE, f"rate limit of {limit.rate:g} requests/s for this key "
                                        "exceeded; retry later", 429, retry_after=wait)


def check_scope(p: Principal, need: str) -> None:
    """AccessDenied 403 naming the scope ``p`` lacks."""
    if need in (ANY, PUBLIC):
        return
    scope = Scope(need)
    if not p.allows(scope):
        raise AccessDenied(Denial.SCOPE, f"this key lacks the scope {scope.value}", 403)


def http_error(e: AccessDenied) -> HTTPException:
    """The HTTP answer of a refusal."""
    headers: dict[str, str] = {}
    if e.status == 401:
        headers.update(CHALLENGE)
    if e.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(e.retry_after)))
    return HTTPException(e.status, str(e), headers=headers or None)


def _peer(request: HTTPConnection) -> str:
    client = getattr(request, "client", None)
    return client.host if client is not None else ""


async def refuse(state: ApiState, request: HTTPConnection, e: AccessDenied,
                 p: Principal | None = None) -> HTTPException:
    """Audit a refusal and return its HTTP answer (to raise)."""
    await audit.denied(redis_of(state), state.keys, e.reason.value,
                       route=f"{request.scope.get('method', 'WS')} {request.url.path}",
                       key_id=p.key_id if p else "", tenant=p.tenant if p and p.auth else "",
                       peer=_peer(request), detail=str(e))
    return http_error(e)


async def authorize(state: ApiState, request: HTTPConnection, need: str, *,
                    query_token: bool = False) -> Principal:
    """The request's principal if it holds ``need``; HTTPException (audited) otherwise."""
    credential = bearer_of(request.headers)
    if credential is None and query_token:
        given = request.query_params.get("token")
        if given and tokens.is_token(given):
            credential = given
        elif given:
            e = AccessDenied(Denial.BAD_KEY, "?token= takes a browser token "
                                             "(POST /v1/tokens), never a key", 401)
            raise await refuse(state, request, e)
    p: Principal | None = None
    try:
        p = await identify(state, credential)
        check_scope(p, need)
        if p.sessions is not None and need not in (ANY, PUBLIC) \
                and "session_id" not in request.path_params:
            raise AccessDenied(Denial.SCOPE, "this token is limited to its sessions", 403)
        await admit(state, p)
    except AccessDenied as e:
        raise await refuse(state, request, e, p) from None
    request.state.principal = p
    return p


class Require:
    """Dependency: the request's principal, refused unless it holds ``scope`` (``ANY``: any
    valid credential). ``query_token``: also accept ``?token=`` (browser routes)."""

    def __init__(self, scope: Scope | str, *, query_token: bool = False) -> None:
        self.scope = scope.value if isinstance(scope, Scope) else scope
        self.query_token = query_token

    async def __call__(self, request: Request) -> Principal:
        return await authorize(request.app.state.api, request, self.scope,
                               query_token=self.query_token)


async def public() -> None:
    """Dependency marking a route as needing no credential (health probes)."""


def required_scope(route: BaseRoute) -> str | None:
    """What a route declares: a scope, ``any``, ``public``, or None (nothing: refused while
    authentication is on)."""
    declared = getattr(route, "voxq_scope", None)
    if isinstance(declared, str):
        return declared
    if not isinstance(route, APIRoute):
        return None
    stack = list(route.dependant.dependencies)
    while stack:
        dep = stack.pop()
        if isinstance(dep.call, Require):
            return dep.call.scope
        if dep.call is public:
            return PUBLIC
        stack.extend(dep.dependencies)
    return None


async def declared(request: Request) -> None:
    """Router dependency: refuse (while auth is on) a route that declares no scope."""
    route = request.scope.get("route")
    if route is not None and required_scope(route) is not None:
        return
    state: ApiState = request.app.state.api
    if await auth_on(state):
        e = AccessDenied(Denial.NO_SCOPE_DECLARED, "this route declares no scope; refused", 403)
        raise await refuse(state, request, e)


async def hide_other_tenant(state: ApiState, request: HTTPConnection, p: Principal,
                            what: str) -> HTTPException:
    """Audit a request for another tenant's object; its answer is the unknown object's 404."""
    e = AccessDenied(Denial.TENANT, what, 404)
    await audit.denied(redis_of(state), state.keys, Denial.TENANT.value,
                       route=f"{request.scope.get('method', 'WS')} {request.url.path}",
                       key_id=p.key_id, tenant=p.tenant, peer=_peer(request))
    return http_error(e)


async def check_session(state: ApiState, request: HTTPConnection, p: Principal,
                        sid: str) -> None:
    """404 (audited) if the session exists and ``p`` may not see it (another tenant, or not
    among a token's sessions); nothing if it is visible or does not exist (yet)."""
    if p.all_tenants and p.sessions is None:
        return
    raw: Any = await redis_of(state).hmget(state.keys.meta(sid), ["id", "tenant"])
    exists, tenant = raw[0] is not None, tenant_of(raw[1])
    if p.sessions is not None and sid not in p.sessions:
        raise await hide_other_tenant(state, request, p, f"no session {sid!r}")
    if exists and not p.sees(tenant):
        raise await hide_other_tenant(state, request, p, f"no session {sid!r}")
