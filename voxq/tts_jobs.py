"""TTS job records in Redis, as the API and the TTS worker share them: the request model, the
job and batch records (``PREFIX:tts:{ID}``, DESIGN.md), their updates (finished with audio, also
from the content cache), their public status and audio, and enqueueing on RQ.

The TTS worker (``workers.tts.jobs``) executes jobs and writes their progress; planning a
request against its vendor's offer is ``voxq.tts_plan``. A job's status is a
``voxq.records.JobStatus``, the session ``Status``'s sibling.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal, Protocol

import redis
import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, Field

from voxq.errors import InvalidInput, VoxqError
from voxq.keys import Keys
from voxq.mp3_frames import duration
from voxq.records import JobStatus as Status
from voxq.settings import Settings
from voxq.tts_offers import ACCEPTED

JOB_FUNCTION = "workers.tts.jobs.run_job"
FAILURE_CALLBACK = "workers.tts.jobs.on_job_failure"
JOB_ID_RE = re.compile(r"[0-9a-f]{32}")
BATCH_ID_RE = re.compile(r"batch-[0-9a-f]{32}")
LOST_AFTER_SECONDS = 30.0
"""A record still queued/started with no RQ job behind it for this long was lost."""

RqStatusReader = Callable[[str], Awaitable[str | None]]
"""Reads RQ's own status of a job (from the Redis RQ uses)."""


TERMINAL = frozenset(s for s in Status if s.terminal)


class TextTooLong(InvalidInput):
    """Text over the configured limit (the API answers 413)."""


class TooManyItems(InvalidInput):
    """A batch with more items than allowed (the API answers 413)."""


class UnknownJob(VoxqError, LookupError):
    """No TTS job or batch with this id (never existed, or expired)."""


# --- request ------------------------------------------------------------------------------------

