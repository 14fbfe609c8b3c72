"""A session's fallback recognition vendors, checked against the names the core knows
(``voxq.stt_offers``; the worker's registry must list exactly these, a test keeps the two
equal)."""

from __future__ import annotations

from collections.abc import Iterable

from voxq.errors import InvalidInput
from voxq.stt_offers import RECOGNITION_VENDORS

__all__ = ["MAX_FALLBACKS", "RECOGNITION_VENDORS", "parse_fallback"]

MAX_FALLBACKS = 4


def parse_fallback(raw: str | Iterable[str] | None, primary: str) -> tuple[str, ...]:
    """A session's fallback vendors in order, from ``aws,local`` or a list; InvalidInput for an
    unknown name, a repeat, the primary itself, or more than MAX_FALLBACKS."""
    if raw is None:
        return ()
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    names = tuple(str(x).strip() for x in items if str(x).strip())
    if len(names) > MAX_FALLBACKS:
        raise InvalidInput(f"at most {MAX_FALLBACKS} fallback vendors, not {len(names)}")
    for name in names:
        if name not in RECOGNITION_VENDORS:
            known = ", ".join(sorted(RECOGNITION_VENDORS))
            raise InvalidInput(f"unknown fallback vendor {name[:64]!r}; known: {known}")
    if len(set(names)) != len(names):
        raise InvalidInput(f"fallback vendors repeat a name: {','.join(names)}")
    if primary in names:
        raise InvalidInput(f"the fallback vendors include the session's own vendor {primary!r}")
    return names
