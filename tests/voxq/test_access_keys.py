"""`voxq keys` and the access core: the secret is printed once, alone on the last line, and
never stored; keys list and revoke; tokens sign, expire and refuse tampering; parsing."""

from __future__ import annotations

import json
import time

import pytest
import redis.asyncio as aioredis

from tests.support import run_voxq
from voxq import tokens
from voxq.access import KeyStore, Scope, key_hash, parse_expiry, parse_scopes
from voxq.errors import InvalidInput, MalformedRecord
from voxq.keys import Keys


async def _all_bytes(r: aioredis.Redis, prefix: str) -> bytes:
    out: list[bytes] = []
    async for k in r.scan_iter(match=f"{prefix}:*", count=1000):
        out.append(k)
        if (await r.type(k)) == b"hash":
            out += [x for kv in (await r.hgetall(k)).items() for x in kv]
        elif (await r.type(k)) == b"stream":
            out += [x for _, f in await r.xrange(k) for kv in f.items() for x in kv]
        elif (await r.type(k)) == b"set":
            out += list(await r.smembers(k))
    return b"\n".join(out)


async def test_keys_create_list_revoke(env: dict[str, str], r: aioredis.Redis, keys: Keys,
                                       prefix: str) -> None:
    made = await run_voxq("keys", "create", "--tenant", "acme", "--scopes",
                          "sessions:read,tts:write", "--expires", "30d", "--name", "ci",
                          env=env)
    assert made.returncode == 0, made.stderr
    lines = made.stdout.decode().strip().splitlines()
    secret = lines[-1]
    assert secret.startswith("vxk_") and " " not in secret
    key_id = secret.split("_")[1]
    rec = await KeyStore(r, keys).verify(secret)
    assert rec is not None and rec.tenant == "acme" and rec.name == "ci"
    assert rec.scopes == {Scope.SESSIONS_READ, Scope.TTS_WRITE}
    assert rec.expires is not None and abs(rec.expires - (time.time() + 30 * 86400)) < 60
    stored = await _all_bytes(r, prefix)
    assert key_id.encode() in stored and secret.split("_", 2)[2].encode() not in stored
    listed = await run_voxq("keys", "list", "--json", env=env)
    rows = json.loads(listed.stdout)
    assert [(k["id"], k["tenant"], k["name"]) for k in rows] == [(key_id, "acme", "ci")]
    assert secret.split("_", 2)[2] not in listed.stdout.decode()
    table = (await run_voxq("keys", "list", env=env)).stdout.decode()
    assert key_id in table and "sessions:read,tts:write" in table
    gone = await run_voxq("keys", "revoke", key_id, env=env)
    assert gone.returncode == 0 and await KeyStore(r, keys).verify(secret) is None
    again = await run_voxq("keys", "revoke", key_id, env=env)
    assert again.returncode != 0 and b"no API key" in again.stderr
    entries = [json.dumps({k.decode(): v.decode() for k, v in f.items()})
               for _, f in await r.xrange(f"{prefix}:audit")]
    assert [json.loads(e)["event"] for e in entries] == ["key_created", "key_revoked"]


@pytest.mark.parametrize("args, reason", [
    (["--tenant", "a b", "--scopes", "admin"], "invalid tenant"),
    (["--tenant", "t", "--scopes", "sessions:delete"], "unknown scope"),
    (["--tenant", "t", "--scopes", "admin", "--expires", "soon"], "invalid expiry"),
])
async def test_keys_create_refuses_bad_input(env: dict[str, str], args: list[str], reason: str,
                                             r: aioredis.Redis, keys: Keys) -> None:
    p = await run_voxq("keys", "create", *args, env=env)
    assert p.returncode != 0 and reason in p.stderr.decode()
    assert await KeyStore(r, keys).all() == []


async def test_keys_need_a_real_redis(env: dict[str, str]) -> None:
    bare = {k: v for k, v in env.items() if k != "REDIS_URL"}
    p = await run_voxq("keys", "list", env=bare)
    assert p.returncode != 0 and b"REDIS_URL" in p.stderr


def test_hash_depends_on_the_whole_secret() -> None:
    assert key_hash("abc", "s1") != key_hash("abc", "s2") != key_hash("abd", "s2")
    assert len(key_hash("abc", "s1")) == 64


def test_parsing() -> None:
    assert parse_scopes("tts:read, admin") == {Scope.TTS_READ, Scope.ADMIN}
    with pytest.raises(InvalidInput):
        parse_scopes(",")
    now = 1_000_000.0
    assert parse_expiry("2h", now) == now + 7200
    assert parse_expiry(str(now + 5), now) == now + 5
    assert parse_expiry(None) is None
    for bad in ("yesterday", "-1d", str(now - 1)):
        with pytest.raises(InvalidInput):
            parse_expiry(bad, now)


def test_tokens_sign_verify_and_refuse_tampering() -> None:
    claims = tokens.TokenClaims("0123456789ab", "acme", frozenset({Scope.SESSIONS_READ}),
                                frozenset({"s1"}), round(time.time() + 60, 3), "n")
    t = tokens.sign(claims, b"secret")
    assert tokens.verify(t, b"secret") == claims
    assert tokens.verify(t, b"other") is None
    body, sig = t[4:].split(".")
    assert tokens.verify(f"vxt_{body}x.{sig}", b"secret") is None
    expired = tokens.sign(tokens.TokenClaims("0123456789ab", "acme", frozenset({Scope.ADMIN}),
                                             None, time.time() - 1), b"secret")
    assert tokens.verify(expired, b"secret") is None
    assert tokens.verify("vxt_garbage", b"secret") is None


def test_keys_and_tokens_are_redacted_from_logs() -> None:
    from voxq.redaction import redact

    secret = "vxk_0123456789ab_" + "Zq3" * 14 + "x"
    token = "vxt_eyJrIjoiMDEyMyJ9.c2lnbmF0dXJl"
    out = redact(f"refused {secret} then {token}.")
    assert "Zq3" not in out and "c2lnbmF0dXJl" not in out and "eyJr" not in out
    assert "vxk_0123456789ab_" in out  # the id stays, for the reader of the log


async def test_a_malformed_key_record_authenticates_nobody(r: aioredis.Redis, keys: Keys) -> None:
    """A key record that cannot be read (a faulty writer's) never authenticates and never stops
    the listing of the others; it is a stored-data problem, not the caller's InvalidInput."""
    store = KeyStore(r, keys)
    bad, bad_secret = await store.create("acme", {Scope.SESSIONS_READ}, "bad", None)
    good, _ = await store.create("acme", {Scope.SESSIONS_READ}, "good", None)
    await r.hset(store.record_key(bad.key_id), "scopes", "everything:all")
    with pytest.raises(MalformedRecord, match=bad.key_id):
        await store.get(bad.key_id)
    assert await store.verify(bad_secret) is None
    assert [k.key_id for k in await store.all()] == [good.key_id]
    assert await store.revoke(bad.key_id) and await store.all() == [good]
