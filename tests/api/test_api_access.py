"""Access control end to end on a real Redis: every route of the OpenAPI document refuses a
missing key, a wrong key, a key lacking its scope and (for one object) another tenant's key;
keys are stored only as hashes; tokens expire, renew and narrow; audit entries and metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from apitest_support import FAST, add_final, add_session, asgi_client
from fastapi import Depends
from prometheus_client import REGISTRY
from pydantic import SecretStr

from api.app import create_app
from api.auth import Require, required_scope
from api.openapi import every_route
from api.webhooks import WebhookKeys
from tests.emulators.tts_audio import mp3_tone
from voxq import audit
from voxq.access import KeyStore, Scope
from voxq.keys import Keys
from voxq.records import Status
from voxq.settings import Settings
from workers.tts import jobs

BOOT = "bootstrap-admin-key-for-tests"
NON_ADMIN = frozenset(Scope) - {Scope.ADMIN}
# The firehose never ends by design (an in-process client would wait for its end); it is
# refused like every route here, and followed per tenant in test_api_access_live.py.
FIREHOSE = "/v1/events"


@dataclass
class World:
    """Two tenants' objects and keys on one deployment."""

    client: httpx.AsyncClient
    r: aioredis.Redis
    keys: Keys
    secrets: dict[str, str]  # label -> key secret
    objects: dict[str, str]  # path parameter -> an object of tenant b

    def auth(self, label: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secrets[label]}"}


async def _tts_job(r: aioredis.Redis, keys: Keys, settings: Settings, tenant: str,
                   batch: bool = False) -> str:
    plan = jobs.plan(jobs.TtsRequest(text="hello there"), settings)
    job_id = jobs.new_job_id()
    batch_id = jobs.new_batch_id() if batch else None
    await jobs.create_records(r, keys, [(job_id, plan)], 86400, batch_id=batch_id, tenant=tenant)
    await jobs.finish_from_cache(r, keys, job_id, mp3_tone(0.5, 16000), 86400)
    return batch_id or job_id


@pytest.fixture
def access_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"api_key": SecretStr(BOOT),
                                       "token_secret": SecretStr("token-secret-for-tests"),
                                       "rate_limit_per_second": 0.0})


@pytest.fixture
async def world(access_settings: Settings, r: aioredis.Redis,
                keys: Keys) -> AsyncIterator[World]:
    store = KeyStore(r, keys)
    secrets: dict[str, str] = {}
    for label, tenant, scopes in [("a_all", "a", NON_ADMIN), ("b_all", "b", NON_ADMIN)]:
        _, secrets[label] = await store.create(tenant, scopes, name=label)
    for scope in Scope:
        _, secrets[f"b_{scope.value}"] = await store.create("b", {scope}, name=scope.value)
    await add_session(r, keys, "b-call", status=Status.FINISHED, tenant="b")
    await add_final(r, keys, "b-call", 0, "tenant b words", 0.0, 1.0)
    await add_session(r, keys, "a-call", status=Status.FINISHED, tenant="a")
    await add_final(r, keys, "a-call", 0, "tenant a words", 0.0, 1.0)
    await r.hset(WebhookKeys(keys.prefix).subs, "b-sub", json.dumps(
        {"url": "https://b.example/hook", "events": ["session.finished"], "tenant": "b"}))
    objects = {"session_id": "b-call", "job_id": await _tts_job(r, keys, access_settings, "b"),
               "batch_id": await _tts_job(r, keys, access_settings, "b", batch=True),
               "sub_id": "b-sub", "key_id": "000000000000"}
    app = create_app(access_settings, access_settings.redis_url or "", options=FAST)
    async with asgi_client(app) as c:
        yield World(c, r, keys, {**secrets, "boot": BOOT}, objects)


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(path, method, op["x-required-scope"]) for path, ops in doc["paths"].items()
            for method, op in ops.items()]


def _url(path: str, objects: dict[str, str]) -> str:
    for name, value in objects.items():
        path = path.replace("{" + name + "}", value)
    assert "{" not in path, path
    return path


async def _call(c: httpx.AsyncClient, method: str, url: str,
                headers: dict[str, str]) -> httpx.Response:
    body = {} if method in ("post", "put", "patch") else None
    return await c.request(method.upper(), url, headers=headers, json=body,
                           params={"wait": 0} if url.endswith("/events") else None)


