"""A session's vendor switch reaches its live followers: the worker's own switch script writes
the status stream entry, the API's hub turns it into a `vendor_switched` event between the
finals, and the stream still ends with the terminal status."""

from __future__ import annotations

from dataclasses import replace

import pytest
import redis.asyncio as aioredis
from apitest_support import LiveServer, add_final, add_session, set_status
from test_api_events import events

from api.state import ApiOptions
from voxq.keys import Keys
from voxq.records import Status
from voxq.sessions import get_meta
from workers.ownership import Ownership

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def live_options() -> ApiOptions:
    """Statuses must come from the stream (the safety-net check is off)."""
    return ApiOptions(poll_seconds=0.2, keepalive_seconds=0.3, status_check_seconds=0)


async def test_followers_see_the_vendor_switch_in_order(live: LiveServer, r: aioredis.Redis,
                                                        keys: Keys) -> None:
    await add_session(r, keys, "sw", vendor="deepgram", fallback=("aws", "local"))
    await r.hset(keys.meta("sw"), "epoch", 3)
    await add_final(r, keys, "sw", 0, "before", 0, 1)
    own = Ownership(r, keys, "w-test")
    try:
        async with events(live.url, "sw") as rd:
            assert (await rd.expect("final")).data["text"] == "before"
            await own.switch_vendor("sw", 3, "deepgram", "aws",
                                    "HTTP 503 at the WebSocket handshake")
            ev = await rd.expect("vendor_switched")
            assert ev.data == {"from": "deepgram", "vendor": "aws",
                               "reason": "HTTP 503 at the WebSocket handshake"}
            await add_final(r, keys, "sw", 1, "after", 1, 2)
            assert (await rd.expect("final")).data["text"] == "after"
            await set_status(r, keys, "sw", Status.FINISHED)
            assert (await rd.expect("status")).data["status"] == "finished"
        meta = await get_meta(r, keys, "sw")
        assert (meta.active_vendor, meta.vendor_switches) == ("aws", 1)
    finally:
        await own.aclose()


def test_segments_name_their_vendor_when_the_final_does() -> None:
    from api.transcript_formats import segment_dict
    from voxq.records import Transcript

    t = Transcript(text="w0", is_final=True, start=0.0, end=0.1, seq=0)
    assert "vendor" not in segment_dict(t, 0)  # finals written before vendors were recorded
    assert segment_dict(replace(t, vendor="aws"), 0)["vendor"] == "aws"
