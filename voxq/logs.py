"""Process logging: one format for every command, and a bound on repeated records.

A flood (thousands of clients, a resource running out) repeats the same record many times a
second; :class:`RepeatFilter` lets a few of each through per window and then says how many it
held back, so the log of a process under attack stays small and still tells what happened.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
NOISY = ("httpx", "httpcore", "websockets")


@dataclass(slots=True)
class _Seen:
    window_start: float
    passed: int = 1
    held: int = 0


class RepeatFilter(logging.Filter):
    """At most ``burst`` records with the same logger, level and message template pass per
    ``window`` seconds; the first record after a window with held-back ones says how many."""

    def __init__(self, burst: int = 5, window: float = 60.0, max_keys: int = 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.burst, self.window, self.max_keys, self.clock = burst, window, max_keys, clock
        self._seen: OrderedDict[tuple[str, int, str], _Seen] = OrderedDict()

    def filter(self, record: logging.LogRecord) -> bool:
        template = record.msg if isinstance(record.msg, str) else type(record.msg).__name__
        key = (record.name, record.levelno, template)
        now = self.clock()
        seen = self._seen.get(key)
        if seen is None or now - seen.window_start >= self.window:
            if seen is not None and seen.held:
                record.msg = (f"{template} [{seen.held} more like this held back in the last "
                              f"{self.window:g} s]")
            self._seen[key] = _Seen(now)
            self._seen.move_to_end(key)
            while len(self._seen) > self.max_keys:
                self._seen.popitem(last=False)
            return True
        if seen.passed < self.burst:
            seen.passed += 1
            return True
        seen.held += 1
        return False


def configure(level: str | int, burst: int = 5, window: float = 60.0) -> None:
    """Log to stderr in voxq's format, with repeats bounded on the handler (so records that
    propagate from any library, uvicorn's and asyncio's included, are bounded too)."""
    logging.basicConfig(level=level, format=FORMAT, stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RepeatFilter) for f in handler.filters):
            handler.addFilter(RepeatFilter(burst=burst, window=window))
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
