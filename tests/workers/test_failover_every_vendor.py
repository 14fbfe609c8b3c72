"""Failover from every streaming vendor: each one, as a session's primary, is unreachable
(connection refused) or refuses its credentials (401 at the WebSocket handshake), and every
session ends with the exact transcript from its fallback (`voxq-ws`, the watermark emulator),
the switch recorded with a reason that holds no secret. What a vendor says when it is down is
translated by its own adapter, so this runs through each adapter's error path, not one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from http import HTTPStatus

import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr
from websockets.asyncio.server import Request, Response, ServerConnection, serve
from websockets.datastructures import Headers

from tests.emulators.watermark import WatermarkEmulator, watermark_pcm
from tests.support import create, publish
from tests.workers.test_failover import check_exact, finals, run_worker, switches
from voxq.aio import within
from voxq.embedded_redis import free_port
from voxq.keys import Keys
from voxq.settings import Settings

#: every streaming recognizer with a URL setting, and the path its URL carries
PRIMARIES = {
    "aws": ("aws_transcribe_endpoint", ""),
    "assemblyai": ("assemblyai_url", "/v3/ws"),
    "assemblyai-v2": ("assemblyai_v2_url", "/v2/realtime/ws"),
    "deepgram": ("deepgram_url", "/v1/listen"),
    "dashscope": ("dashscope_url", "/api-ws/v1/inference"),
    "volcengine": ("volcengine_asr_url", "/api/v3/sauc"),
}
SECRETS = {
    "aws_access_key_id": "AKIAFAILOVERTEST0001", "aws_secret_access_key": "fo-aws-secret-0001",
    "assemblyai_api_key": "fo-assemblyai-key-0001", "deepgram_api_key": "fo-deepgram-key-0001",
    "dashscope_api_key": "fo-dashscope-key-0001", "volcengine_access_token": "fo-volc-token-01",
}
WORDS = 30


@pytest.fixture
def fallback() -> Iterator[WatermarkEmulator]:
    with WatermarkEmulator() as emu:
        yield emu


async def _no_session(ws: ServerConnection) -> None:
    await ws.close()  # never reached: every handshake is refused


def _refuse(ws: ServerConnection, request: Request) -> Response:
    body = b'{"error": "invalid credentials"}'
    return Response(HTTPStatus.UNAUTHORIZED.value, "Unauthorized",
                    Headers({"Content-Type": "application/json",
                             "Content-Length": str(len(body))}), body)


@contextlib.asynccontextmanager
async def refusing_server() -> AsyncIterator[str]:
    """A WebSocket server that answers 401 to every handshake; yields its ws:// base URL."""
    async with serve(_no_session, "127.0.0.1", 0, process_request=_refuse) as server:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"


@pytest.mark.parametrize("fault", ["refused", "auth"])
async def test_every_vendor_fails_over_to_its_fallback_exactly(
        fault: str, settings: Settings, fallback: WatermarkEmulator, r: aioredis.Redis,
        keys: Keys) -> None:
    async with contextlib.AsyncExitStack() as stack:
        if fault == "refused":
            base = f"ws://127.0.0.1:{free_port()}"  # nobody listens there
        else:
            base = await stack.enter_async_context(refusing_server())
        s = settings.model_copy(update={
            **{name: SecretStr(value) for name, value in SECRETS.items()},
            **{setting: base + path for setting, path in PRIMARIES.values()},
            "volcengine_app_id": "1234567", "voxqws_url": fallback.url,
            "failover_attempts": 2, "failover_seconds": 20.0, "breaker_threshold": 10_000})
        _w, stop, task = await run_worker(s, f"w-every-{fault}")
        try:
            sids = {f"{fault}-{vendor}": vendor for vendor in PRIMARIES}
            for sid, vendor in sids.items():
                await create(r, keys, sid, vendor=vendor, fallback=("voxq-ws",))
            await asyncio.gather(*(publish(r, keys, sid, watermark_pcm(WORDS), realtime=20)
                                   for sid in sids))
            for sid, vendor in sids.items():
                meta = await check_exact(r, keys, sid, WORDS)
                assert (meta.active_vendor, meta.vendor_switches) == ("voxq-ws", 1), sid
                assert {t.vendor for t in await finals(r, keys, sid)} == {"voxq-ws"}, sid
                [ev] = await switches(r, keys, sid)
                assert (ev["from"], ev["vendor"]) == (vendor, "voxq-ws"), sid
                assert not [v for v in SECRETS.values() if v in ev["reason"]], ev["reason"]
        finally:
            stop.set()
            await within(task, 30)
