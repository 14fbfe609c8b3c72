"""Primary failover mid-session on a Redis Cluster, with worker processes and a live producer.

* ``CLUSTER FAILOVER`` on the replica of the primary that owns the session's slot (the replica
  catches up before it takes over): nothing is lost, the transcript is exact.
* SIGKILL of that primary (its replica is promoted after the 1 s node timeout): measured — the
  producer's acknowledged chunks the promoted replica lacks (``PublisherStats.lost_seqs``) and
  the worker's finals that were rewritten after the kill (their stream ids are later).
* SIGKILL while the replica lags (it is stopped and the primary's replication buffer is full, as
  under a network stall): asynchronous replication loses what the primary acknowledged since;
  without WAIT exactly those chunks' words are missing from the transcript, with
  ``wait_replicas=1`` nothing is lost.

Each test prints its measurement (run with -s to see them); docs/redis-cluster.md quotes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from producer.publisher import Publisher, PublisherStats
from tests.cluster.clustertest_support import (
    WorkerProcs,
    assert_exact,
    missing_and_repeated,
    sid_on,
    wait_finals,
)
from tests.emulators.watermark import WatermarkEmulator, expected_words, watermark_pcm
from tests.support import wait_status
from voxq.keys import Keys
from voxq.records import Status, decode_chunk
from voxq.redis_cluster import ClusterNode, RedisClusterServer
from voxq.sessions import read_finals
from voxq.settings import Settings

CLAIM_TIMEOUT = 2.0
N = 120  # chunks of 100 ms
REALTIME = 2.0  # publishing pace: 6 s per session
CHUNK = 3200  # bytes of one 100 ms chunk at 16 kHz mono


@pytest.fixture
def emulator() -> Iterator[WatermarkEmulator]:
    with WatermarkEmulator() as emu:
        yield emu


@pytest.fixture
def workers(cenv: dict[str, str], emulator: WatermarkEmulator,
            tmp_path: Path) -> Iterator[WorkerProcs]:
    w = WorkerProcs({**cenv, "VOXQ_WS_URL": emulator.url,
                     "VOXQ_CLAIM_TIMEOUT_SECONDS": str(CLAIM_TIMEOUT)}, tmp_path)
    w.start("fa", "fb")
    yield w
    w.stop_all()


async def produce(pub: Publisher, sid: str, n: int, started: asyncio.Event,
                  gate: asyncio.Event | None = None, gate_at: int = 0) -> None:
    """Publish ``n`` watermark chunks at REALTIME pace, then close (eos). With a ``gate``,
    chunk ``gate_at`` waits for it: a test that must see audio flow after a fault holds the
    rest back until the fault is in place, however slow the machine."""
    await pub.open(sid, vendor="voxq-ws")
    started.set()
    pcm = watermark_pcm(n)
    t0 = time.monotonic()
    for i in range(n):
        if gate is not None and i == gate_at:
            await gate.wait()
            t0 = time.monotonic() - i * 0.1 / REALTIME
        await pub.send(pcm[i * CHUNK:(i + 1) * CHUNK])
        ahead = (i + 1) * 0.1 / REALTIME - (time.monotonic() - t0)
        if ahead > 0:
            await asyncio.sleep(ahead)
    await pub.close(timeout=120)


@dataclass
class Snapshot:
    """A session as one node holds it."""

    last_seq: int  # seq of the newest audio entry (-1: none)
    finals: int  # the meta's count of finals

    @classmethod
    def of(cls, node: ClusterNode, keys: Keys, sid: str) -> Snapshot:
        c = node.client(decode=False)
        c.execute_command("READONLY")
        try:
            last: Any = c.xrevrange(keys.audio(sid), count=1)
            finals = c.hget(keys.meta(sid), "finals")
        finally:
            c.close()
        seq = decode_chunk(last[0][1]).seq if last else -1
        return cls(seq, int(finals or 0))


async def wait_ended(r: aioredis.Redis, keys: Keys, sid: str, workers: WorkerProcs) -> None:
    """Until the session reaches a terminal status, any (callers assert which); two minutes at
    most, else the workers' logs."""
    try:
        await wait_status(r, keys, sid, timeout=120)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{workers.logs()}") from None


