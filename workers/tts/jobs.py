"""TTS jobs: the request model, their Redis record, enqueueing on RQ, and the job function.

A job's record is the hash ``PREFIX:tts:{JOB}`` (DESIGN.md): the request, status
(queued → started → finished | failed), progress, error reason, attempts, and once finished the
MP3 (field ``audio``), its duration and size. The API writes the record and enqueues an RQ job
whose only arguments are the job id and the key prefix (RQ's own keys live on the RQ Redis,
``VOXQ_RQ_REDIS_URL``, which is the main Redis unless that is a cluster); the job function (async; RQ runs it with
``asyncio.run``) opens its own Redis and vendor connections, serves the request from the content
cache or splits the text to the vendor's limit, synthesises the pieces in order, joins them, and
writes the MP3 to the record — never into RQ's pickled return value (it returns None, and RQ keeps
no result). Transient vendor errors raise and RQ retries them with backoff (``rq.Retry``, run by
the worker's scheduler); anything a retry cannot fix clears the job's remaining retries first, so
it fails at once. The failure callback writes the reason (or "retrying") into the record; the
API also reads RQ's own status to notice jobs that died without a callback (a killed work horse).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

import redis
import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, Field

from voxq import redaction
from voxq.aio import within
from voxq.errors import InvalidInput, VoxqError
from voxq.keys import Keys
from voxq.metrics import REDIS_ERRORS, TTS_JOB_DURATION, TTS_JOBS
from voxq.redaction import redact
from voxq.redis_conn import connect, connect_sync
from voxq.settings import Settings, get_settings
from workers.tts import mp3join
from workers.tts.cache import TtsCache, cache_digest
from workers.tts.splitting import TextLimit, split_text
from workers.vendors.base import (
    SynthesisRequest,
    Synthesizer,
    VendorError,
    VendorRejected,
    VendorRetryable,
)
from workers.vendors.registry import SYNTHESIZERS, synthesizer_class

log = logging.getLogger("voxq.tts")

JOB_FUNCTION = "workers.tts.jobs.run_job"
FAILURE_CALLBACK = "workers.tts.jobs.on_job_failure"
JOB_ID_RE = re.compile(r"[0-9a-f]{32}")
BATCH_ID_RE = re.compile(r"batch-[0-9a-f]{32}")
DEFAULT_SAMPLE_RATES = (8000, 16000, 22050, 24000)
LOST_AFTER_SECONDS = 30.0
"""A record still queued/started with no RQ job behind it for this long was lost."""

_redis_url: str | None = None
_rq_redis_url: str | None = None

RqStatusReader = Callable[[str], Awaitable[str | None]]
"""Reads RQ's own status of a job (from the Redis RQ uses)."""


class Status(StrEnum):
    """Life of a TTS job."""

    QUEUED = "queued"
    STARTED = "started"
    FINISHED = "finished"
    FAILED = "failed"


TERMINAL = frozenset({Status.FINISHED, Status.FAILED})


class TextTooLong(InvalidInput):
    """Text over the configured limit (the API answers 413)."""


class TooManyItems(InvalidInput):
    """A batch with more items than allowed (the API answers 413)."""


class UnknownJob(VoxqError, LookupError):
    """No TTS job or batch with this id (never existed, or expired)."""


class JobGone(VendorRejected):
    """The job's record expired or was deleted before a worker ran it."""


# --- request ------------------------------------------------------------------------------------

