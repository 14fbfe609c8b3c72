"""A worker's probes: liveness from its event loop, readiness false while draining, metrics."""

from __future__ import annotations

import asyncio

import httpx

from voxq.settings import Settings
from workers.transcriber import Transcriber


async def test_health_ready_and_metrics_then_not_ready_while_draining(settings: Settings) -> None:
    assert settings.redis_url
    w = Transcriber(settings, settings.redis_url, name="probe", health_port=0)
    stop = asyncio.Event()
    task = asyncio.create_task(w.run(stop))
    try:
        while not w.ready or not w.health_port:
            await asyncio.sleep(0.02)
        base = f"http://127.0.0.1:{w.health_port}"
        async with httpx.AsyncClient() as c:
            assert (await c.get(f"{base}/healthz")).status_code == 200
            assert (await c.get(f"{base}/readyz")).status_code == 200
            metrics = await c.get(f"{base}/metrics")
            assert metrics.status_code == 200 and "python_info" in metrics.text
            assert (await c.get(f"{base}/nope")).status_code == 404
            w.draining.set()  # what SIGTERM does first
            assert (await c.get(f"{base}/readyz")).status_code == 503
            assert (await c.get(f"{base}/healthz")).status_code == 200
            w.heartbeat -= 60  # an event loop that stopped turning
            assert (await c.get(f"{base}/healthz")).status_code == 503
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_worker_metrics_count_sessions_chunks_and_vendor_connects(settings: Settings) -> None:
    from prometheus_client import REGISTRY

    from tests.emulators.watermark import WatermarkEmulator, watermark_pcm
    from tests.support import create, publish, wait_status
    from voxq.keys import Keys
    from voxq.redis_conn import connect

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels or None) or 0.0

    keys = Keys(settings.prefix)
    before = {n: value(n) for n in ("voxq_chunks_relayed_total", "voxq_sessions_claimed_total")}
    finished = value("voxq_sessions_finished_total", status="finished")
    connects = value("voxq_vendor_connects_total", vendor="voxq-ws")
    with WatermarkEmulator() as emu:
        assert settings.redis_url
        w = Transcriber(settings.model_copy(update={"voxqws_url": emu.url}), settings.redis_url,
                        name="metrics")
        stop = asyncio.Event()
        task = asyncio.create_task(w.run(stop))
        r = connect(settings.redis_url)
        try:
            await create(r, keys, "m1", vendor="voxq-ws")
            await publish(r, keys, "m1", watermark_pcm(30))
            await wait_status(r, keys, "m1")
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
            await r.aclose()
    assert value("voxq_chunks_relayed_total") - before["voxq_chunks_relayed_total"] == 30
    assert value("voxq_sessions_claimed_total") - before["voxq_sessions_claimed_total"] == 1
    assert value("voxq_sessions_finished_total", status="finished") - finished == 1
    assert value("voxq_vendor_connects_total", vendor="voxq-ws") - connects == 1
    assert value("voxq_sessions_live") == 0
    assert value("voxq_relay_latency_seconds_count") >= 30 // 8
