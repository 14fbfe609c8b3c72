"""The ingest gateway authenticates with the API's scoped keys: a key holding sessions:write
streams sessions of its own tenant; a wrong key, an expired one or one without the scope is
refused at the handshake, audited and counted."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import redis.asyncio as aioredis
from ingesttest_support import KEY, Running, gateway_settings, pcm_of, running, wait_eos
from prometheus_client import REGISTRY
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from voxq import audit
from voxq.access import KeyStore, Scope
from voxq.keys import Keys
from voxq.settings import Settings


async def _stream(g: Running, query: str) -> str:
    async with connect(g.url("raw", query)) as ws:
        await ws.send(b"\1\0" * 1600)
        ready = json.loads(await ws.recv())
        await ws.send("Done")
    return str(ready["session"])


async def test_a_scoped_key_streams_as_its_tenant(settings: Settings, r: aioredis.Redis,
                                                  keys: Keys) -> None:
    store = KeyStore(r, keys)
    _, writer = await store.create("acme", {Scope.SESSIONS_WRITE})
    async with running(gateway_settings(settings)) as g:
        sid = await _stream(g, f"key={writer}&format=s16&session=acme-1")
        assert pcm_of(await wait_eos(r, keys, sid)) == b"\1\0" * 1600
        assert await r.hget(keys.meta(sid), "tenant") == b"acme"
        assert await r.zscore(keys.tenant_index("acme"), sid) is not None
        # the static gateway key still works, as the default tenant
        other = await _stream(g, f"key={KEY}&format=s16&session=plain-1")
        await wait_eos(r, keys, other)
        assert await r.hget(keys.meta(other), "tenant") is None
        assert await r.zscore(keys.tenant_index("default"), other) is not None


def _rejects() -> float:
    return REGISTRY.get_sample_value("voxq_ingest_rejects_total",
                                     {"dialect": "raw", "reason": "auth"}) or 0.0


@pytest.mark.parametrize("case", ["wrong", "scope", "expired"])
async def test_refused_keys_are_audited(settings: Settings, r: aioredis.Redis, keys: Keys,
                                        case: str) -> None:
    store = KeyStore(r, keys)
    if case == "wrong":
        secret = "vxk_0123456789ab_" + "x" * 43
    else:
        scopes = {Scope.SESSIONS_READ} if case == "scope" else {Scope.SESSIONS_WRITE}
        expires = time.time() + 0.5 if case == "expired" else None
        _, secret = await store.create("acme", scopes, expires=expires)
        if case == "expired":
            await asyncio.sleep(0.8)
    before = _rejects()
    async with running(gateway_settings(settings)) as g:
        with pytest.raises(InvalidStatus) as e:
            await _stream(g, f"key={secret}&format=s16&session=nope")
    assert e.value.response.status_code == 401
    assert _rejects() == before + 1
    entries = await audit.read(r, keys, 10)
    assert entries and entries[0]["route"] == "INGEST /v1/ingest/raw"
    # an expired key's record may already be gone (its TTL): then it is simply unknown
    assert entries[0]["event"] in {"wrong": {"bad_key"}, "scope": {"scope"},
                                   "expired": {"expired", "bad_key"}}[case]
    assert secret not in json.dumps(entries)
    assert await r.exists(keys.meta("nope")) == 0
    for rec in await store.all():  # (an expiring record would vanish under a later test)
        await store.revoke(rec.key_id)


async def test_a_handshake_without_a_key_is_audited(settings: Settings, r: aioredis.Redis,
                                                    keys: Keys) -> None:
    async with running(gateway_settings(settings)) as g:
        with pytest.raises(InvalidStatus) as e:
            await _stream(g, "format=s16&session=nokey")
    assert e.value.response.status_code == 401
    entries = await audit.read(r, keys, 10)
    assert [x["event"] for x in entries] == ["no_key"]