def report(label: str, stats: PublisherStats, rewritten: int, finals_before: int,
           extra: str = "") -> str:
    line = (f"\n{label}: chunks acknowledged then lost: {stats.lost} {stats.lost_seqs}; "
            f"finals rewritten after the kill: {rewritten} of the {finals_before} written "
            f"before it; producer failures {stats.failures}, resyncs {stats.resyncs}, "
            f"resent-skipped {stats.skipped}, WAITs {stats.waits} (short {stats.wait_shortfalls}, "
            f"degraded {stats.degraded_waits}){extra}")
    print(line)
    return line


async def rewritten_finals(r: aioredis.Redis, keys: Keys, sid: str, before: int,
                           killed_ms: float) -> int:
    """Finals numbered below ``before`` (all written before the kill) whose stream id is later
    than the kill: the promoted replica had lost them and a new owner wrote them again."""
    finals = await read_finals(r, keys, sid)
    return sum(1 for eid, t in finals
               if t.seq is not None and t.seq < before and int(eid.split("-")[0]) > killed_ms)


def quiet_primary(cluster: RedisClusterServer, keys: Keys) -> ClusterNode:
    """A primary that serves none of the shared keys (control stream, live set): killing it
    touches the worker only through the sessions on it, never through its claim loops."""
    busy = {cluster.primary_of_key(k).port for k in (keys.sessions, keys.live)}
    return next(p for p in cluster.primaries() if p.port not in busy)


async def pause_after(r: aioredis.Redis, keys: Keys, sid: str, killed_ms: float) -> float:
    """Seconds from the fault to the first final written after it (how long the transcript
    stood still); inf if none was."""
    later = [int(eid.split("-")[0]) for eid, _ in await read_finals(r, keys, sid)
             if int(eid.split("-")[0]) > killed_ms]
    return (min(later) - killed_ms) / 1000 if later else float("inf")


def start_publisher(csettings: Settings, keys: Keys, wait_replicas: int) -> Publisher:
    return Publisher(csettings.redis_url or "", settings=csettings, keys=keys,
                     wait_replicas=wait_replicas, wait_timeout_ms=500, retry_timeout=120,
                     backoff_max=0.5)


async def test_cluster_failover_command_mid_session(
        cluster: RedisClusterServer, workers: WorkerProcs, csettings: Settings,
        cr: aioredis.Redis, keys: Keys) -> None:
    primary = cluster.nodes[0]
    sid = sid_on(cluster, primary, "mf", keys)
    replica = cluster.replicas_of(primary)[0]
    pub = start_publisher(csettings, keys, 0)
    started = asyncio.Event()
    feeder = asyncio.create_task(produce(pub, sid, N, started))
    await started.wait()
    await wait_finals(cr, keys, sid, 3)
    before = Snapshot.of(primary, keys, sid)
    t0 = time.monotonic()
    await asyncio.to_thread(cluster.failover, replica)
    switched = time.monotonic() - t0
    killed_ms = time.time() * 1000
    await feeder
    await assert_exact(cr, keys, sid, N, logs=workers.logs)
    assert cluster.primary_of_key(keys.meta(sid)) is replica
    rewritten = await rewritten_finals(cr, keys, sid, before.finals, killed_ms)
    paused = await pause_after(cr, keys, sid, killed_ms)
    report("CLUSTER FAILOVER", pub.stats, rewritten, before.finals,
           f"; switch took {switched:.2f}s; next final {paused:.2f}s after it")
    assert pub.stats.lost == 0 and rewritten == 0, workers.logs()


