"""Helpers of the ingest gateway tests: a gateway in this process or as a `voxq ingest` child
process, and reading what it published back from Redis."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from pydantic import SecretStr

from producer.ingest.core import Gateway
from producer.ingest.server import IngestServer
from voxq.embedded_redis import free_port
from voxq.keys import Keys
from voxq.records import Chunk, SessionMeta, decode_chunk
from voxq.sessions import get_meta
from voxq.settings import Settings

KEY = "test-ingest-key"
TWILIO_TOKEN = "twilio-test-token"
AH_KEY = "audiohook-test-key"
AH_SECRET = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0IQ=="  # base64


@dataclass
class Running:
    """A gateway serving on loopback."""

    gw: Gateway
    server: IngestServer
    port: int

    def url(self, dialect: str, query: str = "") -> str:
        """ws:// URL of an endpoint."""
        return f"ws://127.0.0.1:{self.port}/v1/ingest/{dialect}" + (f"?{query}" if query else "")


def gateway_settings(settings: Settings, **changes: Any) -> Settings:
    """The test settings with the gateway's credentials set."""
    base: dict[str, Any] = {"ingest_key": SecretStr(KEY), "ingest_drain_grace_seconds": 5.0}
    base.update(changes)
    return settings.model_copy(update=base)


@contextlib.asynccontextmanager
async def running(settings: Settings, insecure: bool = False) -> AsyncIterator[Running]:
    """A gateway in this process; drained (bounded) on exit."""
    assert settings.redis_url
    gw = Gateway(settings, settings.redis_url, insecure=insecure)
    srv = IngestServer(gw)
    server = await srv.start("127.0.0.1", 0)
    port = next(iter(server.sockets)).getsockname()[1]
    try:
        yield Running(gw, srv, port)
    finally:
        async with asyncio.timeout(30):
            await srv.drain(0)


async def read_audio(r: aioredis.Redis, keys: Keys, sid: str) -> list[Chunk]:
    """Every entry of a session's audio stream, in order."""
    return [decode_chunk(f) for _, f in await r.xrange(keys.audio(sid))]


async def wait_eos(r: aioredis.Redis, keys: Keys, sid: str, timeout: float = 60) -> list[Chunk]:
    """The session's audio once its eos is there."""
    async with asyncio.timeout(timeout):
        while True:
            chunks = await read_audio(r, keys, sid)
            if chunks and chunks[-1].eos:
                return chunks
            await asyncio.sleep(0.05)


def pcm_of(chunks: list[Chunk]) -> bytes:
    """Check seq 0..n with eos last; the joined PCM."""
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert chunks[-1].eos and not any(c.eos for c in chunks[:-1])
    return b"".join(c.pcm for c in chunks[:-1])


async def wait_meta(r: aioredis.Redis, keys: Keys, sid: str, status: str,
                    timeout: float = 30) -> SessionMeta:
    """The session's meta once it has ``status``."""
    async with asyncio.timeout(timeout):
        while True:
            with contextlib.suppress(Exception):
                meta = await get_meta(r, keys, sid)
                if meta.status.value == status:
                    return meta
            await asyncio.sleep(0.05)


@contextlib.contextmanager
def gateway_process(env: dict[str, str], log: Path, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`voxq ingest` as a child process on a free port; killed on exit."""
    port = free_port()
    e = dict(env, VOXQ_INGEST_KEY=KEY, VOXQ_INGEST_PORT=str(port))
    with log.open("ab") as out:
        p = subprocess.Popen([sys.executable, "-m", "voxq", "ingest", *args], env=e, stdout=out,
                             stderr=subprocess.STDOUT)
    try:
        wait_port(port, p)
        yield p, port
    finally:
        if p.poll() is None:
            p.kill()
        p.wait(10)


def wait_port(port: int, p: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Block until the gateway answers /healthz."""
    import http.client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise AssertionError(f"voxq ingest exited with {p.returncode}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/healthz")
            if c.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("voxq ingest did not start")


def child_env(env: dict[str, str]) -> dict[str, str]:
    """The test's environment for a child (the repository on the path)."""
    repo = str(Path(__file__).resolve().parents[3])
    return dict(env, PYTHONPATH=os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")])))
