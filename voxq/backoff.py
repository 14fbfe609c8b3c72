"""The one retry-delay strategy of voxq: exponential with equal jitter.

Failure ``n`` (0 for the first) waits between half and all of ``min(cap, base · 2ⁿ)``:
retries from many sessions or processes spread out instead of arriving together, and no wait
is ever shorter than half its step. The arithmetic is redis-py's ``EqualJitterBackoff``; this
module only names the profiles voxq uses, so every loop that waits out a failure (Redis
unreachable, a vendor failing, a publish retried) backs off the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from redis.backoff import EqualJitterBackoff


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays for consecutive failures: ``compute(failures)``, or a generator of them."""

    base: float
    cap: float
    _impl: EqualJitterBackoff = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0 < self.base <= self.cap:
            raise ValueError(f"backoff needs 0 < base <= cap, not base={self.base} "
                             f"cap={self.cap}")
        object.__setattr__(self, "_impl", EqualJitterBackoff(cap=self.cap, base=self.base))

    def compute(self, failures: int) -> float:
        """Seconds to wait after ``failures`` consecutive failures (0: the first)."""
        return float(self._impl.compute(max(0, failures)))

    def delays(self) -> Iterator[float]:
        """The waits of one run of failures, first to last (endless: the caller stops)."""
        n = 0
        while True:
            yield self.compute(n)
            n += 1


#: Redis unreachable (a restart, a failover): try again soon, then every 1-2 s
REDIS = Backoff(base=0.05, cap=2.0)
#: a vendor session failed and is retried from the checkpoint
VENDOR = Backoff(base=0.5, cap=15.0)