@pytest.fixture
def coverage(request: pytest.FixtureRequest, cluster: RedisClusterServer) -> Iterator[str]:
    """cluster-require-full-coverage for the test: "yes" (Redis's default: every node refuses
    commands while a slot has no live primary) or "no" (the other shards keep serving)."""
    value = getattr(request, "param", "yes")
    for n in cluster.nodes:
        n.call("CONFIG", "SET", "cluster-require-full-coverage", value)
    yield value
    for n in cluster.nodes:
        if n.alive:
            n.call("CONFIG", "SET", "cluster-require-full-coverage", "yes")


@pytest.mark.parametrize("wait_replicas, coverage", [(0, "yes"), (1, "yes"), (0, "no")],
                         ids=["nowait", "wait1", "nowait-partial-coverage"],
                         indirect=["coverage"])
async def test_primary_killed_mid_session(
        wait_replicas: int, coverage: str, cluster: RedisClusterServer, workers: WorkerProcs,
        csettings: Settings, cr: aioredis.Redis, keys: Keys) -> None:
    primary = quiet_primary(cluster, keys)
    sid = sid_on(cluster, primary, f"kill{wait_replicas}", keys)
    other = next(p for p in cluster.primaries() if p is not primary)
    bystander = sid_on(cluster, other, f"by{wait_replicas}", keys)  # on a shard that stays up
    pub = start_publisher(csettings, keys, wait_replicas)
    pub2 = start_publisher(csettings, keys, wait_replicas)
    started, started2 = asyncio.Event(), asyncio.Event()
    feeder = asyncio.create_task(produce(pub, sid, N, started))
    feeder2 = asyncio.create_task(produce(pub2, bystander, N, started2))
    await started.wait()
    await wait_finals(cr, keys, sid, 3)
    before = Snapshot.of(primary, keys, sid)
    killed_ms = time.time() * 1000
    t0 = time.monotonic()
    cluster.kill(primary)
    promoted = await asyncio.to_thread(cluster.wait_promoted, primary)
    promoted_s = time.monotonic() - t0
    await asyncio.gather(feeder, feeder2)
    await wait_ended(cr, keys, sid, workers)
    meta = await wait_status(cr, keys, sid, timeout=1)
    ended = time.monotonic() - t0
    finals = await read_finals(cr, keys, sid)
    got = [w for _, t in finals for w in t.text.split()]
    rewritten = await rewritten_finals(cr, keys, sid, before.finals, killed_ms)
    await assert_exact(cr, keys, bystander, N)
    by_epoch = (await wait_status(cr, keys, bystander)).epoch
    report(f"SIGKILL primary, wait_replicas={wait_replicas}, full coverage {coverage}",
           pub.stats, rewritten,
           before.finals, f"; promoted {promoted.name} after {promoted_s:.2f}s; next final "
           f"{await pause_after(cr, keys, sid, killed_ms):.2f}s after the kill; "
           f"session ended {ended:.2f}s after it; its epoch {meta.epoch}, the "
           f"bystander's (other shard) {by_epoch}")
    assert meta.status is Status.FINISHED, (meta.error, workers.logs())
    lost = {i for lo, hi in pub.stats.lost_seqs for i in range(lo, hi + 1)}
    assert got == [w for i, w in enumerate(expected_words(N)) if i not in lost], \
        missing_and_repeated(got, N) + workers.logs()
    if wait_replicas:
        assert not lost
    if os.environ.get("VOXQ_TEST_SHOW_LOGS"):
        print(workers.logs())


def fill_replication_link(primary: ClusterNode, keys: Keys, sid: str) -> list[str]:
    """With the replica stopped, write large values in the session's slot until the primary
    holds replication data it cannot send (the replica's output buffer on the primary): from
    then on everything the primary applies is only in its memory."""
    c = primary.client(timeout=60)
    written = []
    blob = os.urandom(4 << 20)
    try:
        for i in range(32):
            key = f"{keys.prefix}:{{{sid}}}:ballast{i}"
            c.set(key, blob)
            written.append(key)
            stuck = max(int(x.get("omem", 0)) for x in c.client_list(_type="replica"))
            if stuck > 1 << 20:
                return written
    finally:
        c.close()
    raise AssertionError("the replication link never filled up")


