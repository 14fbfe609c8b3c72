"""/v1/tts: submit text-to-speech jobs and batches, follow them, fetch their MP3 (with Range), or
a zip of a batch's MP3s.

Requests are validated here, before anything is written: empty text and unknown vendors, voices
or rates are 422 (the answer lists what exists), text over VOXQ_TTS_MAX_TEXT_CHARS and batches
over VOXQ_TTS_MAX_BATCH_ITEMS are 413, and the body is read with a byte bound so an oversized
upload is refused before it is parsed (``api.json_body``: size, depth, values and items are checked
while the body streams in). A request the content cache can answer finishes at once
(no RQ job); the others get a record ``PREFIX:tts:{JOB}`` and an RQ job on the TTS queue.
"""

from __future__ import annotations

import asyncio
import time
import zipfile
from collections.abc import AsyncIterator
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from api.auth import Require, hide_other_tenant, refuse
from api.json_body import JsonLimits, read_model
from api.models import BatchAccepted, JobAccepted
from api.state import ApiState, api_state, redis_of
from voxq import ratelimit
from voxq import tts_jobs as jobs
from voxq.access import AccessDenied, Denial, Principal, Scope, tenant_of
from voxq.errors import InvalidInput
from voxq.redis_conn import connect_sync, rq_url
from voxq.settings import Settings
from voxq.tts_cache import TtsCache
from voxq.tts_jobs import TextTooLong, TtsRequest, UnknownJob, finish_from_cache
from voxq.tts_offers import catalog
from voxq.tts_plan import Plan, plan

router = APIRouter()
State = Annotated[ApiState, Depends(api_state)]
Writer = Annotated[Principal, Depends(Require(Scope.TTS_WRITE))]
Reader = Annotated[Principal, Depends(Require(Scope.TTS_READ))]
AudioReader = Annotated[Principal, Depends(Require(Scope.TTS_READ, query_token=True))]

_JSON_OVERHEAD = 4096
_BYTES_PER_CHAR = 6  # worst case of a JSON-escaped character (\uXXXX)
_VALUES_PER_ITEM = 32  # JSON values one request may hold (it has 9 fields, all scalars)


class TtsBatchRequest(BaseModel):
    """A batch of TTS requests (each item may choose its own vendor, voice and options)."""

    model_config = ConfigDict(extra="forbid")

    items: list[TtsRequest] = Field(min_length=1, description="The requests, in order.")


def single_limits(settings: Settings) -> JsonLimits:
    """Body limits of POST /v1/tts: one request of at most VOXQ_TTS_MAX_TEXT_CHARS."""
    return JsonLimits(max_bytes=settings.tts_max_text_chars * _BYTES_PER_CHAR + _JSON_OVERHEAD,
                      max_values=_VALUES_PER_ITEM, max_depth=2)


def batch_limits(settings: Settings) -> JsonLimits:
    """Body limits of POST /v1/tts/batch, from VOXQ_TTS_MAX_BATCH_ITEMS × one request's."""
    items = settings.tts_max_batch_items
    one = single_limits(settings)
    return JsonLimits(max_bytes=items * one.max_bytes, max_values=items * _VALUES_PER_ITEM + 2,
                      max_depth=3, list_key="items", max_list_items=items,
                      list_too_long="batch has more than {limit} items; the limit is {limit} "
                                    "(VOXQ_TTS_MAX_BATCH_ITEMS)")


def _plan(req: TtsRequest, state: ApiState, where: str = "") -> Plan:
    """Validate one request: 413 for too much text, 422 for anything else wrong."""
    try:
        return plan(req, state.settings)
    except TextTooLong as e:
        raise HTTPException(413, f"{where}{e}") from None
    except InvalidInput as e:
        raise HTTPException(422, f"{where}{e}") from None


def _rq_connection(request: Request, state: ApiState) -> redis.Redis:
    """The app's blocking client on the Redis RQ uses (created on first use): the main Redis,
    or ``VOXQ_RQ_REDIS_URL`` (required when the main Redis is a cluster)."""
    conn: redis.Redis | None = getattr(request.app.state, "tts_rq", None)
    if conn is None:
        conn = connect_sync(rq_url(state.settings, state.redis_url))
        request.app.state.tts_rq = conn
    return conn


