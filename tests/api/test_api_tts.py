"""/v1/tts end to end: the API in process, real `voxq tts-worker` processes (RQ, with the retry
scheduler) and each vendor's strict emulator, on the real test Redis. Proves every vendor's MP3
decodes to the expected duration, long text is split and joined, the cache answers without the
vendor, transient errors are retried with backoff and permanent ones fail at once with the
vendor's message, timeouts follow the text, jobs run concurrently, batches zip, and every bad
request is a clear 4xx that changes nothing. Secrets never reach Redis, answers or logs."""

from __future__ import annotations

import asyncio
import io
import subprocess
import time
import zipfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from api.routes_tts import parse_range
from tests.emulators import dashscope_tts, polly, volcengine_tts
from tests.emulators.dashscope_tts import DashScopeTtsEmulator
from tests.emulators.polly import PollyEmulator
from tests.emulators.tts_audio import speech_seconds
from tests.emulators.volcengine_tts import VolcengineTtsEmulator
from tests.workers.tts.ttstest_support import (
    api_client,
    audio_of,
    decoded_seconds,
    start_tts_worker,
    stop_worker,
    submit_and_wait,
    wait_batch,
    wait_job,
)
from voxq.keys import Keys
from voxq.redis_conn import connect_sync
from voxq.settings import Settings
from workers.tts import jobs, mp3join
from workers.tts.splitting import split_text
from workers.vendors.registry import synthesizer_class

TOLERANCE = 0.01  # seconds: joins are sample-exact, the tone lengths are whole samples


@pytest.fixture
def api_settings(settings: Settings, prefix: str) -> Settings:
    """API settings on the test's own queue, with a short retry backoff."""
    return settings.model_copy(update={"tts_queue": prefix, "tts_retries": 2,
                                       "tts_retry_backoff_seconds": [1]})


@asynccontextmanager
async def tts_stack(env: dict[str, str], settings: Settings, tmp_path: Path, *emulators: Any,
                    workers: int = 1, extra: dict[str, str] | None = None, options: tuple[str, ...] = (),
                    ) -> AsyncIterator[tuple[httpx.AsyncClient, list[subprocess.Popen[bytes]]]]:
    """The API and ``workers`` tts-worker processes pointed at ``emulators``."""
    worker_env = dict(extra or {})
    for emulator in emulators:
        worker_env = {**emulator.env(), **worker_env}
    procs = [start_tts_worker(env, queue=settings.tts_queue, extra=worker_env, options=options,
                              log=tmp_path / f"worker{i}.log") for i in range(workers)]
    try:
        async with api_client(settings) as client:
            yield client, procs
    finally:
        for proc in procs:
            await asyncio.to_thread(stop_worker, proc)


async def wait_tts_workers(settings: Settings, n: int, timeout: float = 120.0) -> None:
    """Until ``n`` tts-workers have registered on the test's queue."""
    from rq import Queue, Worker

    conn = connect_sync(settings.redis_url or "")
    try:
        queue = Queue(settings.tts_queue, connection=conn)
        deadline = time.monotonic() + timeout
        while Worker.count(connection=conn, queue=queue) < n:
            assert time.monotonic() < deadline, f"fewer than {n} tts-workers after {timeout}s"
            await asyncio.sleep(0.1)
    finally:
        conn.close()


def expected_seconds(vendor: str, text: str, speed: float = 1.0) -> float:
    """What the emulators answer for ``text`` after the worker splits it to the vendor's limit."""
    synth = synthesizer_class(vendor)(Settings())
    return sum(speech_seconds(p, speed) for p in split_text(text, jobs.text_limit_of(synth)))


def worker_logs(tmp_path: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(tmp_path.glob("worker*.log")))


# --- every vendor end to end ---------------------------------------------------------------------

