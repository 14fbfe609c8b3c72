"""The Redis key schema of DESIGN.md, in one place; ids are validated before they reach a key.

Every key of one session carries the hash tag ``{SID}`` so the whole session lives on one
Redis Cluster slot and multi-key commands (scripts, MULTI) stay inside one session.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from voxq.errors import InvalidSessionId

SESSION_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
TRANSCRIBERS_GROUP = "transcribers"


def validate_session_id(sid: object) -> str:
    """Return ``sid`` if it is a valid session id, else raise InvalidSessionId."""
    if not isinstance(sid, str) or SESSION_ID_RE.fullmatch(sid) is None:
        shown = repr(sid)[:60]
        raise InvalidSessionId(
            f"invalid session id {shown}: use 1-128 characters from A-Z a-z 0-9 . _ -"
        )
    return sid


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names under one prefix."""

    prefix: str = "voxq"

    def meta(self, sid: str) -> str:
        """Hash: the session's format, vendor options, status and checkpoint."""
        return f"{self.prefix}:{{{validate_session_id(sid)}}}:meta"

    def audio(self, sid: str) -> str:
        """Stream: PCM chunks in order; the last entry carries ``eos=1``."""
        return f"{self.prefix}:{{{validate_session_id(sid)}}}:audio"

    def final(self, sid: str) -> str:
        """Stream: final segments, durable and ordered."""
        return f"{self.prefix}:{{{validate_session_id(sid)}}}:final"

    def partial(self, sid: str) -> str:
        """Stream: partial hypotheses, capped."""
        return f"{self.prefix}:{{{validate_session_id(sid)}}}:partial"

    def status(self, sid: str) -> str:
        """Stream: the session's status changes (``status``, ``error``), written by the worker
        in the same fenced script as the meta hash, so live followers need not poll."""
        return f"{self.prefix}:{{{validate_session_id(sid)}}}:status"

    def session_keys(self, sid: str) -> tuple[str, str, str, str, str]:
        """All keys of one session (for retention TTLs and deletion); meta first, status second."""
        return (self.meta(sid), self.status(sid), self.audio(sid), self.final(sid),
                self.partial(sid))

    @property
    def lifecycle(self) -> str:
        """Stream (capped): every session's lifecycle events (created, active, terminal), for
        the API's firehose, ``?wait=`` followers and webhooks."""
        return f"{self.prefix}:lifecycle"

    @property
    def sessions(self) -> str:
        """Control stream: one entry per new session; consumer group ``transcribers``."""
        return f"{self.prefix}:sessions"

    @property
    def index(self) -> str:
        """Sorted set: every session by creation time."""
        return f"{self.prefix}:index"

    def tenant_index(self, tenant: str) -> str:
        """Sorted set: one tenant's sessions by creation time (listing stays per tenant)."""
        return f"{self.prefix}:index:tenant:{{{tenant}}}"

    @property
    def tenant_backfill(self) -> str:
        """Marker: sessions from before tenants were added to the default tenant's index."""
        return f"{self.prefix}:index:tenant-backfilled"

    @property
    def live(self) -> str:
        """Sorted set: sessions a worker currently drives, scored by last claim refresh."""
        return f"{self.prefix}:live"

    def tts(self, job: str) -> str:
        """Hash: a TTS job's MP3 bytes and metadata."""
        return f"{self.prefix}:tts:{validate_session_id(job)}"
