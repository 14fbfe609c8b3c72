"""The light SSE response (api.sse.EventStream run by api.sse.run_detaching) over a real
uvicorn: the same head as before for clients, and a live follower that holds none of FastAPI's
request machinery (its exit stacks) while it streams, which is what keeps followers cheap."""

from __future__ import annotations

import asyncio
import gc
from contextlib import AsyncExitStack

import httpx
import pytest
import redis.asyncio as aioredis
from apitest_support import LiveServer, add_final, add_session, set_status
from test_api_events import WAIT, Reader

from api.state import ApiOptions
from voxq.keys import Keys
from voxq.records import Status

pytestmark = pytest.mark.timeout(60)

FOLLOWERS = 12


@pytest.fixture
def live_options() -> ApiOptions:
    """Fast timers, room for every follower of the test."""
    return ApiOptions(poll_seconds=0.2, keepalive_seconds=0.3, max_streams=100)


def _exit_stacks() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, AsyncExitStack))


async def test_the_stream_head_is_unchanged(live: LiveServer, r: aioredis.Redis,
                                            keys: Keys) -> None:
    await add_session(r, keys, "head")
    await add_final(r, keys, "head", 0, "x", 0, 1)
    async with httpx.AsyncClient(base_url=live.url, timeout=WAIT) as c, \
            c.stream("GET", "/v1/sessions/head/events") as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert resp.headers["cache-control"] == "no-cache"
        assert resp.headers["x-accel-buffering"] == "no"
        assert resp.headers["transfer-encoding"] == "chunked"
        rd = Reader(resp)
        assert (await rd.expect("final")).data["text"] == "x"
        await set_status(r, keys, "head", Status.FINISHED)
        assert (await rd.expect("status")).data["status"] == "finished"
        assert await rd.next() is None


async def test_live_followers_hold_no_request_machinery(live: LiveServer, r: aioredis.Redis,
                                                        keys: Keys) -> None:
    await add_session(r, keys, "lean")
    await add_final(r, keys, "lean", 0, "x", 0, 1)
    before = _exit_stacks()
    async with httpx.AsyncClient(base_url=live.url, timeout=WAIT,
                                 limits=httpx.Limits(max_connections=FOLLOWERS)) as c:
        async with AsyncExitStack() as streams:
            readers = []
            for _ in range(FOLLOWERS):
                resp = await streams.enter_async_context(
                    c.stream("GET", "/v1/sessions/lean/events"))
                readers.append(Reader(resp))
            for rd in readers:
                await rd.expect("final")
            assert live.state.live_streams == FOLLOWERS
            held = _exit_stacks() - before - 1  # this test's own stack
            # a follower inside FastAPI's routing chain would hold three exit stacks each
            assert held < FOLLOWERS, held
            await set_status(r, keys, "lean", Status.FINISHED)
            for rd in readers:
                assert (await rd.expect("status")).data["status"] == "finished"
    for _ in range(int(WAIT / 0.05)):
        if live.state.live_streams == 0:
            break
        await asyncio.sleep(0.05)
    assert live.state.live_streams == 0