def _rq_status_reader(request: Request, state: ApiState) -> jobs.RqStatusReader | None:
    """How to read RQ's status of a job: None (from the main Redis) unless RQ has its own."""
    if rq_url(state.settings, state.redis_url) == state.redis_url:
        return None

    async def read(job_id: str) -> str | None:
        raw: Any = await asyncio.to_thread(_rq_connection(request, state).hget,
                                           f"rq:job:{job_id}", "status")
        return raw.decode() if raw else None

    return read


_LOCATION = {"description": "The status URL.", "schema": {"type": "string"}}


def _job_links(job_id: str) -> dict[str, str]:
    return {"status_url": f"/v1/tts/{job_id}", "audio_url": f"/v1/tts/{job_id}/audio"}


async def _spend(request: Request, state: ApiState, principal: Principal,
                 plans: list[Plan]) -> None:
    """Count the text against the tenant's daily quota; 429 (audited) over it."""
    limit = state.settings.tts_daily_chars_per_tenant
    if limit <= 0:
        return
    chars = sum(len(p.synthesis.text) for p in plans)
    wait = await ratelimit.spend_chars(redis_of(state), state.keys, principal.write_tenant,
                                       chars, limit)
    if wait is not None:
        e = AccessDenied(Denial.QUOTA, f"the tenant's daily TTS quota of {limit} characters "
                                       "would be exceeded (VOXQ_TTS_DAILY_CHARS_PER_TENANT)",
                         429, retry_after=wait)
        raise await refuse(state, request, e, principal)


async def _visible(request: Request, state: ApiState, principal: Principal, job_id: str,
                   what: str) -> None:
    """404 (audited) if the job or batch exists but belongs to another tenant."""
    if principal.all_tenants:
        return
    try:
        key = state.keys.tts(job_id)
    except InvalidInput:
        return  # the route's own lookup answers it
    raw: Any = await redis_of(state).hmget(key, ["kind", "tenant"])
    if raw[0] is not None and not principal.sees(tenant_of(raw[1])):
        raise await hide_other_tenant(state, request, principal, f"no TTS {what} {job_id!r}")


async def _submit(request: Request, state: ApiState, plans: list[Plan],
                  batch_id: str | None, principal: Principal) -> list[dict[str, Any]]:
    """Write records, finish cache hits at once, enqueue the rest; one answer per plan."""
    settings = state.settings
    r = redis_of(state)
    await _spend(request, state, principal, plans)
    ttl = settings.tts_result_ttl_seconds
    cache = TtsCache(r, state.keys, ttl_seconds=settings.tts_cache_ttl_seconds,
                     max_entries=settings.tts_cache_max_entries, max_bytes=settings.tts_cache_max_bytes)
    hits: dict[int, bytes] = {}
    for i, p in enumerate(plans):
        if p.use_cache:
            hit = await cache.get(p.digest)
            if hit is not None:
                hits[i] = hit
    ids = [jobs.new_job_id() for _ in plans]
    tenant = principal.write_tenant
    await jobs.create_records(r, state.keys, list(zip(ids, plans, strict=True)), ttl,
                              batch_id=batch_id, tenant="" if tenant == "default" else tenant)
    for i, mp3 in hits.items():
        await finish_from_cache(r, state.keys, ids[i], mp3, ttl)
    todo = [(ids[i], len(p.synthesis.text)) for i, p in enumerate(plans) if i not in hits]
    if todo:
        conn = _rq_connection(request, state)
        await asyncio.to_thread(jobs.enqueue, conn, settings, state.keys, todo)
    return [{"job_id": job_id, "status": "finished" if i in hits else "queued",
             "cached": i in hits, **_job_links(job_id)} for i, job_id in enumerate(ids)]


