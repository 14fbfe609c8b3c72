"""Choosing a Redis Cluster by URL, the test cluster itself, and every command voxq's shared
code issues (sessions, index, sweeper, TTS cache and records) run on a real cluster with the
keys of each test spread over all three primaries."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import redis
import redis.asyncio as aioredis
import redis.cluster as sync_cluster
from redis.asyncio.cluster import RedisCluster

from tests.cluster.clustertest_support import sids_on_every_primary
from tests.support import stop_process
from voxq.embedded_redis import RedisServer
from voxq.errors import InvalidInput, SessionExists
from voxq.keys import Keys
from voxq.records import SessionMeta, Transcript, encode_transcript
from voxq.redis_cluster import RedisClusterServer, slot_of
from voxq.redis_conn import (
    connect,
    connect_sync,
    is_cluster_url,
    parse_cluster_url,
    redact_url,
    rq_url,
)
from voxq.sessions import create_session, get_meta, list_sessions, read_finals
from voxq.settings import Settings
from voxq.tts_cache import TtsCache
from workers.sweeper import sweep_once, try_sweep

# --- the URL convention (no server needed) ------------------------------------------------------


def test_cluster_urls_parse_with_nodes_credentials_and_options() -> None:
    c = parse_cluster_url("redis+cluster://app:p%40ss@10.0.0.1:7000,[::1]:7001,redis-2/"
                          "?socket_timeout=2.5&ssl_check_hostname=false")
    assert c.nodes == (("10.0.0.1", 7000), ("::1", 7001), ("redis-2", 6379))
    assert (c.username, c.password, c.ssl) == ("app", "p@ss", False)
    assert c.options == {"socket_timeout": 2.5, "ssl_check_hostname": False}
    assert "p@ss" not in repr(c)
    tls = parse_cluster_url("rediss+cluster://:secret@h:6380/0")
    assert tls.ssl and tls.client_kwargs() == {"password": "secret", "ssl": True}
    assert is_cluster_url("redis+cluster://h:1/") and is_cluster_url("REDISS+CLUSTER://h:1")
    assert not any(is_cluster_url(u) for u in ("redis://h:1/0", "rediss://h", "unix:///s", None))
    assert redact_url("redis+cluster://u:secret@a:1,b:2/") == "redis+cluster://u:***@a:1,b:2/"


@pytest.mark.parametrize("url, reason", [
    ("redis+cluster:///", "names no node"),
    ("redis+cluster://h:port/", "bad port"),
    ("redis+cluster://h:70000/", "bad node"),
    ("redis+cluster://h:7000/3", "only database 0"),
    ("redis+cluster://h:7000/?db=1", "unknown Redis Cluster URL option 'db'"),
    ("redis+cluster://h:7000/?socket_timeout=soon", "bad value"),
    ("redis://h:7000/", "not a Redis Cluster URL"),
])
def test_malformed_cluster_urls_are_clear_errors(url: str, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason):
        parse_cluster_url(url)


def test_rq_needs_a_single_redis() -> None:
    standalone = "redis://127.0.0.1:6379/0"
    cluster = "redis+cluster://127.0.0.1:7000/"
    assert rq_url(Settings(), standalone) == standalone
    assert rq_url(Settings(rq_redis_url="redis://q:6379/1"), cluster) == "redis://q:6379/1"
    with pytest.raises(InvalidInput, match="set VOXQ_RQ_REDIS_URL"):
        rq_url(Settings(), cluster)
    with pytest.raises(InvalidInput, match="not a cluster"):
        rq_url(Settings(rq_redis_url=cluster), standalone)


def test_settings_read_the_new_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXQ_RQ_REDIS_URL", "redis://q:1/0")
    monkeypatch.setenv("VOXQ_WAIT_REPLICAS", "1")
    monkeypatch.setenv("VOXQ_WAIT_TIMEOUT_MS", "250")
    s = Settings()
    assert (s.rq_redis_url, s.wait_replicas, s.wait_timeout_ms) == ("redis://q:1/0", 1, 250)


# --- the cluster ---------------------------------------------------------------------------------


def test_cluster_has_three_primaries_each_with_a_synced_replica(cluster: RedisClusterServer) -> None:
    topo = cluster.agreed_topology()
    assert topo is not None
    primaries = [i for i in topo if i.primary and i.slots]
    assert len(primaries) == 3 and len(topo) == 6
    assert sum(hi - lo + 1 for p in primaries for lo, hi in p.slots) == 16384
    for p in primaries:
        assert [i for i in topo if i.primary_id == p.node_id]
    assert cluster.url.startswith("redis+cluster://") and len(cluster.startup_nodes) == 6
    for n in cluster.nodes:  # persistence as production needs it (README: Reliability)
        conf = n.client().config_get("append*")
        assert conf == {"appendonly": "yes", "appendfsync": "always",
                        **{k: v for k, v in conf.items() if k not in ("appendonly", "appendfsync")}}


async def test_connect_picks_the_client_by_url(cluster: RedisClusterServer,
                                               redis_server: RedisServer) -> None:
    r = connect(cluster.url)
    try:
        assert isinstance(r, RedisCluster) and await r.ping()
        # one seed node is enough: the client discovers the others
        one = connect(f"redis+cluster://127.0.0.1:{cluster.nodes[4].port}/")
        assert isinstance(one, RedisCluster)
        await one.set("voxq-test:{one}", "1")
        assert await r.get("voxq-test:{one}") == b"1"
        await one.aclose()
    finally:
        await r.aclose()
    s = connect_sync(cluster.url)
    assert isinstance(s, sync_cluster.RedisCluster) and s.ping()
    s.close()
    plain = connect(redis_server.url)
    assert type(plain) is aioredis.Redis
    await plain.aclose()


def test_a_cross_slot_command_is_refused(cluster: RedisClusterServer) -> None:
    """The cluster is strict, so the passing tests below mean voxq stays inside slots."""
    node = cluster.nodes[0].client()
    a, b = "k{a}", "k{b}"
    assert slot_of(a) != slot_of(b)
    with pytest.raises(redis.ResponseError, match="don't hash to the same slot"):
        node.execute_command("EVAL", "return 1", 2, a, b)
    node.close()


# --- voxq's commands on the cluster --------------------------------------------------------------


async def test_sessions_index_and_transcripts_across_all_primaries(
        cluster: RedisClusterServer, cr: aioredis.Redis, keys: Keys) -> None:
    sids = sids_on_every_primary(cluster, "s", keys)
    assert len({cluster.primary_of_key(keys.meta(s)).port for s in sids}) == 3
    for i, sid in enumerate(sids):
        await create_session(cr, keys, SessionMeta(session_id=sid, created=1000.0 + i))
    with pytest.raises(SessionExists):
        await create_session(cr, keys, SessionMeta(session_id=sids[0]))
    page = await list_sessions(cr, keys, limit=10)  # a pipeline over three nodes
    assert page.total == 3 and [m.session_id for m in page.sessions] == sids[::-1]
    for sid in sids:
        assert (await get_meta(cr, keys, sid)).session_id == sid
        for n in range(3):
            t = Transcript(text=f"w{n}", is_final=True, start=n, end=n + 1, seq=n)
            await cr.xadd(keys.final(sid), dict(encode_transcript(t)))  # type: ignore[arg-type]
        assert [t.text for _, t in await read_finals(cr, keys, sid, batch=2)] == ["w0", "w1", "w2"]
        # the API's one XREAD over both result streams of a session: one slot
        reply = await cr.xread({keys.final(sid): "0-0", keys.partial(sid): "0-0"}, count=10)
        assert sum(len(entries) for _, entries in reply) == 3


async def test_sweeper_on_the_cluster(cluster: RedisClusterServer, cr: aioredis.Redis,
                                      keys: Keys) -> None:
    sids = sids_on_every_primary(cluster, "sw", keys)
    for sid in sids:
        await create_session(cr, keys, SessionMeta(session_id=sid))
        await cr.xadd(keys.audio(sid), {"seq": 0, "pcm": b"\0\0"})
        await cr.xadd(keys.final(sid), {"text": "x"})
    await cr.zadd(keys.live, {"gone": time.time() - 100, sids[0]: time.time()})
    for sid in sids[:2]:
        await cr.delete(keys.meta(sid))  # expired
    report = await sweep_once(cr, keys, stale_live_after=10, batch=1)
    assert (report.orphans, report.stale_live) == (2, 1)
    for sid in sids[:2]:  # DEL of one session's three streams: one slot
        assert not await cr.exists(keys.audio(sid), keys.final(sid), keys.partial(sid))
    assert await cr.exists(keys.audio(sids[2]))
    assert [m.decode() for m in await cr.zrange(keys.index, 0, -1)] == [sids[2]]
    assert await try_sweep(cr, keys, "w1", 60, 10) is not None
    assert await try_sweep(cr, keys, "w2", 60, 10) is None  # the lock key holds


async def test_tts_cache_evicts_across_nodes(cr: aioredis.Redis, keys: Keys) -> None:
    cache = TtsCache(cr, keys, ttl_seconds=60, max_entries=2, max_bytes=10_000)
    digests = [f"{i:064x}" for i in range(4)]
    for d in digests:
        await cache.put(d, b"mp3" * 10)
    assert [await cache.get(d) is not None for d in digests] == [False, False, True, True]
    # the record updates are single-slot transactions (MULTI on one key's node)
    key = keys.tts("0" * 32)
    async with cr.pipeline(transaction=True) as p:
        p.hset(key, mapping={"status": "queued"})
        p.expire(key, 60)
        assert await p.execute() == [1, True]


@pytest.mark.slow
def test_voxq_redis_cluster_command_serves_a_cluster() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "voxq", "redis", "--cluster"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("REDIS_URL=redis+cluster://"), line
        r = connect_sync(line.split("=", 1)[1])
        assert r.set("k{1}", "v") and r.get("k{1}") == b"v"
        r.close()
    finally:
        code = stop_process(proc, 30)  # SIGTERM; SIGKILL if it does not exit (a failed test)
    assert code == 0
