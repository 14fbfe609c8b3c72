"""Vendor failover against two watermark emulators: the primary (`deepgram`, the emulator in
Deepgram's dialect) dies in many sessions at random points — connection refused, 5xx at the
handshake, auth refused, the socket closed mid-stream — and every session ends with the
exact transcript from the fallback (`voxq-ws`): nothing lost, nothing said twice, each final
naming its vendor and the switch recorded on the session."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from tests.emulators.watermark import WatermarkEmulator, expected_words, watermark_pcm
from tests.support import create, publish, wait_finished, wait_status
from voxq import metrics
from voxq.aio import within
from voxq.embedded_redis import free_port
from voxq.keys import Keys
from voxq.lifecycle import decode_vendor_switch
from voxq.records import SessionMeta, Status, Transcript
from voxq.sessions import read_finals
from voxq.settings import Settings
from workers.transcriber import Transcriber
from workers.vendors.deepgram.stt import DeepgramRecognizer

KEY = "dg-test-key"


@pytest.fixture
def primary() -> Iterator[WatermarkEmulator]:
    with WatermarkEmulator(dialect="deepgram", key=KEY) as emu:
        yield emu


@pytest.fixture
def fallback() -> Iterator[WatermarkEmulator]:
    with WatermarkEmulator() as emu:
        yield emu


@pytest.fixture(autouse=True)
def fast_deepgram(monkeypatch: pytest.MonkeyPatch) -> None:
    # Deepgram's documented 1.25x replay ceiling would make each test minutes long; the
    # emulator allows 50x.
    monkeypatch.setattr(DeepgramRecognizer, "max_replay_speed", 20.0)


def worker_settings(settings: Settings, primary: WatermarkEmulator,
                    fallback: WatermarkEmulator, **changes: object) -> Settings:
    return settings.model_copy(update={
        "deepgram_url": primary.url, "deepgram_api_key": SecretStr(KEY),
        "voxqws_url": fallback.url, "failover_attempts": 2, "failover_seconds": 20.0,
        "breaker_threshold": 10_000, **changes})


async def run_worker(s: Settings, name: str) -> tuple[Transcriber, asyncio.Event,
                                                       asyncio.Task[None]]:
    assert s.redis_url
    w = Transcriber(s, s.redis_url, name=name)
    stop = asyncio.Event()
    return w, stop, asyncio.create_task(w.run(stop))


@pytest.fixture
async def worker(settings: Settings, primary: WatermarkEmulator,
                 fallback: WatermarkEmulator) -> AsyncIterator[Transcriber]:
    w, stop, task = await run_worker(worker_settings(settings, primary, fallback), "w-fo")
    yield w
    stop.set()
    await within(task, 30)


async def finals(r: aioredis.Redis, keys: Keys, sid: str) -> list[Transcript]:
    return [t for _, t in await read_finals(r, keys, sid)]


async def switches(r: aioredis.Redis, keys: Keys, sid: str) -> list[dict[str, str]]:
    out = []
    for _, fields in await r.xrange(keys.status(sid)):
        ev = decode_vendor_switch(fields)
        if ev is not None:
            out.append(ev)
    return out


async def check_exact(r: aioredis.Redis, keys: Keys, sid: str, n: int) -> SessionMeta:
    """The session finished with exactly w0 … w(n-1), in time order, ending at n × 100 ms."""
    meta = await wait_finished(r, keys, sid)
    got = await finals(r, keys, sid)
    assert [w for t in got for w in t.text.split()] == expected_words(n), sid
    ends = [t.end for t in got]
    assert ends == sorted(ends) and ends[-1] == pytest.approx(n / 10)
    return meta


async def run_sessions(r: aioredis.Redis, keys: Keys, sizes: dict[str, int]) -> None:
    for sid in sizes:
        await create(r, keys, sid, vendor="deepgram", fallback=("voxq-ws",))
    await asyncio.gather(*(publish(r, keys, sid, watermark_pcm(n), realtime=20)
                           for sid, n in sizes.items()))


@pytest.mark.parametrize("fault", ["refused", "handshake-5xx", "auth"])
async def test_primary_down_at_connect_fails_over_exactly(
        fault: str, settings: Settings, primary: WatermarkEmulator, fallback: WatermarkEmulator,
        r: aioredis.Redis, keys: Keys) -> None:
    changes: dict[str, object] = {}
    if fault == "refused":
        changes["deepgram_url"] = f"ws://127.0.0.1:{free_port()}/v1/listen"  # nobody listens
    else:
        status = 503 if fault == "handshake-5xx" else 401
        primary.faults.refuse_status = lambda n: status
    _w, stop, task = await run_worker(worker_settings(settings, primary, fallback, **changes),
                                     "w-fo")
    try:
        rng = random.Random(fault)
        sizes = {f"{fault}-{i}": rng.randint(20, 80) for i in range(4)}
        await run_sessions(r, keys, sizes)
        for sid, n in sizes.items():
            meta = await check_exact(r, keys, sid, n)
            assert (meta.active_vendor, meta.vendor_switches) == ("voxq-ws", 1)
            assert {t.vendor for t in await finals(r, keys, sid)} == {"voxq-ws"}
            [ev] = await switches(r, keys, sid)
            assert (ev["from"], ev["vendor"]) == ("deepgram", "voxq-ws")
            if fault != "refused":
                assert ("401" if fault == "auth" else "503") in ev["reason"]
                assert KEY not in ev["reason"]
        if fault == "auth":  # not retryable: one handshake per session, then the fallback
            assert primary.handshakes == len(sizes)
        elif fault == "handshake-5xx":  # retried up to the budget (2 attempts) first
            assert primary.handshakes == 2 * len(sizes)
    finally:
        stop.set()
        await within(task, 30)


@pytest.mark.parametrize("seed", [1, 2])
async def test_primary_dying_mid_stream_fails_over_without_loss_or_repeat(
        seed: int, worker: Transcriber, primary: WatermarkEmulator, r: aioredis.Redis,
        keys: Keys) -> None:
    rng = random.Random(seed)
    sizes = {f"mid{seed}-{i}": rng.randint(90, 150) for i in range(6)}
    plan = [rng.randint(5, 85) for _ in sizes]
    # each session's first connection drops after a random number of frames; from then on
    # the vendor is down (every later handshake answers 503)
    primary.faults.drop_after_frames = lambda n: plan[n] if n < len(plan) else None
    primary.faults.refuse_status = lambda n: 503 if n >= len(plan) else None
    await run_sessions(r, keys, sizes)
    spoke = 0
    for sid, n in sizes.items():
        meta = await check_exact(r, keys, sid, n)
        assert (meta.active_vendor, meta.vendor_switches) == ("voxq-ws", 1)
        vendors = [t.vendor for t in await finals(r, keys, sid)]
        # the primary's finals first, then only the fallback's
        k = vendors.count("deepgram")
        assert vendors == ["deepgram"] * k + ["voxq-ws"] * (len(vendors) - k)
        spoke += k > 0
    assert spoke > 0  # the primary did produce finals before it died
    assert all(c.closed_by_fault for c in primary.connections[:len(plan)])


async def test_sessions_without_fallback_fail_as_before(
        worker: Transcriber, primary: WatermarkEmulator, r: aioredis.Redis, keys: Keys) -> None:
    primary.faults.refuse_status = lambda n: 401
    await create(r, keys, "alone", vendor="deepgram")
    await publish(r, keys, "alone", watermark_pcm(10))
    meta = await wait_status(r, keys, "alone")
    assert meta.status is Status.FAILED and "401" in meta.error
    assert meta.vendor_switches == 0 and primary.handshakes == 1


async def test_a_taken_over_session_stays_on_its_fallback(
        settings: Settings, primary: WatermarkEmulator, fallback: WatermarkEmulator,
        r: aioredis.Redis, keys: Keys) -> None:
    """The switch is on the meta: a worker that takes the session over resumes on the
    fallback, from the checkpoint, without trying the dead primary again."""
    primary.faults.refuse_status = lambda n: 401
    s = worker_settings(settings, primary, fallback, claim_timeout_seconds=1.0)
    _w1, stop1, task1 = await run_worker(s, "w-a")
    n = 150
    await create(r, keys, "tk", vendor="deepgram", fallback=("voxq-ws",))
    feeder = asyncio.create_task(publish(r, keys, "tk", watermark_pcm(n), realtime=4))
    try:
        while not (await finals(r, keys, "tk")):
            await asyncio.sleep(0.05)
        stop1.set()  # drains: hands the session to the next worker
        await within(task1, 30)
        _w2, stop2, task2 = await run_worker(s, "w-b")
        try:
            await feeder
            meta = await check_exact(r, keys, "tk", n)
        finally:
            stop2.set()
            await within(task2, 30)
    finally:
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
    assert meta.vendor_switches == 1 and primary.handshakes == 1
    assert {t.vendor for t in await finals(r, keys, "tk")} == {"voxq-ws"}


# --- the fleet-wide circuit breaker ---------------------------------------------------------


async def test_breaker_counts_opens_probes_and_closes(r: aioredis.Redis, keys: Keys,
                                                      settings: Settings) -> None:
    from workers.batcher import Batcher
    from workers.breaker import Admission, Breaker

    s = settings.model_copy(update={"breaker_threshold": 3, "breaker_window_seconds": 60.0,
                                    "breaker_probe_seconds": 600.0})
    b = Breaker(Batcher(r), keys, s)
    other = Breaker(Batcher(r), keys, s)  # a second worker sees the same state
    try:
        assert [await b.failed("deepgram") for _ in range(2)] == [False, False]
        assert await other.admit("deepgram") is Admission.CLOSED
        trips = metrics.BREAKER_TRIPS.labels("deepgram")._value.get()
        assert await other.failed("deepgram") is True  # the third failure, on another worker
        assert await b.failed("deepgram") is True  # still open; opened once
        assert metrics.BREAKER_TRIPS.labels("deepgram")._value.get() == trips + 1
        assert await b.admit("deepgram") is Admission.OPEN  # no probe yet: interval not over
        assert await b.admit("aws") is Admission.CLOSED  # one breaker per vendor
        await r.hset(keys.breaker("deepgram"), "probe", 0)  # the probe interval has passed
        assert await b.admit("deepgram") is Admission.PROBE
        assert await other.admit("deepgram") is Admission.OPEN  # one probe per interval
        assert await b.succeeded("deepgram") is True
        assert await other.admit("deepgram") is Admission.CLOSED
        assert not await r.exists(keys.breaker("deepgram"))
        assert await b.succeeded("deepgram") is False  # closed already: nothing to do
        await r.hset(keys.breaker("aws"), mapping={"start": 1, "n": 2})  # an old window
        assert await b.failed("aws") is False
        assert await r.hget(keys.breaker("aws"), "n") == b"1"  # counting restarted
        assert 0 < await r.ttl(keys.breaker("aws")) <= b.ttl
    finally:
        await b.batcher.aclose()
        await other.batcher.aclose()


async def test_outage_under_load_trips_the_breaker_and_recovers_after_the_probe(
        settings: Settings, primary: WatermarkEmulator, fallback: WatermarkEmulator,
        r: aioredis.Redis, keys: Keys) -> None:
    primary.faults.refuse_status = lambda n: 503  # the primary is down
    s = worker_settings(settings, primary, fallback, breaker_threshold=4,
                        breaker_window_seconds=120.0, breaker_probe_seconds=600.0)
    _w, stop, task = await run_worker(s, "w-br")
    try:
        # 1. load during the outage: the first sessions burn their budget (2 attempts each)
        # until the fleet has seen 4 failures; every session ends exact on the fallback
        first = {f"a{i}": 30 for i in range(4)}
        await run_sessions(r, keys, first)
        for sid, n in first.items():
            await check_exact(r, keys, sid, n)
        assert await r.hget(keys.breaker("deepgram"), "open") is not None
        tried = primary.handshakes
        assert tried <= 2 * len(first)

        # 2. the breaker is open: new sessions start on their fallback without touching it
        second = {f"b{i}": 30 for i in range(6)}
        await run_sessions(r, keys, second)
        for sid, n in second.items():
            meta = await check_exact(r, keys, sid, n)
            assert meta.vendor_switches == 1
            [ev] = await switches(r, keys, sid)
            assert "circuit breaker is open" in ev["reason"]
        assert primary.handshakes == tried

        # 3. the vendor is back; once the probe interval has passed, the next session probes
        # it, its first final closes the breaker, and sessions run on the primary again
        primary.faults.refuse_status = lambda n: None
        await r.hset(keys.breaker("deepgram"), "probe", 0)
        for sid in ("probe", "after"):
            await run_sessions(r, keys, {sid: 30})
            meta = await check_exact(r, keys, sid, 30)
            assert meta.vendor_switches == 0
            assert {t.vendor for t in await finals(r, keys, sid)} == {"deepgram"}
            assert not await r.exists(keys.breaker("deepgram"))
    finally:
        stop.set()
        await within(task, 30)