async def test_every_documented_route_enforces_its_scope_and_tenant(world: World) -> None:
    """Generated from the served OpenAPI document: a route added later is covered too."""
    doc = (await world.client.get("/openapi.json")).json()
    ops = _operations(doc)
    assert len(ops) >= 25
    guarded = [(p, m, s) for p, m, s in ops if s != "public"]
    assert {s for _, _, s in ops} <= {*(x.value for x in Scope), "any", "public"}, ops
    assert {p for p, _, s in ops if s == "public"} == {"/healthz", "/readyz"}
    for path, method, scope in guarded:
        url = _url(path, world.objects)
        # no key, a wrong key, a key-shaped wrong secret: 401
        for headers in ({}, {"Authorization": "Bearer nope"},
                        {"Authorization": "Bearer vxk_000000000000_" + "x" * 43}):
            resp = await _call(world.client, method, url, headers)
            assert resp.status_code == 401, (method, path, headers, resp.text)
            assert resp.headers["www-authenticate"] == "Bearer"
        if scope != "any":
            # a key of the object's own tenant without the scope: 403 naming it
            other = "sessions:read" if scope == "metrics:read" else "metrics:read"
            resp = await _call(world.client, method, url, world.auth(f"b_{other}"))
            assert resp.status_code == 403, (method, path, resp.text)
            assert method == "head" or scope in resp.json()["detail"]
            if path != FIREHOSE:
                # with exactly that scope it passes the check (whatever the route answers next)
                resp = await _call(world.client, method, url, world.auth(f"b_{scope}"))
                assert resp.status_code not in (401, 403), (method, path, resp.text)
        if any("{" + n + "}" in path for n in ("session_id", "job_id", "batch_id", "sub_id")):
            # another tenant's key holding every scope but admin: the object does not exist
            resp = await _call(world.client, method, url, world.auth("a_all"))
            if path.endswith("/webhooks") and method == "get":
                assert resp.json()["attempts"] == [], resp.text
            else:
                assert resp.status_code == 404, (method, path, resp.text)
            if method != "delete":  # (the owner's delete ran above, with the exact scope)
                resp = await _call(world.client, method, url, world.auth("b_all"))
                assert resp.status_code not in (401, 403, 404), (method, path, resp.text)


async def test_every_route_of_the_app_declares_what_it_requires(world: World) -> None:
    """The WebSocket route too, which the OpenAPI document does not list."""
    app = world.client._transport.app  # type: ignore[attr-defined]
    for path, methods, route in every_route(app):
        assert required_scope(route) is not None, (path, methods)


async def test_a_route_without_a_declared_scope_is_refused(access_settings: Settings) -> None:
    app = create_app(access_settings, access_settings.redis_url or "", options=FAST)
    from api.auth import declared

    @app.get("/v1/forgotten", dependencies=[Depends(declared)])
    async def forgotten() -> dict[str, str]:
        return {"leak": "everything"}

    @app.get("/v1/remembered", dependencies=[Depends(declared),
                                             Depends(Require(Scope.SESSIONS_READ))])
    async def remembered() -> dict[str, str]:
        return {"ok": "yes"}

    async with asgi_client(app) as c:
        admin = {"Authorization": f"Bearer {BOOT}"}
        resp = await c.get("/v1/forgotten", headers=admin)
        assert resp.status_code == 403 and "declares no scope" in resp.json()["detail"]
        assert (await c.get("/v1/remembered", headers=admin)).status_code == 200


async def test_two_tenants_cannot_see_or_count_each_other(world: World) -> None:
    a, b = world.auth("a_all"), world.auth("b_all")
    pa = (await world.client.get("/v1/sessions", headers=a)).json()
    pb = (await world.client.get("/v1/sessions", headers=b)).json()
    assert [s["session_id"] for s in pa["items"]] == ["a-call"] and pa["total"] == 1
    assert [s["session_id"] for s in pb["items"]] == ["b-call"] and pb["total"] == 1
    both = (await world.client.get("/v1/sessions", headers=world.auth("boot"))).json()
    assert {s["session_id"] for s in both["items"]} == {"a-call", "b-call"}
    for path in ("/v1/sessions/b-call", "/v1/sessions/b-call/transcript",
                 "/v1/sessions/b-call/events"):
        miss = await world.client.get(path, headers=a)
        unknown = await world.client.get(path.replace("b-call", "no-such-call"), headers=a)
        assert miss.status_code == unknown.status_code == 404
        assert miss.json()["detail"] == unknown.json()["detail"].replace("no-such-call",
                                                                           "b-call")
    text = (await world.client.get("/v1/sessions/a-call/transcript", headers=a)).json()
    assert text["segments"][0]["text"] == "tenant a words"
    job = world.objects["job_id"]
    assert (await world.client.get(f"/v1/tts/{job}/audio", headers=a)).status_code == 404
    assert (await world.client.get(f"/v1/tts/{job}/audio", headers=b)).status_code == 200
    hooks_a = (await world.client.get("/v1/webhooks", headers=a)).json()
    hooks_b = (await world.client.get("/v1/webhooks", headers=b)).json()
    assert hooks_a == [] and [h["id"] for h in hooks_b] == ["b-sub"]


