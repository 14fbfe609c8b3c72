"""Malformed records written straight into Redis (as a faulty or hostile producer could): the
API reads past them. The list skips and counts them, one record answers 409 with the reason,
its /events ends with a `failed` status, and no route answers 5xx."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import redis.asyncio as aioredis
from apitest_support import add_final, add_session

from voxq.keys import Keys
from voxq.records import Status

# Each: a session id and the meta hash a hostile writer stores under that id's key.
GOOD_META = {"vendor": "local", "language": "en-US", "rate": "16000", "channels": "1",
             "chunk_ms": "100", "status": "active", "options": "{}", "created": "1000.0"}
MALFORMED: dict[str, dict[str, str]] = {
    "rate-zero": {"id": "rate-zero", **GOOD_META, "rate": "0"},
    "rate-huge": {"id": "rate-huge", **GOOD_META, "rate": "1000000000"},
    "rate-float": {"id": "rate-float", **GOOD_META, "rate": "1e9"},
    "channels-7": {"id": "channels-7", **GOOD_META, "channels": "7"},
    "bad-options": {"id": "bad-options", **GOOD_META, "options": "{not json"},
    "list-options": {"id": "list-options", **GOOD_META, "options": "[1, 2]"},
    "deep-options": {"id": "deep-options", **GOOD_META, "options": "[" * 100_000},
    "no-id": dict(GOOD_META),
    "other-id": {"id": "someone-else", **GOOD_META},
    "bad-status": {"id": "bad-status", **GOOD_META, "status": "exploded"},
    "nan-created": {"id": "nan-created", **GOOD_META, "created": "nan"},
    "inf-seconds": {"id": "inf-seconds", **GOOD_META, "audio_seconds": "inf"},
}
WAIT = 10.0


async def store_malformed(r: aioredis.Redis, keys: Keys) -> None:
    """Write every malformed meta and index it (newest first), plus a hostile index member."""
    now = time.time()
    for i, (sid, meta) in enumerate(MALFORMED.items()):
        await r.hset(keys.meta(sid), mapping=meta)  # type: ignore[arg-type]
        await r.zadd(keys.index, {sid: now + i})
    await r.zadd(keys.index, {"bad id{1}": now + 100, b"\xff\xfe": now + 101})


async def test_list_skips_and_counts_unreadable_records(client: httpx.AsyncClient,
                                                        r: aioredis.Redis, keys: Keys) -> None:
    await add_session(r, keys, "good-1", created=1.0)
    await store_malformed(r, keys)
    resp = await client.get("/v1/sessions", params={"limit": 500})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert [item["session_id"] for item in body["items"]] == ["good-1"]
    assert body["skipped"] == len(MALFORMED) + 2
    assert body["total"] == len(MALFORMED) + 3
    # Paging still works around them: the good session is alone on the last page.
    last = (await client.get("/v1/sessions", params={"offset": len(MALFORMED) + 2})).json()
    assert [i["session_id"] for i in last["items"]] == ["good-1"] and last["skipped"] == 0


@pytest.mark.parametrize("sid", sorted(MALFORMED))
async def test_one_unreadable_record_is_a_409_with_the_reason(
        client: httpx.AsyncClient, r: aioredis.Redis, keys: Keys, sid: str) -> None:
    await store_malformed(r, keys)
    for path in (f"/v1/sessions/{sid}", f"/v1/sessions/{sid}/transcript",
                 f"/v1/sessions/{sid}/transcript?format=srt"):
        resp = await client.get(path)
        assert resp.status_code == 409, (path, resp.status_code, resp.text)
        detail = resp.json()["detail"]
        assert detail.startswith("a stored record cannot be read: malformed session meta")
        assert len(detail) < 400
    expected_reason = {"no-id": "has no id", "other-id": "'someone-else'",
                       "rate-zero": "sample rate 0 Hz", "channels-7": "channels must be 1 or 2"}
    if sid in expected_reason:
        assert expected_reason[sid] in (await client.get(f"/v1/sessions/{sid}")).json()["detail"]


@pytest.mark.parametrize("sid", ["rate-zero", "no-id", "other-id", "bad-options"])
async def test_events_of_an_unreadable_record_end_with_a_failed_status(
        client: httpx.AsyncClient, r: aioredis.Redis, keys: Keys, sid: str) -> None:
    await store_malformed(r, keys)
    async with asyncio.timeout(WAIT):
        resp = await client.get(f"/v1/sessions/{sid}/events")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    blocks = [b for b in resp.text.split("\n\n") if b.strip()]
    assert len(blocks) == 1
    lines = dict(line.split(": ", 1) for line in blocks[0].splitlines())
    assert lines["event"] == "status"
    data = json.loads(lines["data"])
    assert data["status"] == "failed" and "stored record cannot be read" in data["error"]


async def test_hostile_index_member_is_no_route_error(client: httpx.AsyncClient,
                                                      r: aioredis.Redis, keys: Keys) -> None:
    await r.zadd(keys.index, {"bad id{1}": time.time()})
    resp = await client.get("/v1/sessions")
    assert resp.status_code == 200 and resp.json()["skipped"] == 1


async def test_unreadable_final_entries_are_skipped_and_counted(
        client: httpx.AsyncClient, r: aioredis.Redis, keys: Keys) -> None:
    await add_session(r, keys, "mixed", status=Status.FINISHED)
    await add_final(r, keys, "mixed", 0, "hello", 0.0, 1.0)
    await r.xadd(keys.final("mixed"), {"text": "x", "start": "soon", "end": "1"})
    await r.xadd(keys.final("mixed"), {"text": "x", "start": "nan", "end": "1"})
    await r.xadd(keys.final("mixed"), {"words": "[[", "start": "1", "end": "2"})
    await add_final(r, keys, "mixed", 1, "world", 1.0, 2.0)
    resp = await client.get("/v1/sessions/mixed/transcript")
    assert resp.status_code == 200
    body = resp.json()
    assert [s["text"] for s in body["segments"]] == ["hello", "world"]
    assert body["skipped"] == 3
    txt = await client.get("/v1/sessions/mixed/transcript", params={"format": "txt"})
    assert txt.status_code == 200 and txt.text == "hello\nworld\n"
    assert txt.headers["x-voxq-skipped"] == "3"
