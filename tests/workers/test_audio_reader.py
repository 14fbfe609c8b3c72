"""The multiplexed audio reader and the write batcher against real Redis servers: order,
backpressure, re-subscription, inline delivery, idle timeouts, how often streams are named,
script fallback, errors per caller, and the same code on a three-node Redis Cluster."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from voxq.aio import within
from voxq.embedded_redis import RedisServer, find_redis_server, free_port
from voxq.keys import Keys
from voxq.redis_conn import connect
from workers.audio_reader import AudioReader, Oversized, Subscription, group_by_slot, xread
from workers.batcher import Batcher, Script, pack


@contextlib.asynccontextmanager
async def running(reader: AudioReader) -> AsyncIterator[AudioReader]:
    """The reader's loop for the duration of the block."""
    task = asyncio.create_task(reader.run())
    try:
        yield reader
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def drain(sub: Subscription, n: int, timeout: float = 10.0) -> list[int]:
    """The ``seq`` of the next ``n`` entries of a subscription."""
    out: list[int] = []
    for _ in range(n):
        entry = await within(sub.get(timeout), timeout)
        assert entry is not None, f"{sub.key}: idle after {len(out)} entries"
        out.append(int(entry[1][1]))
    return out


async def publish(r: aioredis.Redis | RedisCluster, keys: Sequence[str], n: int,
                  every: float = 0.0) -> None:
    """``n`` entries (seq 0..n-1) on every stream, ``every`` seconds apart."""
    for i in range(n):
        for k in keys:
            await r.xadd(k, {"seq": str(i), "pcm": b"\0\0" * 8})
        if every:
            await asyncio.sleep(every)


def test_xread_is_packed_like_the_client_would() -> None:
    reader = AudioReader.__new__(AudioReader)
    subs = [Subscription(reader, f"p:{{s{i}}}:audio", "0-0", 5) for i in range(3)]
    assert xread(subs, 16) == pack(["XREAD", "COUNT", 16, "STREAMS",
                                    *[s.key for s in subs], "0-0", "0-0", "0-0"])
    assert pack(["EVALSHA", "ab", 1, b"k", 2.5]) == (
        b"*5\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n1\r\n$1\r\nk\r\n$3\r\n2.5\r\n")
    with pytest.raises(TypeError):
        pack([True])


def test_streams_of_one_slot_share_an_xread() -> None:
    reader = AudioReader.__new__(AudioReader)
    a = Subscription(reader, "p:{s1}:audio", "0-0", 5)
    b = Subscription(reader, "p:{s1}:other", "0-0", 5)
    c = Subscription(reader, "p:{s2}:audio", "0-0", 5)
    groups = group_by_slot([a, b, c])
    assert sorted(len(g) for g in groups) == [1, 2]


async def test_many_streams_arrive_complete_and_in_order(r: aioredis.Redis, keys: Keys) -> None:
    reader = AudioReader(connect(_url(r)))
    streams = [keys.audio(f"m{i}") for i in range(40)]
    async with running(reader):
        subs = [reader.subscribe(k, "0-0", 50) for k in streams]
        await publish(r, streams, 30, every=0.01)
        for sub in subs:
            assert await drain(sub, 30) == list(range(30))
    assert reader.errors == 0
    await reader.r.aclose()


def _url(r: aioredis.Redis) -> str:
    kw = r.connection_pool.connection_kwargs
    return f"redis://{kw['host']}:{kw['port']}/0"


async def test_paced_streams_arrive_complete_through_due_time_reads(r: aioredis.Redis,
                                                                    keys: Keys) -> None:
    """Steady producers (an entry every 50 ms) read by due time: every entry, in order, and
    streams named fewer times than a read-everything reader would (how few is a matter of
    timing: the deterministic count is the next test's, the figure bench/capacity.py's)."""
    reader = AudioReader(connect(_url(r)), window_ms=5)
    streams = [keys.audio(f"d{i}") for i in range(20)]
    async with running(reader):
        subs = [reader.subscribe(k, "0-0", 100) for k in streams]
        consumers = [asyncio.create_task(drain(s, 40)) for s in subs]
        await publish(r, streams, 40, every=0.05)
        assert [await c for c in consumers] == [list(range(40))] * len(subs)
    assert reader.entries == 800 and reader.named < reader.reads * len(streams)
    await reader.r.aclose()


