"""The job layer on a real Redis: request validation, timeouts and retry schedule, the record's
life, the failure callback, lost-job detection, and the job function run in process."""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from rq.timeouts import JobTimeoutException

from tests.emulators.tts_audio import mp3_for, speech_seconds
from voxq.errors import InvalidInput
from voxq.keys import Keys
from voxq.redis_conn import connect_sync
from voxq.settings import Settings
from workers.tts import jobs
from workers.tts.jobs import Plan, TextTooLong, TtsRequest, UnknownJob
from workers.tts.splitting import split_text
from workers.vendors.base import (
    SynthesisRequest,
    Synthesizer,
    VendorAuthError,
    VendorRejected,
    VendorRetryable,
)


class ToneSynth(Synthesizer):
    """A synthesizer answering emulator tones, recording the pieces it was asked for."""

    name = "tone"
    max_chars = 40

    def __init__(self, settings: Settings, delay: float = 0.0):
        super().__init__(settings)
        self.pieces: list[str] = []
        self.delay = delay

    def voices(self) -> list[str]:
        return ["v"]

    async def synthesize(self, request: SynthesisRequest) -> bytes:
        self.pieces.append(request.text)
        await asyncio.sleep(self.delay)
        return mp3_for(request.text, request.sample_rate)


# --- validation -------------------------------------------------------------------------------

def test_plan_resolves_defaults(settings: Settings) -> None:
    p = jobs.plan(TtsRequest(text="Hello."), settings)
    assert p.vendor == "local" and p.synthesis.voice == "en-us" and p.synthesis.sample_rate == 24000
    assert p.use_cache and p.synthesis.format == "mp3"
    again = Plan.from_json(p.to_json())
    assert again == p and again.digest == p.digest
    assert jobs.plan(TtsRequest(text="Hello.", voice="en-us"), settings).digest == p.digest


@pytest.mark.parametrize(("body", "error", "words"), [
    ({"text": "  "}, InvalidInput, ["empty"]),
    ({"text": "a\0b"}, InvalidInput, ["NUL"]),
    ({"text": "x" * 101}, TextTooLong, ["101", "100", "VOXQ_TTS_MAX_TEXT_CHARS"]),
    ({"text": "x", "vendor": "nope"}, InvalidInput, ["nope", "aws", "dashscope", "local", "volcengine"]),
    ({"text": "x", "voice": "zz"}, InvalidInput, ["zz", "en-us", "de"]),
    ({"text": "x", "sample_rate": 11025}, InvalidInput, ["11025", "8000", "48000"]),
    ({"text": "x", "vendor": "aws", "pitch": 1.5}, InvalidInput, ["pitch", "neural"]),
    ({"text": "x", "vendor": "volcengine", "sample_rate": 48000}, InvalidInput, ["8000, 16000, 24000"]),
    ({"text": "x", "vendor": "volcengine-v3", "volume": 0.3}, InvalidInput, ["0.5"]),
])
def test_plan_refusals_say_what_exists(settings: Settings, body: dict[str, Any],
                                       error: type[Exception], words: list[str]) -> None:
    settings = settings.model_copy(update={"tts_max_text_chars": 100})
    with pytest.raises(error) as e:
        jobs.plan(TtsRequest(**body), settings)
    for word in words:
        assert word in str(e.value)


def test_request_model_bounds() -> None:
    for bad in ({"text": "x", "speed": 3}, {"text": "x", "volume": 0}, {"text": "x", "pitch": 0.1},
                {"text": "x", "format": "wav"}, {"text": "x", "extra": 1}):
        with pytest.raises(ValueError):
            TtsRequest(**bad)


def test_timeout_grows_with_text_and_retry_schedule(settings: Settings) -> None:
    s = settings.model_copy(update={"tts_job_timeout_base_seconds": 60,
                                    "tts_job_timeout_per_char_seconds": 0.05,
                                    "tts_retries": 5, "tts_retry_backoff_seconds": [2, 10]})
    assert jobs.job_timeout(s, 0) == 60 and jobs.job_timeout(s, 20000) == 1060
    assert jobs.job_timeout(s, 1) == 61  # rounded up
    assert jobs.retry_intervals(s) == [2, 10, 10, 10, 10]
    assert jobs.retry_intervals(s.model_copy(update={"tts_retries": 0})) == []


