"""The event hub behind the live routes, over a real uvicorn and a real Redis: fan-out to many
followers in order, across a Redis restart; status changes without per-follower polling; a
slow follower cut off and resuming; ?wait= for a session that does not exist yet; the
WebSocket and firehose routes; the follower limit.

The test plays the producer and the worker (it XADDs finals and writes statuses the way they
do, status stream included).
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import websockets
from api_process import api_process
from apitest_support import LiveServer, add_final, add_partial, add_session, serve_in_thread, set_status
from redis.asyncio.connection import Connection
from test_api_events import WAIT, Reader, events

from api.app import create_app
from api.hub import EventHub
from api.state import ApiOptions
from voxq.embedded_redis import RedisServer
from voxq.keys import Keys
from voxq.lifecycle import announce
from voxq.records import SessionMeta, Status
from voxq.redis_conn import connect
from voxq.sessions import create_session
from voxq.settings import Settings

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def live_options() -> ApiOptions:
    """Fast timers; the status safety net off, so statuses must come from the stream."""
    return ApiOptions(poll_seconds=0.2, keepalive_seconds=0.3, status_check_seconds=0)


async def _collect(rd: Reader) -> tuple[list[int], Any]:
    """Seqs of every final until the stream ends, and the last event."""
    seqs: list[int] = []
    last = None
    while (ev := await rd.next()) is not None:
        last = ev
        if ev.event == "final":
            seqs.append(ev.data["seq"])
    return seqs, last


async def test_many_followers_of_many_sessions_get_every_final_in_order(
        live: LiveServer, r: aioredis.Redis, keys: Keys) -> None:
    sids = [f"fan{i}" for i in range(4)]
    for sid in sids:
        await add_session(r, keys, sid)
        await add_final(r, keys, sid, 0, "before", 0, 1)  # replayed to every follower

    async def follower(sid: str, ready: asyncio.Event) -> tuple[list[int], Any]:
        async with events(live.url, sid) as rd:
            first = await rd.expect("final")
            ready.set()
            seqs, last = await _collect(rd)
            return [first.data["seq"], *seqs], last

    readies = {(sid, i): asyncio.Event() for sid in sids for i in range(5)}
    tasks = [asyncio.create_task(follower(sid, ev)) for (sid, _), ev in readies.items()]
    async with asyncio.timeout(WAIT):
        await asyncio.gather(*(ev.wait() for ev in readies.values()))
    for n in range(1, 120):
        for sid in sids:
            await add_final(r, keys, sid, n, f"w{n}", n, n + 0.5)
            if n % 7 == 0:
                await add_partial(r, keys, sid, f"p{n}", n, n + 0.2)
    for sid in sids:
        await set_status(r, keys, sid, Status.FINISHED)
    async with asyncio.timeout(60):
        results = await asyncio.gather(*tasks)
    for seqs, last in results:
        assert seqs == list(range(120))
        assert last.event == "status" and last.data == {"status": "finished", "error": ""}
    assert live.state.hub is not None and live.state.hub.followers == 0


async def test_status_reaches_followers_from_the_status_stream(live: LiveServer,
                                                               r: aioredis.Redis,
                                                               keys: Keys) -> None:
    await add_session(r, keys, "st")
    async with events(live.url, "st") as rd:
        await asyncio.sleep(0.3)  # joined; the safety net is off (status_check_seconds=0)
        await set_status(r, keys, "st", Status.ABANDONED, error="no audio for 120 s")
        ev = await rd.expect("status")
        assert ev.data == {"status": "abandoned", "error": "no audio for 120 s"}
        assert await rd.next() is None
    hub = live.state.hub
    assert hub is not None and hub.reads < 200  # blocked reads, not a polling loop


async def test_safety_net_finds_a_status_written_without_the_stream(
        settings: Settings, r: aioredis.Redis, keys: Keys) -> None:
    app = create_app(settings, settings.redis_url or "",
                     options=ApiOptions(poll_seconds=0.2, keepalive_seconds=0.3,
                                        status_check_seconds=0.2))
    await add_session(r, keys, "old")
    await add_final(r, keys, "old", 0, "a", 0, 1)
    for server in serve_in_thread(app):
        async with events(server.url, "old") as rd:
            await rd.expect("final")
            await add_final(r, keys, "old", 1, "b", 1, 2)
            await r.hset(keys.meta("old"), "status", "finished")  # a writer without the stream
            assert (await rd.expect("final")).data["text"] == "b"
            assert (await rd.expect("status")).data["status"] == "finished"
            assert await rd.next() is None


def _options_small_queue() -> ApiOptions:
    return ApiOptions(poll_seconds=0.2, keepalive_seconds=0.3, queue_limit=5,
                      status_check_seconds=0)


async def test_slow_follower_is_cut_off_then_resumes(settings: Settings, r: aioredis.Redis,
                                                     keys: Keys) -> None:
    await add_session(r, keys, "slow")
    for server in serve_in_thread(create_app(settings, settings.redis_url or "",
                                             options=_options_small_queue())):
        async with events(server.url, "slow") as rd:
            await asyncio.sleep(0.3)  # joined the hub
            async with r.pipeline(transaction=False) as p:  # one burst: one hub read
                for i in range(40):
                    p.xadd(keys.final("slow"), {"seq": str(i), "text": f"w{i}", "start": str(i),
                                                "end": str(i + 0.5), "ch": "0"})
                await p.execute()
            got = []
            while (ev := await rd.next()) is not None:
                got.append(ev)
        assert got[-1].event == "error" and got[-1].data["error"] == "slow_consumer"
        finals = [e.data["seq"] for e in got if e.event == "final"]
        assert finals == list(range(len(finals))) and len(finals) < 40
        assert server.state.hub is not None and server.state.hub.cutoffs == 1
        resume = got[-1].id
        assert resume is not None
        await set_status(r, keys, "slow", Status.FINISHED)
        async with events(server.url, "slow", headers={"Last-Event-ID": resume}) as rd:
            seqs, last = await _collect(rd)
        assert finals + seqs == list(range(40))
        assert last.event == "status"


async def test_a_follower_can_wait_for_a_session_to_be_created(live: LiveServer,
                                                               r: aioredis.Redis,
                                                               keys: Keys) -> None:
    async with httpx.AsyncClient(base_url=live.url, timeout=WAIT) as c:
        t0 = asyncio.get_running_loop().time()
        resp = await c.get("/v1/sessions/never/events", params={"wait": "0.5"})
        assert resp.status_code == 404
        assert asyncio.get_running_loop().time() - t0 >= 0.5
        assert "after waiting" in resp.json()["detail"]

    async def follow() -> tuple[list[int], Any]:
        async with events(live.url, "early", params={"wait": "30"}) as rd:
            return await _collect(rd)

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.5)
    assert not task.done()
    await create_session(r, keys, SessionMeta(session_id="early"))  # announces `created`
    await add_final(r, keys, "early", 0, "hi", 0, 1)
    await set_status(r, keys, "early", Status.FINISHED)
    async with asyncio.timeout(WAIT):
        seqs, last = await task
    assert seqs == [0] and last.data["status"] == "finished"


async def test_websocket_sends_the_same_events_as_json_and_resumes(live: LiveServer,
                                                                   r: aioredis.Redis,
                                                                   keys: Keys) -> None:
    await add_session(r, keys, "ws")
    await add_final(r, keys, "ws", 0, "zero", 0, 1)
    url = live.url.replace("http://", "ws://") + "/v1/sessions/ws/live"
    async with asyncio.timeout(WAIT), websockets.connect(url) as ws:
        first = json.loads(await ws.recv())
        assert first["event"] == "final" and first["data"]["text"] == "zero"
        await add_partial(r, keys, "ws", "on", 1, 1.2)
        partial = json.loads(await ws.recv())
        assert partial["event"] == "partial" and partial["data"]["text"] == "on"
    await add_final(r, keys, "ws", 1, "one", 1, 2)
    await set_status(r, keys, "ws", Status.FAILED, error="vendor gone")
    async with asyncio.timeout(WAIT), websockets.connect(
            url + "?after=" + partial["id"]) as ws:
        msgs = [json.loads(m) async for m in ws]
        assert ws.close_code == 1000
    assert [(m["event"], m["data"].get("text")) for m in msgs] == [
        ("final", "one"), ("status", None)]
    assert msgs[-1]["data"] == {"status": "failed", "error": "vendor gone"}


async def test_websocket_refusals(live: LiveServer, r: aioredis.Redis, keys: Keys) -> None:
    await add_session(r, keys, "x")
    base = live.url.replace("http://", "ws://") + "/v1/sessions/"
    for path, code in (("nope/live", 404), ("a%7Bb%7D/live", 422), ("x/live?after=junk", 422)):
        async with asyncio.timeout(WAIT):
            with pytest.raises(websockets.InvalidStatus) as e:
                await websockets.connect(base + path)
        assert e.value.response.status_code == code, path
        assert isinstance(json.loads(e.value.response.body)["detail"], str)


async def test_firehose_sends_lifecycle_events_filtered_by_status(live: LiveServer,
                                                                  r: aioredis.Redis,
                                                                  keys: Keys) -> None:
    @asynccontextmanager
    async def firehose(params: list[tuple[str, str]]) -> AsyncIterator[Reader]:
        async with httpx.AsyncClient(base_url=live.url, timeout=WAIT) as c, \
                c.stream("GET", "/v1/events", params=params) as resp:
            assert resp.status_code == 200
            yield Reader(resp)

    async with firehose([]) as every, firehose([("status", "finished"),
                                                ("status", "failed")]) as ends:
        await asyncio.sleep(0.3)
        await create_session(r, keys, SessionMeta(session_id="h1", vendor="deepgram"))
        await announce(r, keys, "h1", Status.ACTIVE)
        await announce(r, keys, "h1", Status.FINISHED)
        await create_session(r, keys, SessionMeta(session_id="h2", vendor="aws"))
        await announce(r, keys, "h2", Status.FAILED, error="bad key")
        seen = [await every.next() for _ in range(5)]
        assert [(e.event, e.data["session_id"]) for e in seen if e] == [
            ("created", "h1"), ("active", "h1"), ("finished", "h1"), ("created", "h2"),
            ("failed", "h2")]
        assert all(e and e.data["vendor"] == ("deepgram" if e.data["session_id"] == "h1"
                                              else "aws") for e in seen)
        got = [await ends.next() for _ in range(2)]
        assert [(e.event, e.data["error"]) for e in got if e] == [("finished", ""),
                                                                   ("failed", "bad key")]
    async with httpx.AsyncClient(base_url=live.url, timeout=WAIT) as c:
        assert (await c.get("/v1/events", params={"status": "nope"})).status_code == 422


async def test_follower_limit_answers_503_with_retry_after(settings: Settings,
                                                           r: aioredis.Redis,
                                                           keys: Keys) -> None:
    await add_session(r, keys, "lim")
    app = create_app(settings, settings.redis_url or "",
                     options=ApiOptions(poll_seconds=0.2, max_streams=1))
    for server in serve_in_thread(app):
        async with events(server.url, "lim"):
            async with httpx.AsyncClient(base_url=server.url, timeout=WAIT) as c:
                for path in ("/v1/sessions/lim/events", "/v1/events"):
                    resp = await c.get(path)
                    assert resp.status_code == 503 and resp.headers["retry-after"] == "5"
                assert (await c.get("/readyz")).status_code == 200
                assert (await c.get("/v1/sessions/lim")).status_code == 200


async def _follow_to_end(url: str, sid: str) -> tuple[list[int], Any]:
    async with events(url, sid) as rd:
        return await _collect(rd)


@pytest.fixture
def aof_redis() -> Iterator[RedisServer]:
    server = RedisServer(appendonly=True).start()
    yield server
    server.close()


async def test_followers_survive_a_redis_restart(aof_redis: RedisServer, prefix: str) -> None:
    settings = Settings(redis_url=aof_redis.url, prefix=prefix)
    keys = Keys(prefix)
    r = connect(aof_redis.url)
    try:
        await add_session(r, keys, "rr")
        app = create_app(settings, aof_redis.url,
                         options=ApiOptions(poll_seconds=0.2, keepalive_seconds=0.3,
                                            status_check_seconds=0))
        for server in serve_in_thread(app):
            tasks = [asyncio.create_task(_follow_to_end(server.url, "rr")) for _ in range(3)]
            await asyncio.sleep(0.5)
            for n in range(20):
                await add_final(r, keys, "rr", n, f"w{n}", n, n + 0.5)
            await asyncio.to_thread(aof_redis.restart, 1.0)
            for n in range(20, 40):
                for _ in range(50):  # the test's own client reconnects too
                    try:
                        await add_final(r, keys, "rr", n, f"w{n}", n, n + 0.5)
                        break
                    except (ConnectionError, OSError, aioredis.ConnectionError):
                        await asyncio.sleep(0.1)
            await set_status(r, keys, "rr", Status.FINISHED)
            async with asyncio.timeout(60):
                results = await asyncio.gather(*tasks)
            for seqs, last in results:
                assert seqs == list(range(40))
                assert last.event == "status"
    finally:
        await r.aclose()


async def test_firehose_resumes_after_last_event_id(live: LiveServer, r: aioredis.Redis,
                                                    keys: Keys) -> None:
    await create_session(r, keys, SessionMeta(session_id="q1", vendor="deepgram"))
    await announce(r, keys, "q1", Status.FINISHED)
    await create_session(r, keys, SessionMeta(session_id="q2"))
    entries = await r.xrange(keys.lifecycle)
    first = entries[0][0].decode()
    async with httpx.AsyncClient(base_url=live.url, timeout=WAIT) as c:
        async with c.stream("GET", "/v1/events", headers={"Last-Event-ID": first},
                            params={"status": "finished"}) as resp:
            assert resp.status_code == 200
            rd = Reader(resp)
            ev = await rd.expect("finished")  # stored, after the resume point
            assert ev.data["session_id"] == "q1" and ev.data["vendor"] == "deepgram"
            await announce(r, keys, "q2", Status.FINISHED)  # live
            ev = await rd.expect("finished")
            assert ev.data["session_id"] == "q2" and ev.id is not None
        assert (await c.get("/v1/events", headers={"Last-Event-ID": "x"})).status_code == 422


async def test_the_hubs_own_xread_is_what_redis_py_would_send(r: aioredis.Redis,
                                                              keys: Keys) -> None:
    hub = EventHub("", keys, r, batch=200)
    hub._life_pos = "5-1"
    hub.join("a", "1-0", "0-0", "2-3")
    hub.join("b.2", "7-0", "8-1", "0-0")
    f, _ = hub.join("c", "0-0", "0-0", "0-0")
    hub.leave(f)  # a channel without followers is not read
    hub.dispatch([[keys.final("a").encode(), [[b"9-4", {b"seq": b"0"}]]]])
    expected = Connection().pack_command(
        "XREAD", "COUNT", 200, "BLOCK", 1000, "STREAMS", keys.lifecycle,
        keys.final("a"), keys.partial("a"), keys.status("a"),
        keys.final("b.2"), keys.partial("b.2"), keys.status("b.2"),
        "5-1", "9-4", "0-0", "2-3", "7-0", "8-1", "0-0")
    assert hub.packed_xread(1000) == b"".join(expected)


async def test_followers_end_cleanly_when_the_api_stops(env: dict[str, str], tmp_path: Path,
                                                         r: aioredis.Redis, keys: Keys) -> None:
    await add_session(r, keys, "stop")
    await add_final(r, keys, "stop", 0, "x", 0, 1)
    log = tmp_path / "api.log"
    with api_process({**env, "VOXQ_LOG_LEVEL": "INFO"}, log) as (url, proc):
        host, port = url.removeprefix("http://").split(":")
        streams = []
        for _ in range(20):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"GET /v1/sessions/stop/events HTTP/1.1\r\nHost: api\r\n\r\n")
            streams.append((reader, writer))
        bufs = [b""] * len(streams)
        async with asyncio.timeout(WAIT):
            for i, (reader, _) in enumerate(streams):
                while b"event: final" not in bufs[i]:
                    bufs[i] += await reader.read(65536)
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(WAIT):
            for i, (reader, writer) in enumerate(streams):
                while chunk := await reader.read(65536):
                    bufs[i] += chunk
                writer.close()
    # each response was finished (the chunked body's last chunk), not cut by a cancellation
    assert all(b.endswith(b"\r\n0\r\n\r\n") for b in bufs), [b[-40:] for b in bufs]
    text = log.read_text()
    assert "ending 20 live followers" in text
    assert "Exception in ASGI application" not in text, text[-2000:]
