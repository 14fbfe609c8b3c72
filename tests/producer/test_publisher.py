"""Publisher against a real Redis: chunking, order, eos, pipelining, backpressure, Redis
failures (kill/restart with AOF, lost replies, paused writes) and the blocking flavour."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis
import redis.asyncio as aioredis
from pubtest_util import check_stream, fields_str, numbered_chunk, read_audio, tone

from producer.publisher import Publisher, PublishFailed, SyncPublisher
from voxq.embedded_redis import RedisServer
from voxq.errors import (
    InvalidAudio,
    InvalidInput,
    InvalidSessionId,
    RedisUnavailable,
    SessionExists,
)
from voxq.keys import Keys
from voxq.records import decode_chunk
from voxq.redis_conn import connect
from voxq.settings import Settings
from workers.vendors.base import VendorOptionError
from workers.vendors.registry import UnknownVendor


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A private redis-server with AOF (appendfsync always), for tests that kill or stall it."""
    with RedisServer(appendonly=True) as server:
        yield server


async def _wait_for(pred: Callable[[], bool]) -> None:
    """Yield to the loop until ``pred()`` holds (the test timeout bounds the wait)."""
    for _ in itertools.count():
        if pred():
            return
        await asyncio.sleep(0.005)


# --- chunking, order, meta -----------------------------------------------------------------

async def test_chunks_seq_and_eos(settings: Settings, keys: Keys, r: aioredis.Redis) -> None:
    pcm = tone(1.05)  # 16800 frames: 10 chunks of 100 ms and a 50 ms remainder
    pub = Publisher(settings.redis_url or "", settings=settings)
    meta = await pub.open("call-1", chunk_ms=100)
    assert meta.chunk_ms == 100 and pub.chunk_bytes == 3200
    for off in range(0, len(pcm), 1554):  # odd-sized sends (777 frames), re-cut by the publisher
        await pub.send(pcm[off:off + 1554])
    await pub.close()

    entries = await read_audio(r, keys, "call-1")
    assert check_stream(entries) == pcm
    sizes = [len(c.pcm) for _, c in entries[:-1]]
    assert sizes == [3200] * 10 + [1600]
    assert pub.stats.chunks == 11 and pub.stats.bytes == len(pcm)
    assert pub.acked_seq == 11 == entries[-1][1].seq
    assert pub.closed and pub.buffered == 0


async def test_open_writes_meta_index_and_control_entry(settings: Settings, keys: Keys,
                                                        r: aioredis.Redis) -> None:
    pub = Publisher(settings.redis_url or "", settings=settings)
    await pub.open("call-2", vendor="local", language="en-GB", rate=8000, channels=2,
                   chunk_ms=20, options={"vad_mode": 1})
    meta = fields_str(await r.hgetall(keys.meta("call-2")))
    assert meta["rate"] == "8000" and meta["channels"] == "2" and meta["chunk_ms"] == "20"
    assert meta["language"] == "en-GB" and json.loads(meta["options"]) == {"vad_mode": 1}
    assert await r.zscore(keys.index, "call-2") is not None
    control = await r.xrange(keys.sessions)
    assert [f[b"sid"] for _, f in control] == [b"call-2"]
    await pub.send(tone(0.05, rate=8000, channels=2))  # 50 ms stereo: 2 chunks + 10 ms
    await pub.close()
    entries = await read_audio(r, keys, "call-2")
    check_stream(entries)
    assert [len(c.pcm) for _, c in entries[:-1]] == [640, 640, 320]


async def test_short_session_and_empty_session(settings: Settings, keys: Keys,
                                               r: aioredis.Redis) -> None:
    async with Publisher(settings.redis_url or "", settings=settings) as pub:
        await pub.open("short")
        await pub.send(b"\x01\x00" * 10)
    entries = await read_audio(r, keys, "short")
    assert check_stream(entries) == b"\x01\x00" * 10 and len(entries) == 2

    async with Publisher(settings.redis_url or "", settings=settings) as pub:
        await pub.open("empty")
    entries = await read_audio(r, keys, "empty")
    assert [(c.seq, c.eos) for _, c in entries] == [(0, True)]