@router.post("/tts", status_code=202, summary="Submit a text-to-speech job",
             responses={202: {"model": JobAccepted, "description": "Accepted.",
                              "headers": {"Location": _LOCATION}}},
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": TtsRequest.model_json_schema()}}}})
async def submit(request: Request, state: State, principal: Writer) -> JSONResponse:
    """202 with the job id; poll the status URL, then fetch the audio URL."""
    # strict: JSON types as documented (no 0 for false, no "1" for 1.0)
    req = await read_model(request, TtsRequest, single_limits(state.settings))
    [answer] = await _submit(request, state, [_plan(req, state)], None, principal)
    return JSONResponse(answer, status_code=202, headers={"Location": answer["status_url"]})


@router.post("/tts/batch", status_code=202, summary="Submit a batch of text-to-speech jobs",
             responses={202: {"model": BatchAccepted, "description": "Accepted.",
                              "headers": {"Location": _LOCATION}}},
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": TtsBatchRequest.model_json_schema()}}}})
async def submit_batch(request: Request, state: State, principal: Writer) -> JSONResponse:
    """202 with the batch id and its job ids, in item order."""
    batch = await read_model(request, TtsBatchRequest, batch_limits(state.settings))
    plans = [_plan(item, state, f"items.{i}: ") for i, item in enumerate(batch.items)]
    batch_id = jobs.new_batch_id()
    answers = await _submit(request, state, plans, batch_id, principal)
    url = f"/v1/tts/batches/{batch_id}"
    return JSONResponse({"batch_id": batch_id, "job_ids": [a["job_id"] for a in answers],
                         "jobs": answers, "status_url": url, "zip_url": f"{url}/zip"},
                        status_code=202, headers={"Location": url})


@router.get("/tts/vendors", summary="Speech vendors, their voices and controls")
async def vendors(state: State, principal: Reader) -> dict[str, Any]:
    """Every registered vendor with its voices, output rates and the controls (speed, volume,
    pitch) it accepts with their ranges (its offer, ``voxq.tts_offers``); ``default`` is
    VOXQ_TTS_DEFAULT_VENDOR."""
    return catalog(state.settings)


def _not_found(e: UnknownJob) -> HTTPException:
    return HTTPException(404, str(e))


@router.get("/tts/batches/{batch_id}", summary="Status of a batch, item by item")
async def get_batch(batch_id: str, request: Request, state: State,
                    principal: Reader) -> dict[str, Any]:
    """Counts by status, overall progress, and each item's status."""
    await _visible(request, state, principal, batch_id, "batch")
    try:
        return await jobs.batch_status(redis_of(state), state.keys, batch_id,
                                       _rq_status_reader(request, state))
    except UnknownJob as e:
        raise _not_found(e) from None


class _ZipSink:
    """A write-only, non-seekable file that hands out what zipfile wrote so far."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def write(self, data: bytes) -> int:
        self.buffer += data
        return len(data)

    def flush(self) -> None:
        return None

    def take(self) -> bytes:
        out = bytes(self.buffer)
        self.buffer.clear()
        return out


@router.get("/tts/batches/{batch_id}/zip", summary="A zip of the batch's finished MP3s",
            response_class=StreamingResponse,
            responses={200: {"content": {"application/zip": {}}}})
async def get_batch_zip(batch_id: str, request: Request, state: State,
                        principal: AudioReader) -> StreamingResponse:
    """Every finished item as ``NNNN.mp3`` (1-based item number); 409 while none is finished."""
    await _visible(request, state, principal, batch_id, "batch")
    r = redis_of(state)
    try:
        batch = await jobs.batch_status(r, state.keys, batch_id)
    except UnknownJob as e:
        raise _not_found(e) from None
    finished = [item for item in batch["items"] if item["status"] == "finished"]
    if not finished:
        raise HTTPException(409,
                            f"no item of batch {batch_id} has finished yet ({batch['counts']})")
    width = max(4, len(str(batch["total"])))

    async def stream() -> AsyncIterator[bytes]:
        sink = _ZipSink()
        with zipfile.ZipFile(sink, mode="w", compression=zipfile.ZIP_STORED) as zf:  # type: ignore[call-overload]
            for item in finished:
                _, audio = await jobs.job_audio(r, state.keys, item["job_id"])
                if audio is None:
                    continue
                info = zipfile.ZipInfo(f"{item['index'] + 1:0{width}d}.mp3",
                                       time.localtime(time.time())[:6])
                zf.writestr(info, audio)
                yield sink.take()
        yield sink.take()

    return StreamingResponse(stream(), media_type="application/zip", headers={
        "Content-Disposition": f'attachment; filename="{batch_id}.zip"',
        "X-Voxq-Items": f"{len(finished)}/{batch['total']}"})


@router.get("/tts/{job_id}", summary="Status of a text-to-speech job")
async def get_job(job_id: str, request: Request, state: State,
                  principal: Reader) -> dict[str, Any]:
    """Status (queued/started/finished/failed), progress, error reason, duration and bytes."""
    await _visible(request, state, principal, job_id, "job")
    try:
        answer = await jobs.job_status(redis_of(state), state.keys, job_id,
                                       _rq_status_reader(request, state))
    except UnknownJob as e:
        raise _not_found(e) from None
    if answer["status"] == "finished":
        answer.update(_job_links(job_id))
    return answer


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The single byte range ``(first, last)`` a Range header asks for, or None for the whole.

    Headers this server ignores (other units, several ranges, bad syntax) give None, as RFC 9110
    allows; a well-formed range that no byte satisfies raises HTTPException 416.
    """
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_s, dash, last_s = spec.strip().partition("-")
    first_s, last_s = first_s.strip(), last_s.strip()
    if not dash or not (first_s.isdigit() or (not first_s and last_s.isdigit())):
        return None
    if last_s and not last_s.isdigit():
        return None
    unsatisfiable = HTTPException(416,
                                  f"range {spec!r} is outside the {size} bytes of audio",
                                  headers={"Content-Range": f"bytes */{size}"})
    if not first_s:  # suffix range: the last N bytes
        n = int(last_s)
        if n == 0 or size == 0:
            raise unsatisfiable
        return max(0, size - n), size - 1
    first = int(first_s)
    last = int(last_s) if last_s else size - 1
    if last_s and last < first:
        return None
    if first >= size:
        raise unsatisfiable
    return first, min(last, size - 1)


_AUDIO_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"audio/mpeg": {}}}, 206: {"description": "A byte range"}}