def test_ids_are_checked_before_they_reach_a_key() -> None:
    assert jobs.check_job_id(jobs.new_job_id())
    assert jobs.check_batch_id(jobs.new_batch_id())
    for bad in ("../x", "a" * 31, "cache-" + "0" * 64, "{x}", "A" * 32):
        with pytest.raises(UnknownJob):
            jobs.check_job_id(bad)
    with pytest.raises(UnknownJob):
        jobs.check_batch_id("batch-xyz")


def test_retryable_classification_and_reasons() -> None:
    assert jobs.is_retryable(VendorRetryable("x"))
    assert jobs.is_retryable(redis.ConnectionError("down"))
    assert jobs.is_retryable(ConnectionResetError())
    assert not jobs.is_retryable(VendorRejected("bad voice"))
    assert not jobs.is_retryable(VendorAuthError("no key"))
    assert not jobs.is_retryable(InvalidInput("x"))
    assert not jobs.is_retryable(KeyError("bug"))
    assert jobs.failure_reason(VendorRejected("bad voice", vendor="aws", code="X")) == "aws: X: bad voice"
    assert jobs.failure_reason(JobTimeoutException("t"), 42) == "timed out after 42s"
    assert jobs.failure_reason(KeyError("secret-ish")) == "internal error (KeyError)"
    assert jobs.failure_reason(redis.ConnectionError("x")) == "Redis error: ConnectionError"


# --- synthesis pipeline ------------------------------------------------------------------------

async def test_synthesize_text_splits_in_order_reports_progress_and_joins(settings: Settings) -> None:
    from workers.tts import mp3join

    synth = ToneSynth(settings)
    text = "First sentence is here. Second one follows it. Third is the last one here."
    seen: list[tuple[int, int]] = []

    async def progress(done: int, total: int) -> None:
        seen.append((done, total))

    mp3 = await jobs.synthesize_text(synth, SynthesisRequest(text=text), progress, timeout=5)
    pieces = split_text(text, jobs.text_limit_of(synth))
    assert synth.pieces == pieces and len(pieces) == 3
    assert seen == [(0, 3), (1, 3), (2, 3), (3, 3)]
    assert mp3join.duration(mp3) == pytest.approx(sum(speech_seconds(p) for p in pieces), abs=0.002)


async def test_synthesize_text_turns_a_hang_into_a_retryable_error(settings: Settings) -> None:
    with pytest.raises(VendorRetryable, match="no audio within"):
        await jobs.synthesize_text(ToneSynth(settings, delay=5), SynthesisRequest(text="hi"), timeout=0.1)


async def test_synthesize_text_rejects_vendor_garbage(settings: Settings) -> None:
    class Garbage(ToneSynth):
        async def synthesize(self, request: SynthesisRequest) -> bytes:
            return b"<html>oops</html>" * 10

    with pytest.raises(VendorRejected, match="not usable MP3"):
        await jobs.synthesize_text(Garbage(settings), SynthesisRequest(text="a. b."), timeout=5)


# --- records ------------------------------------------------------------------------------------

async def test_job_function_in_process_finishes_the_record_and_fills_the_cache(
        r: aioredis.Redis, keys: Keys, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs, "get_settings", lambda: settings)
    jobs.configure(settings.redis_url or "")
    p = jobs.plan(TtsRequest(text="Hello from the job function."), settings)
    job_id = jobs.new_job_id()
    await jobs.create_records(r, keys, [(job_id, p)], 300)
    await jobs.run_job(job_id, keys.prefix)
    status = await jobs.job_status(r, keys, job_id)
    assert status["status"] == "finished" and status["attempts"] == 1 and status["progress"] == 1.0
    assert status["parts_done"] == status["parts_total"] == 1 and not status["cached"]
    state, audio = await jobs.job_audio(r, keys, job_id)
    assert state == "finished" and audio is not None and len(audio) == status["bytes"]
    assert 0 < await r.ttl(keys.tts(job_id)) <= settings.tts_result_ttl_seconds
    # the same request again is served from the cache the first one filled
    second = jobs.new_job_id()
    await jobs.create_records(r, keys, [(second, p)], 300)
    await jobs.run_job(second, keys.prefix)
    cached = await jobs.job_status(r, keys, second)
    assert cached["cached"] and (await jobs.job_audio(r, keys, second))[1] == audio


