"""Access control over real sockets: two tenants following side by side (SSE, firehose,
WebSocket with ?token=), and per-key rate limits shared by two `voxq api` processes on one
Redis under concurrent requests."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
import websockets
from api_process import api_process
from apitest_support import FAST, LiveServer, add_final, add_session, serve_in_thread
from pydantic import SecretStr
from test_api_events import WAIT, Reader

from api.app import create_app
from voxq.access import KeyStore, Scope
from voxq.keys import Keys
from voxq.lifecycle import announce
from voxq.records import SessionMeta, Status
from voxq.sessions import create_session
from voxq.settings import Settings

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def secured(settings: Settings) -> Iterator[LiveServer]:
    s = settings.model_copy(update={"token_secret": SecretStr("live-token-secret"),
                                    "rate_limit_per_second": 0.0})
    yield from serve_in_thread(create_app(s, s.redis_url or "", options=FAST))


async def _keys(r: aioredis.Redis, keys: Keys) -> dict[str, str]:
    store = KeyStore(r, keys)
    out = {}
    for tenant in ("a", "b"):
        _, out[tenant] = await store.create(tenant, {Scope.SESSIONS_READ})
    return out


async def test_two_tenants_follow_only_their_own(secured: LiveServer, r: aioredis.Redis,
                                                 keys: Keys) -> None:
    secrets = await _keys(r, keys)

    @asynccontextmanager
    async def firehose(tenant: str) -> AsyncIterator[Reader]:
        async with httpx.AsyncClient(base_url=secured.url, timeout=WAIT) as c, \
                c.stream("GET", "/v1/events",
                         headers={"Authorization": f"Bearer {secrets[tenant]}"}) as resp:
            assert resp.status_code == 200
            yield Reader(resp)

    async with firehose("a") as fa, firehose("b") as fb:
        await asyncio.sleep(0.3)
        for sid, tenant in (("ca", "a"), ("cb", "b"), ("ca2", "a")):
            await create_session(r, keys, SessionMeta(session_id=sid, tenant=tenant))
            await announce(r, keys, sid, Status.FINISHED)
        seen_a = [await fa.next() for _ in range(4)]
        seen_b = [await fb.next() for _ in range(2)]
    assert [(e.event, e.data["session_id"]) for e in seen_a if e] == [
        ("created", "ca"), ("finished", "ca"), ("created", "ca2"), ("finished", "ca2")]
    assert [(e.event, e.data["session_id"]) for e in seen_b if e] == [
        ("created", "cb"), ("finished", "cb")]
    # SSE of one session: its own tenant follows, the other gets the unknown session's 404
    await add_session(r, keys, "done-b", status=Status.FINISHED, tenant="b")
    async with httpx.AsyncClient(base_url=secured.url, timeout=WAIT) as c:
        own = await c.get("/v1/sessions/done-b/events",
                          headers={"Authorization": f"Bearer {secrets['b']}"})
        assert own.status_code == 200 and "event: status" in own.text
        other = await c.get("/v1/sessions/done-b/events", params={"wait": 1},
                            headers={"Authorization": f"Bearer {secrets['a']}"})
        assert other.status_code == 404


async def test_a_follower_waiting_for_another_tenants_session_gets_404(
        secured: LiveServer, r: aioredis.Redis, keys: Keys) -> None:
    secrets = await _keys(r, keys)
    async with httpx.AsyncClient(base_url=secured.url, timeout=WAIT) as c:
        pending = asyncio.ensure_future(c.get(
            "/v1/sessions/later/events", params={"wait": 10},
            headers={"Authorization": f"Bearer {secrets['a']}"}))
        await asyncio.sleep(0.5)
        await add_session(r, keys, "later", status=Status.FINISHED, tenant="b")
        resp = await pending
    assert resp.status_code == 404


async def test_websocket_takes_a_token_in_the_query(secured: LiveServer, r: aioredis.Redis,
                                                    keys: Keys) -> None:
    secrets = await _keys(r, keys)
    await add_session(r, keys, "wb", status=Status.FINISHED, tenant="b")
    await add_final(r, keys, "wb", 0, "for b only", 0, 1)
    async with httpx.AsyncClient(base_url=secured.url, timeout=WAIT) as c:
        made = await c.post("/v1/tokens", json={"sessions": ["wb"], "ttl_seconds": 60},
                            headers={"Authorization": f"Bearer {secrets['b']}"})
        token_b = made.json()["token"]
        token_a = (await c.post("/v1/tokens", headers={
            "Authorization": f"Bearer {secrets['a']}"})).json()["token"]
    base = secured.url.replace("http://", "ws://") + "/v1/sessions/wb/live"
    async with asyncio.timeout(WAIT), websockets.connect(f"{base}?token={token_b}") as ws:
        msgs = [json.loads(m) async for m in ws]
    assert msgs[0]["data"]["text"] == "for b only" and msgs[-1]["event"] == "status"
    for query, code in (("", 401), (f"?token={secrets['b']}", 401), (f"?token={token_a}", 404),
                        ("?token=vxt_forged.sig", 401)):
        async with asyncio.timeout(WAIT):
            with pytest.raises(websockets.InvalidStatus) as e:
                await websockets.connect(base + query)
        assert e.value.response.status_code == code, query


def _env(env: dict[str, str], rate: float, burst_seconds: float) -> dict[str, str]:
    return dict(env, VOXQ_RATE_LIMIT_PER_SECOND=str(rate),
                VOXQ_RATE_LIMIT_BURST_SECONDS=str(burst_seconds),
                VOXQ_TOKEN_SECRET="two-process-secret")


async def test_rate_limit_is_shared_by_two_api_processes(env: dict[str, str], r: aioredis.Redis,
                                                         keys: Keys, tmp_path: Path) -> None:
    """A key with a burst of 20 and 0.5 requests/s sends 80 concurrent requests, half to
    each process: about 20 pass in all (not 20 per process), the rest are 429 with
    Retry-After; the bucket refills at the configured rate."""
    _, secret = await KeyStore(r, keys).create("rl", {Scope.SESSIONS_READ})
    _, other = await KeyStore(r, keys).create("rl", {Scope.SESSIONS_READ})
    e = _env(env, 0.5, 40.0)  # burst = 0.5 * 40 = 20
    with api_process(e, tmp_path / "a.log") as (url_a, _), \
            api_process(e, tmp_path / "b.log") as (url_b, _):
        headers = {"Authorization": f"Bearer {secret}"}
        async with httpx.AsyncClient(timeout=60) as c:
            started = time.monotonic()
            answers = await asyncio.gather(*[
                c.get(f"{(url_a, url_b)[i % 2]}/v1/sessions", headers=headers)
                for i in range(80)])
            elapsed = time.monotonic() - started
            by_process = {u: [a.status_code for a in answers if str(a.url).startswith(u)]
                          for u in (url_a, url_b)}
            ok = sum(a.status_code == 200 for a in answers)
            limited = [a for a in answers if a.status_code == 429]
            assert ok + len(limited) == 80, {a.status_code for a in answers}
            # 20 from the burst, plus what refilled while the requests ran
            assert 20 <= ok <= 20 + int(elapsed * 0.5) + 1, (ok, elapsed)
            assert all(429 in codes for codes in by_process.values()), by_process
            assert all(int(a.headers["retry-after"]) >= 1 for a in limited)
            assert "rate limit" in limited[0].json()["detail"]
            # another key has its own bucket; the limited key gets one request per 2 s back
            assert (await c.get(f"{url_b}/v1/sessions", headers={
                "Authorization": f"Bearer {other}"})).status_code == 200
            await asyncio.sleep(2.2)
            assert (await c.get(f"{url_a}/v1/sessions", headers=headers)).status_code == 200
    entries = [e for _, e in await r.xrange(f"{keys.prefix}:audit")]
    assert sum(e[b"event"] == b"rate_limited" for e in entries) == len(limited)
    # the buckets expire on their own; removed now so no later test sees keys vanish
    async for k in r.scan_iter(match=f"{keys.prefix}:ratelimit:*"):
        await r.delete(k)
