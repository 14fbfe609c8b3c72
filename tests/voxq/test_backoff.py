"""The one backoff strategy: exponential steps, equal jitter, capped."""

from __future__ import annotations

import itertools

import pytest

from voxq.backoff import REDIS, VENDOR, Backoff


@pytest.mark.parametrize("b", [REDIS, VENDOR, Backoff(base=1.0, cap=5.0)])
def test_each_delay_is_within_half_and_all_of_its_capped_step(b: Backoff) -> None:
    for n in range(12):
        step = min(b.cap, b.base * 2 ** n)
        got = [b.compute(n) for _ in range(200)]
        assert all(step / 2 <= d <= step for d in got)
        assert len(set(got)) > 1  # jittered


def test_delays_follow_compute_and_reach_the_cap() -> None:
    b = Backoff(base=0.1, cap=1.0)
    got = list(itertools.islice(b.delays(), 10))
    assert got[0] <= 0.1 and all(0.5 <= d <= 1.0 for d in got[4:])


def test_a_nonsense_profile_is_refused() -> None:
    with pytest.raises(ValueError, match="base"):
        Backoff(base=0.0, cap=1.0)
    with pytest.raises(ValueError, match="base"):
        Backoff(base=2.0, cap=1.0)