class TtsRequest(BaseModel):
    """One text-to-speech request as the API and the CLI take it."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="Text to speak (plain text).")
    vendor: str | None = Field(default=None, description="Speech vendor; default VOXQ_TTS_DEFAULT_VENDOR.")
    voice: str | None = Field(default=None, description="Vendor voice; default: the vendor's first.")
    speed: float = Field(default=1.0, ge=0.5, le=2.0, description="Speaking rate, 1.0 = normal.")
    volume: float = Field(default=1.0, ge=0.1, le=2.0, description="Loudness, 1.0 = normal.")
    pitch: float = Field(default=1.0, ge=0.5, le=2.0, description="Pitch, 1.0 = normal.")
    sample_rate: int = Field(default=24000, description="Output sample rate in Hz.")
    format: Literal["mp3"] = Field(default="mp3", description="Output format.")
    cache: bool = Field(default=True, description="false: synthesise afresh even if cached.")


@dataclass(frozen=True, slots=True)
class Plan:
    """A validated request: which vendor, with every default resolved."""

    vendor: str
    variant: str
    synthesis: SynthesisRequest
    use_cache: bool

    @property
    def digest(self) -> str:
        """Content-cache key of this request."""
        return cache_digest(self.vendor, self.variant, self.synthesis)

    def to_json(self) -> str:
        """The plan as stored in the job record."""
        s = self.synthesis
        return json.dumps({"vendor": self.vendor, "variant": self.variant, "cache": self.use_cache,
                           "text": s.text, "voice": s.voice, "speed": s.speed, "volume": s.volume,
                           "pitch": s.pitch, "sample_rate": s.sample_rate, "format": s.format},
                          ensure_ascii=False)

    @classmethod
    def from_json(cls, blob: str | bytes) -> Plan:
        """Inverse of :meth:`to_json`."""
        d = json.loads(blob)
        return cls(vendor=d["vendor"], variant=d["variant"], use_cache=bool(d["cache"]),
                   synthesis=SynthesisRequest(text=d["text"], voice=d["voice"], speed=d["speed"],
                                              volume=d["volume"], pitch=d["pitch"],
                                              sample_rate=d["sample_rate"], format=d["format"]))


def make_synthesizer(vendor: str, settings: Settings) -> Synthesizer:
    """A synthesizer instance of a registered vendor (InvalidInput listing vendors if unknown)."""
    return synthesizer_class(vendor)(settings)


def sample_rates_of(synth: Synthesizer) -> tuple[int, ...]:
    """Output rates a vendor adapter accepts (adapters may declare ``sample_rates``)."""
    rates: tuple[int, ...] = tuple(getattr(synth, "sample_rates", DEFAULT_SAMPLE_RATES))
    return rates


def text_limit_of(synth: Synthesizer) -> TextLimit:
    """What one call of this vendor accepts (adapters may declare bytes and Han weight)."""
    return TextLimit(max_chars=synth.max_chars,
                     max_bytes=getattr(synth, "max_text_bytes", None),
                     han_weight=int(getattr(synth, "han_weight", 1)))


def variant_of(synth: Synthesizer) -> str:
    """What besides the request shapes a vendor's audio (engine, model), for the cache key."""
    variant = getattr(synth, "variant", None)
    return str(variant()) if callable(variant) else ""


def plan(request: TtsRequest, settings: Settings) -> Plan:
    """Validate a request and resolve its defaults; InvalidInput (TextTooLong) says what is wrong."""
    text = request.text
    if not text.strip():
        raise InvalidInput("text is empty")
    if len(text) > settings.tts_max_text_chars:
        raise TextTooLong(f"text is {len(text)} characters; the limit is "
                          f"{settings.tts_max_text_chars} (VOXQ_TTS_MAX_TEXT_CHARS)")
    if "\0" in text:
        raise InvalidInput("text contains a NUL character")
    vendor = request.vendor or settings.tts_default_vendor
    synth = make_synthesizer(vendor, settings)
    voices = synth.voices()
    voice = request.voice or voices[0]
    if voice not in voices:
        raise InvalidInput(f"unknown voice {voice!r} for vendor {vendor!r}; voices: {', '.join(voices)}")
    rates = sample_rates_of(synth)
    if request.sample_rate not in rates:
        raise InvalidInput(f"sample_rate {request.sample_rate} is not offered by vendor {vendor!r}; "
                           f"rates: {', '.join(map(str, rates))}")
    synthesis = SynthesisRequest(text=text, voice=voice, speed=request.speed, volume=request.volume,
                                 pitch=request.pitch, sample_rate=request.sample_rate,
                                 format=request.format)
    check = getattr(synth, "check_request", None)
    if callable(check):  # vendor-specific refusals (e.g. pitch on Polly's neural engine)
        check(synthesis)
    return Plan(vendor=vendor, variant=variant_of(synth), synthesis=synthesis,
                use_cache=request.cache)


def known_vendors() -> list[str]:
    """Registered speech vendor names."""
    return sorted(SYNTHESIZERS)


def job_timeout(settings: Settings, text_chars: int) -> int:
    """RQ job timeout in seconds, growing with the text."""
    return int(settings.tts_job_timeout_base_seconds
               + settings.tts_job_timeout_per_char_seconds * text_chars + 0.999)


def retry_intervals(settings: Settings) -> list[int]:
    """One wait per retry (the configured list, its last value repeated)."""
    waits = list(settings.tts_retry_backoff_seconds)
    n = settings.tts_retries
    return (waits + [waits[-1]] * n)[:n]


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


# --- the record ---------------------------------------------------------------------------------

def _now() -> str:
    return repr(time.time())


Fields = dict[Any, Any]
"""Hash fields for HSET (redis-py's own mapping type is too narrow for mypy to infer)."""


def record_fields(plan_: Plan, *, batch_id: str | None = None, tenant: str = "") -> Fields:
    """The fields of a new job record (``tenant``: the creating key's; "" is the default)."""
    s = plan_.synthesis
    return {"kind": "job", "status": Status.QUEUED.value, "request": plan_.to_json(),
            "vendor": plan_.vendor, "voice": s.voice or "", "chars": str(len(s.text)),
            "created": _now(), "updated": _now(), "progress": "0", "attempts": "0",
            "error": "", "batch": batch_id or "", "tenant": tenant}


