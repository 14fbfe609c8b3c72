"""The fleet-wide circuit breaker's counting (workers/breaker.py) against a real Redis, on a
clock the test moves: a sliding window, so a burst across a window edge trips it; failures
spread thinner than the threshold never do; and only failures that speak of the vendor's
health are counted."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from voxq.keys import Keys
from voxq.settings import Settings
from workers.batcher import Batcher
from workers.breaker import Admission, Breaker, is_outage
from workers.vendors.base import VendorAuthError, VendorRejected, VendorRetryable

pytestmark = pytest.mark.timeout(60)


class Clock:
    """A wall clock the test sets."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def breaker(r: aioredis.Redis, keys: Keys,
                  settings: Settings) -> AsyncIterator[tuple[Breaker, Clock]]:
    clock = Clock()
    s = settings.model_copy(update={"breaker_threshold": 10, "breaker_window_seconds": 30.0,
                                    "breaker_probe_seconds": 600.0})
    b = Breaker(Batcher(r), keys, s, clock=clock)
    try:
        yield b, clock
    finally:
        await b.batcher.aclose()


async def fail(b: Breaker, clock: Clock, times: int, at: float, step: float = 0.0) -> bool:
    """``times`` failures from ``at`` on, ``step`` seconds apart; whether the breaker is open."""
    opened = False
    for i in range(times):
        clock.now = at + i * step
        opened = await b.failed("deepgram")
    return opened


async def test_a_burst_across_a_window_edge_trips_it(breaker: tuple[Breaker, Clock]) -> None:
    b, clock = breaker
    start = clock.now
    assert not await fail(b, clock, 1, start)  # opens the fixed window at `start`
    # 6 failures in the last 3 s of the first window, 4 in the first 2 s of the next: 10 within
    # 5 s, which a fixed window would split into 7 and 4 and never count as an outage
    assert not await fail(b, clock, 6, start + 27, 0.5)
    assert await fail(b, clock, 4, start + 30.5, 0.5)
    assert await b.admit("deepgram") is Admission.OPEN


async def test_failures_thinner_than_the_threshold_never_trip_it(
        breaker: tuple[Breaker, Clock]) -> None:
    b, clock = breaker
    # one failure every 4 s for 5 minutes: about 7.5 per 30 s window, below 10
    assert not await fail(b, clock, 75, clock.now, 4.0)
    assert await b.admit("deepgram") is Admission.CLOSED


async def test_an_old_window_is_forgotten(breaker: tuple[Breaker, Clock], r: aioredis.Redis,
                                          keys: Keys) -> None:
    b, clock = breaker
    start = clock.now
    assert not await fail(b, clock, 9, start)
    # two windows later the nine are forgotten: nine more do not trip it, a tenth does
    assert not await fail(b, clock, 9, start + 61)
    assert await r.hget(keys.breaker("deepgram"), "prev") == b"0"
    assert await fail(b, clock, 1, start + 61.5)


def test_only_failures_of_the_vendor_itself_count() -> None:
    assert is_outage(VendorRetryable("socket closed (1006)", vendor="deepgram"))
    assert is_outage(VendorAuthError("HTTP 401: invalid credentials", vendor="deepgram"))
    assert not is_outage(VendorRejected("unsupported language xx-XX", vendor="deepgram"))


@pytest.mark.parametrize(("status", "counted"), [(400, False), (503, True)])
async def test_a_sessions_own_refusal_is_not_counted_an_outage_is(
        status: int, counted: bool, settings: Settings, r: aioredis.Redis, keys: Keys) -> None:
    """Sessions whose request the vendor refuses (400) fail over without counting on the
    vendor's breaker; the same sessions meeting a 503 count every attempt and trip it."""
    from tests.emulators.watermark import WatermarkEmulator
    from tests.workers.test_failover import check_exact, run_sessions, run_worker, worker_settings
    from voxq.aio import within

    with (WatermarkEmulator(dialect="deepgram", key="dg-test-key") as primary,
          WatermarkEmulator() as fallback):
        primary.faults.refuse_status = lambda n: status
        s = worker_settings(settings, primary, fallback, breaker_threshold=3,
                            breaker_window_seconds=600.0, breaker_probe_seconds=600.0)
        _w, stop, task = await run_worker(s, f"w-br-{status}")
        try:
            sizes = {f"br{status}-{i}": 20 + 5 * i for i in range(4)}
            await run_sessions(r, keys, sizes)
            for sid, n in sizes.items():
                await check_exact(r, keys, sid, n)
        finally:
            stop.set()
            await within(task, 30)
    h = await r.hgetall(keys.breaker("deepgram"))
    if counted:
        assert b"open" in h, h
    else:
        assert primary.handshakes == len(sizes) and h == {}, h