# GET and HEAD as two routes (one route with both methods gives both one OpenAPI operation id)
@router.head("/tts/{job_id}/audio", summary="The job's MP3: headers only",
             response_class=Response, responses=_AUDIO_RESPONSES)
@router.get("/tts/{job_id}/audio", summary="The job's MP3",
            response_class=Response, responses=_AUDIO_RESPONSES)
async def get_audio(job_id: str, request: Request, state: State,
                    principal: AudioReader) -> Response:
    """The MP3 (``audio/mpeg``) with Content-Length; a single ``Range: bytes=`` range gives 206."""
    await _visible(request, state, principal, job_id, "job")
    try:
        job_status, audio = await jobs.job_audio(redis_of(state), state.keys, job_id)
    except UnknownJob as e:
        raise _not_found(e) from None
    if audio is None:
        raise HTTPException(409,
                            f"job {job_id} has no audio: it is {job_status}")
    size = len(audio)
    etag = f'"{job_id}"'
    headers = {"Accept-Ranges": "bytes", "ETag": etag, "Cache-Control": "private, max-age=3600",
               "Content-Disposition": f'inline; filename="{job_id}.mp3"'}
    if_range = request.headers.get("if-range")
    wanted = None if if_range not in (None, etag) else parse_range(request.headers.get("range"), size)
    code = 200
    body = audio
    if wanted is not None:
        first, last = wanted
        body = audio[first:last + 1]
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        code = 206
    headers["Content-Length"] = str(len(body))
    if request.method == "HEAD":
        body = b""
    return Response(content=body, status_code=code, media_type="audio/mpeg", headers=headers)
