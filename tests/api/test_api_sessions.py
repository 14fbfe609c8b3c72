"""/v1/sessions, /transcript, health probes, auth and error shapes against a real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis
from apitest_support import FAST, add_final, add_session, asgi_client
from pydantic import SecretStr

from api.app import create_app
from voxq.embedded_redis import free_port
from voxq.keys import Keys
from voxq.records import Status
from voxq.settings import Settings

HOSTILE = ["a{b}", "x" * 200, "..%2Fx", "%2E%2E%2F%2E%2E%2Fetc", "a%20b", "a%00b", "%7Bsid%7D",
           "a%2Fb"]
PUBLIC_FIELDS = {"session_id", "vendor", "language", "rate", "channels", "status", "error",
                 "created", "updated", "finals", "audio_seconds", "bad_chunks", "tenant"}


async def test_sessions_page_newest_first_with_total(client: httpx.AsyncClient,
                                                     r: aioredis.Redis, keys: Keys) -> None:
    for i in range(5):
        await add_session(r, keys, f"s{i}", created=1000.0 + i)
    got = []
    for offset in (0, 2, 4):
        resp = await client.get("/v1/sessions", params={"offset": offset, "limit": 2})
        assert resp.status_code == 200
        body = resp.json()
        assert (body["total"], body["offset"], body["limit"]) == (5, offset, 2)
        got.append([item["session_id"] for item in body["items"]])
    assert got == [["s4", "s3"], ["s2", "s1"], ["s0"]]
    past_end = (await client.get("/v1/sessions", params={"offset": 9})).json()
    assert past_end["items"] == [] and past_end["total"] == 5


async def test_sessions_page_default_and_empty(client: httpx.AsyncClient) -> None:
    resp = await client.get("/v1/sessions")
    assert resp.status_code == 200
    assert resp.json() == {"total": 0, "offset": 0, "limit": 50, "skipped": 0, "items": []}


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 501}, {"limit": "x"},
                                    {"offset": -1}])
async def test_sessions_page_rejects_bad_paging(client: httpx.AsyncClient,
                                                params: dict[str, int | str]) -> None:
    resp = await client.get("/v1/sessions", params=params)
    assert resp.status_code == 422
    detail = resp.json()["detail"]
    assert isinstance(detail, str) and ("limit" in detail or "offset" in detail)


async def test_limit_500_is_accepted(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/sessions", params={"limit": 500})).status_code == 200


async def test_session_shows_public_fields_only(client: httpx.AsyncClient, r: aioredis.Redis,
                                                keys: Keys) -> None:
    await add_session(r, keys, "call-1", channels=2, created=1234.5, vendor="aws",
                      language="de-DE", rate=8000,
                      options={"vocabulary_name": "internal-vocab-xyz"})
    await r.hset(keys.meta("call-1"), mapping={"owner": "worker-7-secretish", "finals": "3",
                                                "audio_seconds": "12.5", "epoch": "4",
                                                "bad_chunks": "2"})
    resp = await client.get("/v1/sessions/call-1")
    assert resp.status_code == 200
    body = resp.json()
    assert set(body) == PUBLIC_FIELDS
    assert body["session_id"] == "call-1" and body["vendor"] == "aws"
    assert body["language"] == "de-DE" and body["rate"] == 8000 and body["channels"] == 2
    assert body["status"] == "active" and body["error"] == ""
    assert body["created"] == 1234.5 and body["finals"] == 3 and body["audio_seconds"] == 12.5
    assert body["bad_chunks"] == 2
    assert "internal-vocab-xyz" not in resp.text and "worker-7" not in resp.text
    listed = (await client.get("/v1/sessions")).json()["items"]
    assert [set(i) for i in listed] == [PUBLIC_FIELDS]
    assert "internal-vocab-xyz" not in str(listed)


async def test_failed_session_shows_its_error(client: httpx.AsyncClient, r: aioredis.Redis,
                                              keys: Keys) -> None:
    await add_session(r, keys, "bad", status=Status.FAILED)
    await r.hset(keys.meta("bad"), "error", "vendor rejected the audio format")
    body = (await client.get("/v1/sessions/bad")).json()
    assert body["status"] == "failed" and body["error"] == "vendor rejected the audio format"


@pytest.mark.parametrize("suffix", ["", "/transcript", "/events"])
async def test_unknown_session_is_404_with_reason(client: httpx.AsyncClient,
                                                  suffix: str) -> None:
    resp = await client.get(f"/v1/sessions/nope{suffix}")
    assert resp.status_code == 404
    assert resp.json() == {"detail": "no session 'nope'"}


@pytest.mark.parametrize("suffix", ["", "/transcript", "/events"])
@pytest.mark.parametrize("sid", HOSTILE)
async def test_hostile_ids_are_422_and_touch_nothing(client: httpx.AsyncClient,
                                                     r: aioredis.Redis, keys: Keys,
                                                     sid: str, suffix: str) -> None:
    before = await r.dbsize()
    resp = await client.get(f"/v1/sessions/{sid}{suffix}")
    assert resp.status_code == 422, resp.text
    assert "invalid session id" in resp.json()["detail"]
    assert await r.dbsize() == before


async def test_transcript_formats_from_the_final_stream(client: httpx.AsyncClient,
                                                        r: aioredis.Redis, keys: Keys) -> None:
    await add_session(r, keys, "c2", channels=2)
    await add_final(r, keys, "c2", 0, "Hello, how can I help?", 0.0, 1.5, channel=0)
    await add_final(r, keys, "c2", 1, "My router is dead.", 1.75, 3.25, channel=1)
    resp = await client.get("/v1/sessions/c2/transcript")
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/json"
    assert resp.json() == {"session_id": "c2", "status": "active", "skipped": 0, "segments": [
        {"seq": 0, "text": "Hello, how can I help?", "start": 0.0, "end": 1.5, "channel": 0,
         "speaker": None, "words": []},
        {"seq": 1, "text": "My router is dead.", "start": 1.75, "end": 3.25, "channel": 1,
         "speaker": None, "words": []},
    ]}
    txt = await client.get("/v1/sessions/c2/transcript", params={"format": "txt"})
    assert txt.headers["content-type"] == "text/plain; charset=utf-8"
    assert txt.text == "[agent] Hello, how can I help?\n[customer] My router is dead.\n"
    srt = await client.get("/v1/sessions/c2/transcript", params={"format": "srt"})
    assert srt.headers["content-type"].startswith("application/x-subrip")
    assert srt.text == ("1\n00:00:00,000 --> 00:00:01,500\n[agent] Hello, how can I help?\n\n"
                        "2\n00:00:01,750 --> 00:00:03,250\n[customer] My router is dead.\n\n")
    vtt = await client.get("/v1/sessions/c2/transcript", params={"format": "vtt"})
    assert vtt.headers["content-type"].startswith("text/vtt")
    assert vtt.text == ("WEBVTT\n\n"
                        "1\n00:00:00.000 --> 00:00:01.500\n<v agent>Hello, how can I help?\n\n"
                        "2\n00:00:01.750 --> 00:00:03.250\n<v customer>My router is dead.\n\n")


async def test_transcript_of_a_mono_session_has_no_labels(client: httpx.AsyncClient,
                                                          r: aioredis.Redis, keys: Keys) -> None:
    await add_session(r, keys, "m1", channels=1)
    await add_final(r, keys, "m1", 0, "one", 0.0, 0.5)
    await add_final(r, keys, "m1", 1, "two", 0.5, 1.0)
    resp = await client.get("/v1/sessions/m1/transcript", params={"format": "txt"})
    assert resp.text == "one\ntwo\n"


async def test_transcript_of_a_session_without_finals(client: httpx.AsyncClient,
                                                      r: aioredis.Redis, keys: Keys) -> None:
    await add_session(r, keys, "quiet")
    assert (await client.get("/v1/sessions/quiet/transcript")).json()["segments"] == []
    txt = await client.get("/v1/sessions/quiet/transcript", params={"format": "txt"})
    assert txt.status_code == 200 and txt.text == ""


@pytest.mark.parametrize("fmt", ["doc", "JSON", "", "srt;x"])
async def test_transcript_bad_format_is_422(client: httpx.AsyncClient, r: aioredis.Redis,
                                            keys: Keys, fmt: str) -> None:
    await add_session(r, keys, "f")
    resp = await client.get("/v1/sessions/f/transcript", params={"format": fmt})
    assert resp.status_code == 422
    assert "format" in resp.json()["detail"]


async def test_malformed_stored_record_is_a_json_409(client: httpx.AsyncClient,
                                                     r: aioredis.Redis, keys: Keys) -> None:
    await r.hset(keys.meta("broken"), mapping={"id": "broken", "rate": "many"})
    resp = await client.get("/v1/sessions/broken")
    assert resp.status_code == 409
    assert resp.json()["detail"].startswith("a stored record cannot be read")
    assert "Traceback" not in resp.text


# --- health, docs -----------------------------------------------------------------------------

async def test_health_and_ready(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}


async def test_redis_down_healthz_ok_readyz_503_v1_503(settings: Settings) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    async with asgi_client(create_app(settings, dead, options=FAST)) as c:
        assert (await c.get("/healthz")).status_code == 200
        ready = await c.get("/readyz")
        assert ready.status_code == 503
        assert "Redis" in ready.json()["detail"]
        listing = await c.get("/v1/sessions")
        assert listing.status_code == 503
        assert listing.json() == {"detail": "Redis is unavailable; retry later"}


async def test_openapi_docs(client: httpx.AsyncClient) -> None:
    assert (await client.get("/docs")).status_code == 200
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert {"/v1/sessions", "/v1/sessions/{session_id}", "/v1/sessions/{session_id}/transcript",
            "/v1/sessions/{session_id}/events", "/healthz", "/readyz"} <= set(paths)


async def test_unknown_route_is_json_404(client: httpx.AsyncClient) -> None:
    resp = await client.get("/v2/anything")
    assert resp.status_code == 404 and resp.json() == {"detail": "Not Found"}


# --- auth -----------------------------------------------------------------------------------

@pytest.fixture
async def locked(settings: Settings, r: aioredis.Redis, keys: Keys) -> AsyncIterator[httpx.AsyncClient]:
    await add_session(r, keys, "s1")
    locked_settings = settings.model_copy(update={"api_key": SecretStr("s3cret-key")})
    async with asgi_client(create_app(locked_settings, settings.redis_url or "",
                                      options=FAST)) as c:
        yield c


@pytest.mark.parametrize("path", ["/v1/sessions", "/v1/sessions/s1",
                                  "/v1/sessions/s1/transcript", "/v1/sessions/s1/events",
                                  "/v1/sessions/nope", "/v1/sessions/a{b}"])
@pytest.mark.parametrize("auth", [None, "Bearer wrong", "Bearer s3cret-ke", "Bearer ",
                                  "Basic s3cret-key", "s3cret-key", "Bearer s3cret-key2"])
async def test_auth_on_refuses_without_the_key(locked: httpx.AsyncClient, path: str,
                                               auth: str | None) -> None:
    headers = {"Authorization": auth} if auth is not None else {}
    resp = await locked.get(path, headers=headers)
    assert resp.status_code == 401
    assert resp.json() == {"detail": "missing or wrong API key"}
    assert resp.headers["www-authenticate"] == "Bearer"


async def test_auth_on_accepts_the_key_and_leaves_health_open(locked: httpx.AsyncClient) -> None:
    good = {"Authorization": "Bearer s3cret-key"}
    assert (await locked.get("/v1/sessions", headers=good)).status_code == 200
    assert (await locked.get("/v1/sessions/s1", headers=good)).status_code == 200
    assert (await locked.get("/v1/sessions/nope", headers=good)).status_code == 404
    assert (await locked.get("/healthz")).status_code == 200
    assert (await locked.get("/readyz")).status_code == 200
    assert (await locked.get("/docs")).status_code == 200


async def test_auth_off_needs_no_header(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/sessions")).status_code == 200
    assert (await client.get("/v1/sessions",
                             headers={"Authorization": "Bearer anything"})).status_code == 200


async def test_metrics_route_exposes_voxq_metrics(redis_server, settings) -> None:  # type: ignore[no-untyped-def]
    import httpx

    from api.app import create_app

    app = create_app(settings, redis_server.url)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://t") as c:
            r = await c.get("/metrics")
    assert r.status_code == 200
    assert "voxq_redis_errors_total" in r.text and "voxq_sessions_live" in r.text
