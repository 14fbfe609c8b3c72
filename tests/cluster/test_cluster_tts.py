"""TTS with the bus on a Redis Cluster: the API and a real `voxq tts-worker` process enqueue and
run RQ jobs on the standalone RQ Redis (VOXQ_RQ_REDIS_URL) while job records, MP3s and the cache
live on the cluster; RQ's status is read from where RQ keeps it; a cluster without an RQ Redis
is a clear startup error."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from api.app import create_app
from tests.emulators.polly import PollyEmulator
from tests.workers.tts.ttstest_support import (
    audio_of,
    decoded_seconds,
    start_tts_worker,
    stop_worker,
    submit_and_wait,
    wait_job,
)
from voxq.embedded_redis import RedisServer
from voxq.errors import InvalidInput
from voxq.keys import Keys
from voxq.redis_cluster import RedisClusterServer
from voxq.redis_conn import connect
from voxq.settings import Settings


@pytest.fixture
def tts_settings(csettings: Settings, prefix: str) -> Settings:
    return csettings.model_copy(update={"tts_queue": prefix, "tts_retries": 0})


@pytest.fixture
async def api(tts_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(tts_settings, tts_settings.redis_url or "")
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api", timeout=30) as c:
            yield c


@pytest.fixture
async def rq_redis(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    r = connect(redis_server.url)
    yield r
    await r.aclose()


async def cluster_keys(cluster: RedisClusterServer, pattern: str) -> list[str]:
    found: list[str] = []
    for p in cluster.primaries():
        found += p.client().keys(pattern)
    return found


async def test_tts_job_runs_on_the_rq_redis_with_results_on_the_cluster(
        cluster: RedisClusterServer, cenv: dict[str, str], tts_settings: Settings,
        api: httpx.AsyncClient, cr: aioredis.Redis, rq_redis: aioredis.Redis, keys: Keys,
        tmp_path: Path) -> None:
    proc = start_tts_worker(cenv, queue=tts_settings.tts_queue, log=tmp_path / "worker.log")
    try:
        done = await submit_and_wait(api, {"text": "Hello from the cluster.", "sample_rate": 16000})
        assert done["status"] == "finished", (tmp_path / "worker.log").read_text()
        mp3 = await audio_of(api, done["job_id"])
        assert decoded_seconds(mp3) == pytest.approx(done["duration"], abs=0.002)
        job = done["job_id"]
        # the record and MP3 are on the cluster; RQ's keys on its own Redis, none on the cluster
        assert await cr.hget(keys.tts(job), "bytes") == str(len(mp3)).encode()
        assert await rq_redis.exists(f"rq:job:{job}") == 0  # result_ttl=0: RQ dropped it
        assert await rq_redis.exists(f"rq:queue:{tts_settings.tts_queue}") == 0  # drained
        assert await rq_redis.keys(f"rq:*{tts_settings.tts_queue}*")  # registries
        assert not await cluster_keys(cluster, "rq:*")
        assert await cluster_keys(cluster, f"{keys.prefix}:tts:cache-*")
        again = (await api.post("/v1/tts", json={"text": "Hello from the cluster.",
                                                 "sample_rate": 16000})).json()
        assert again["status"] == "finished" and again["cached"]  # the cache on the cluster
    finally:
        await asyncio.to_thread(stop_worker, proc)


async def test_failed_job_reason_lands_on_the_cluster_record(
        cluster: RedisClusterServer, cenv: dict[str, str], tts_settings: Settings,
        api: httpx.AsyncClient, tmp_path: Path) -> None:
    async with PollyEmulator() as aws:
        env = {**aws.env(), "AWS_SECRET_ACCESS_KEY": "WRONG/secret"}
        proc = start_tts_worker(cenv, queue=tts_settings.tts_queue, extra=env,
                                log=tmp_path / "worker.log")
        try:
            failed = await submit_and_wait(api, {"text": "No entry.", "vendor": "aws"})
        finally:
            await asyncio.to_thread(stop_worker, proc)
    # written by RQ's failure callback, which runs on the RQ Redis's connection
    assert failed["status"] == "failed" and failed["attempts"] == 1
    assert failed["error"].startswith("aws: InvalidSignatureException"), failed


async def test_rq_status_is_read_from_the_rq_redis(
        tts_settings: Settings, api: httpx.AsyncClient, rq_redis: aioredis.Redis) -> None:
    resp = await api.post("/v1/tts", json={"text": "Nobody works this queue.", "cache": False})
    job = resp.json()["job_id"]
    assert (await api.get(f"/v1/tts/{job}")).json()["status"] == "queued"
    assert await rq_redis.hget(f"rq:job:{job}", "status") == b"queued"
    await rq_redis.hset(f"rq:job:{job}", "status", "canceled")  # what only the RQ Redis knows
    body = await wait_job(api, job, timeout=5)
    assert body["status"] == "failed" and "RQ status canceled" in body["error"]
    await rq_redis.delete(f"rq:job:{job}", f"rq:queue:{tts_settings.tts_queue}")


def test_a_cluster_without_an_rq_redis_is_a_startup_error(
        cluster: RedisClusterServer, cenv: dict[str, str], tts_settings: Settings) -> None:
    env = {k: v for k, v in cenv.items() if k != "VOXQ_RQ_REDIS_URL"}
    out = subprocess.run([sys.executable, "-m", "voxq", "tts-worker", "--burst"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "RQ (the TTS queue) cannot run on a cluster: set VOXQ_RQ_REDIS_URL" in out.stderr
    with pytest.raises(InvalidInput, match="VOXQ_RQ_REDIS_URL"):
        create_app(tts_settings.model_copy(update={"rq_redis_url": None}), cluster.url)
    with pytest.raises(InvalidInput, match="not a cluster"):
        create_app(tts_settings.model_copy(update={"rq_redis_url": cluster.url}), cluster.url)