async def test_local_engine_end_to_end_with_range_and_head(env: dict[str, str], api_settings: Settings,
                                                           tmp_path: Path) -> None:
    async with tts_stack(env, api_settings, tmp_path) as (client, _):
        done = await submit_and_wait(client, {"text": "Hello from voxq. This is the local engine.",
                                              "sample_rate": 16000})
        assert done["status"] == "finished", worker_logs(tmp_path)
        assert done["vendor"] == "local" and done["voice"] == "en-us" and done["error"] is None
        assert done["progress"] == 1.0 and done["attempts"] == 1 and done["audio_url"]
        mp3 = await audio_of(client, done["job_id"])
        assert len(mp3) == done["bytes"]
        assert decoded_seconds(mp3) == pytest.approx(done["duration"], abs=0.002)
        assert 1.0 < done["duration"] < 10.0
        assert mp3join.inspect(mp3).sample_rate == 16000

        url = f"/v1/tts/{done['job_id']}/audio"
        part = await client.get(url, headers={"Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == mp3[100:200]
        assert part.headers["content-range"] == f"bytes 100-199/{len(mp3)}"
        assert part.headers["content-length"] == "100"
        tail = await client.get(url, headers={"Range": "bytes=-50"})
        assert tail.status_code == 206 and tail.content == mp3[-50:]
        rest = await client.get(url, headers={"Range": f"bytes={len(mp3) - 10}-"})
        assert rest.content == mp3[-10:]
        beyond = await client.get(url, headers={"Range": f"bytes={len(mp3)}-"})
        assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{len(mp3)}"
        stale = await client.get(url, headers={"Range": "bytes=0-9", "If-Range": '"other"'})
        assert stale.status_code == 200 and stale.content == mp3
        head = await client.head(url)
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(len(mp3)) and head.headers["accept-ranges"] == "bytes"


async def test_polly_long_text_is_split_joined_and_reports_progress(
        env: dict[str, str], api_settings: Settings, tmp_path: Path) -> None:
    sentence = "The quick brown fox jumps over the lazy dog near the quiet river bank. "
    text = sentence * 60  # ~4300 characters: three Polly calls
    async with PollyEmulator(polly.EmulatorConfig(delay=0.3)) as emu, \
            tts_stack(env, api_settings, tmp_path, emu) as (client, _):
        resp = await client.post("/v1/tts", json={"text": text, "vendor": "aws", "voice": "Matthew",
                                                  "speed": 1.25, "volume": 1.5})
        assert resp.status_code == 202 and resp.headers["location"] == resp.json()["status_url"]
        job_id = resp.json()["job_id"]
        seen = set()
        deadline = time.monotonic() + 60
        while True:
            status = (await client.get(f"/v1/tts/{job_id}")).json()
            seen.add((status["status"], status["parts_done"], status["parts_total"]))
            if status["status"] in ("finished", "failed") or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)
        assert status["status"] == "finished", (status, worker_logs(tmp_path))
        pieces = split_text(text, jobs.text_limit_of(synthesizer_class("aws")(Settings())))
        assert len(pieces) == 3 and status["parts_total"] == 3
        assert any(s == "started" and 0 < (d or 0) < 3 for s, d, _ in seen)  # progress in between
        assert [r.spoken for r in emu.successes] == pieces  # in order, nothing lost
        body = emu.successes[0].body
        assert body["VoiceId"] == "Matthew" and body["Engine"] == "neural" and body["TextType"] == "ssml"
        assert 'rate="125%"' in body["Text"] and 'volume="+3.5dB"' in body["Text"]
        mp3 = await audio_of(client, job_id)
        want = expected_seconds("aws", text, 1.25)
        assert decoded_seconds(mp3) == pytest.approx(want, abs=TOLERANCE)
        assert status["duration"] == pytest.approx(want, abs=TOLERANCE)
        assert mp3join.inspect(mp3).has_info_frame


async def test_dashscope_cosyvoice_end_to_end(env: dict[str, str], api_settings: Settings,
                                              tmp_path: Path) -> None:
    text = "床前明月光，疑是地上霜。举头望明月，低头思故乡。" * 50 + " And an English ending."
    async with DashScopeTtsEmulator() as emu, tts_stack(env, api_settings, tmp_path, emu) as (client, _):
        done = await submit_and_wait(client, {"text": text, "vendor": "dashscope", "voice": "longwan_v2",
                                              "speed": 0.8, "volume": 0.5, "pitch": 1.5,
                                              "sample_rate": 22050})
        assert done["status"] == "finished", worker_logs(tmp_path)
        assert len(emu.tasks) == done["parts_total"] == 2  # 1200 Han characters count 2400 units
        params = emu.tasks[0].run_task["payload"]["parameters"]
        assert params == {"text_type": "PlainText", "voice": "longwan_v2", "format": "mp3",
                          "sample_rate": 22050, "volume": 25, "rate": 0.8, "pitch": 1.5}
        assert emu.tasks[0].run_task["payload"]["model"] == "cosyvoice-v2"
        assert "".join(t for task in emu.tasks for t in task.texts).replace(" ", "") == text.replace(" ", "")
        mp3 = await audio_of(client, done["job_id"])
        assert decoded_seconds(mp3) == pytest.approx(expected_seconds("dashscope", text, 0.8), abs=TOLERANCE)
        assert mp3join.inspect(mp3).sample_rate == 22050


async def test_volcengine_v1_splits_by_utf8_bytes(env: dict[str, str], api_settings: Settings,
                                                  tmp_path: Path) -> None:
    text = "今天天气很好，我们去公园散步吧。" * 40  # 640 characters, 1920 bytes
    async with VolcengineTtsEmulator() as emu, tts_stack(env, api_settings, tmp_path, emu) as (client, _):
        done = await submit_and_wait(client, {"text": text, "vendor": "volcengine", "speed": 1.5,
                                              "sample_rate": 16000})
        assert done["status"] == "finished", worker_logs(tmp_path)
        synths = emu.syntheses
        assert len(synths) == done["parts_total"] >= 3
        assert all(len(s.text.encode()) <= 1024 for s in synths)
        assert "".join(s.text for s in synths) == text
        first = synths[0].request
        assert first["audio"]["voice_type"] == "BV001_streaming" and first["audio"]["speed_ratio"] == 1.5
        assert first["app"]["token"] == "access_token"  # the real token travels only in the header
        assert all(c.headers["Authorization"] == f"Bearer; {volcengine_tts.ACCESS_TOKEN}"
                   for c in emu.connections)
        mp3 = await audio_of(client, done["job_id"])
        assert decoded_seconds(mp3) == pytest.approx(expected_seconds("volcengine", text, 1.5), abs=TOLERANCE)


async def test_volcengine_v3_end_to_end(env: dict[str, str], api_settings: Settings, tmp_path: Path) -> None:
    async with VolcengineTtsEmulator() as emu, tts_stack(env, api_settings, tmp_path, emu) as (client, _):
        done = await submit_and_wait(client, {"text": "你好，世界。Second sentence here.",
                                              "vendor": "volcengine-v3", "voice": "zh_female_vv_uranus_bigtts",
                                              "speed": 2.0, "pitch": 2.0, "sample_rate": 48000})
        assert done["status"] == "finished", worker_logs(tmp_path)
        [conn] = emu.connections
        assert conn.headers["X-Api-Resource-Id"] == "seed-tts-2.0"
        params = emu.syntheses[0].request["req_params"]
        assert params["audio_params"] == {"format": "mp3", "sample_rate": 48000, "speech_rate": 100,
                                          "loudness_rate": 0}
        assert params["additions"] == '{"post_process": {"pitch": 12}}'
        mp3 = await audio_of(client, done["job_id"])
        assert decoded_seconds(mp3) == pytest.approx(expected_seconds("volcengine-v3", "你好，世界。Second "
                                                                      "sentence here.", 2.0), abs=TOLERANCE)


# --- cache, retries, errors, timeouts -------------------------------------------------------------

async def test_cache_answers_without_the_vendor_and_can_be_bypassed(
        env: dict[str, str], api_settings: Settings, tmp_path: Path, r: aioredis.Redis, keys: Keys) -> None:
    body = {"text": "Cache me if you can.", "vendor": "aws"}
    async with PollyEmulator() as emu, tts_stack(env, api_settings, tmp_path, emu) as (client, _):
        first = await submit_and_wait(client, body)
        assert first["status"] == "finished" and not first["cached"]
        assert len(emu.successes) == 1
        again = await client.post("/v1/tts", json=body)
        assert again.status_code == 202 and again.json()["status"] == "finished" and again.json()["cached"]
        hit = (await client.get(f"/v1/tts/{again.json()['job_id']}")).json()
        assert hit["cached"] and hit["duration"] == first["duration"] and hit["attempts"] == 0
        assert await audio_of(client, hit["job_id"]) == await audio_of(client, first["job_id"])
        assert len(emu.successes) == 1  # the vendor was not called
        fresh = await submit_and_wait(client, {**body, "cache": False})
        assert not fresh["cached"] and len(emu.successes) == 2
        other = await submit_and_wait(client, {**body, "voice": "Joey"})
        assert not other["cached"] and len(emu.successes) == 3
        # identical requests queued together: the worker serves the second from the cache
        twins = [await client.post("/v1/tts", json={**body, "text": "Twins."}) for _ in range(2)]
        results = [await wait_job(client, t.json()["job_id"]) for t in twins]
        assert [res["cached"] for res in results] == [False, True] and len(emu.successes) == 4
    entries = [k for k in await r.keys(f"{keys.prefix}:tts:cache-*") if not k.endswith(b"index")]
    assert len(entries) == 3


async def test_transient_errors_are_retried_with_backoff_permanent_ones_fail_at_once(
        env: dict[str, str], api_settings: Settings, tmp_path: Path) -> None:
    async with PollyEmulator() as aws, DashScopeTtsEmulator() as ds, VolcengineTtsEmulator() as volc, \
            tts_stack(env, api_settings, tmp_path, aws, ds, volc) as (client, _):
        aws.faults.append(polly.Fault(status=500))
        t0 = time.monotonic()
        recovered = await submit_and_wait(client, {"text": "Once more.", "vendor": "aws"})
        assert recovered["status"] == "finished" and recovered["attempts"] == 2, worker_logs(tmp_path)
        assert time.monotonic() - t0 >= 1.0  # the backoff was waited
        assert [r.status for r in aws.requests] == [500, 200]

        aws.faults.extend([polly.Fault(status=400, error_type="ThrottlingException", message="Rate exceeded")] * 3)
        exhausted = await submit_and_wait(client, {"text": "Never.", "vendor": "aws", "cache": False})
        assert exhausted["status"] == "failed" and exhausted["attempts"] == 3
        assert exhausted["error"] == "aws: ThrottlingException: Rate exceeded"

        aws.faults.append(polly.Fault(status=400, error_type="InvalidSsmlException", message="Invalid SSML request"))
        rejected = await submit_and_wait(client, {"text": "Bad.", "vendor": "aws"})
        assert rejected["status"] == "failed" and rejected["attempts"] == 1
        assert rejected["error"] == "aws: InvalidSsmlException: Invalid SSML request"

        ds.faults.append(dashscope_tts.Fault(code="InvalidParameter", message="[tts:]Engine return error code: 418"))
        ds_failed = await submit_and_wait(client, {"text": "x.", "vendor": "dashscope"})
        assert ds_failed["attempts"] == 1
        assert ds_failed["error"] == "dashscope: InvalidParameter: [tts:]Engine return error code: 418"

        volc.faults.append(volcengine_tts.Fault(code=3003, message="quota exceeded for types: concurrency"))
        volc_retried = await submit_and_wait(client, {"text": "你好。", "vendor": "volcengine"})
        assert volc_retried["status"] == "finished" and volc_retried["attempts"] == 2

        volc.faults.append(volcengine_tts.Fault(code=3050, message="voice_type does not exist", after_chunks=1))
        volc_failed = await submit_and_wait(client, {"text": "再见。" * 50, "vendor": "volcengine"})
        assert volc_failed["attempts"] == 1
        assert volc_failed["error"] == "volcengine: 3050: voice_type does not exist"
        gone = await client.get(f"/v1/tts/{volc_failed['job_id']}/audio")
        assert gone.status_code == 409 and "failed" in gone.json()["detail"]


async def test_bad_credentials_fail_without_retry_and_no_secret_leaks(
        env: dict[str, str], api_settings: Settings, tmp_path: Path, r: aioredis.Redis) -> None:
    wrong_secret = "WRONG/secret/key/that/must/never/leak/0001"
    wrong_key = "sk-wrong-dashscope-key-that-must-not-leak"
    async with PollyEmulator() as aws, DashScopeTtsEmulator() as ds, \
            tts_stack(env, api_settings, tmp_path, aws, ds,
                      extra={"AWS_SECRET_ACCESS_KEY": wrong_secret, "DASHSCOPE_API_KEY": wrong_key}
                      ) as (client, _):
        answers = [await submit_and_wait(client, {"text": "Secret test.", "vendor": v})
                   for v in ("aws", "dashscope")]
        assert [a["status"] for a in answers] == ["failed", "failed"]
        assert [a["attempts"] for a in answers] == [1, 1]
        assert answers[0]["error"].startswith("aws: InvalidSignatureException: ")
        assert answers[1]["error"] == ("dashscope: InvalidApiKey: HTTP 401 at the WebSocket handshake: "
                                       "Invalid API-key provided.")
        texts = [str(a) for a in answers]
    dumped = []
    for key in await r.keys("*"):
        kind = await r.type(key)
        if kind == b"hash":
            dumped.append(str(await r.hgetall(key)))
        elif kind == b"string":
            dumped.append(str(await r.get(key)))
        dumped.append(str(key))
    everything = "\n".join(dumped + texts) + worker_logs(tmp_path)
    for secret in (wrong_secret, wrong_key, polly.SECRET_KEY, dashscope_tts.API_KEY):
        assert secret not in everything


@pytest.mark.parametrize("options", [(), ("--no-fork",)], ids=["fork", "no-fork"])
async def test_job_timeout_follows_the_text_length_and_the_worker_goes_on(
        env: dict[str, str], api_settings: Settings, tmp_path: Path, options: tuple[str, ...]) -> None:
    short = api_settings.model_copy(update={"tts_job_timeout_base_seconds": 1,
                                            "tts_job_timeout_per_char_seconds": 0.0, "tts_retries": 0})
    async with PollyEmulator(polly.EmulatorConfig(delay=3.0)) as emu, \
            tts_stack(env, short, tmp_path, emu, options=options) as (client, _):
        done = await submit_and_wait(client, {"text": "Too slow.", "vendor": "aws"})
        assert done["status"] == "failed" and done["error"] == "timed out after 1s", worker_logs(tmp_path)
        emu.config.delay = 0.0
        emu.faults.append(polly.Fault(status=500))  # and a retry still works after the timeout
        retried = api_settings.model_copy(update={"tts_retries": 1})
        async with api_client(retried) as other:
            after = await submit_and_wait(other, {"text": "Fast now.", "vendor": "aws"})
        assert after["status"] == "finished" and after["attempts"] == 2, worker_logs(tmp_path)


async def test_jobs_run_concurrently_across_workers_and_a_batch_zips_in_order(
        env: dict[str, str], api_settings: Settings, tmp_path: Path) -> None:
    texts = [f"Item number {i} of the batch" + "." * i for i in range(6)]
    # each synthesis takes 1.5 s at the emulator: two workers overlap unless one stalls for
    # all six; how fast a batch goes is bench/tts.py's business, not a test's
    async with PollyEmulator(polly.EmulatorConfig(delay=1.5)) as emu, \
            tts_stack(env, api_settings, tmp_path, emu, workers=2) as (client, _):
        await wait_tts_workers(api_settings, 2)
        resp = await client.post("/v1/tts/batch", json={"items": [{"text": t, "vendor": "aws"} for t in texts]})
        assert resp.status_code == 202, resp.text
        batch = resp.json()
        assert len(batch["job_ids"]) == 6 and batch["status_url"].endswith(batch["batch_id"])
        done = await wait_batch(client, batch["batch_id"])
        assert done["counts"] == {"queued": 0, "started": 0, "finished": 6, "failed": 0}
        assert [i["job_id"] for i in done["items"]] == batch["job_ids"]
        assert [i["index"] for i in done["items"]] == list(range(6)) and done["progress"] == 1.0
        assert emu.peak == 2, "no two syntheses were ever in flight at once"
        z = await client.get(batch["zip_url"])
        assert z.status_code == 200 and z.headers["content-type"] == "application/zip"
        assert z.headers["x-voxq-items"] == "6/6"
        archive = zipfile.ZipFile(io.BytesIO(z.content))
        assert archive.namelist() == [f"{i:04d}.mp3" for i in range(1, 7)]
        for i, name in enumerate(archive.namelist()):
            assert decoded_seconds(archive.read(name)) == pytest.approx(speech_seconds(texts[i]), abs=TOLERANCE)


async def test_batch_with_a_failing_item_zips_the_finished_ones(env: dict[str, str], api_settings: Settings,
                                                                tmp_path: Path) -> None:
    async with PollyEmulator() as emu, tts_stack(env, api_settings, tmp_path, emu) as (client, _):
        early = await client.post("/v1/tts/batch", json={"items": [{"text": "Later.", "vendor": "aws"}]})
        pending = await client.get(early.json()["zip_url"])
        assert pending.status_code in (200, 409)  # 409 while nothing has finished
        await wait_batch(client, early.json()["batch_id"])
        emu.faults.append(polly.Fault(status=400, error_type="TextLengthExceededException", message="too long"))
        resp = await client.post("/v1/tts/batch", json={"items": [
            {"text": "First fails.", "vendor": "aws"}, {"text": "Second works.", "vendor": "local"},
            {"text": "Third works.", "vendor": "aws", "voice": "Ivy"}]})
        done = await wait_batch(client, resp.json()["batch_id"])
        assert [i["status"] for i in done["items"]] == ["failed", "finished", "finished"]
        assert done["items"][0]["error"] == "aws: TextLengthExceededException: too long"
        assert done["counts"]["failed"] == 1 and done["counts"]["finished"] == 2
        archive = zipfile.ZipFile(io.BytesIO((await client.get(resp.json()["zip_url"])).content))
        assert archive.namelist() == ["0002.mp3", "0003.mp3"]


# --- refusals (no worker needed) -------------------------------------------------------------------

@pytest.mark.parametrize(("body", "code", "words"), [
    ({"text": ""}, 422, ["empty"]),
    ({"text": "x" * 50}, 413, ["50 characters", "limit is 40"]),
    ({"text": "x", "vendor": "nope"}, 422, ["nope", "known: aws, dashscope, local, volcengine, volcengine-v3"]),
    ({"text": "x", "vendor": "aws", "voice": "Zed"}, 422, ["Zed", "Joanna"]),
    ({"text": "x", "vendor": "dashscope", "voice": "longwan"}, 422, ["longwan_v2"]),
    ({"text": "x", "sample_rate": 12345}, 422, ["12345", "rates:"]),
    ({"text": "x", "vendor": "aws", "pitch": 1.3}, 422, ["pitch"]),
    ({"text": "x", "format": "wav"}, 422, ["format"]),
    ({"text": "x", "speed": 5}, 422, ["speed"]),
    ({"text": "x", "colour": "blue"}, 422, ["colour"]),
    ({"txt": "x"}, 422, ["text"]),
    ([1, 2], 422, ["valid dictionary"]),
])
async def test_bad_requests_are_clear_and_change_nothing(api_settings: Settings, r: aioredis.Redis,
                                                         keys: Keys, body: Any, code: int,
                                                         words: list[str]) -> None:
    async with api_client(api_settings.model_copy(update={"tts_max_text_chars": 40})) as client:
        resp = await client.post("/v1/tts", json=body)
        assert resp.status_code == code, resp.text
        detail = resp.json()["detail"]
        for word in words:
            assert word in detail
    assert await r.keys(f"{keys.prefix}:*") == []
    assert not await r.exists(f"rq:queue:{api_settings.tts_queue}")


async def test_bad_bodies_batches_and_ids(api_settings: Settings, r: aioredis.Redis, keys: Keys) -> None:
    s = api_settings.model_copy(update={"tts_max_text_chars": 40, "tts_max_batch_items": 3})
    async with api_client(s) as client:
        assert (await client.post("/v1/tts", content=b"{not json")).status_code == 422
        huge = await client.post("/v1/tts", content=b'{"text": "' + b"x" * 10_000 + b'"}')
        assert huge.status_code == 413 and "limit" in huge.json()["detail"]
        many = await client.post("/v1/tts/batch", json={"items": [{"text": "x"}] * 4})
        assert many.status_code == 413 and "more than 3 items" in many.json()["detail"]
        assert "VOXQ_TTS_MAX_BATCH_ITEMS" in many.json()["detail"]
        empty = await client.post("/v1/tts/batch", json={"items": []})
        assert empty.status_code == 422
        bad_item = await client.post("/v1/tts/batch", json={"items": [{"text": "ok"}, {"text": "x", "voice": "q"}]})
        assert bad_item.status_code == 422 and bad_item.json()["detail"].startswith("items.1: unknown voice")
        long_item = await client.post("/v1/tts/batch", json={"items": [{"text": "y" * 41}]})
        assert long_item.status_code == 413 and long_item.json()["detail"].startswith("items.0: ")
        for path in (f"/v1/tts/{jobs.new_job_id()}", f"/v1/tts/{jobs.new_job_id()}/audio",
                     "/v1/tts/..%2F..%2Fetc", "/v1/tts/cache-index", f"/v1/tts/batches/{jobs.new_batch_id()}",
                     f"/v1/tts/batches/{jobs.new_batch_id()}/zip", "/v1/tts/batches/x{y}"):
            resp = await client.get(path)
            assert resp.status_code == 404, (path, resp.text)
            assert isinstance(resp.json()["detail"], str)
        queued = await client.post("/v1/tts", json={"text": "Not yet."})
        audio = await client.get(f"/v1/tts/{queued.json()['job_id']}/audio")
        assert audio.status_code == 409 and "queued" in audio.json()["detail"]
        batch = await client.post("/v1/tts/batch", json={"items": [{"text": "Waiting."}]})
        no_zip = await client.get(batch.json()["zip_url"])
        assert no_zip.status_code == 409 and "no item" in no_zip.json()["detail"]
    assert await r.llen(f"rq:queue:{s.tts_queue}") == 2


async def test_tts_routes_require_the_api_key_when_set(api_settings: Settings) -> None:
    locked = api_settings.model_copy(update={"api_key": SecretStr("k3y")})
    async with api_client(locked) as client:
        assert (await client.post("/v1/tts", json={"text": "x"})).status_code == 401
        assert (await client.get(f"/v1/tts/{jobs.new_job_id()}")).status_code == 401
        ok = await client.post("/v1/tts", json={"text": "x"}, headers={"Authorization": "Bearer k3y"})
        assert ok.status_code == 202


def test_parse_range_follows_rfc_9110() -> None:
    assert parse_range(None, 100) is None
    assert parse_range("bytes=0-9", 100) == (0, 9)
    assert parse_range("bytes=90-200", 100) == (90, 99)
    assert parse_range("bytes=-10", 100) == (90, 99)
    assert parse_range("bytes=-500", 100) == (0, 99)
    assert parse_range("bytes=5-", 100) == (5, 99)
    for ignored in ("items=0-9", "bytes=0-1,5-6", "bytes=9-2", "bytes=a-b", "bytes=", "bytes=1-x"):
        assert parse_range(ignored, 100) is None
    for unsatisfiable in ("bytes=100-", "bytes=-0", "bytes=150-160"):
        with pytest.raises(Exception) as e:
            parse_range(unsatisfiable, 100)
        assert getattr(e.value, "status_code", None) == 416


async def test_tts_worker_metrics_count_jobs_run_in_forked_horses(
        env: dict[str, str], api_settings: Settings, tmp_path: Path) -> None:
    from voxq.embedded_redis import free_port

    port = free_port()
    async with tts_stack(env, api_settings, tmp_path, options=("--metrics-port", str(port))) \
            as (client, _):
        for text in ("Metrics one.", "Metrics two."):
            job = await submit_and_wait(client, {"text": text, "vendor": "local", "cache": False})
            assert job["status"] == "finished"
        async with httpx.AsyncClient() as scrape:
            body = (await scrape.get(f"http://127.0.0.1:{port}/metrics")).text
    finished = [line for line in body.splitlines()
                if line.startswith('voxq_tts_jobs_total{status="finished"}')]
    assert finished and float(finished[0].split()[-1]) == 2.0, body[:2000]
    assert "voxq_tts_job_duration_seconds_count 2.0" in body