# --- bad input changes nothing -----------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "error"), [
    ({"session_id": "bad id"}, InvalidSessionId),
    ({"session_id": "x" * 129}, InvalidSessionId),
    ({"vendor": "nope"}, UnknownVendor),
    ({"options": {"vad_mode": 9}}, VendorOptionError),
    ({"options": {"no_such_option": 1}}, VendorOptionError),
    ({"rate": 4000}, InvalidInput),
    ({"channels": 3}, InvalidInput),
    ({"chunk_ms": 10}, InvalidInput),
    ({"chunk_ms": 500}, InvalidInput),
])
async def test_open_rejects_bad_input_and_writes_nothing(
        settings: Settings, prefix: str, r: aioredis.Redis, kwargs: dict[str, object],
        error: type[Exception]) -> None:
    args: dict[str, object] = {"session_id": "ok"} | kwargs
    pub = Publisher(settings.redis_url or "", settings=settings)
    with pytest.raises(error):
        await pub.open(**args)  # type: ignore[arg-type]
    assert await r.keys(f"{prefix}:*") == []


async def test_session_exists(settings: Settings, keys: Keys, r: aioredis.Redis) -> None:
    first = Publisher(settings.redis_url or "", settings=settings)
    await first.open("taken")
    second = Publisher(settings.redis_url or "", settings=settings)
    with pytest.raises(SessionExists):
        await second.open("taken")
    await first.close()
    assert await r.xlen(keys.sessions) == 1


async def test_send_validation(settings: Settings, keys: Keys, r: aioredis.Redis) -> None:
    pub = Publisher(settings.redis_url or "", settings=settings)
    with pytest.raises(InvalidInput, match="not open"):
        await pub.send(b"\x00\x00")
    await pub.open("val", channels=2)
    with pytest.raises(InvalidAudio, match="whole number"):
        await pub.send(b"\x00\x00")  # half a stereo frame
    with pytest.raises(InvalidAudio):
        await pub.send("text")  # type: ignore[arg-type]
    await pub.send(b"\x00\x00\x01\x00")
    await pub.close()
    with pytest.raises(InvalidInput, match="closed"):
        await pub.send(b"\x00\x00\x00\x00")
    await pub.close()  # idempotent
    assert check_stream(await read_audio(r, keys, "val")) == b"\x00\x00\x01\x00"


async def test_session_length_is_bounded(redis_server: RedisServer, prefix: str) -> None:
    settings = Settings(redis_url=redis_server.url, prefix=prefix, max_session_seconds=10)
    pub = Publisher(redis_server.url, settings=settings)
    await pub.open("long", rate=8000)
    await pub.send(bytes(8000 * 2 * 10))
    with pytest.raises(InvalidInput, match="maximum"):
        await pub.send(b"\x00\x00")
    await pub.close()


async def test_abort_writes_no_eos(settings: Settings, keys: Keys, r: aioredis.Redis) -> None:
    pub = Publisher(settings.redis_url or "", settings=settings)
    await pub.open("ab")
    await pub.send(tone(0.3))
    await pub.flush()
    await pub.abort()
    entries = await read_audio(r, keys, "ab")
    assert [c.seq for _, c in entries] == [0, 1, 2] and not any(c.eos for _, c in entries)
    with pytest.raises(InvalidInput):
        await pub.send(tone(0.1))


async def test_unreachable_redis_fails_fast(settings: Settings) -> None:
    from voxq.embedded_redis import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    pub = Publisher(url, settings=settings)
    with pytest.raises(RedisUnavailable, match="cannot reach Redis at"):
        await pub.open("nobody")


# --- pipelining and backpressure ---------------------------------------------------------

async def test_queued_chunks_go_out_in_one_pipeline(settings: Settings, keys: Keys,
                                                    r: aioredis.Redis) -> None:
    pub = Publisher(settings.redis_url or "", settings=settings)
    await pub.open("pipe")
    await pub.send(tone(5.0))  # 50 chunks queued in one call, before the flush task runs
    await pub.flush()
    assert pub.stats.chunks == 50 and pub.acked_seq == 49
    assert pub.stats.pipelines == 1
    await pub.close()
    assert len(check_stream(await read_audio(r, keys, "pipe"))) == 5 * 32000


