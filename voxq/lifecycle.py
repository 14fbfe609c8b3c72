"""Session lifecycle events on the bus: the global lifecycle stream (created, active, finished,
failed, abandoned) and each session's own status stream; pure encode/decode plus one writer.

The producer appends ``created``; the worker appends ``active`` and the terminal status after
its fenced write. The API's event hub reads the stream for its firehose, for followers that
wait for a session to exist, and to queue webhooks.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from voxq.errors import InvalidInput, MalformedRecord
from voxq.keys import Keys, validate_session_id
from voxq.records import Status

LIFECYCLE_MAXLEN = 100_000  # entries kept (about a day of a busy deployment's events)


def _s(v: object) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


@dataclass(frozen=True, slots=True)
class LifecycleEvent:
    """One entry of the lifecycle stream."""

    session_id: str
    status: Status
    error: str = ""
    vendor: str = ""
    time: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape the firehose and webhooks send."""
        return {"session_id": self.session_id, "status": self.status.value,
                "error": self.error, "vendor": self.vendor, "time": self.time}


STATUS_MAXLEN = 50  # status changes kept per session stream (a handful in practice)


def lifecycle_xadd(keys: Keys, sid: str, status: Status, error: str = "",
                   vendor: str = "") -> tuple[str | int, ...]:
    """The XADD command (as arguments) appending one lifecycle event."""
    return ("XADD", keys.lifecycle, "MAXLEN", "~", LIFECYCLE_MAXLEN, "*",
            "sid", validate_session_id(sid), "status", status.value, "error", error[:2000],
            "vendor", vendor, "time", repr(round(time.time(), 3)))


def decode_lifecycle(fields: Any) -> LifecycleEvent:
    """A lifecycle entry's fields (flat list or mapping); MalformedRecord if malformed."""
    if isinstance(fields, Mapping):
        d = {_s(k): _s(v) for k, v in fields.items()}
    else:
        flat = list(fields)
        d = {_s(flat[i]): _s(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}
    try:
        return LifecycleEvent(session_id=validate_session_id(d.get("sid")),
                              status=Status(d.get("status", "")), error=d.get("error", ""),
                              vendor=d.get("vendor", ""), time=float(d.get("time") or 0.0))
    except (ValueError, InvalidInput) as e:
        raise MalformedRecord(f"malformed lifecycle entry: {e}") from None


def decode_status(fields: Any) -> tuple[Status, str]:
    """A status stream entry's (status, error); MalformedRecord if malformed."""
    if isinstance(fields, Mapping):
        d = {_s(k): _s(v) for k, v in fields.items()}
    else:
        flat = list(fields)
        d = {_s(flat[i]): _s(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}
    try:
        return Status(d.get("status", "")), d.get("error", "")
    except ValueError:
        raise MalformedRecord(f"malformed status entry {d!r:.80}") from None


def decode_vendor_switch(fields: Any) -> dict[str, str] | None:
    """The ``vendor_switched`` event a status stream entry carries (``from``, ``vendor``,
    ``reason``), None for an ordinary status change."""
    if isinstance(fields, Mapping):
        d = {_s(k): _s(v) for k, v in fields.items()}
    else:
        flat = list(fields)
        d = {_s(flat[i]): _s(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}
    if d.get("event") != "vendor_switched":
        return None
    return {"from": d.get("from", ""), "vendor": d.get("vendor", ""),
            "reason": d.get("reason", "")}


async def announce(r: aioredis.Redis, keys: Keys, sid: str, status: Status, error: str = "",
                   vendor: str = "") -> None:
    """Append one lifecycle event (producer and tests; the worker batches its own)."""
    await r.execute_command(*lifecycle_xadd(keys, sid, status, error, vendor))