def test_each_stream_is_named_about_once_per_entry() -> None:
    """Due-time scheduling on a simulated clock: 20 streams with an entry every 50 ms (each
    landing 1 ms after its id time), a read every 5 ms for 3 s; a stream is named about once
    per entry, not once per read."""
    reader = AudioReader(connect("redis://127.0.0.1:1/0"), window_ms=5)  # never connects
    subs = [reader.subscribe(f"p:{{s{i}}}:audio", "0-0", 1000) for i in range(20)]

    def landed(i: int, now: int) -> list[int]:
        """Id times of stream i's entries in Redis by ``now``: 1000 + i + 50 k, 1 ms later."""
        return [t for t in range(1000 + i, now, 50) if t + 1 <= now]

    named = entries = reads = 0
    for now in range(1000, 4000, 5):
        due, _ = reader._take_due(float(now))
        reads += 1
        named += len(due)
        for sub in due:
            last = int(sub.last_id.split(b"-")[0]) if sub.last_id != b"0-0" else 0
            new = [t for t in landed(subs.index(sub), now) if t > last]
            if new:
                sub.push([(b"%d-0" % t, [b"seq", b"0", b"pcm", b"\0\0"]) for t in new])
            sub.got = len(new)
            entries += len(new)
        reader._reschedule(due, float(now))
    assert entries >= 20 * 59  # every entry but the newest few was read
    assert named / entries < 2.0, (named, entries, reads)  # reading everything: 10 per entry
    assert named < reads * len(subs) / 5  # a read-everything reader names 20 per read


async def test_a_full_inbox_leaves_audio_in_redis(r: aioredis.Redis, keys: Keys) -> None:
    reader = AudioReader(connect(_url(r)), count=4)
    key = keys.audio("bp")
    await publish(r, [key], 100)
    async with running(reader):
        sub = reader.subscribe(key, "0-0", 10)
        async with asyncio.timeout(30):
            while not sub.paused:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)  # reads go on; the paused stream is not among them
        assert sub.paused and len(sub.inbox) <= 10 + 4  # soft by at most one read's count
        assert await drain(sub, 100) == list(range(100))
        assert len(sub.inbox) == 0
    await reader.r.aclose()


async def test_oversized_entries_are_dropped_on_sight(r: aioredis.Redis, keys: Keys) -> None:
    # a session's inbox never holds an entry over its limit: only a marker with the size
    reader = AudioReader(connect(_url(r)), count=4)
    key = keys.audio("big")
    for i in range(6):
        await r.xadd(key, {"seq": str(i), "pcm": b"\0" * (2_000_000 if i % 2 else 100)})
    async with running(reader):
        sub = reader.subscribe(key, "0-0", 10, max_entry_bytes=1000)
        got = [await within(sub.get(10), 10) for _ in range(6)]
    await reader.r.aclose()
    fields = [e[1] for e in got if e is not None]
    assert [isinstance(f, Oversized) for f in fields] == [False, True] * 3
    assert all(f.size == 2_000_000 and sum(map(len, f)) < 20 for f in fields[1::2])
    assert [int(f[1]) for f in fields[::2]] == [0, 2, 4]


async def test_resubscribing_starts_over_from_the_given_id(r: aioredis.Redis,
                                                           keys: Keys) -> None:
    reader = AudioReader(connect(_url(r)))
    key = keys.audio("re")
    await publish(r, [key], 10)
    entries: Any = await r.xrange(key)
    ids = [eid for eid, _ in entries]
    async with running(reader):
        old = reader.subscribe(key, "0-0", 50)
        assert await drain(old, 10) == list(range(10))
        new = reader.subscribe(key, ids[4].decode(), 50)
        assert not old.active
        assert await drain(new, 5) == list(range(5, 10))
        await publish(r, [key], 1)
        assert await drain(new, 1) == [0]
        assert not old.inbox
    await reader.r.aclose()


async def test_inline_handler_keeps_order_with_the_inbox(r: aioredis.Redis, keys: Keys) -> None:
    """Entries the handler takes never overtake entries it declined."""
    reader = AudioReader(connect(_url(r)))
    key = keys.audio("inline")
    log: list[tuple[str, int]] = []

    def handler(eid: bytes, fields: Sequence[bytes]) -> bool:
        seq = int(fields[1])
        if seq % 5 == 4:
            return False  # every fifth goes the slow way
        log.append(("inline", seq))
        return True

    async def consume(sub: Subscription) -> None:
        while True:
            entry = await sub.get(10)
            assert entry is not None
            log.append(("inbox", int(entry[1][1])))

    async with running(reader):
        sub = reader.subscribe(key, "0-0", 50)
        sub.handler = handler
        consumer = asyncio.create_task(consume(sub))
        await publish(r, [key], 30, every=0.01)
        await r.xadd(key, {"seq": "30", "pcm": b"\0\0"})
        for _ in range(100):
            if len(log) == 31:
                break
            await asyncio.sleep(0.02)
        consumer.cancel()
    assert [seq for _, seq in log] == list(range(31))
    assert {how for how, _ in log} == {"inline", "inbox"}
    assert all(how == "inbox" for how, seq in log if seq % 5 == 4)
    await reader.r.aclose()


async def test_idle_subscription_times_out_and_then_resumes(r: aioredis.Redis,
                                                            keys: Keys) -> None:
    reader = AudioReader(connect(_url(r)))
    key = keys.audio("idle")
    async with running(reader):
        sub = reader.subscribe(key, "0-0", 50)
        t0 = time.monotonic()
        assert await sub.get(0.3) is None
        assert time.monotonic() - t0 > 0.25  # it waited, it did not give up at once
        await publish(r, [key], 1)
        assert await drain(sub, 1) == [0]
    await reader.r.aclose()