async def test_backpressure_blocks_send_until_flushed(settings: Settings, keys: Keys,
                                                      r: aioredis.Redis) -> None:
    pub = Publisher(settings.redis_url or "", settings=settings, buffer_chunks=3,
                    socket_timeout=60)
    await pub.open("bp", chunk_ms=20)
    admin = connect(settings.redis_url or "")
    await admin.execute_command("CLIENT", "PAUSE", "60000", "WRITE")
    try:
        sender = asyncio.create_task(pub.send(tone(0.2)))  # 10 chunks into a 3-chunk buffer
        await _wait_for(lambda: pub.stats.send_waits >= 1)
        # the buffer is full, nothing is acknowledged, and send is parked waiting for space
        assert pub.buffered == 3 and pub.stats.queued == 3 and pub.acked_seq == -1
        assert not sender.done()
        assert await r.xlen(keys.audio("bp")) == 0
    finally:
        await admin.execute_command("CLIENT", "UNPAUSE")
        await admin.aclose()
    await sender
    assert pub.buffered <= 3
    await pub.close()
    entries = await read_audio(r, keys, "bp")
    assert check_stream(entries) == tone(0.2) and len(entries) == 11


# --- Redis failures ----------------------------------------------------------------------

async def test_redis_restart_mid_publish_loses_and_duplicates_nothing(
        own_redis: RedisServer, prefix: str) -> None:
    settings = Settings(redis_url=own_redis.url, prefix=prefix)
    keys = Keys(prefix)
    pub = Publisher(own_redis.url, settings=settings, buffer_chunks=20, socket_timeout=2,
                    backoff_max=0.2)
    await pub.open("crash", chunk_ms=20)
    total = 400
    acked_at_kill: list[int] = []

    async def produce() -> None:
        for i in range(total):
            await pub.send(numbered_chunk(i))  # 320 frames = exactly one 20 ms chunk
            await asyncio.sleep(0)

    sender = asyncio.create_task(produce())
    await _wait_for(lambda: pub.acked_seq >= 100)
    acked_at_kill.append(pub.acked_seq)
    await asyncio.to_thread(own_redis.restart, 0.5)  # SIGKILL, down 0.5 s, start on AOF
    await sender
    await pub.close()

    assert pub.stats.failures >= 1 and pub.stats.resyncs >= 1
    r = connect(own_redis.url)
    try:
        entries = await read_audio(r, keys, "crash")
    finally:
        await r.aclose()
    check_stream(entries)
    assert len(entries) == total + 1
    for i, (_, c) in enumerate(entries[:-1]):
        assert c.pcm == numbered_chunk(i), f"chunk {i} has the content of another chunk"
    assert acked_at_kill[0] < total and pub.acked_seq == total


async def test_lost_reply_is_not_resent(prefix: str) -> None:
    """XADDs applied but their reply lost (server stalled past the client timeout): the
    resync finds them in the stream and does not write them twice."""
    with RedisServer(extra_args=_debug_args()) as server:
        settings = Settings(redis_url=server.url, prefix=prefix)
        keys = Keys(prefix)
        pub = Publisher(server.url, settings=settings, socket_timeout=0.3, backoff_max=0.1)
        await pub.open("lost", chunk_ms=20)
        for i in range(5):
            await pub.send(numbered_chunk(i))
        await pub.flush()

        stall = threading.Thread(target=_debug_sleep, args=(server.url, 2.0))
        stall.start()
        await _wait_for(lambda: not server.ping())
        for i in range(5, 10):
            await pub.send(numbered_chunk(i))
        await pub.close()
        stall.join()

        assert pub.stats.skipped >= 1, pub.stats
        r = connect(server.url)
        try:
            entries = await read_audio(r, keys, "lost")
        finally:
            await r.aclose()
        assert check_stream(entries) == b"".join(numbered_chunk(i) for i in range(10))


