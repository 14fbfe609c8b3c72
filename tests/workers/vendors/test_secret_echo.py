"""Vendors that echo the request back never make a secret leave: for every ASR and TTS vendor a
fake service echoes the request's headers and query into its handshake refusal, its close
reason or its HTTP error, and no configured secret appears in the session or TTS record, in
any Redis key, in the API's answers or in any log line at DEBUG."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from api.app import create_app
from tests.emulators.watermark import watermark_pcm
from tests.support import create, publish
from tests.workers.tts.ttstest_support import api_client
from voxq import redaction
from voxq.keys import Keys
from voxq.redis_conn import connect_sync
from voxq.settings import Settings
from workers.transcriber import Transcriber
from workers.tts import jobs
from workers.vendors.base import SynthesisRequest, VendorError
from workers.vendors.registry import create_recognizer, synthesizer_class

pytestmark = pytest.mark.timeout(180)

SECRETS = {
    "api_key": "api-KEY-echo-5ecret-0001",
    "aws_access_key_id": "AKIAECHOTEST00000001",
    "aws_secret_access_key": "aws-secret-echo-000000000000000000001",
    "aws_session_token": "FQoGZXIvYXdzEchoSessionToken0000000001",
    "assemblyai_api_key": "aai-echo-key-0000000000000001",
    "deepgram_api_key": "dg-echo-key-00000000000000001",
    "dashscope_api_key": "sk-echo0000000000000000000001",
    "volcengine_access_token": "volc-echo-token-000000000001",
    "voxqws_key": "vws-echo-key-0000000000001",
}
ASR = ["aws", "assemblyai", "assemblyai-v2", "deepgram", "dashscope", "volcengine", "voxq-ws"]
TTS = ["aws", "dashscope", "volcengine", "volcengine-v3"]
LANGUAGE = {"dashscope": "zh-CN", "volcengine": "zh-CN"}
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "x-api-access-key", "x-amz-security-token",
                      "x-dashscope-apikey")


@dataclass
class EchoVendor:
    """A WebSocket service (and a plain HTTP one) that echoes every request back: in the body
    of a refused handshake (``mode="refuse"``), or in the close reason after the upgrade."""

    mode: Literal["refuse", "close"] = "refuse"
    hits: list[str] = field(default_factory=list)
    ws_port: int = 0
    http_port: int = 0

    def _check(self, conn: ServerConnection, request: Request) -> Response | None:
        self.hits.append(request.path)
        if self.mode == "refuse":
            echo = "\n".join([f"GET {request.path}",
                              *(f"{k}: {v}" for k, v in request.headers.raw_items())])
            return conn.respond(401, f"unauthorized request:\n{echo}\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        creds = [v for k, v in ws.request.headers.raw_items() if k.lower() in CREDENTIAL_HEADERS]
        query = unquote(urlsplit(ws.request.path).query)
        reason = " ".join([*creds, query]).encode()[:120].decode(errors="ignore")
        await ws.close(1008, reason)

    async def _http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode(errors="replace").split("\r\n")
        self.hits.append(lines[0])
        length = next((int(v) for k, _, v in (x.partition(":") for x in lines)
                       if k.lower() == "content-length"), 0)
        body = await reader.readexactly(length) if length else b""
        echo = head + body
        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: "
                     b"%d\r\nConnection: close\r\n\r\n%s" % (len(echo), echo))
        await writer.drain()
        writer.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[EchoVendor]:
        http = await asyncio.start_server(self._http, "127.0.0.1", 0)
        async with serve(self._handle, "127.0.0.1", 0, process_request=self._check,
                         compression=None, ping_interval=None) as ws:
            self.ws_port = ws.sockets[0].getsockname()[1]
            self.http_port = http.sockets[0].getsockname()[1]
            try:
                yield self
            finally:
                http.close()

    def configure(self, settings: Settings) -> Settings:
        ws, http = f"ws://127.0.0.1:{self.ws_port}", f"http://127.0.0.1:{self.http_port}"
        return settings.model_copy(update={
            **{k: SecretStr(v) for k, v in SECRETS.items()},
            "volcengine_app_id": "1234567",
            "aws_transcribe_endpoint": ws, "aws_polly_endpoint": http,
            "assemblyai_url": f"{ws}/v3/ws", "assemblyai_v2_url": f"{ws}/v2/realtime/ws",
            "deepgram_url": f"{ws}/v1/listen", "dashscope_url": f"{ws}/api-ws/v1/inference",
            "volcengine_asr_url": f"{ws}/api/v3/sauc", "voxqws_url": f"{ws}/v1/listen",
            "volcengine_tts_url": f"{ws}/api/v1/tts/ws_binary",
            "volcengine_tts_v3_url": f"{ws}/api/v3/tts/bidirection",
            "claim_timeout_seconds": 2.0, "tts_vendor_timeout_seconds": 10.0})


def leaks(text: str) -> list[str]:
    """The configured secrets found in ``text``."""
    return [name for name, value in SECRETS.items() if value in text]


async def redis_dump(r: aioredis.Redis, prefix: str) -> str:
    """Every key under ``prefix`` with its whole value, as text."""
    out: list[str] = []
    async for key in r.scan_iter(match=f"{prefix}*", count=500):
        kind = (await r.type(key)).decode()
        if kind == "hash":
            value: Any = await r.hgetall(key)
        elif kind == "stream":
            value = await r.xrange(key)
        elif kind == "string":
            value = await r.get(key)
        elif kind == "zset":
            value = await r.zrange(key, 0, -1, withscores=True)
        elif kind == "list":
            value = await r.lrange(key, 0, -1)
        else:
            value = await r.smembers(key) if kind == "set" else None
        out.append(f"{key!r} {value!r}")
    return "\n".join(out)


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


@pytest.mark.parametrize("mode", ["refuse", "close"])
async def test_asr_vendors_echoing_the_request_leak_nothing(
        mode: Literal["refuse", "close"], settings: Settings, r: aioredis.Redis, keys: Keys,
        debug_logs: pytest.LogCaptureFixture) -> None:
    async with EchoVendor(mode).running() as vendor:
        s = vendor.configure(settings)
        assert s.redis_url
        worker = Transcriber(s, s.redis_url, name="w-echo")
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            for v in ASR:
                await create(r, keys, f"echo-{v}", vendor=v, language=LANGUAGE.get(v, "en-US"))
                await publish(r, keys, f"echo-{v}", watermark_pcm(5))
            deadline = time.monotonic() + 150
            for v in ASR:
                while (await r.hget(keys.meta(f"echo-{v}"), "status")) != b"failed":
                    assert time.monotonic() < deadline, (v, await r.hgetall(keys.meta(f"echo-{v}")))
                    await asyncio.sleep(0.1)
            app = create_app(s, s.redis_url)
            from tests.api.apitest_support import asgi_client
            headers = {"Authorization": f"Bearer {SECRETS['api_key']}"}
            async with asgi_client(app) as client:
                answers = [await client.get(f"/v1/sessions/echo-{v}", headers=headers)
                           for v in ASR]
                listed = await client.get("/v1/sessions", headers=headers)
        finally:
            stop.set()
            async with asyncio.timeout(30):
                await task
    errors = {a.json()["session_id"]: a.json()["error"] for a in answers}
    assert all(a.status_code == 200 for a in answers) and set(errors) == {f"echo-{v}" for v in ASR}
    assert all(errors.values()), errors  # each failed with a reason
    hit = " ".join(vendor.hits)
    for path in ("/v3/ws", "/v2/realtime/ws", "/v1/listen", "/api-ws/v1/inference", "/api/v3/sauc",
                 "/stream-transcription"):
        assert path in hit, (path, vendor.hits)  # every vendor really talked to the echo
    assert not leaks(str(errors)) and not leaks(listed.text)
    assert not leaks(await redis_dump(r, keys.prefix))
    assert not leaks(debug_logs.text), [x for x in debug_logs.text.splitlines() if leaks(x)][:3]


@pytest.mark.parametrize("vendor_name", ASR)
async def test_asr_close_reason_echoing_a_key_is_not_logged(
        vendor_name: str, settings: Settings, debug_logs: pytest.LogCaptureFixture) -> None:
    async with EchoVendor("close").running() as vendor:
        s = vendor.configure(settings)
        redaction.install(s)
        rec = create_recognizer(vendor_name, "echo", LANGUAGE.get(vendor_name, "en-US"), 16000,
                                1, {}, s)
        error = ""
        try:
            async with asyncio.timeout(30):
                await rec.start()
                await rec.send(watermark_pcm(1))
                await rec.finish()
                async for _ in rec.results():
                    pass
        except VendorError as e:
            error = str(e)
        finally:
            await rec.close()
    assert vendor.hits
    assert not leaks(error), error
    assert not leaks(debug_logs.text), [x for x in debug_logs.text.splitlines() if leaks(x)][:3]


@pytest.mark.parametrize("mode", ["refuse", "close"])
@pytest.mark.parametrize("vendor_name", TTS)
async def test_tts_vendors_echoing_the_request_leak_nothing(
        vendor_name: str, mode: Literal["refuse", "close"], settings: Settings, r: aioredis.Redis,
        keys: Keys, redis_server: Any, debug_logs: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with EchoVendor(mode).running() as vendor:
        s = vendor.configure(settings)
        monkeypatch.setattr(jobs, "get_settings", lambda: s)
        jobs.configure(s.redis_url or "")
        synth = synthesizer_class(vendor_name)(s)
        with pytest.raises(VendorError) as direct:
            async with asyncio.timeout(30):
                await synth.synthesize(SynthesisRequest(text="Hello there."))
        p = jobs.plan(jobs.TtsRequest(text="Hello there.", vendor=vendor_name), s)
        job_id = jobs.new_job_id()
        await jobs.create_records(r, keys, [(job_id, p)], 300)
        with pytest.raises(VendorError) as in_job:
            async with asyncio.timeout(60):
                await jobs.run_job(job_id, keys.prefix)
        conn = connect_sync(redis_server.url)
        try:  # what RQ does with the failure: the record says why
            jobs.on_job_failure(SimpleNamespace(args=(job_id, keys.prefix), retries_left=0,
                                                timeout=30), conn, type(in_job.value),
                                in_job.value, None)
        finally:
            conn.close()
        async with api_client(s) as client:
            answer = await client.get(f"/v1/tts/{job_id}",
                                      headers={"Authorization": f"Bearer {SECRETS['api_key']}"})
    assert vendor.hits
    assert answer.status_code == 200 and answer.json()["status"] == "failed", answer.text
    assert answer.json()["error"]
    assert not leaks(str(direct.value)) and not leaks(answer.text), answer.text
    assert not leaks(await redis_dump(r, keys.prefix))
    assert not leaks(debug_logs.text), [x for x in debug_logs.text.splitlines() if leaks(x)][:3]