async def test_job_function_refuses_a_missing_record(r: aioredis.Redis, keys: Keys, settings: Settings,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs, "get_settings", lambda: settings)
    jobs.configure(settings.redis_url or "")
    with pytest.raises(jobs.JobGone):
        await jobs.run_job(jobs.new_job_id(), keys.prefix)
    assert await r.keys(f"{keys.prefix}:*") == []  # nothing resurrected


async def test_unknown_and_expired_records(r: aioredis.Redis, keys: Keys) -> None:
    with pytest.raises(UnknownJob):
        await jobs.job_status(r, keys, jobs.new_job_id())
    with pytest.raises(UnknownJob):
        await jobs.job_audio(r, keys, "nope")
    with pytest.raises(UnknownJob):
        await jobs.batch_status(r, keys, jobs.new_batch_id())
    batch = jobs.new_batch_id()
    await r.hset(keys.tts(batch), mapping={"kind": "batch", "jobs": json.dumps([jobs.new_job_id()]),
                                           "created": "1"})
    status = await jobs.batch_status(r, keys, batch)
    assert status["items"][0]["status"] == "failed" and status["items"][0]["error"] == "expired"
    with pytest.raises(UnknownJob):  # a batch id is not a job id
        await jobs.job_status(r, keys, batch)


async def test_a_job_rq_no_longer_holds_is_reported_failed(r: aioredis.Redis, keys: Keys,
                                                           settings: Settings) -> None:
    p = jobs.plan(TtsRequest(text="x"), settings)
    lost, killed, young = jobs.new_job_id(), jobs.new_job_id(), jobs.new_job_id()
    await jobs.create_records(r, keys, [(lost, p), (killed, p), (young, p)], 300)
    await r.hset(keys.tts(lost), "updated", repr(time.time() - 120))
    await r.hset(f"rq:job:{killed}", "status", "failed")
    try:
        assert (await jobs.job_status(r, keys, young))["status"] == "queued"
        gone = await jobs.job_status(r, keys, lost)
        assert gone["status"] == "failed" and "lost" in gone["error"]
        dead = await jobs.job_status(r, keys, killed)
        assert dead["status"] == "failed" and "RQ status failed" in dead["error"]
    finally:
        await r.delete(f"rq:job:{killed}")


def test_failure_callback_records_retrying_or_failed(redis_server: Any, keys: Keys, settings: Settings,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs, "get_settings", lambda: settings)
    conn = connect_sync(redis_server.url)
    job_id = jobs.new_job_id()
    conn.hset(keys.tts(job_id), mapping={"kind": "job", "status": "started"})
    job = SimpleNamespace(args=(job_id, keys.prefix), retries_left=2, timeout=30)
    jobs.on_job_failure(job, conn, VendorRetryable, VendorRetryable("busy", vendor="aws"), None)
    assert conn.hget(keys.tts(job_id), "status") == b"queued"
    assert conn.hget(keys.tts(job_id), "error") == b"retrying after: aws: busy"
    job.retries_left = 0
    jobs.on_job_failure(job, conn, JobTimeoutException, JobTimeoutException("t"), None)
    assert conn.hget(keys.tts(job_id), "status") == b"failed"
    assert conn.hget(keys.tts(job_id), "error") == b"timed out after 30s"
    assert conn.ttl(keys.tts(job_id)) > 0
    other = jobs.new_job_id()  # an expired record is not resurrected
    jobs.on_job_failure(SimpleNamespace(args=(other, keys.prefix), retries_left=0, timeout=1), conn,
                        None, None, None)
    assert not conn.exists(keys.tts(other))
    conn.close()
