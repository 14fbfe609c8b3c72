"""Webhooks end to end: a real receiver process, the API's delivery loop, signatures checked
by a verifier written here from the Standard Webhooks specification (not the code under test),
retries until the receiver recovers, 410 unsubscribing, the attempts endpoint, and delivery
surviving a restart of the `voxq api` process."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from api_process import api_process
from apitest_support import add_final, add_session, serve_in_thread, set_status
from pydantic import SecretStr

from api.app import create_app
from api.state import ApiOptions
from voxq.keys import Keys
from voxq.lifecycle import announce
from voxq.records import Status
from voxq.settings import Settings

pytestmark = pytest.mark.timeout(180)

SECRET = "whsec_" + base64.b64encode(b"a test secret of 32 bytes, ok!!!").decode()
RECEIVER = Path(__file__).parent / "webhook_receiver.py"


def verify(secret: str, headers: dict[str, str], body: bytes, now: float) -> bool:
    """The specification's check: key = base64 of the secret after `whsec_`; content =
    `id.timestamp.body`; any `v1,<base64 HMAC-SHA256>` among the space-separated signatures;
    the timestamp within 5 minutes."""
    msg_id, ts = headers["webhook-id"], headers["webhook-timestamp"]
    if abs(now - int(ts)) > 300:
        return False
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = base64.b64encode(
        hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()).decode()
    for sig in headers["webhook-signature"].split(" "):
        version, _, value = sig.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return True
    return False


class Receiver:
    """The receiver process and what it recorded."""

    def __init__(self, proc: subprocess.Popen[str], log: Path, port: int):
        self.proc, self.log, self.url = proc, log, f"http://127.0.0.1:{port}"

    def requests(self, path: str | None = None) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        out = [json.loads(line) for line in self.log.read_text().splitlines() if line]
        for o in out:
            o["raw"] = base64.b64decode(o["body"])
        return [o for o in out if path is None or o["path"] == path]

    async def wait_for(self, path: str, n: int, timeout: float = 60) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(got := self.requests(path)) < n:
            assert time.monotonic() < deadline, f"{path}: {len(got)} of {n} requests"
            await asyncio.sleep(0.05)
        return got


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    log = tmp_path / "received.jsonl"
    proc = subprocess.Popen([sys.executable, str(RECEIVER), str(log)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        yield Receiver(proc, log, int(proc.stdout.readline()))
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stdout:
            proc.stdout.close()


def hook_settings(settings: Settings, urls: str = "") -> Settings:
    return settings.model_copy(update={
        "webhook_secret": SecretStr(SECRET), "webhook_urls": urls,
        "webhook_retry_base_seconds": 0.2, "api_public_url": "https://voxq.example"})


FAST = ApiOptions(poll_seconds=0.2, webhook_poll_seconds=0.1)


async def end_session(r: aioredis.Redis, keys: Keys, sid: str, status: Status,
                      error: str = "") -> None:
    """What the worker does at the end: the fenced status write, then the lifecycle event."""
    await set_status(r, keys, sid, status, error)
    await announce(r, keys, sid, status, error)


async def test_end_events_reach_every_target_signed(settings: Settings, r: aioredis.Redis,
                                                    keys: Keys, receiver: Receiver) -> None:
    app = create_app(hook_settings(settings, f"{receiver.url}/env?token=abc"),
                     settings.redis_url or "", options=FAST)
    for server in serve_in_thread(app):
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:
            sub = (await c.post("/v1/webhooks", json={"url": f"{receiver.url}/sub",
                                                      "include_transcript": True})).json()
            assert sub["secret"].startswith("whsec_") and sub["secret"] != SECRET
            listed = (await c.get("/v1/webhooks")).json()
            assert all("secret" not in x or x["secret"] is None for x in listed)
            assert f"{receiver.url}/env" in [x["url"] for x in listed]  # query dropped
            await asyncio.sleep(0.5)  # the delivery loop's consumer group exists
            await add_session(r, keys, "h1", webhook=f"{receiver.url}/own")
            await end_session(r, keys, "h1", Status.FAILED, "vendor rejected the key")
            got = {p: (await receiver.wait_for(p, 1))[0] for p in ("/env?token=abc", "/sub",
                                                                  "/own")}
            for path, req in got.items():
                secret = sub["secret"] if path == "/sub" else SECRET
                assert verify(secret, req["headers"], req["raw"], time.time()), path
                assert not verify(SECRET if path == "/sub" else sub["secret"], req["headers"],
                                  req["raw"], time.time())
                assert not verify(secret, req["headers"], req["raw"] + b" ", time.time())
                body = json.loads(req["raw"])
                assert body["type"] == "session.failed"
                assert body["data"] | {"transcript": None} == {
                    "session_id": "h1", "status": "failed", "error": "vendor rejected the key",
                    "vendor": "local", "transcript": None,
                    "transcript_url": "https://voxq.example/v1/sessions/h1/transcript"}
            assert got["/sub"]["raw"] and json.loads(got["/sub"]["raw"])["data"]["transcript"] == []
            attempts = (await c.get("/v1/sessions/h1/webhooks")).json()["attempts"]
            assert sorted(a["url"].rsplit("/", 1)[1] for a in attempts) == ["env", "own", "sub"]
            assert all(a["status_code"] == 200 and a["outcome"] == "delivered"
                       for a in attempts)
            assert SECRET not in json.dumps(attempts) and "token=abc" not in json.dumps(attempts)
        # active and created events make no webhook
        await asyncio.sleep(0.3)
        assert len(receiver.requests()) == 3


async def test_retries_until_the_receiver_recovers_and_410_unsubscribes(
        settings: Settings, r: aioredis.Redis, keys: Keys, receiver: Receiver) -> None:
    app = create_app(hook_settings(settings), settings.redis_url or "", options=FAST)
    for server in serve_in_thread(app):
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:
            flaky = (await c.post("/v1/webhooks", json={"url": f"{receiver.url}/fail/3/a"})).json()
            gone = (await c.post("/v1/webhooks", json={"url": f"{receiver.url}/gone"})).json()
            await asyncio.sleep(0.5)
            await add_session(r, keys, "r1")
            await end_session(r, keys, "r1", Status.FINISHED)
            reqs = await receiver.wait_for("/fail/3/a", 4)
            assert [q["code"] for q in reqs] == [503, 503, 503, 200]
            assert len({q["headers"]["webhook-id"] for q in reqs}) == 1  # one message
            assert all(verify(flaky["secret"], q["headers"], q["raw"], time.time())
                       for q in reqs)
            await receiver.wait_for("/gone", 1)
            for _ in range(100):
                attempts = (await c.get("/v1/sessions/r1/webhooks")).json()["attempts"]
                if len(attempts) >= 5:
                    break
                await asyncio.sleep(0.05)
            flaky_log = [a for a in attempts if a["url"].endswith("/fail/3/a")]
            assert [(a["attempt"], a["status_code"], a["outcome"]) for a in flaky_log] == [
                (1, 503, "retrying"), (2, 503, "retrying"), (3, 503, "retrying"),
                (4, 200, "delivered")]
            assert [a["outcome"] for a in attempts if a["url"].endswith("/gone")] == [
                "unsubscribed"]
            ids = [x["id"] for x in (await c.get("/v1/webhooks")).json()]
            assert flaky["id"] in ids and gone["id"] not in ids
            await add_session(r, keys, "r2")
            await end_session(r, keys, "r2", Status.ABANDONED)
            await receiver.wait_for("/fail/3/a", 5)
            await asyncio.sleep(0.5)
            assert len(receiver.requests("/gone")) == 1  # unsubscribed: nothing more


async def test_delivery_survives_an_api_restart(env: dict[str, str], tmp_path: Path,
                                                r: aioredis.Redis, keys: Keys,
                                                receiver: Receiver) -> None:
    api_env = {**env, "VOXQ_WEBHOOK_SECRET": SECRET, "VOXQ_WEBHOOK_RETRY_BASE_SECONDS": "0.5",
               "VOXQ_WEBHOOK_URLS": f"{receiver.url}/fail/2/x"}
    with api_process(api_env, tmp_path / "api1.log") as (url, _):
        async with httpx.AsyncClient(base_url=url, timeout=10) as c:
            for _ in range(100):  # the consumer group exists once a webhook can be listed
                if (await c.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        await add_session(r, keys, "a1")
        await end_session(r, keys, "a1", Status.FINISHED)
        await receiver.wait_for("/fail/2/x", 1)  # first attempt failed; retry pending
    await add_session(r, keys, "a2")  # ends while no API runs
    await end_session(r, keys, "a2", Status.FINISHED)
    with api_process(api_env, tmp_path / "api2.log"):
        reqs = await receiver.wait_for("/fail/2/x", 4)
    bodies = [(json.loads(q["raw"])["data"]["session_id"], q["code"]) for q in reqs]
    assert ("a1", 200) in bodies and ("a2", 200) in bodies, bodies
    assert all(verify(SECRET, q["headers"], q["raw"], time.time()) for q in reqs)
    logs = (tmp_path / "api1.log").read_text() + (tmp_path / "api2.log").read_text()
    assert SECRET not in logs and SECRET.removeprefix("whsec_") not in logs


def finals_of(reqs: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """(index, text) of the transcript.final requests, in index order."""
    out = []
    for q in reqs:
        body = json.loads(q["raw"])
        if body["type"] == "transcript.final":
            out.append((body["data"]["index"], body["data"]["segment"]["text"]))
    return sorted(out)


async def go_live(r: aioredis.Redis, keys: Keys, sid: str, **meta: Any) -> None:
    """A session a worker drives: created, active, in the live set."""
    await add_session(r, keys, sid, **meta)
    await set_status(r, keys, sid, Status.ACTIVE)
    await r.zadd(keys.live, {sid: time.time()})


async def test_each_final_reaches_the_targets_that_ask_for_it(
        settings: Settings, r: aioredis.Redis, keys: Keys, receiver: Receiver) -> None:
    app = create_app(hook_settings(settings, f"{receiver.url}/env"), settings.redis_url or "",
                     options=FAST)
    for server in serve_in_thread(app):
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:
            finals_sub = (await c.post("/v1/webhooks", json={
                "url": f"{receiver.url}/finals", "events": ["transcript.final"]})).json()
            assert finals_sub["events"] == ["transcript.final"]
            ends_sub = (await c.post("/v1/webhooks", json={"url": f"{receiver.url}/ends"})).json()
            assert ends_sub["events"] == ["session.abandoned", "session.failed",
                                          "session.finished"]
            for bad in (["nope"], [], "transcript.final"):
                resp = await c.post("/v1/webhooks", json={"url": f"{receiver.url}/x",
                                                          "events": bad})
                assert resp.status_code == 422, (bad, resp.text)
            await asyncio.sleep(0.5)
            await go_live(r, keys, "f1", webhook=f"{receiver.url}/own", webhook_finals=True)
            for i in range(3):
                await add_final(r, keys, "f1", i, f"live {i}", i, i + 0.5)
            # delivered while the call goes on, not at its end
            got = await receiver.wait_for("/finals", 3)
            assert finals_of(got) == [(0, "live 0"), (1, "live 1"), (2, "live 2")]
            assert all(verify(finals_sub["secret"], q["headers"], q["raw"], time.time())
                       for q in got)
            await receiver.wait_for("/own", 3)
            # the worker drops the session from the live set, writes its last finals, ends it
            await r.zrem(keys.live, "f1")
            for i in range(3, 5):
                await add_final(r, keys, "f1", i, f"last {i}", i, i + 0.5)
            await end_session(r, keys, "f1", Status.FINISHED)
            finals = await receiver.wait_for("/finals", 5)
            own = await receiver.wait_for("/own", 6)
            await receiver.wait_for("/ends", 1)
            await receiver.wait_for("/env", 1)
            await asyncio.sleep(0.5)  # nothing more arrives
        expected = [(0, "live 0"), (1, "live 1"), (2, "live 2"), (3, "last 3"), (4, "last 4")]
        assert finals_of(receiver.requests("/finals")) == expected
        assert finals_of(receiver.requests("/own")) == expected
        assert [json.loads(q["raw"])["type"] for q in own].count("session.finished") == 1
        assert len({q["headers"]["webhook-id"] for q in finals}) == 5
        assert [json.loads(q["raw"])["type"] for q in receiver.requests("/ends")] == [
            "session.finished"]
        assert [json.loads(q["raw"])["type"] for q in receiver.requests("/env")] == [
            "session.finished"]
        body = json.loads(finals[0]["raw"])["data"]
        assert body["session_id"] == "f1" and body["transcript_url"].endswith(
            "/v1/sessions/f1/transcript") and set(body["segment"]) >= {"text", "start", "end",
                                                                        "channel"}


async def test_finals_go_on_from_their_cursor_after_an_api_restart(
        settings: Settings, r: aioredis.Redis, keys: Keys, receiver: Receiver) -> None:
    hooks = hook_settings(settings, f"{receiver.url}/env").model_copy(
        update={"webhook_events": "transcript.final,session.finished"})
    await go_live(r, keys, "c1")
    for server in serve_in_thread(create_app(hooks, settings.redis_url or "", options=FAST)):
        for i in range(3):
            await add_final(r, keys, "c1", i, f"before {i}", i, i + 0.5)
        await receiver.wait_for("/env", 3)
        assert server.url
    for i in range(3, 6):  # while no API runs
        await add_final(r, keys, "c1", i, f"between {i}", i, i + 0.5)
    for server in serve_in_thread(create_app(hooks, settings.redis_url or "", options=FAST)):
        await receiver.wait_for("/env", 6)
        await add_final(r, keys, "c1", 6, "after 6", 6, 6.5)
        await receiver.wait_for("/env", 7)
        await asyncio.sleep(0.5)
        assert server.url
    assert finals_of(receiver.requests("/env")) == [
        (0, "before 0"), (1, "before 1"), (2, "before 2"), (3, "between 3"), (4, "between 4"),
        (5, "between 5"), (6, "after 6")]
