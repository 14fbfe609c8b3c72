"""Helpers the TTS tests share: a `voxq tts-worker` process, the API in process, and waiting for
jobs and batches to end."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import soundfile as sf

from api.app import create_app
from voxq.settings import Settings

FAST_WORKER_ENV = {"VOXQ_TTS_VENDOR_TIMEOUT_SECONDS": "15", "VOXQ_LOG_LEVEL": "INFO"}


def start_tts_worker(env: dict[str, str], *, queue: str, extra: dict[str, str] | None = None,
                     log: Path | None = None, name: str | None = None,
                     options: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    """A `voxq tts-worker` OS process (its own process group, so its scheduler dies with it)."""
    full = {**env, **FAST_WORKER_ENV, "VOXQ_TTS_QUEUE": queue, **(extra or {})}
    out = log.open("ab") if log else subprocess.DEVNULL
    args = [sys.executable, "-m", "voxq", "tts-worker", *options] + (["--name", name] if name else [])
    return subprocess.Popen(args, env=full, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop_worker(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the worker's group (RQ's warm shutdown), SIGKILL it if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(5)


@asynccontextmanager
async def api_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client on the API for ``settings`` (lifespan run around it)."""
    app = create_app(settings, settings.redis_url or "")
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api", timeout=30) as c:
            yield c


async def wait_job(client: httpx.AsyncClient, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
    """Poll a job until it is finished or failed; its last status."""
    deadline = time.monotonic() + timeout
    while True:
        resp = await client.get(f"/v1/tts/{job_id}")
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        if body["status"] in ("finished", "failed"):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {body['status']} after {timeout}s: {body}")
        await asyncio.sleep(0.05)


async def wait_batch(client: httpx.AsyncClient, batch_id: str, timeout: float = 60.0) -> dict[str, Any]:
    """Poll a batch until every item has ended; its last status."""
    deadline = time.monotonic() + timeout
    while True:
        resp = await client.get(f"/v1/tts/batches/{batch_id}")
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        if body["status"] == "finished":
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"batch {batch_id} still running after {timeout}s: {body['counts']}")
        await asyncio.sleep(0.05)


async def submit_and_wait(client: httpx.AsyncClient, body: dict[str, Any],
                          timeout: float = 60.0) -> dict[str, Any]:
    """POST /v1/tts (expecting 202) and wait for the job to end."""
    resp = await client.post("/v1/tts", json=body)
    assert resp.status_code == 202, resp.text
    return await wait_job(client, resp.json()["job_id"], timeout)


async def audio_of(client: httpx.AsyncClient, job_id: str) -> bytes:
    """The finished job's MP3 (checks the response headers on the way)."""
    resp = await client.get(f"/v1/tts/{job_id}/audio")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "audio/mpeg"
    assert int(resp.headers["content-length"]) == len(resp.content)
    return resp.content


def decoded_seconds(mp3: bytes) -> float:
    """Duration of an MP3 by fully decoding it with soundfile."""
    data, rate = sf.read(io.BytesIO(mp3), dtype="float32")
    return len(data) / rate
