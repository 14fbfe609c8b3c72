"""TTS jobs: the job function that runs a planned request.

The request model, the records, their reads and enqueueing (``voxq.tts_jobs``), planning against
each vendor's offer (``voxq.tts_plan``) and the content cache (``voxq.tts_cache``) live in the
core, shared with the API; the names callers use are re-exported here.

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
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis
import redis.asyncio as aioredis

from voxq import redaction
from voxq.aio import within
from voxq.errors import InvalidInput, VoxqError
from voxq.keys import Keys
from voxq.metrics import REDIS_ERRORS, TTS_JOB_DURATION, TTS_JOBS
from voxq.redaction import redact
from voxq.redis_conn import connect, connect_sync
from voxq.settings import Settings, get_settings
from voxq.tts_cache import TtsCache

# the shared part, defined in the core (names kept here for the worker and its callers)
from voxq.tts_jobs import (  # noqa: F401
    BATCH_ID_RE,
    FAILURE_CALLBACK,
    JOB_FUNCTION,
    JOB_ID_RE,
    LOST_AFTER_SECONDS,
    TERMINAL,
    Fields,
    RqStatusReader,
    Status,
    TextTooLong,
    TooManyItems,
    TtsRequest,
    UnknownJob,
    _now,
    batch_status,
    check_batch_id,
    check_job_id,
    create_records,
    enqueue,
    finish_from_cache,
    finish_record,
    job_audio,
    job_status,
    job_timeout,
    new_batch_id,
    new_job_id,
    record_fields,
    retry_intervals,
    update_record,
)
from voxq.tts_plan import Plan, plan  # noqa: F401  (planning against the vendor's core offer)
from workers.tts import mp3join
from workers.tts.splitting import TextLimit, split_text
from workers.vendors.base import (
    SynthesisRequest,
    Synthesizer,
    VendorError,
    VendorRejected,
    VendorRetryable,
)
from workers.vendors.registry import synthesizer_class

log = logging.getLogger("voxq.tts")

_redis_url: str | None = None
_rq_redis_url: str | None = None

class JobGone(VendorRejected):
    """The job's record expired or was deleted before a worker ran it."""


def make_synthesizer(vendor: str, settings: Settings) -> Synthesizer:
    """A synthesizer instance of a registered vendor (InvalidInput listing vendors if unknown)."""
    return synthesizer_class(vendor)(settings)


def text_limit_of(synth: Synthesizer) -> TextLimit:
    """What one call of this vendor accepts (a registered vendor's: its offer's)."""
    return synth.text_limit()


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
            await finish_record(r, keys, job_id, hit, mp3join.duration(hit), ttl, cached=True)
            log.info("tts job %s served from cache", job_id)
            return

    async def progress(done: int, total: int) -> None:
        await update_record(r, key, ttl, parts_done=done, parts_total=total,
                      progress=f"{done / total:.4f}" if total else "0")

    synth = make_synthesizer(plan_.vendor, settings)
    started = time.monotonic()
    mp3 = await synthesize_text(synth, plan_.synthesis, progress,
                                timeout=settings.tts_vendor_timeout_seconds)
    seconds = await asyncio.to_thread(mp3join.duration, mp3)
    await cache.put(digest, mp3)
    await finish_record(r, keys, job_id, mp3, seconds, ttl, cached=False)
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
