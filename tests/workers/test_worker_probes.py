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
