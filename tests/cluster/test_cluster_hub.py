"""The API's event hub on a Redis Cluster: per-slot pipelined reads deliver every final of
sessions spread over the shards, in order, then the status; the firehose and ?wait= too."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from api.app import create_app
from api.state import ApiOptions
from tests.api.apitest_support import add_final, add_session, serve_in_thread, set_status
from voxq.keys import Keys
from voxq.lifecycle import announce
from voxq.records import SessionMeta, Status
from voxq.redis_cluster import RedisClusterServer, slot_of
from voxq.sessions import create_session
from voxq.settings import Settings

pytestmark = pytest.mark.timeout(180)


async def _follow(url: str, sid: str, wait: str = "0") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as c, \
            c.stream("GET", f"/v1/sessions/{sid}/events", params={"wait": wait}) as resp:
        assert resp.status_code == 200
        event = ""
        async for line in resp.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                out.append((event, line[6:]))
    return out


async def test_followers_on_a_cluster_get_every_final_in_order(
        cluster: RedisClusterServer, csettings: Settings, cr: aioredis.Redis,
        keys: Keys) -> None:
    sids = [f"c{i}" for i in range(6)]
    assert len({slot_of(keys.meta(s)) for s in sids}) == len(sids)
    app = create_app(csettings, csettings.redis_url or "",
                     options=ApiOptions(poll_seconds=0.2, status_check_seconds=0))
    for server in serve_in_thread(app):
        for sid in sids[:5]:
            await add_session(cr, keys, sid)
        tasks = [asyncio.create_task(_follow(server.url, s, "30")) for s in sids]
        await asyncio.sleep(0.5)
        await create_session(cr, keys, SessionMeta(session_id=sids[5]))  # waited for
        for n in range(30):
            for sid in sids:
                await add_final(cr, keys, sid, n, f"w{n}", n, n + 0.5)
        for sid in sids:
            await set_status(cr, keys, sid, Status.FINISHED)
            await announce(cr, keys, sid, Status.FINISHED)
        async with asyncio.timeout(60):
            results = await asyncio.gather(*tasks)
        for evs in results:
            finals = [d for e, d in evs if e == "final"]
            assert [f'"text":"w{n}"' in d for n, d in enumerate(finals)] == [True] * 30
            assert len(finals) == 30 and evs[-1][0] == "status"
