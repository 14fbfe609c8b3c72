"""1,000 live followers over real sockets on one `voxq api` process: readiness and the other
routes keep answering, the process's Redis connections stay at most 10, and every follower
receives the next final and the closing status."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from api_process import api_process
from apitest_support import add_final, add_session, set_status

from voxq.embedded_redis import RedisServer
from voxq.keys import Keys
from voxq.records import Status
from voxq.redis_conn import connect

pytestmark = pytest.mark.timeout(280)

SESSIONS, PER_SESSION = 100, 10
OWN_NAME = "followers-load-test"


class RawFollower:
    """One SSE follower on a raw socket (cheap enough to hold a thousand)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.buf = b""

    @classmethod
    async def open(cls, host: str, port: int, sid: str) -> RawFollower:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(f"GET /v1/sessions/{sid}/events HTTP/1.1\r\nHost: api\r\n"
                     "Accept: text/event-stream\r\n\r\n".encode())
        await writer.drain()
        return cls(reader, writer)

    async def until(self, marker: bytes, timeout: float = 60) -> None:
        """Read until ``marker`` was received (counted from the last marker found)."""
        async with asyncio.timeout(timeout):
            while marker not in self.buf:
                chunk = await self.reader.read(65536)
                assert chunk, f"closed before {marker!r}: {self.buf[-300:]!r}"
                self.buf += chunk
        self.buf = self.buf[self.buf.index(marker) + len(marker):]

    def close(self) -> None:
        self.writer.close()


async def _api_clients(r: object) -> int:
    clients = await r.client_list()  # type: ignore[attr-defined]
    return sum(1 for c in clients if c.get("name") != OWN_NAME)


async def test_a_thousand_followers_leave_the_api_answering(tmp_path: Path, prefix: str,
                                                            env: dict[str, str]) -> None:
    server = RedisServer().start()  # its own Redis, so CLIENT LIST shows only this API
    followers: list[RawFollower] = []
    try:
        r = connect(server.url, client_name=OWN_NAME)
        keys = Keys(prefix)
        for i in range(SESSIONS):
            await add_session(r, keys, f"s{i}")
            await add_final(r, keys, f"s{i}", 0, "hello", 0, 1)
        api_env = {**env, "REDIS_URL": server.url}
        with api_process(api_env, tmp_path / "api.log") as (url, _proc):
            host, port = url.removeprefix("http://").split(":")
            for batch in range(0, SESSIONS * PER_SESSION, 100):
                opened = await asyncio.gather(*(
                    RawFollower.open(host, int(port), f"s{k % SESSIONS}")
                    for k in range(batch, batch + 100)))
                followers.extend(opened)
            await asyncio.gather(*(f.until(b"event: final") for f in followers))
            async with httpx.AsyncClient(base_url=url, timeout=30) as c:
                for _ in range(5):
                    assert (await c.get("/readyz")).status_code == 200
                    assert (await c.get("/healthz")).status_code == 200
                    page = await c.get("/v1/sessions", params={"limit": 5})
                    assert page.status_code == 200 and page.json()["total"] == SESSIONS
                    assert (await c.get("/v1/sessions/s7/transcript")).status_code == 200
            assert await _api_clients(r) <= 10
            for i in range(SESSIONS):
                await add_final(r, keys, f"s{i}", 1, "world", 1, 2)
            await asyncio.gather(*(f.until(b'"text":"world"') for f in followers))
            assert await _api_clients(r) <= 10
            for i in range(SESSIONS):
                await set_status(r, keys, f"s{i}", Status.FINISHED)
            await asyncio.gather(*(f.until(b"event: status") for f in followers))
            assert await _api_clients(r) <= 10
        await r.aclose()
    finally:
        for f in followers:
            f.close()
        server.close()
