"""Server-Sent Events wire format and the resumable event id (pure, no Redis).

An event id carries both stream positions, `<final_id>;<partial_id>`, so a client that
reconnects with `Last-Event-ID` gets exactly the entries of both streams after them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from voxq.errors import InvalidInput

_STREAM_ID = r"[0-9]{1,20}-[0-9]{1,20}"
EVENT_ID_RE = re.compile(rf"({_STREAM_ID});({_STREAM_ID})")


def stream_id_key(eid: str) -> tuple[int, int]:
    """A Redis stream id as a sortable (milliseconds, sequence) pair."""
    ms, _, seq = eid.partition("-")
    return int(ms), int(seq or 0)


MAX_U64 = (1 << 64) - 1  # each part of a Redis stream id is an unsigned 64-bit number

@dataclass(frozen=True, slots=True)
class Cursor:
    """Positions in the final and partial streams up to which events were sent."""

    final: str = "0-0"
    partial: str = "0-0"

    @property
    def event_id(self) -> str:
        """The SSE id naming this position."""
        return f"{self.final};{self.partial}"

    @classmethod
    def parse(cls, raw: str) -> Cursor:
        """Parse an event id this API sent; InvalidInput for anything else."""
        m = EVENT_ID_RE.fullmatch(raw.strip())
        if m is None:
            raise InvalidInput(
                f"malformed Last-Event-ID {raw[:60]!r}: expected '<final_id>;<partial_id>'")
        for part in (m.group(1), m.group(2)):
            if any(int(n) > MAX_U64 for n in part.split("-")):
                raise InvalidInput(f"malformed Last-Event-ID {raw[:60]!r}: a stream id part "
                                   "is larger than 2^64 - 1")
        return cls(final=m.group(1), partial=m.group(2))

    def advanced(self, kind: str, eid: str) -> Cursor:
        """The cursor after sending entry `eid` of the `final` or `partial` stream."""
        return replace(self, final=eid) if kind == "final" else replace(self, partial=eid)


def message(event: str, data: str, event_id: str | None = None) -> str:
    """One SSE message; each line of `data` becomes its own `data:` field."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    body = "".join(f"data: {line}\n" for line in data.split("\n"))
    return f"{head}event: {event}\n{body}\n"


def comment(text: str = "keep-alive") -> str:
    """An SSE comment (ignored by clients; keeps proxies from closing an idle stream)."""
    return f": {text}\n\n"