async def test_reader_survives_a_redis_restart() -> None:
    server = RedisServer(appendonly=True).start()
    r = connect(server.url)
    reader = AudioReader(connect(server.url))
    key = Keys("rs").audio("x")
    try:
        async with running(reader):
            sub = reader.subscribe(key, "0-0", 50)
            await publish(r, [key], 5)
            assert await drain(sub, 5) == list(range(5))
            await asyncio.to_thread(server.restart, 0.3)
            await r.aclose()
            r = connect(server.url)
            await publish(r, [key], 5)
            assert await drain(sub, 5) == list(range(5))
        assert reader.errors >= 1
    finally:
        await r.aclose()
        await reader.r.aclose()
        server.close()


# --- batcher ------------------------------------------------------------------------------

async def test_batcher_pipelines_concurrent_commands(r: aioredis.Redis, keys: Keys) -> None:
    b = Batcher(connect(_url(r)))
    futures = [b.submit("INCR", keys.meta(f"b{i % 7}")) for i in range(500)]
    values = await asyncio.gather(*futures)
    assert sorted(values)[-1] == 500 // 7 + 1
    assert b.rounds < 50  # not one round trip per command
    await b.aclose()
    await b.r.aclose()


async def test_batcher_scripts_survive_a_script_flush(r: aioredis.Redis, keys: Keys) -> None:
    b = Batcher(connect(_url(r)))
    script = Script.of("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    assert await b.eval(script, [keys.meta("s")], [5]) == 5
    await r.script_flush()
    assert await b.eval(script, [keys.meta("s")], [2]) == 7  # NOSCRIPT → EVAL
    await b.aclose()
    await b.r.aclose()


async def test_batcher_errors_reach_only_their_caller(r: aioredis.Redis, keys: Keys) -> None:
    b = Batcher(connect(_url(r)))
    await r.set(keys.meta("str"), "x")
    ok = b.submit("INCR", keys.meta("n"))
    bad = b.submit("XADD", keys.meta("str"), "*", "a", "b")  # WRONGTYPE
    ok2 = b.submit("INCR", keys.meta("n"))
    assert await ok == 1
    with pytest.raises(ResponseError):
        await bad
    assert await ok2 == 2
    await b.aclose()
    await b.r.aclose()


async def test_batcher_fails_a_round_on_a_dead_server_then_recovers() -> None:
    server = RedisServer().start()
    b = Batcher(connect(server.url))
    try:
        assert await b.execute("SET", "k", "1")
        server.kill()
        with pytest.raises((RedisConnectionError, OSError, TimeoutError)):
            await b.execute("GET", "k")
        server.start()
        assert await b.execute("SET", "k", "2")
    finally:
        await b.aclose()
        await b.r.aclose()
        server.close()


# --- Redis Cluster --------------------------------------------------------------------------

def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is a valid, free port too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """Three masters (no replicas) on free ports; skipped where no redis-cli can create it."""
    cli = shutil.which("redis-cli")
    if cli is None:
        pytest.skip("redis-cli is needed to create a cluster")
    binary = find_redis_server()
    servers = []
    try:
        for _ in range(3):
            s = RedisServer(port=cluster_port(), extra_args=("--cluster-enabled", "yes",
                                                          "--cluster-config-file", "nodes.conf"))
            servers.append(s.start())
        addrs = [f"127.0.0.1:{s.port}" for s in servers]
        done = subprocess.run([cli, "--cluster", "create", *addrs, "--cluster-replicas", "0",
                               "--cluster-yes"], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            pytest.skip(f"cannot create a cluster with {binary}: {done.stdout[-300:]}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            info = subprocess.run([cli, "-p", str(servers[0].port), "cluster", "info"],
                                  capture_output=True, text=True).stdout
            if "cluster_state:ok" in info:
                break
            time.sleep(0.2)
        yield f"redis://{addrs[0]}"
    finally:
        for s in servers:
            s.close()


async def test_reader_and_batcher_on_a_cluster(cluster: str) -> None:
    """Streams on many slots of three nodes: one pipelined write per node and read."""
    rc = RedisCluster.from_url(cluster, decode_responses=False)
    await rc.initialize()
    reader = AudioReader(rc)
    keys = Keys("cl")
    streams = [keys.audio(f"c{i}") for i in range(60)]
    nodes = {getattr(rc.get_node_from_key(k), "name", None) for k in streams}
    assert len(nodes) == 3
    async with running(reader):
        subs = [reader.subscribe(k, "0-0", 50) for k in streams]
        await publish(rc, streams, 10, every=0.02)
        for sub in subs:
            assert await drain(sub, 10) == list(range(10))
    assert reader.errors == 0
    b = Batcher(rc)
    script = Script.of("redis.call('HSET', KEYS[1], 'x', ARGV[1]) "
                       "return redis.call('XLEN', KEYS[2])")
    replies = await asyncio.gather(*(b.eval(script, [keys.meta(f"c{i}"), keys.audio(f"c{i}")],
                                            [i]) for i in range(60)))
    assert replies == [10] * 60
    assert b.rounds < 30
    await b.aclose()
    await rc.aclose()