async def create_records(r: aioredis.Redis, keys: Keys, jobs: Sequence[tuple[str, Plan]],
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


async def finish_from_cache(r: aioredis.Redis, keys: Keys, job_id: str, mp3: bytes, ttl: int) -> None:
    """Mark a just-created job finished with cached audio (no vendor call, no RQ job)."""
    seconds = await asyncio.to_thread(mp3join.duration, mp3)
    await _finish(r, keys, job_id, mp3, seconds, ttl, cached=True)


async def _update(r: aioredis.Redis, key: str, ttl: int, **fields: str | int | float | bytes) -> None:
    """HSET + EXPIRE, only while the record exists (an expired job is not resurrected)."""
    if not await r.exists(key):
        return
    mapping: Fields = {"updated": _now(), **fields}
    async with r.pipeline(transaction=True) as pipe:
        pipe.hset(key, mapping=mapping)
        pipe.expire(key, ttl)
        await pipe.execute()


async def _finish(r: aioredis.Redis, keys: Keys, job_id: str, mp3: bytes, seconds: float, ttl: int,
                  *, cached: bool) -> None:
    """Store the MP3 and mark the job finished."""
    await _update(r, keys.tts(job_id), ttl, status=Status.FINISHED.value, audio=mp3,
                  bytes=len(mp3), duration=f"{seconds:.3f}", progress="1", error="",
                  cached=int(cached), finished=_now())


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


# --- the job ------------------------------------------------------------------------------------

def configure(redis_url: str, rq_redis_url: str | None = None) -> None:
    """Tell job functions in this process (and its forked work horses) which Redis holds the
    records, MP3s and cache (``redis_url``, possibly a cluster) and which one RQ uses."""
    global _redis_url, _rq_redis_url
    redaction.install(get_settings())
    _redis_url = redis_url
    _rq_redis_url = rq_redis_url


def warm_up() -> None:
    """Load what a job's first run would load lazily (RQ's job context, the MP3 decoder), so
    forked work horses do not pay for it on every job."""
    import numpy as np
    from redis.utils import get_lib_version
    from rq import get_current_job  # noqa: F401  (imported on failure otherwise)

    get_lib_version()  # every new Redis connection asks importlib.metadata; warm its caches
    mp3join.duration(mp3join.encode(np.zeros(2400, np.float32), 24000))


def is_retryable(exc: BaseException) -> bool:
    """Whether a new attempt can succeed: transient vendor errors, Redis or network trouble."""
    if isinstance(exc, VendorError):
        return exc.retryable
    if isinstance(exc, InvalidInput):
        return False
    return isinstance(exc, redis.ConnectionError | redis.TimeoutError | OSError | TimeoutError)


ProgressFn = Callable[[int, int], Awaitable[None]]


async def synthesize_text(synth: Synthesizer, request: SynthesisRequest,
                          progress: ProgressFn | None = None, *, timeout: float) -> bytes:
    """Split ``request.text`` to the vendor's limit, synthesise the pieces in order, join them."""
    pieces = split_text(request.text, text_limit_of(synth))
    if not pieces:
        raise InvalidInput("text has nothing to speak")
    parts: list[bytes] = []
    if progress is not None:
        await progress(0, len(pieces))
    for i, piece in enumerate(pieces):
        part_request = SynthesisRequest(text=piece, voice=request.voice, speed=request.speed,
                                        volume=request.volume, pitch=request.pitch,
                                        sample_rate=request.sample_rate, format=request.format)
        try:
            mp3 = await within(synth.synthesize(part_request), timeout)
        except TimeoutError:
            raise VendorRetryable(f"no audio within {timeout:g}s", vendor=synth.name) from None
        if not mp3:
            raise VendorRetryable("the vendor returned no audio", vendor=synth.name)
        parts.append(mp3)
        if progress is not None:
            await progress(i + 1, len(pieces))
    try:
        return await asyncio.to_thread(mp3join.join, parts, request.sample_rate)
    except InvalidInput as e:
        raise VendorRejected(f"the vendor's audio is not usable MP3: {e}", vendor=synth.name) from e


async def run_job(job_id: str, prefix: str) -> None:
    """RQ job function: synthesise one job and store its MP3 in its record; returns nothing."""
    settings = get_settings()
    redaction.install(settings)
    url = _redis_url or settings.redis_url
    if not url:
        raise VoxqError("the TTS worker has no Redis URL (set REDIS_URL)")
    r = connect(url)
    started = time.monotonic()
    try:
        await _run(r, Keys(prefix), job_id, settings)
        TTS_JOBS.labels("finished").inc()
    except BaseException as e:
        if not is_retryable(e):
            _no_more_retries()
        TTS_JOBS.labels("retried" if _retries_left() else "failed").inc()
        if isinstance(e, redis.RedisError):
            REDIS_ERRORS.labels("tts").inc()
        raise
    finally:
        TTS_JOB_DURATION.observe(time.monotonic() - started)
        await r.aclose()


def _retries_left() -> int:
    """Retries RQ will still make of the current job (0 outside a job)."""
    from rq import get_current_job

    job = get_current_job()
    return int(getattr(job, "retries_left", 0) or 0) if job is not None else 0


def _no_more_retries() -> None:
    """Make RQ fail the current job now instead of retrying it."""
    from rq import get_current_job

    job = get_current_job()
    if job is not None:
        job.retries_left = 0


async def _run(r: aioredis.Redis, keys: Keys, job_id: str, settings: Settings) -> None:
    key = keys.tts(check_job_id(job_id))
    ttl = settings.tts_result_ttl_seconds
    found: list[Any] = await r.hmget(key, ["request", "status"])
    blob, status = found
    if not blob:
        raise JobGone("the job's record expired or was deleted before it ran", vendor="")
    if status == Status.FINISHED.value.encode():
        return
    plan_ = Plan.from_json(blob)
    async with r.pipeline(transaction=True) as pipe:
        pipe.hset(key, mapping={"status": Status.STARTED.value, "started": _now(),
                                "updated": _now(), "error": ""})
        pipe.hincrby(key, "attempts", 1)
        pipe.expire(key, ttl)
        await pipe.execute()
    cache = TtsCache(r, keys, ttl_seconds=settings.tts_cache_ttl_seconds,
                     max_entries=settings.tts_cache_max_entries,
                     max_bytes=settings.tts_cache_max_bytes)
    digest = plan_.digest
    if plan_.use_cache:
        hit = await cache.get(digest)
        if hit is not None:
            await _finish(r, keys, job_id, hit, mp3join.duration(hit), ttl, cached=True)
            log.info("tts job %s served from cache", job_id)
            return

    async def progress(done: int, total: int) -> None:
        await _update(r, key, ttl, parts_done=done, parts_total=total,
                      progress=f"{done / total:.4f}" if total else "0")

    synth = make_synthesizer(plan_.vendor, settings)
    started = time.monotonic()
    mp3 = await synthesize_text(synth, plan_.synthesis, progress,
                                timeout=settings.tts_vendor_timeout_seconds)
    seconds = await asyncio.to_thread(mp3join.duration, mp3)
    await cache.put(digest, mp3)
    await _finish(r, keys, job_id, mp3, seconds, ttl, cached=False)
    log.info("tts job %s: %s, %d chars → %.2fs of audio, %d bytes in %.2fs", job_id, plan_.vendor,
             len(plan_.synthesis.text), seconds, len(mp3), time.monotonic() - started)


def failure_reason(exc: BaseException | None, timeout: int | None = None) -> str:
    """A one-line reason for the API: the vendor's message, or what kind of failure it was."""
    from rq.timeouts import JobTimeoutException

    if exc is None:
        return "failed"
    if isinstance(exc, JobTimeoutException):
        return f"timed out after {timeout}s" if timeout else "timed out"
    if isinstance(exc, VoxqError):
        return redact(str(exc))[:2000]
    if isinstance(exc, redis.RedisError):
        return f"Redis error: {type(exc).__name__}"
    return f"internal error ({type(exc).__name__})"


def on_job_failure(job: Any, connection: redis.Redis, exc_type: type[BaseException] | None,
                   exc: BaseException | None, _tb: Any) -> None:
    """RQ failure callback (sync, in the work horse): record the reason, or that a retry is due."""
    try:
        job_id, prefix = job.args[0], job.args[1]
        key = Keys(prefix).tts(job_id)
    except (IndexError, TypeError, VoxqError):
        return
    reason = failure_reason(exc, job.timeout)
    retrying = bool(job.retries_left) and job.retries_left > 0
    settings = get_settings()
    if retrying:
        log.warning("tts job %s failed, will retry (%s left): %s", job_id, job.retries_left, reason)
        fields: Fields = {"status": Status.QUEUED.value, "error": f"retrying after: {reason}"}
    else:
        log.warning("tts job %s failed: %s", job_id, reason)
        fields = {"status": Status.FAILED.value, "error": reason, "finished": _now()}
    main = _redis_url or settings.redis_url
    separate = bool(main and _rq_redis_url and main != _rq_redis_url)
    records = connect_sync(main) if separate and main else connection  # records: main Redis
    try:
        if not records.exists(key):
            return
        pipe = records.pipeline(transaction=True)
        pipe.hset(key, mapping={**fields, "updated": _now()})
        pipe.expire(key, settings.tts_result_ttl_seconds)
        pipe.execute()
    finally:
        if records is not connection:
            records.close()