@pytest.mark.parametrize("wait_replicas", [0, 1])
async def test_primary_killed_while_its_replica_lags(
        wait_replicas: int, cluster: RedisClusterServer, workers: WorkerProcs,
        csettings: Settings, cr: aioredis.Redis, keys: Keys) -> None:
    primary = quiet_primary(cluster, keys)
    replica = cluster.replicas_of(primary)[0]
    sid = sid_on(cluster, primary, f"lag{wait_replicas}", keys)
    pub = start_publisher(csettings, keys, wait_replicas)
    started, stalled = asyncio.Event(), asyncio.Event()
    feeder = asyncio.create_task(produce(pub, sid, N, started, gate=stalled, gate_at=N // 3))
    await started.wait()
    await wait_finals(cr, keys, sid, 3)
    assert replica.server.proc is not None
    os.kill(replica.server.proc.pid, signal.SIGSTOP)
    ballast: list[str] = []
    try:
        ballast = await asyncio.to_thread(fill_replication_link, primary, keys, sid)
        at_stop = Snapshot.of(primary, keys, sid)
        stalled.set()  # audio and finals from here on the replica will never see
        await asyncio.sleep(1.5)
        before = Snapshot.of(primary, keys, sid)
        # A loaded machine: wait until audio went on past the stall. With wait_replicas the
        # producer may instead be held back already (its batch in flight at the stall is never
        # confirmed, so it sends nothing newer): a WAIT shortfall shows that.
        async with asyncio.timeout(30):
            while before.last_seq <= at_stop.last_seq and not (
                    wait_replicas and pub.stats.wait_shortfalls >= 1):
                await asyncio.sleep(0.1)
                before = Snapshot.of(primary, keys, sid)
        acked_at_kill = pub.stats.acked_seq
        killed_ms = time.time() * 1000
        t0 = time.monotonic()
        cluster.kill(primary)
    finally:
        os.kill(replica.server.proc.pid, signal.SIGCONT)
    promoted = await asyncio.to_thread(cluster.wait_promoted, primary)
    promoted_s = time.monotonic() - t0
    await feeder
    await wait_ended(cr, keys, sid, workers)
    meta = await wait_status(cr, keys, sid, timeout=1)
    finals = await read_finals(cr, keys, sid)
    got = [w for _, t in finals for w in t.text.split()]
    rewritten = await rewritten_finals(cr, keys, sid, before.finals, killed_ms)
    with contextlib.suppress(Exception):
        await cr.delete(*ballast)
    report(f"SIGKILL primary, replica lagging, wait_replicas={wait_replicas}", pub.stats,
           rewritten, before.finals,
           f"; primary at the stall: seq {at_stop.last_seq}, {at_stop.finals} finals; at the "
           f"kill: seq {before.last_seq}, {before.finals} finals, producer acknowledged up to "
           f"seq {acked_at_kill}; promoted {promoted.name} after {promoted_s:.2f}s; next final "
           f"{await pause_after(cr, keys, sid, killed_ms):.2f}s after the kill")
    assert meta.status is Status.FINISHED, (meta.error, workers.logs())
    lost = {i for lo, hi in pub.stats.lost_seqs for i in range(lo, hi + 1)}
    # the transcript lacks exactly the words of the chunks Redis lost, and repeats nothing
    assert got == [w for i, w in enumerate(expected_words(N)) if i not in lost], \
        missing_and_repeated(got, N) + workers.logs()
    if wait_replicas:  # the producer held back: audio stopped at what replicas confirmed
        assert not lost and pub.stats.wait_shortfalls >= 1 and acked_at_kill <= at_stop.last_seq
    else:
        assert lost and min(lost) > at_stop.last_seq - 1 and max(lost) <= before.last_seq
        assert rewritten >= 1  # the worker's finals since the stall were lost, written again


@pytest.fixture
def slow_finals_emulator() -> Iterator[WatermarkEmulator]:
    """A recognizer that says a final only every 100 words (10 s of audio)."""
    with WatermarkEmulator(words_per_final=100) as emu:
        yield emu


@pytest.fixture
def slow_finals_workers(cenv: dict[str, str], slow_finals_emulator: WatermarkEmulator,
                        tmp_path: Path) -> Iterator[WorkerProcs]:
    # claims outlive the failover, so the owner keeps the session (no takeover replays it)
    w = WorkerProcs({**cenv, "VOXQ_WS_URL": slow_finals_emulator.url,
                     "VOXQ_CLAIM_TIMEOUT_SECONDS": "15"}, tmp_path)
    w.start("fs0", "fs1")
    yield w
    w.stop_all()


async def test_resent_chunks_after_a_failover_are_not_relayed_twice(
        cluster: RedisClusterServer, slow_finals_workers: WorkerProcs,
        slow_finals_emulator: WatermarkEmulator, csettings: Settings, cr: aioredis.Redis,
        keys: Keys) -> None:
    """The worker relays chunks it reads from the primary before replicas confirm them; when
    the primary dies the producer (wait_replicas=1) sends them again, and a worker that wrote
    no final meanwhile (so is not fenced) reads them a second time after its read position."""
    primary = quiet_primary(cluster, keys)
    replica = cluster.replicas_of(primary)[0]
    sid = sid_on(cluster, primary, "dup", keys)
    pub = start_publisher(csettings, keys, 1)
    await pub.open(sid, vendor="voxq-ws")
    pcm = watermark_pcm(N)
    hold = 30
    for i in range(hold):  # 3 s of audio, no final yet (one per 100 words)
        await pub.send(pcm[i * CHUNK:(i + 1) * CHUNK])
        await asyncio.sleep(0.1 / REALTIME)
    await pub.flush()
    assert replica.server.proc is not None
    os.kill(replica.server.proc.pid, signal.SIGSTOP)
    ballast: list[str] = []
    try:
        ballast = await asyncio.to_thread(fill_replication_link, primary, keys, sid)
        for i in range(hold, hold + 10):  # one pipeline the primary takes and cannot replicate
            await pub.send(pcm[i * CHUNK:(i + 1) * CHUNK])
        deadline = time.monotonic() + 10
        while not any(hold + 9 in c.words for c in slow_finals_emulator.connections):
            assert time.monotonic() < deadline, "the worker never relayed the unconfirmed chunks"
            await asyncio.sleep(0.02)  # the worker reads and relays them
        before = Snapshot.of(primary, keys, sid)
        acked_at_kill = pub.acked_seq
        cluster.kill(primary)
    finally:
        os.kill(replica.server.proc.pid, signal.SIGCONT)
    assert acked_at_kill < hold + 9 <= before.last_seq  # relayed, but not yet confirmed
    await asyncio.to_thread(cluster.wait_promoted, primary)
    for i in range(hold + 10, N):
        await pub.send(pcm[i * CHUNK:(i + 1) * CHUNK])
    await pub.close(timeout=120)
    with contextlib.suppress(Exception):
        await cr.delete(*ballast)
    await wait_ended(cr, keys, sid, slow_finals_workers)
    meta = await wait_status(cr, keys, sid, timeout=1)
    got = [w for _, t in await read_finals(cr, keys, sid) for w in t.text.split()]
    report("SIGKILL primary, replica lagging, no final in the window", pub.stats, 0,
           before.finals, f"; primary had seq {before.last_seq} at the kill; epoch {meta.epoch}; "
           f"transcript: {missing_and_repeated(got, N)}")
    assert pub.stats.lost == 0
    await assert_exact(cr, keys, sid, N)  # fails today: w30..w39 said twice
