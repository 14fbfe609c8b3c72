"""Transcripts back on the ingest socket: a session's partials and finals, read from the bus
(so they survive a worker crash), as JSON text frames (docs/protocols/ingest.md)."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from producer.ingest.core import Gateway
from voxq.errors import MalformedRecord
from voxq.records import SessionMeta, Transcript, decode_transcript
from voxq.redis_conn import connect

log = logging.getLogger("voxq.ingest")


def result_message(t: Transcript) -> str:
    """One result as the gateway sends it."""
    d: dict[str, Any] = {"event": "final" if t.is_final else "partial", "text": t.text,
                         "start": t.start, "end": t.end, "channel": t.channel}
    if t.speaker is not None:
        d["speaker"] = t.speaker
    if t.words:
        d["words"] = [{"text": w.text, "start": w.start, "end": w.end} for w in t.words]
    return json.dumps(d, separators=(",", ":"))


def entry_message(sid: str, eid: Any, fields: Any) -> str | None:
    """The message of one stored transcript entry; None (with a warning naming the entry) for
    one nobody can decode, which the API counts as unreadable too."""
    try:
        return result_message(decode_transcript(fields))
    except MalformedRecord as e:
        log.warning("session %s: transcript entry %r skipped: %s", sid, eid, e)
        return None


def end_message(meta: SessionMeta) -> str:
    """The last frame: how the session ended."""
    return json.dumps({"event": "end", "session": meta.session_id, "status": meta.status.value,
                       "error": meta.error}, separators=(",", ":"))


async def follow(gw: Gateway, sid: str, send: Callable[[str], Awaitable[None]],
                 block_ms: int = 500) -> None:
    """Send every partial and final of ``sid`` until the session ends, then an ``end`` frame."""
    r = connect(gw.url)
    fkey, pkey, mkey = gw.keys.final(sid), gw.keys.partial(sid), gw.keys.meta(sid)
    last = {fkey: "0-0", pkey: "0-0"}
    try:
        while True:
            got: Any = await r.xread(last, count=100, block=block_ms)  # type: ignore[arg-type]
            for key, entries in got or []:
                k = key.decode() if isinstance(key, bytes) else key
                for eid, fields in entries:
                    last[k] = eid.decode() if isinstance(eid, bytes) else eid
                    if (message := entry_message(sid, last[k], fields)) is not None:
                        await send(message)
            if got:
                continue
            h = await r.hgetall(mkey)
            if not h:
                return
            meta = SessionMeta.from_hash(h)
            if meta.status.terminal:
                tail: Any = await r.xrange(fkey, min="(" + last[fkey], max="+")
                for eid, fields in tail:
                    if (message := entry_message(sid, eid, fields)) is not None:
                        await send(message)
                await send(end_message(meta))
                return
    finally:
        await r.aclose()
