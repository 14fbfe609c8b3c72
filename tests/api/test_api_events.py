"""/v1/sessions/{id}/events over a real uvicorn: live partials and finals, resume, close, limits.

The test plays the worker: it XADDs partials and finals with encode_transcript and finally
marks the session terminal, while an httpx client reads the Server-Sent Events.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from apitest_support import LiveServer, add_final, add_partial, add_session, serve_in_thread, set_status
from pydantic import SecretStr

from api.app import create_app
from api.state import ApiOptions
from voxq.keys import Keys
from voxq.records import Status
from voxq.settings import Settings

WAIT = 10.0  # seconds any single expected event may take before the test fails


@pytest.fixture
def live_options() -> ApiOptions:
    """Every server in this module: fast polling, 0.3 s keep-alive, at most 2 streams."""
    return ApiOptions(poll_seconds=0.05, keepalive_seconds=0.3, max_streams=2)


@dataclass
class Event:
    """One parsed SSE message."""

    event: str
    id: str | None
    data: Any


@dataclass
class Reader:
    """Reads SSE messages (and counts comments) from a streaming httpx response."""

    response: httpx.Response
    lines: AsyncIterator[str] = field(init=False)
    comments: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lines = self.response.aiter_lines()

    async def next(self, timeout: float = WAIT) -> Event | None:
        """The next event, or None when the server closed the stream."""
        async with asyncio.timeout(timeout):
            fields: dict[str, list[str]] = {}
            async for line in self.lines:
                if line == "":
                    if fields:
                        return Event(event=fields.get("event", ["message"])[0],
                                     id=fields.get("id", [None])[0],  # type: ignore[list-item]
                                     data=json.loads("\n".join(fields["data"])))
                    continue
                if line.startswith(":"):
                    self.comments.append(line)
                    continue
                name, _, value = line.partition(":")
                fields.setdefault(name, []).append(value.removeprefix(" "))
            return None

    async def expect(self, kind: str) -> Event:
        """The next event, which must be of `kind`."""
        ev = await self.next()
        assert ev is not None, f"stream closed while waiting for a {kind!r} event"
        assert ev.event == kind, ev
        return ev


@asynccontextmanager
async def events(url: str, sid: str, headers: dict[str, str] | None = None,
                 params: dict[str, str] | None = None) -> AsyncIterator[Reader]:
    """Open the event stream of `sid` and yield a reader (the status must be 200)."""
    async with httpx.AsyncClient(base_url=url, timeout=WAIT) as c, \
            c.stream("GET", f"/v1/sessions/{sid}/events", headers=headers,
                     params=params) as resp:
        assert resp.status_code == 200, await resp.aread()
        assert resp.headers["content-type"].startswith("text/event-stream")
        yield Reader(resp)


async def test_live_partials_and_finals_then_status_closes(live: LiveServer, r: aioredis.Redis,
                                                           keys: Keys) -> None:
    await add_session(r, keys, "call")
    await add_partial(r, keys, "call", "old hypothesis", 0.0, 0.5)  # before connect: not sent
    f0 = await add_final(r, keys, "call", 0, "hello", 0.0, 0.8)
    async with events(live.url, "call") as rd:
        replay = await rd.expect("final")
        assert replay.data["text"] == "hello" and replay.data["seq"] == 0
        assert replay.id is not None and replay.id.startswith(f"{f0};")
        p1 = await add_partial(r, keys, "call", "how can", 0.9, 1.3, result_id="r2")
        partial = await rd.expect("partial")
        assert partial.data == {"seq": None, "text": "how can", "start": 0.9, "end": 1.3,
                                "channel": 0, "speaker": None, "words": [],
                                "result_id": "r2"}
        assert partial.id == f"{f0};{p1}"
        f1 = await add_final(r, keys, "call", 1, "how can I help", 0.9, 2.0)
        final = await rd.expect("final")
        assert final.data["text"] == "how can I help" and final.data["seq"] == 1
        assert final.id == f"{f1};{p1}"
        await set_status(r, keys, "call", Status.FINISHED)
        status = await rd.expect("status")
        assert status.data == {"status": "finished", "error": ""}
        assert status.id == f"{f1};{p1}"
        assert await rd.next() is None  # the server closed the stream


async def test_finals_written_just_before_the_end_are_not_lost(live: LiveServer,
                                                               r: aioredis.Redis,
                                                               keys: Keys) -> None:
    await add_session(r, keys, "burst")
    async with events(live.url, "burst") as rd:
        await asyncio.sleep(0.2)  # the server is now blocked in XREAD
        for i in range(450):  # more than one read batch
            await add_final(r, keys, "burst", i, f"w{i}", i, i + 0.5)
        await set_status(r, keys, "burst", Status.FINISHED)
        seqs = []
        while (ev := await rd.next()) is not None and ev.event == "final":
            seqs.append(ev.data["seq"])
        assert seqs == list(range(450))
        assert ev is not None and ev.event == "status"
        assert await rd.next() is None


async def test_resume_with_last_event_id_sends_only_newer(live: LiveServer, r: aioredis.Redis,
                                                          keys: Keys) -> None:
    await add_session(r, keys, "re")
    await add_final(r, keys, "re", 0, "zero", 0, 1)
    async with events(live.url, "re") as rd:
        await rd.expect("final")
        await add_partial(r, keys, "re", "on", 1, 1.2)
        seen = await rd.expect("partial")
    assert seen.id is not None
    # While the client is away: one more final and one more partial.
    await add_final(r, keys, "re", 1, "one", 1, 2)
    await add_partial(r, keys, "re", "onward", 2, 2.5)
    for how in ("header", "query"):
        headers = {"Last-Event-ID": seen.id} if how == "header" else None
        params = {"last_event_id": seen.id} if how == "query" else None
        async with events(live.url, "re", headers=headers, params=params) as rd:
            first, second = await rd.expect("final"), await rd.expect("partial")
            assert (first.data["text"], second.data["text"]) == ("one", "onward"), how
            await set_status(r, keys, "re", Status.FINISHED)
            assert (await rd.expect("status")).data["status"] == "finished"
            assert await rd.next() is None
        await set_status(r, keys, "re", Status.ACTIVE)


async def test_resume_after_the_last_event_of_a_finished_session(live: LiveServer,
                                                                  r: aioredis.Redis,
                                                                  keys: Keys) -> None:
    await add_session(r, keys, "done")
    await add_final(r, keys, "done", 0, "a", 0, 1)
    await add_final(r, keys, "done", 1, "b", 1, 2)
    await set_status(r, keys, "done", Status.FINISHED)
    async with events(live.url, "done") as rd:
        texts = [(await rd.expect("final")).data["text"] for _ in range(2)]
        status = await rd.expect("status")
        assert await rd.next() is None
    assert texts == ["a", "b"]
    assert status.id is not None
    async with events(live.url, "done", headers={"Last-Event-ID": status.id}) as rd:
        assert (await rd.expect("status")).data["status"] == "finished"  # nothing repeated
        assert await rd.next() is None


async def test_failed_session_status_carries_the_error(live: LiveServer, r: aioredis.Redis,
                                                       keys: Keys) -> None:
    await add_session(r, keys, "f")
    async with events(live.url, "f") as rd:
        await set_status(r, keys, "f", Status.FAILED, error="vendor closed the stream")
        assert (await rd.expect("status")).data == {"status": "failed",
                                                    "error": "vendor closed the stream"}
        assert await rd.next() is None


async def test_two_channel_events_carry_the_channel(live: LiveServer, r: aioredis.Redis,
                                                    keys: Keys) -> None:
    await add_session(r, keys, "two", channels=2)
    async with events(live.url, "two") as rd:
        await add_final(r, keys, "two", 0, "customer speaks", 0, 1, channel=1)
        assert (await rd.expect("final")).data["channel"] == 1


async def test_malformed_entry_is_skipped_not_fatal(live: LiveServer, r: aioredis.Redis,
                                                    keys: Keys) -> None:
    await add_session(r, keys, "junk")
    await r.xadd(keys.final("junk"), {"text": "x", "start": "soon"})
    await add_final(r, keys, "junk", 0, "fine", 0, 1)
    async with events(live.url, "junk") as rd:
        assert (await rd.expect("final")).data["text"] == "fine"


@pytest.mark.parametrize(("sid", "headers", "code"), [
    ("nope", {}, 404),
    ("a{b}", {}, 422),
    ("x" * 200, {}, 422),
    ("s", {"Last-Event-ID": "garbage"}, 422),
    ("s", {"Last-Event-ID": "$;$"}, 422),
])
async def test_errors_come_before_the_stream(live: LiveServer, r: aioredis.Redis, keys: Keys,
                                             sid: str, headers: dict[str, str],
                                             code: int) -> None:
    await add_session(r, keys, "s")
    async with httpx.AsyncClient(base_url=live.url, timeout=WAIT) as c, asyncio.timeout(WAIT):
        resp = await c.get(f"/v1/sessions/{sid}/events", headers=headers)
    assert resp.status_code == code
    assert resp.headers["content-type"] == "application/json"
    assert isinstance(resp.json()["detail"], str)


async def test_keepalive_comments_while_idle(live: LiveServer, r: aioredis.Redis,
                                             keys: Keys) -> None:
    await add_session(r, keys, "idle")
    async with events(live.url, "idle") as rd:
        with pytest.raises(TimeoutError):
            await rd.next(timeout=1.0)  # no events, only comments
        assert rd.comments and all(c == ": keep-alive" for c in rd.comments)


async def test_client_disconnect_stops_the_stream(live: LiveServer, r: aioredis.Redis,
                                                  keys: Keys) -> None:
    await add_session(r, keys, "gone")
    await add_final(r, keys, "gone", 0, "x", 0, 1)
    async with events(live.url, "gone") as rd:
        await rd.expect("final")
        assert live.state.live_streams == 1
    for _ in range(int(WAIT / 0.05)):  # the server notices within a poll round
        if live.state.live_streams == 0:
            break
        await asyncio.sleep(0.05)
    assert live.state.live_streams == 0


async def test_stream_limit_answers_503(live: LiveServer, r: aioredis.Redis,
                                        keys: Keys) -> None:
    await add_session(r, keys, "busy")
    await add_final(r, keys, "busy", 0, "x", 0, 1)
    async with events(live.url, "busy") as a, events(live.url, "busy") as b:
        await a.expect("final")
        await b.expect("final")
        async with httpx.AsyncClient(base_url=live.url, timeout=WAIT) as c, \
                asyncio.timeout(WAIT):
            resp = await c.get("/v1/sessions/busy/events")
        assert resp.status_code == 503
        assert resp.json() == {"detail": "too many live event streams; retry later"}


async def test_events_require_the_key_when_auth_is_on(settings: Settings, r: aioredis.Redis,
                                                      keys: Keys) -> None:
    await add_session(r, keys, "sec")
    await add_final(r, keys, "sec", 0, "x", 0, 1)
    locked = settings.model_copy(update={"api_key": SecretStr("k-123")})
    for server in serve_in_thread(create_app(locked, settings.redis_url or "")):
        async with httpx.AsyncClient(base_url=server.url, timeout=WAIT) as c, \
                asyncio.timeout(WAIT):
            assert (await c.get("/v1/sessions/sec/events")).status_code == 401
        async with events(server.url, "sec", headers={"Authorization": "Bearer k-123"}) as rd:
            assert (await rd.expect("final")).data["text"] == "x"
