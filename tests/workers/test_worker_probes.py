"""A worker's probes: liveness from its event loop, readiness false while draining, metrics."""

from __future__ import annotations

import asyncio

import httpx

from voxq.aio import within
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
        await within(task, 30)


async def test_worker_metrics_count_sessions_chunks_and_vendor_connects(settings: Settings) -> None:
    from prometheus_client import REGISTRY

    from tests.emulators.watermark import WatermarkEmulator, watermark_pcm
    from tests.support import create, publish, wait_finished
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
            await wait_finished(r, keys, "m1")
        finally:
            stop.set()
            await within(task, 30)
            await r.aclose()
    assert value("voxq_chunks_relayed_total") - before["voxq_chunks_relayed_total"] == 30
    assert value("voxq_sessions_claimed_total") - before["voxq_sessions_claimed_total"] == 1
    assert value("voxq_sessions_finished_total", status="finished") - finished == 1
    assert value("voxq_vendor_connects_total", vendor="voxq-ws") - connects == 1
    assert value("voxq_sessions_live") == 0
    assert value("voxq_relay_latency_seconds_count") >= 30 // 8


async def test_probes_answer_before_redis_does_and_ready_follows_the_group(
        settings: Settings) -> None:
    """Liveness holds while Redis is unreachable (no restart for Redis' sake); readiness is
    false until the consumer group exists, then true."""
    from voxq.embedded_redis import RedisServer, free_port

    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    w = Transcriber(settings.model_copy(update={"redis_url": url}), url, name="early",
                    health_port=0)
    stop = asyncio.Event()
    task = asyncio.create_task(w.run(stop))
    try:
        while not w.health_port:
            await asyncio.sleep(0.02)
        base = f"http://127.0.0.1:{w.health_port}"
        async with httpx.AsyncClient() as c:
            for _ in range(5):
                assert (await c.get(f"{base}/healthz")).status_code == 200
                assert (await c.get(f"{base}/readyz")).status_code == 503
                await asyncio.sleep(0.2)
            with RedisServer(port):
                for _ in range(200):
                    if (await c.get(f"{base}/readyz")).status_code == 200:
                        break
                    await asyncio.sleep(0.05)
                assert (await c.get(f"{base}/readyz")).status_code == 200
                stop.set()
                await within(task, 30)
    finally:
        stop.set()
        await within(task, 30)


async def test_stop_while_redis_is_unreachable_returns(settings: Settings) -> None:
    from voxq.embedded_redis import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    w = Transcriber(settings.model_copy(update={"redis_url": url}), url, name="never")
    stop = asyncio.Event()
    task = asyncio.create_task(w.run(stop))
    await asyncio.sleep(0.5)
    assert not w.ready
    stop.set()
    await within(task, 10)


async def test_a_stopped_worker_leaves_the_group_once_nothing_is_pending(
        settings: Settings) -> None:
    """One session finished, one handed off at stop: nothing stays pending for the worker, so
    its consumer is deleted (a fleet that scales up and down keeps no consumer per old pod)."""
    from tests.emulators.watermark import WatermarkEmulator, watermark_pcm
    from tests.support import create, publish, wait_finished
    from voxq.keys import TRANSCRIBERS_GROUP, Keys
    from voxq.redis_conn import connect
    from workers.ownership import HANDOFF_CONSUMER

    assert settings.redis_url
    keys = Keys(settings.prefix)
    with WatermarkEmulator() as emu:
        w = Transcriber(settings.model_copy(update={"voxqws_url": emu.url}), settings.redis_url,
                        name="leaver")
        stop = asyncio.Event()
        task = asyncio.create_task(w.run(stop))
        r = connect(settings.redis_url)
        try:
            await create(r, keys, "lv1", vendor="voxq-ws")
            await publish(r, keys, "lv1", watermark_pcm(5))
            await wait_finished(r, keys, "lv1")
            await create(r, keys, "lv2", vendor="voxq-ws")
            await publish(r, keys, "lv2", watermark_pcm(5), eos=False)
            while "lv2" not in w.held:
                await asyncio.sleep(0.02)
            names = {c["name"] for c in await r.xinfo_consumers(keys.sessions,
                                                                 TRANSCRIBERS_GROUP)}
            assert b"leaver" in names or "leaver" in names
            stop.set()
            await within(task, 30)
            consumers = {(c["name"].decode() if isinstance(c["name"], bytes) else c["name"]):
                         c["pending"] for c in await r.xinfo_consumers(keys.sessions,
                                                                       TRANSCRIBERS_GROUP)}
            assert consumers == {HANDOFF_CONSUMER: 1}
        finally:
            stop.set()
            await within(task, 30)
            await r.aclose()
