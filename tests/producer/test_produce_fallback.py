"""`voxq produce --fallback`: the fallback vendors are stored on the session in order, and a
bad list is refused at the producer with the reason, before anything is written."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from pubtest_util import fields_str
from test_produce_cli import SAMPLE, produce

from voxq.keys import Keys
from voxq.records import SessionMeta


async def test_fallback_is_stored_in_order(env: dict[str, str], keys: Keys,
                                           r: aioredis.Redis) -> None:
    p = produce(env, str(SAMPLE), "--session", "fb", "--fast", "--vendor", "local",
                "--fallback", "voxq-ws, deepgram")
    assert p.returncode == 0, p.stderr
    meta = SessionMeta.from_hash(await r.hgetall(keys.meta("fb")))
    assert meta.vendors == ("local", "voxq-ws", "deepgram")
    assert fields_str(await r.hgetall(keys.meta("fb")))["fallback"] == "voxq-ws,deepgram"


@pytest.mark.parametrize(("fallback", "message"), [
    ("nope", "unknown fallback vendor 'nope'"),
    ("local", "include the session's own vendor"),
    ("aws,aws", "repeat"),
    ("aws,deepgram,voxq-ws,dashscope,volcengine", "at most 4 fallback vendors"),
    # a fallback that cannot take the session is refused like the vendor itself: deepgram
    # takes German, the local engine does not
    ("local", "English"),
])
async def test_bad_fallback_is_refused(env: dict[str, str], prefix: str, r: aioredis.Redis,
                                       fallback: str, message: str) -> None:
    extra = ["--vendor", "deepgram", "--language", "de-DE"] if message == "English" else []
    p = produce(env, str(SAMPLE), "--fast", "--fallback", fallback, *extra)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert p.stderr.startswith("voxq produce: error: ") and message in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    assert await r.keys(f"{prefix}:*") == []
