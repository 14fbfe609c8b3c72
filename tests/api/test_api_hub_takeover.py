"""Followers of a session whose worker is SIGKILLed mid-session: real worker processes, the
watermark vendor emulator, the API under uvicorn. Every follower receives every final exactly
once, in order (the same finals the session stored), then one `finished` status."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import pytest
import redis.asyncio as aioredis
from apitest_support import serve_in_thread
from test_api_events import WAIT, Reader, events

from api.app import create_app
from api.state import ApiOptions
from tests.emulators.watermark import expected_words, watermark_pcm
from tests.support import create, publish, wait_status
from tests.workers import test_fault_processes as faults
from tests.workers.test_fault_processes import Workers, owner_after_finals, owner_changes
from voxq.keys import Keys
from voxq.records import Status
from voxq.sessions import read_finals
from voxq.settings import Settings

pytestmark = pytest.mark.timeout(240)

# The fault tests' fixtures: the watermark vendor emulator and worker processes.
emulator, fault_env, workers = faults.emulator, faults.fault_env, faults.workers


async def _follow(url: str, sid: str) -> list[Any]:
    """Every event of the session, connecting before it exists (?wait=)."""
    async with events(url, sid, params={"wait": "60"}) as rd:
        out = []
        while (ev := await Reader.next(rd, timeout=60)) is not None:
            out.append(ev)
        return out


async def test_followers_get_every_final_once_across_a_worker_takeover(
        workers: Workers, r: aioredis.Redis, keys: Keys, settings: Settings) -> None:
    app = create_app(settings, settings.redis_url or "",
                     options=ApiOptions(poll_seconds=0.2, keepalive_seconds=1.0))
    n = 80
    for server in serve_in_thread(app):
        followers = [asyncio.create_task(_follow(server.url, "tk")) for _ in range(4)]
        await asyncio.sleep(0.5)  # the followers wait for the session to be created
        assert not any(f.done() for f in followers)
        workers.start("a0", "a1")
        await create(r, keys, "tk", vendor="voxq-ws")
        feeder = asyncio.create_task(publish(r, keys, "tk", watermark_pcm(n), realtime=4))
        victim = await owner_after_finals(r, keys, "tk", 2)
        workers.signal(victim, signal.SIGKILL)
        await owner_changes(r, keys, "tk", victim)
        await feeder
        meta = await wait_status(r, keys, "tk", timeout=120)
        assert meta.status is Status.FINISHED, workers.logs()
        stored = [t for _, t in await read_finals(r, keys, "tk")]
        assert [w for t in stored for w in t.text.split()] == expected_words(n)
        async with asyncio.timeout(WAIT * 3):
            results = await asyncio.gather(*followers)
        for evs in results:
            finals = [e.data for e in evs if e.event == "final"]
            assert [f["seq"] for f in finals] == [t.seq for t in stored]
            assert [f["text"] for f in finals] == [t.text for t in stored]
            assert evs[-1].event == "status" and evs[-1].data["status"] == "finished"
            assert [e.event for e in evs].count("status") == 1