class TtsRequest(BaseModel):
    """One text-to-speech request as the API and the CLI take it."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="Text to speak (plain text).")
    vendor: str | None = Field(default=None, description="Speech vendor; default VOXQ_TTS_DEFAULT_VENDOR.")
    voice: str | None = Field(default=None, description="Vendor voice; default: the vendor's first.")
    speed: float = Field(default=1.0, ge=ACCEPTED["speed"].min, le=ACCEPTED["speed"].max,
                         description="Speaking rate, 1.0 = normal.")
    volume: float = Field(default=1.0, ge=ACCEPTED["volume"].min, le=ACCEPTED["volume"].max,
                          description="Loudness, 1.0 = normal.")
    pitch: float = Field(default=1.0, ge=ACCEPTED["pitch"].min, le=ACCEPTED["pitch"].max,
                         description="Pitch, 1.0 = normal.")
    sample_rate: int = Field(default=24000, description="Output sample rate in Hz.")
    format: Literal["mp3"] = Field(default="mp3", description="Output format.")
    cache: bool = Field(default=True, description="false: synthesise afresh even if cached.")


class PlannedJob(Protocol):
    """A validated request as a record stores it (``voxq.tts_plan.Plan``)."""

    @property
    def vendor(self) -> str: ...

    @property
    def voice(self) -> str: ...

    @property
    def chars(self) -> int: ...

    def to_json(self) -> str: ...


def new_job_id() -> str:
    """A fresh job id (32 hex digits; also the RQ job id)."""
    return uuid.uuid4().hex


def new_batch_id() -> str:
    """A fresh batch id."""
    return f"batch-{uuid.uuid4().hex}"


def check_job_id(job_id: str) -> str:
    """``job_id`` if it has the shape of a job id, else UnknownJob (never reaches a key)."""
    if not JOB_ID_RE.fullmatch(job_id):
        raise UnknownJob(f"no TTS job {job_id[:40]!r}")
    return job_id


def check_batch_id(batch_id: str) -> str:
    """``batch_id`` if it has the shape of a batch id, else UnknownJob."""
    if not BATCH_ID_RE.fullmatch(batch_id):
        raise UnknownJob(f"no TTS batch {batch_id[:46]!r}")
    return batch_id


def job_timeout(settings: Settings, text_chars: int) -> int:
    """RQ job timeout in seconds, growing with the text."""
    return int(settings.tts_job_timeout_base_seconds
               + settings.tts_job_timeout_per_char_seconds * text_chars + 0.999)


def retry_intervals(settings: Settings) -> list[int]:
    """One wait per retry (the configured list, its last value repeated)."""
    waits = list(settings.tts_retry_backoff_seconds)
    n = settings.tts_retries
    return (waits + [waits[-1]] * n)[:n]


# --- the record ---------------------------------------------------------------------------------

def _now() -> str:
    return repr(time.time())


Fields = dict[Any, Any]
"""Hash fields for HSET (redis-py's own mapping type is too narrow for mypy to infer)."""


def record_fields(plan_: PlannedJob, *, batch_id: str | None = None, tenant: str = "") -> Fields:
    """The fields of a new job record (``tenant``: the creating key's; "" is the default)."""
    return {"kind": "job", "status": Status.QUEUED.value, "request": plan_.to_json(),
            "vendor": plan_.vendor, "voice": plan_.voice, "chars": str(plan_.chars),
            "created": _now(), "updated": _now(), "progress": "0", "attempts": "0",
            "error": "", "batch": batch_id or "", "tenant": tenant}


async def create_records(r: aioredis.Redis, keys: Keys, jobs: Sequence[tuple[str, PlannedJob]],
                         ttl: int, *, batch_id: str | None = None, tenant: str = "") -> None:
    """Write new job records (and the batch record) with the result TTL, in one round trip."""
    async with r.pipeline(transaction=False) as pipe:
        for job_id, p in jobs:
            pipe.hset(keys.tts(job_id), mapping=record_fields(p, batch_id=batch_id,
                                                              tenant=tenant))
            pipe.expire(keys.tts(job_id), ttl)
        if batch_id is not None:
            pipe.hset(keys.tts(batch_id), mapping={
                "kind": "batch", "jobs": json.dumps([j for j, _ in jobs]), "created": _now(),
                "tenant": tenant})
            pipe.expire(keys.tts(batch_id), ttl)
        await pipe.execute()


async def update_record(r: aioredis.Redis, key: str, ttl: int,
                        **fields: str | int | float | bytes) -> None:
    """HSET + EXPIRE, only while the record exists (an expired job is not resurrected)."""
    if not await r.exists(key):
        return
    mapping: Fields = {"updated": _now(), **fields}
    async with r.pipeline(transaction=True) as pipe:
        pipe.hset(key, mapping=mapping)
        pipe.expire(key, ttl)
        await pipe.execute()


async def finish_record(r: aioredis.Redis, keys: Keys, job_id: str, mp3: bytes, seconds: float,
                        ttl: int, *, cached: bool) -> None:
    """Store the MP3 and mark the job finished."""
    await update_record(r, keys.tts(job_id), ttl, status=Status.FINISHED.value, audio=mp3,
                        bytes=len(mp3), duration=f"{seconds:.3f}", progress="1", error="",
                        cached=int(cached), finished=_now())


async def finish_from_cache(r: aioredis.Redis, keys: Keys, job_id: str, mp3: bytes, ttl: int) -> None:
    """Mark a just-created job finished with cached audio (no vendor call, no RQ job)."""
    seconds = await asyncio.to_thread(duration, mp3)
    await finish_record(r, keys, job_id, mp3, seconds, ttl, cached=True)


_PUBLIC = ("status", "vendor", "voice", "chars", "created", "updated", "started", "finished",
           "progress", "parts_done", "parts_total", "attempts", "error", "duration", "bytes",
           "cached", "batch", "kind")


def _num(value: bytes | None, cast: Callable[[str], Any] = float) -> Any:
    if value in (None, b""):
        return None
    assert value is not None
    return cast(value.decode())


async def _rq_status(r: aioredis.Redis, job_id: str) -> str | None:
    """RQ's own status of the job (``rq:job:ID``), or None when RQ holds no such job."""
    raw: Any = await r.hget(f"rq:job:{job_id}", "status")
    return raw.decode() if raw else None


async def job_status(r: aioredis.Redis, keys: Keys, job_id: str,
                     rq_status: RqStatusReader | None = None) -> dict[str, Any]:
    """The public status of one job; UnknownJob if there is no such record. ``rq_status`` reads
    RQ's status of a job when RQ runs on another Redis than ``r``."""
    key = keys.tts(check_job_id(job_id))
    values: list[Any] = await r.hmget(key, list(_PUBLIC))
    raw = dict(zip(_PUBLIC, values, strict=True))
    if raw["kind"] != b"job":
        raise UnknownJob(f"no TTS job {job_id!r} (unknown, or expired)")
    return await _public(r, job_id, raw, rq_status)


async def _public(r: aioredis.Redis, job_id: str, raw: Mapping[str, bytes | None],
                  rq_status_of: RqStatusReader | None = None) -> dict[str, Any]:
    """Shape one record for the API; a non-terminal record RQ no longer backs is reported failed."""
    status = Status((raw["status"] or b"queued").decode())
    error = (raw["error"] or b"").decode() or None
    if status not in TERMINAL:
        rq_status = await (rq_status_of(job_id) if rq_status_of else _rq_status(r, job_id))
        age = time.time() - (_num(raw["updated"]) or time.time())
        if rq_status in ("failed", "stopped", "canceled"):
            status, error = Status.FAILED, error or f"the worker lost the job (RQ status {rq_status})"
        elif rq_status is None and age > LOST_AFTER_SECONDS:
            status, error = Status.FAILED, error or "the job was lost (no RQ job holds it any more)"
    return {
        "job_id": job_id,
        "status": status.value,
        "progress": _num(raw["progress"]) or 0.0,
        "parts_done": _num(raw["parts_done"], int),
        "parts_total": _num(raw["parts_total"], int),
        "vendor": (raw["vendor"] or b"").decode(),
        "voice": (raw["voice"] or b"").decode(),
        "characters": _num(raw["chars"], int),
        "error": error if status is not Status.FINISHED else None,
        "duration": _num(raw["duration"]),
        "bytes": _num(raw["bytes"], int),
        "cached": bool(_num(raw["cached"], int)),
        "attempts": _num(raw["attempts"], int) or 0,
        "batch_id": (raw["batch"] or b"").decode() or None,
        "created": _num(raw["created"]),
        "started": _num(raw["started"]),
        "finished": _num(raw["finished"]),
    }


async def batch_status(r: aioredis.Redis, keys: Keys, batch_id: str,
                       rq_status: RqStatusReader | None = None) -> dict[str, Any]:
    """Per-item status of a batch and counts by status; UnknownJob if there is none."""
    key = keys.tts(check_batch_id(batch_id))
    found: list[Any] = await r.hmget(key, ["kind", "jobs", "created"])
    kind, jobs_blob, created = found
    if kind != b"batch" or not jobs_blob:
        raise UnknownJob(f"no TTS batch {batch_id!r} (unknown, or expired)")
    job_ids: list[str] = json.loads(jobs_blob)
    async with r.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hmget(keys.tts(job_id), list(_PUBLIC))
        rows = await pipe.execute()
    items = []
    for index, (job_id, values) in enumerate(zip(job_ids, rows, strict=True)):
        raw = dict(zip(_PUBLIC, values, strict=True))
        if raw["kind"] != b"job":
            item: dict[str, Any] = {"job_id": job_id, "status": Status.FAILED.value,
                                    "error": "expired", "progress": 0.0}
        else:
            item = await _public(r, job_id, raw, rq_status)
        item["index"] = index
        items.append(item)
    counts = {s.value: sum(1 for i in items if i["status"] == s.value) for s in Status}
    done = counts["finished"] + counts["failed"]
    return {"batch_id": batch_id, "created": _num(created), "total": len(items), "counts": counts,
            "status": "finished" if done == len(items) else "running",
            "progress": sum(float(i.get("progress") or 0) for i in items) / max(1, len(items)),
            "items": items}


async def job_audio(r: aioredis.Redis, keys: Keys, job_id: str) -> tuple[str, bytes | None]:
    """(status, MP3 or None) of one job; UnknownJob if there is no such record."""
    found: list[Any] = await r.hmget(keys.tts(check_job_id(job_id)), ["kind", "status", "audio"])
    kind, status, audio = found
    if kind != b"job":
        raise UnknownJob(f"no TTS job {job_id!r} (unknown, or expired)")
    return (status or b"queued").decode(), (bytes(audio) if audio else None)


# --- enqueueing ---------------------------------------------------------------------------------

def enqueue(conn: redis.Redis, settings: Settings, keys: Keys,
            jobs: Sequence[tuple[str, int]]) -> None:
    """Put jobs ``(job_id, text_chars)`` on the RQ queue in one pipeline (sync: RQ is sync)."""
    from rq import Callback, Queue, Retry

    queue = Queue(settings.tts_queue, connection=conn)
    waits = retry_intervals(settings)
    retry = Retry(max=len(waits), interval=waits) if waits else None
    data = [Queue.prepare_data(JOB_FUNCTION, args=(job_id, keys.prefix), job_id=job_id,
                               timeout=job_timeout(settings, chars), result_ttl=0,
                               ttl=settings.tts_result_ttl_seconds,
                               failure_ttl=settings.tts_result_ttl_seconds,
                               description=f"tts {job_id}", retry=retry,
                               on_failure=Callback(FAILURE_CALLBACK))
            for job_id, chars in jobs]
    queue.enqueue_many(data)