async def test_tts_jobs_carry_the_creating_keys_tenant(world: World) -> None:
    resp = await world.client.post("/v1/tts", json={"text": "for tenant a"},
                                   headers=world.auth("a_all"))
    assert resp.status_code == 202, resp.text
    job = resp.json()["job_id"]
    assert await world.r.hget(world.keys.tts(job), "tenant") == b"a"
    assert (await world.client.get(f"/v1/tts/{job}", headers=world.auth("b_all"))
            ).status_code == 404
    assert (await world.client.get(f"/v1/tts/{job}", headers=world.auth("a_all"))
            ).status_code == 200


async def test_the_secret_is_never_in_redis_answers_or_logs(
        world: World, redis_server: object, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    admin = world.auth("boot")
    created = await world.client.post("/v1/keys", headers=admin, json={
        "tenant": "c", "scopes": ["sessions:read"], "name": "c-reader"})
    assert created.status_code == 201, created.text
    secret = created.json()["secret"]
    assert secret.startswith("vxk_") and len(secret) > 50
    use = {"Authorization": f"Bearer {secret}"}
    assert (await world.client.get("/v1/sessions", headers=use)).status_code == 200
    assert (await world.client.get("/v1/whoami", headers=use)).json()["tenant"] == "c"
    await world.client.get("/v1/sessions", headers={"Authorization": f"Bearer {secret}x"})
    listing = await world.client.get("/v1/keys", headers=admin)
    log_text = "\n".join(rec.getMessage() for rec in caplog.records)
    answers = listing.text + (await world.client.get("/v1/audit", headers=admin)).text
    # every key and value in the whole Redis
    everything: list[bytes] = []
    async for k in world.r.scan_iter(count=1000):
        everything.append(k)
        kind = (await world.r.type(k)).decode()
        if kind == "hash":
            everything += [x for kv in (await world.r.hgetall(k)).items() for x in kv]
        elif kind == "string":
            everything.append(await world.r.get(k) or b"")
        elif kind == "stream":
            for _, fields in await world.r.xrange(k):
                everything += [x for kv in fields.items() for x in kv]
        elif kind in ("set", "zset", "list"):
            everything += list(await world.r.smembers(k) if kind == "set" else
                               await world.r.zrange(k, 0, -1) if kind == "zset" else
                               await world.r.lrange(k, 0, -1))
    blob = b"\n".join(everything)
    tail = secret.split("_", 2)[2]  # the 43 random characters (which may hold "_" themselves)
    assert len(everything) > 20 and tail.encode() not in blob and BOOT.encode() not in blob
    assert tail not in log_text and tail not in answers and BOOT not in answers
    assert "c-reader" in listing.text  # the listing itself works


async def test_revoked_and_expired_keys_stop_working(world: World) -> None:
    store = KeyStore(world.r, world.keys)
    rec, secret = await store.create("a", {Scope.SESSIONS_READ})
    use = {"Authorization": f"Bearer {secret}"}
    assert (await world.client.get("/v1/sessions", headers=use)).status_code == 200
    gone = await world.client.delete(f"/v1/keys/{rec.key_id}", headers=world.auth("boot"))
    assert gone.status_code == 204
    assert (await world.client.get("/v1/sessions", headers=use)).status_code == 401
    rec2, secret2 = await store.create("a", {Scope.SESSIONS_READ}, expires=time.time() + 1.0)
    use2 = {"Authorization": f"Bearer {secret2}"}
    assert (await world.client.get("/v1/sessions", headers=use2)).status_code == 200
    await asyncio.sleep(1.2)
    resp = await world.client.get("/v1/sessions", headers=use2)
    assert resp.status_code == 401
    await store.revoke(rec2.key_id)  # (its record would vanish under a later test)


async def _token(c: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> httpx.Response:
    return await c.post("/v1/tokens", headers=headers, json=body)


async def test_tokens_narrow_renew_and_expire(world: World) -> None:
    c = world.client
    resp = await _token(c, world.auth("b_all"), ttl_seconds=60, scopes=["sessions:read"],
                        sessions=["b-call"])
    assert resp.status_code == 201, resp.text
    t = resp.json()
    assert set(t) == {"token", "expires_at", "tenant", "scopes", "sessions"}
    assert t["tenant"] == "b" and t["scopes"] == ["sessions:read"] and t["sessions"] == ["b-call"]
    assert time.time() + 55 < t["expires_at"] <= time.time() + 60.5
    bearer = {"Authorization": f"Bearer {t['token']}"}
    # accepted as a bearer and as ?token= on the browser routes
    assert (await c.get("/v1/sessions/b-call", headers=bearer)).status_code == 200
    ev = await c.get("/v1/sessions/b-call/events", params={"token": t["token"]})
    assert ev.status_code == 200 and "tenant b words" in ev.text
    # ?token= is not taken on other routes, and never a key
    assert (await c.get("/v1/sessions/b-call", params={"token": t["token"]})).status_code == 401
    assert (await c.get("/v1/sessions/b-call/events",
                        params={"token": world.secrets["b_all"]})).status_code == 401
    # narrowed: other sessions, lists, other scopes
    assert (await c.get("/v1/sessions/a-call", headers=bearer)).status_code == 404
    assert (await c.get("/v1/sessions", headers=bearer)).status_code == 403
    assert (await c.get(f"/v1/tts/{world.objects['job_id']}", headers=bearer)).status_code == 403
    who = (await c.get("/v1/whoami", headers=bearer)).json()
    assert who == {"auth": True, "tenant": "b", "scopes": ["sessions:read"], "name": "b_all",
                   "expires_at": t["expires_at"]}
    # renewal with the token itself: same or narrower, never wider
    again = await _token(c, bearer, ttl_seconds=900)
    assert again.status_code == 201 and again.json()["sessions"] == ["b-call"]
    assert again.json()["expires_at"] > t["expires_at"]
    assert (await _token(c, bearer, scopes=["tts:read"])).status_code == 403
    assert (await _token(c, bearer, sessions=["b-call", "other"])).status_code == 403
    assert (await _token(c, bearer, ttl_seconds=901)).status_code == 422
    # the key's tenant and scopes bound every token
    assert (await _token(c, world.auth("b_sessions:read"), scopes=["admin"])).status_code == 403
    # expiry
    short = (await _token(c, world.auth("b_all"), ttl_seconds=1)).json()["token"]
    assert (await c.get("/v1/whoami", headers={"Authorization": f"Bearer {short}"})
            ).status_code == 200
    await asyncio.sleep(1.3)
    assert (await c.get("/v1/whoami", headers={"Authorization": f"Bearer {short}"})
            ).status_code == 401
    # a forged token (payload changed, signature kept) is refused
    body, sig = t["token"][4:].split(".")
    forged = "vxt_" + body[:-2] + ("AA" if body[-2:] != "AA" else "BB") + "." + sig
    assert (await c.get("/v1/whoami", headers={"Authorization": f"Bearer {forged}"})
            ).status_code == 401


async def test_revoking_the_key_ends_its_tokens(world: World) -> None:
    store = KeyStore(world.r, world.keys)
    rec, secret = await store.create("b", {Scope.SESSIONS_READ})
    tok = (await _token(world.client, {"Authorization": f"Bearer {secret}"})).json()["token"]
    bearer = {"Authorization": f"Bearer {tok}"}
    assert (await world.client.get("/v1/sessions", headers=bearer)).status_code == 200
    await store.revoke(rec.key_id)
    assert (await world.client.get("/v1/sessions", headers=bearer)).status_code == 401
    assert (await _token(world.client, bearer)).status_code == 401



async def test_a_key_record_nobody_can_read_refuses_its_tokens_and_can_be_revoked(
        world: World) -> None:
    """A stored key record that cannot be decoded: its tokens get 401 (not a 4xx blaming the
    caller's input, not a 5xx), the listing skips it, and an admin can still revoke it."""
    store = KeyStore(world.r, world.keys)
    rec, secret = await store.create("b", {Scope.SESSIONS_READ})
    tok = (await _token(world.client, {"Authorization": f"Bearer {secret}"})).json()["token"]
    await world.r.hset(store.record_key(rec.key_id), "scopes", "not-a-scope")
    assert (await world.client.get("/v1/sessions", headers={"Authorization": f"Bearer {tok}"})
            ).status_code == 401
    assert (await world.client.get("/v1/sessions", headers={"Authorization": f"Bearer {secret}"})
            ).status_code == 401
    admin = world.auth("boot")
    listed = (await world.client.get("/v1/keys", headers=admin)).json()
    assert rec.key_id not in json.dumps(listed)
    gone = await world.client.delete(f"/v1/keys/{rec.key_id}", headers=admin)
    assert gone.status_code == 204, gone.text
    assert not await world.r.exists(store.record_key(rec.key_id))

def _denied(reason: str) -> float:
    return REGISTRY.get_sample_value("voxq_auth_denied_total", {"reason": reason}) or 0.0


async def test_denials_and_key_administration_are_audited(world: World) -> None:
    before = {r: _denied(r) for r in ("no_key", "bad_key", "scope", "tenant")}
    c = world.client
    await c.get("/v1/sessions")
    await c.get("/v1/sessions", headers={"Authorization": "Bearer wrong"})
    await c.get("/v1/sessions", headers=world.auth("b_metrics:read"))
    await c.get("/v1/sessions/b-call", headers=world.auth("a_all"))
    made = await c.post("/v1/keys", headers=world.auth("boot"),
                        json={"tenant": "z", "scopes": ["tts:read"]})
    await c.delete(f"/v1/keys/{made.json()['id']}", headers=world.auth("boot"))
    for reason, was in before.items():
        assert _denied(reason) == was + 1, reason
    entries = (await c.get("/v1/audit", headers=world.auth("boot"))).json()["entries"]
    events = [e["event"] for e in entries]
    assert events[:6] == ["key_revoked", "key_created", "tenant", "scope", "bad_key", "no_key"]
    tenant_entry = entries[2]
    assert tenant_entry["tenant"] == "a" and tenant_entry["route"] == "GET /v1/sessions/b-call"
    assert entries[0]["key_id"] == made.json()["id"]
    assert (await c.get("/v1/audit", headers=world.auth("b_all"))).status_code == 403
    stored = await audit.read(world.r, world.keys, 100)
    assert [e["event"] for e in stored] == ["scope", *events]  # the refused read above


async def test_auth_off_keeps_today_behaviour(settings: Settings) -> None:
    async with asgi_client(create_app(settings, settings.redis_url or "", options=FAST)) as c:
        who = (await c.get("/v1/whoami")).json()
        assert who == {"auth": False, "tenant": None, "scopes": [], "name": None,
                       "expires_at": None}
        assert (await c.get("/v1/sessions")).status_code == 200
        assert (await c.get("/metrics")).status_code == 200
        # the API never turns authentication on for an anonymous caller
        made = await c.post("/v1/keys", json={"tenant": "x", "scopes": ["admin"]})
        assert made.status_code == 409
        doc = (await c.get("/openapi.json")).json()
        assert "securitySchemes" not in doc["components"]
        for ops in doc["paths"].values():
            for op in ops.values():
                assert "security" not in op
                assert all(p["name"].lower() != "authorization"
                           for p in op.get("parameters", []))


async def test_a_key_in_redis_turns_authentication_on(settings: Settings, r: aioredis.Redis,
                                                       keys: Keys) -> None:
    async with asgi_client(create_app(settings, settings.redis_url or "", options=FAST)) as c:
        assert (await c.get("/v1/sessions")).status_code == 200
        _, secret = await KeyStore(r, keys).create("t", {Scope.METRICS_READ})
        assert (await c.get("/v1/sessions")).status_code == 401
        assert (await c.get("/metrics")).status_code == 401
        use = {"Authorization": f"Bearer {secret}"}
        assert (await c.get("/metrics", headers=use)).status_code == 200
        assert (await c.get("/healthz")).status_code == 200
        doc = (await c.get("/openapi.json")).json()
        assert doc["paths"]["/v1/sessions"]["get"]["security"] == [{"HTTPBearer": []}]
        assert doc["paths"]["/v1/sessions"]["get"]["x-required-scope"] == "sessions:read"


async def test_private_docs_need_a_key(access_settings: Settings) -> None:
    private = access_settings.model_copy(update={"docs_private": True})
    async with asgi_client(create_app(private, private.redis_url or "", options=FAST)) as c:
        assert (await c.get("/openapi.json")).status_code == 401
        assert (await c.get("/docs")).status_code == 401
        admin = {"Authorization": f"Bearer {BOOT}"}
        assert (await c.get("/openapi.json", headers=admin)).status_code == 200
        assert (await c.get("/docs", headers=admin)).status_code == 200


async def test_tts_quota_per_tenant_answers_429(access_settings: Settings, r: aioredis.Redis,
                                                keys: Keys) -> None:
    quota = access_settings.model_copy(update={"tts_daily_chars_per_tenant": 25})
    store = KeyStore(r, keys)
    _, a = await store.create("qa", {Scope.TTS_WRITE})
    _, b = await store.create("qb", {Scope.TTS_WRITE})
    async with asgi_client(create_app(quota, quota.redis_url or "", options=FAST)) as c:
        ha, hb = {"Authorization": f"Bearer {a}"}, {"Authorization": f"Bearer {b}"}
        assert (await c.post("/v1/tts", json={"text": "x" * 20}, headers=ha)).status_code == 202
        over = await c.post("/v1/tts", json={"text": "y" * 10}, headers=ha)
        assert over.status_code == 429 and int(over.headers["retry-after"]) >= 1
        assert "quota" in over.json()["detail"]
        # the other tenant's quota is its own
        assert (await c.post("/v1/tts", json={"text": "z" * 20}, headers=hb)).status_code == 202


async def test_subscriptions_get_only_their_own_tenants_sessions(
        access_settings: Settings, r: aioredis.Redis, keys: Keys) -> None:
    """The dispatcher's targets of a session: the deployment's URLs, the session's own webhook
    and the subscriptions of the session's tenant, never another tenant's."""
    import base64

    from api.webhooks import WebhookDispatcher

    hooks = access_settings.model_copy(update={
        "webhook_secret": SecretStr("whsec_" + base64.b64encode(b"x" * 32).decode()),
        "webhook_urls": "https://ops.example/all"})
    subs = WebhookKeys(keys.prefix).subs
    for sub, tenant in (("sub-a", "a"), ("sub-b", "b"), ("sub-old", None)):
        record: dict[str, Any] = {"url": f"https://{sub}.example/", "events": ["session.finished"]}
        if tenant:
            record["tenant"] = tenant
        await r.hset(subs, sub, json.dumps(record))
    await add_session(r, keys, "wa", tenant="a", webhook="https://own.example/")
    await add_session(r, keys, "wd")
    d = WebhookDispatcher(r, keys, hooks)
    got_a, _ = await d._targets("wa")
    got_d, _ = await d._targets("wd")
    assert sorted(t.id for t in got_a if not t.id.startswith("env:")) == ["session", "sub:sub-a"]
    assert sorted(t.id for t in got_d if not t.id.startswith("env:")) == ["sub:sub-old"]
    assert all(any(t.id.startswith("env:") for t in got) for got in (got_a, got_d))


async def test_a_storm_of_wrong_keys_is_counted_in_full_and_logged_in_few_lines(
        world: World) -> None:
    from voxq.logs import RepeatFilter

    lines: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = lines.append  # type: ignore[method-assign]
    handler.addFilter(RepeatFilter(burst=5, window=60))
    logger = logging.getLogger("voxq.audit")
    logger.addHandler(handler)
    before = _denied("bad_key")
    try:
        answers = await asyncio.gather(*[
            world.client.get("/v1/sessions", headers={"Authorization": f"Bearer wrong-{i}"})
            for i in range(60)])
    finally:
        logger.removeHandler(handler)
    assert {a.status_code for a in answers} == {401}
    assert _denied("bad_key") == before + 60
    stored = await audit.read(world.r, world.keys, 1000)
    assert sum(e["event"] == "bad_key" for e in stored) == 60
    assert 1 <= len(lines) <= 6
    assert not any("wrong-" in rec.getMessage() for rec in lines)