async def test_unapplied_writes_are_resent(settings: Settings, keys: Keys,
                                           r: aioredis.Redis) -> None:
    """Writes held by CLIENT PAUSE past the client timeout were never applied: resent once."""
    pub = Publisher(settings.redis_url or "", settings=settings, socket_timeout=0.2,
                    backoff_max=0.1)
    await pub.open("paused", chunk_ms=20)
    await pub.send(numbered_chunk(0))
    await pub.flush()
    await r.execute_command("CLIENT", "PAUSE", "1500", "WRITE")
    for i in range(1, 6):
        await pub.send(numbered_chunk(i))
    await pub.close()
    # usually nothing was applied (skipped == 0); on a loaded machine the last attempt can
    # be applied as the pause ends yet time out before its reply: then the resync skips it
    assert pub.stats.failures >= 1
    entries = await read_audio(r, keys, "paused")
    assert check_stream(entries) == b"".join(numbered_chunk(i) for i in range(6))


async def test_gives_up_after_retry_timeout(own_redis: RedisServer, prefix: str) -> None:
    settings = Settings(redis_url=own_redis.url, prefix=prefix)
    pub = Publisher(own_redis.url, settings=settings, retry_timeout=0.5, backoff_max=0.1,
                    socket_timeout=0.5)
    await pub.open("gone", chunk_ms=20)
    own_redis.kill()
    await pub.send(numbered_chunk(0))
    with pytest.raises(PublishFailed, match="cannot write to Redis"):
        await pub.close()
    assert pub.acked_seq == -1 and pub.closed


# --- the blocking publisher --------------------------------------------------------------

def test_sync_publisher(redis_server: RedisServer, prefix: str) -> None:
    settings = Settings(redis_url=redis_server.url, prefix=prefix)
    keys = Keys(prefix)
    pcm = tone(0.73, rate=8000, channels=2)
    with SyncPublisher(redis_server.url, settings=settings) as pub:
        pub.open("sync-1", rate=8000, channels=2)
        for off in range(0, len(pcm), 1000):
            pub.send(pcm[off:off + 1000])
        pub.flush()
        assert pub.acked_seq == 6 and pub.stats.chunks == 7
    assert pub.acked_seq == 8  # 7 full chunks, a 30 ms remainder, eos
    r = redis.Redis.from_url(redis_server.url)
    entries = [decode_chunk(f) for _, f in r.xrange(keys.audio("sync-1"))]
    r.close()
    assert [c.seq for c in entries] == list(range(9)) and entries[-1].eos
    assert b"".join(c.pcm for c in entries) == pcm


def test_sync_publisher_blocks_when_full_and_aborts_on_error(redis_server: RedisServer,
                                                             prefix: str) -> None:
    settings = Settings(redis_url=redis_server.url, prefix=prefix)
    keys = Keys(prefix)
    admin = redis.Redis.from_url(redis_server.url)
    pub = SyncPublisher(redis_server.url, settings=settings, buffer_chunks=2, socket_timeout=60)
    pub.open("sync-bp", chunk_ms=20)
    admin.execute_command("CLIENT", "PAUSE", "60000", "WRITE")
    done = threading.Event()

    def send() -> None:
        pub.send(tone(0.1))  # 5 chunks into a 2-chunk buffer
        done.set()

    t = threading.Thread(target=send)
    try:
        t.start()
        while pub.stats.send_waits < 1:
            time.sleep(0.005)
        assert not done.is_set() and pub.acked_seq == -1
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
    t.join()
    assert done.is_set()
    with pytest.raises(RuntimeError), pub:
        raise RuntimeError("recorder crashed")
    entries = [decode_chunk(f) for _, f in admin.xrange(keys.audio("sync-bp"))]
    admin.close()
    assert not any(c.eos for c in entries)  # aborted: no end of stream
    with pytest.raises(InvalidInput):
        pub.send(b"\x00\x00")


# --- helpers -----------------------------------------------------------------------------

def _debug_args() -> tuple[str, ...]:
    """redis-server 7+ refuses DEBUG unless enabled; 6.x has no such option."""
    import subprocess

    from voxq.embedded_redis import find_redis_server

    out = subprocess.run([find_redis_server(), "--version"], capture_output=True, text=True)
    version = out.stdout.split("v=")[1].split()[0]
    return ("--enable-debug-command", "yes") if int(version.split(".")[0]) >= 7 else ()


def _debug_sleep(url: str, seconds: float) -> None:
    c = redis.Redis.from_url(url, socket_timeout=seconds + 5)
    c.execute_command("DEBUG", "SLEEP", str(seconds))
    c.close()
