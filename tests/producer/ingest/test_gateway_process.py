"""`voxq ingest` as an operator runs it (a child process): it refuses to start without a
credential, serves health and metrics, drains on SIGTERM, and a raw client resumes after the
gateway is SIGKILLed with nothing lost (an exact watermark transcript)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from ingesttest_support import KEY, gateway_process
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.emulators.watermark import WatermarkEmulator, expected_words, watermark_pcm
from tests.support import wait_status
from voxq.keys import Keys
from voxq.records import Status, decode_chunk
from voxq.sessions import read_finals
from voxq.settings import Settings
from workers.transcriber import Transcriber

pytestmark = pytest.mark.timeout(180)


def test_refuses_to_start_without_a_credential(env: dict[str, str]) -> None:
    p = subprocess.run([sys.executable, "-m", "voxq", "ingest", "--port", "0"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert "no credential is configured" in p.stderr and "--insecure" in p.stderr


async def test_health_metrics_and_sigterm_drain(env: dict[str, str], tmp_path: Path) -> None:
    with gateway_process(env, tmp_path / "gw.log") as (proc, port):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            assert (await http.get("/readyz")).status_code == 200
            async with connect(f"ws://127.0.0.1:{port}/v1/ingest/raw?key={KEY}&format=s16") as ws:
                await ws.send(bytes(3200))
                assert json.loads(await ws.recv())["event"] == "ready"
                metrics = (await http.get("/metrics")).text
                assert 'voxq_ingest_connections_total{dialect="raw"} 1.0' in metrics
                assert "voxq_ingest_ack_latency_seconds_bucket" in metrics
                proc.send_signal(signal.SIGTERM)
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
            assert ws.close_code == 1012  # resume elsewhere
        async with asyncio.timeout(30):
            while proc.poll() is None:
                await asyncio.sleep(0.1)
        assert proc.returncode == 0
    assert KEY not in (tmp_path / "gw.log").read_text()


async def last_seq(r: aioredis.Redis, keys: Keys, sid: str) -> int:
    """Seq of the last chunk in the session's stream (-1: none)."""
    last = await r.xrevrange(keys.audio(sid), count=1)
    return decode_chunk(last[0][1]).seq if last else -1


@pytest.fixture
async def wm_worker(settings: Settings) -> AsyncIterator[WatermarkEmulator]:
    with WatermarkEmulator(idle_timeout=120) as emu:
        assert settings.redis_url
        w = Transcriber(settings.model_copy(update={"voxqws_url": emu.url,
                                                    "claim_timeout_seconds": 2.0}),
                        settings.redis_url, name="w-resume")
        stop = asyncio.Event()
        task = asyncio.create_task(w.run(stop))
        try:
            yield emu
        finally:
            stop.set()
            async with asyncio.timeout(30):
                await task


async def test_resume_after_gateway_sigkill_is_exact(
        env: dict[str, str], tmp_path: Path, wm_worker: WatermarkEmulator, r: aioredis.Redis,
        keys: Keys) -> None:
    n = 80
    pcm = watermark_pcm(n)
    frame = 3200  # 100 ms
    query = f"key={KEY}&session=sk&format=s16&vendor=voxq-ws"
    with gateway_process(env, tmp_path / "gw1.log") as (proc, port):
        async with connect(f"ws://127.0.0.1:{port}/v1/ingest/raw?{query}") as ws:
            for i in range(0, 40 * frame, frame):
                await ws.send(pcm[i:i + frame])
                await asyncio.sleep(0.01)
            async with asyncio.timeout(30):  # the last seq, not the length: workers trim
                while (await last_seq(r, keys, "sk")) < 19:
                    await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            with pytest.raises(ConnectionClosed):
                while True:
                    await ws.recv()
    with gateway_process(env, tmp_path / "gw2.log") as (_, port):
        async with connect(f"ws://127.0.0.1:{port}/v1/ingest/raw?{query}&resume=1") as ws:
            ready = json.loads(await ws.recv())
            assert ready["session"] == "sk" and ready["acked_samples"] >= 20 * 1600
            rest = pcm[ready["acked_samples"] * 2:]
            for i in range(0, len(rest), frame):
                await ws.send(rest[i:i + frame])
            await ws.send("Done")
        meta = await wait_status(r, keys, "sk", timeout=120)
    assert meta.status is Status.FINISHED, meta.error
    words = [w for _, t in await read_finals(r, keys, "sk") for w in t.text.split()]
    assert words == expected_words(n)


async def test_runs_on_embedded_defaults(env: dict[str, str], tmp_path: Path) -> None:
    """No REDIS_URL: the gateway starts its own Redis, as `voxq produce` does."""
    bare = {k: v for k, v in env.items() if k != "REDIS_URL"}
    with gateway_process(bare, tmp_path / "gw.log", "--insecure") as (_, port):
        async with connect(f"ws://127.0.0.1:{port}/v1/ingest/raw?session=emb&format=s16") as ws:
            await ws.send(bytes(6400))
            assert json.loads(await ws.recv()) == {"event": "ready", "session": "emb",
                                                   "acked_samples": 0}
            await ws.send("Done")
            with pytest.raises(ConnectionClosed):
                await ws.recv()
        assert ws.close_code == 1000  # closed only once Redis acknowledged the end of stream
