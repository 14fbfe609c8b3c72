"""End to end on a Redis Cluster: `voxq produce` processes (REDIS_URL=redis+cluster://…) and the
Publisher with WAIT, a transcriber worker, and the API reading sessions, transcripts and live
events — one session per primary, every transcript exactly the watermark words."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis.asyncio as aioredis
import soundfile as sf

from api.app import create_app
from tests.cluster.clustertest_support import assert_exact, sid_on, sids_on_every_primary
from tests.emulators.watermark import WatermarkEmulator, expected_words, watermark_pcm
from tests.support import stop_process
from voxq.aio import within
from voxq.keys import Keys
from voxq.redis_cluster import RedisClusterServer
from voxq.settings import Settings
from workers.transcriber import Transcriber

N = 60


@pytest.fixture
def emulator() -> Iterator[WatermarkEmulator]:
    with WatermarkEmulator() as emu:
        yield emu


@pytest.fixture
async def worker(csettings: Settings, emulator: WatermarkEmulator) -> AsyncIterator[Transcriber]:
    w = Transcriber(csettings.model_copy(update={"voxqws_url": emulator.url}),
                    csettings.redis_url or "", name="cw-e2e")
    stop = asyncio.Event()
    task = asyncio.create_task(w.run(stop))
    yield w
    stop.set()
    await within(task, 30)


@pytest.fixture
async def api(csettings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(csettings, csettings.redis_url or "")
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api", timeout=30) as c:
            yield c


def wav_of(tmp_path: Path, n: int) -> Path:
    path = tmp_path / f"wm{n}.wav"
    sf.write(path, np.frombuffer(watermark_pcm(n), "<i2"), 16000, subtype="PCM_16")
    return path


async def test_produce_work_and_read_through_the_api(
        cluster: RedisClusterServer, cenv: dict[str, str], cr: aioredis.Redis, keys: Keys,
        worker: Transcriber, api: httpx.AsyncClient, tmp_path: Path) -> None:
    sids = sids_on_every_primary(cluster, "e2e", keys)
    wav = wav_of(tmp_path, N)
    procs = [subprocess.Popen([sys.executable, "-m", "voxq", "produce", str(wav), "--session", sid,
                               "--vendor", "voxq-ws", "--fast"], env=cenv,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for sid in sids]
    try:
        for p in procs:
            out, _ = await asyncio.to_thread(p.communicate, timeout=60)
            assert p.returncode == 0, out.decode()
    finally:
        for p in procs:
            stop_process(p, 5)
    for sid in sids:
        await assert_exact(cr, keys, sid, N, timeout=60)

    listed = (await api.get("/v1/sessions")).json()
    assert sorted(s["session_id"] for s in listed["items"]) == sorted(sids) and listed["total"] == 3
    for sid in sids:
        one = (await api.get(f"/v1/sessions/{sid}")).json()
        assert one["status"] == "finished"
        txt = await api.get(f"/v1/sessions/{sid}/transcript", params={"format": "txt"})
        assert txt.status_code == 200 and txt.text.split() == expected_words(N)
        events = await api.get(f"/v1/sessions/{sid}/events")  # finished: replays, then status
        assert events.status_code == 200
        data = [json.loads(line[6:]) for line in events.text.splitlines()
                if line.startswith("data: ")]
        said = [w for d in data[:-1] for w in d["text"].split()]
        assert said == expected_words(N) and data[-1]["status"] == "finished"
    assert (await api.get("/readyz")).status_code == 200


async def test_publisher_with_wait_on_a_healthy_cluster(
        cluster: RedisClusterServer, csettings: Settings, cr: aioredis.Redis, keys: Keys,
        worker: Transcriber) -> None:
    from producer.publisher import Publisher

    sid = sid_on(cluster, cluster.nodes[1], "wait", keys)
    pub = Publisher(csettings.redis_url or "", settings=csettings, keys=keys, wait_replicas=1,
                    wait_timeout_ms=2000)
    await pub.open(sid, vendor="voxq-ws")
    pcm = watermark_pcm(N)
    for i in range(0, len(pcm), 3200 * 5):
        await pub.send(pcm[i:i + 3200 * 5])
    await pub.close()
    s = pub.stats
    assert s.chunks == N and s.waits >= 1 and s.wait_shortfalls == 0 and s.degraded_waits == 0
    assert s.lost == 0 and s.failures == 0
    await assert_exact(cr, keys, sid, N, timeout=60)
    # the session's creation was confirmed by the replicas of three (or fewer) nodes
    replica = cluster.replicas_of(cluster.primary_of_key(keys.meta(sid)))[0].client()
    replica.execute_command("READONLY")  # a replica answers reads only when asked to
    assert replica.hget(keys.meta(sid), "vendor") == "voxq-ws"
    replica.close()
