"""Hostile records written straight into Redis, beside good sessions: a malformed meta, a
meta that names another session, malformed or oversized audio. Each bad session ends
`failed` with its reason and retention TTLs, its control entry is acknowledged once, no
worker loops on it, and a good session beside them finishes with the exact transcript."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.emulators.watermark import WatermarkEmulator, expected_words, watermark_pcm
from tests.support import create, publish
from voxq.keys import TRANSCRIBERS_GROUP, Keys
from voxq.records import SessionMeta, Status, encode_chunk, encode_eos
from voxq.sessions import ensure_group, read_finals
from voxq.settings import Settings
from workers.session_runner import MAX_BAD_CHUNKS, SessionRunner
from workers.transcriber import Transcriber

pytestmark = pytest.mark.timeout(120)

CLAIM_TIMEOUT_S = 1.0
TERMINAL = (b"finished", b"failed", b"abandoned")


@pytest.fixture
def emulator() -> Iterator[WatermarkEmulator]:
    with WatermarkEmulator() as emu:
        yield emu


@pytest.fixture
async def worker(settings: Settings, emulator: WatermarkEmulator) -> AsyncIterator[Transcriber]:
    """An in-process worker with a short claim timeout, so a loop would show quickly."""
    assert settings.redis_url
    w = Transcriber(settings.model_copy(update={"voxqws_url": emulator.url,
                                                "claim_timeout_seconds": CLAIM_TIMEOUT_S,
                                                "retention_seconds": 3600}),
                    settings.redis_url, name="w-hostile")
    stop = asyncio.Event()
    task = asyncio.create_task(w.run(stop))
    yield w
    stop.set()
    async with asyncio.timeout(30):
        await task


async def write_raw(r: aioredis.Redis, keys: Keys, sid: str, drop: tuple[str, ...] = (),
                    **fields: str) -> None:
    """A session record as a careless or hostile producer might write it: a valid meta with
    ``fields`` overridden and ``drop`` removed, its index entry and its control entry."""
    h: dict[str, Any] = SessionMeta(session_id=sid, vendor="voxq-ws",
                                    created=time.time()).to_hash()
    h.update(fields)
    for name in drop:
        h.pop(name, None)
    await r.hset(keys.meta(sid), mapping=h)
    await r.zadd(keys.index, {sid: time.time()})
    await ensure_group(r, keys)
    await r.xadd(keys.sessions, {"sid": sid})


async def raw_status(r: aioredis.Redis, keys: Keys, sid: str, timeout: float = 60) -> dict[str, str]:
    """The meta hash once its status is terminal (read raw: a malformed meta stays malformed)."""
    deadline = time.monotonic() + timeout
    h: Any = {}
    while time.monotonic() < deadline:
        h = await r.hgetall(keys.meta(sid))
        if h.get(b"status") in TERMINAL:
            return {k.decode(): v.decode(errors="replace") for k, v in h.items()}
        await asyncio.sleep(0.05)
    raise AssertionError(f"session {sid} still {h.get(b'status')!r} after {timeout}s: {h}")


async def assert_settled(r: aioredis.Redis, keys: Keys, sid: str, epoch: int = 1) -> None:
    """Failed with retention TTLs on every key that exists, nothing pending, and after a few
    claim timeouts still the same epoch (nobody took it over again)."""
    for key in keys.session_keys(sid):
        if await r.exists(key):
            assert 0 < await r.ttl(key) <= 3600, key
    await asyncio.sleep(3 * CLAIM_TIMEOUT_S)
    assert int(await r.hget(keys.meta(sid), "epoch") or 0) == epoch
    assert await r.xlen(keys.sessions) == 0
    assert (await r.xpending(keys.sessions, TRANSCRIBERS_GROUP))["pending"] == 0


# --- finding: a malformed meta is claimed, acknowledged and left `active` forever ----------

MALFORMED_META: dict[str, tuple[dict[str, str], tuple[str, ...], str]] = {
    "rate-0": ({"rate": "0"}, (), "sample rate"),
    "rate-1e9": ({"rate": "1000000000"}, (), "sample rate"),
    "rate-text": ({"rate": "fast"}, (), "rate"),
    "channels-7": ({"channels": "7"}, (), "channels"),
    "options-unparseable": ({"options": "{not json"}, (), "options"),
    "options-not-object": ({"options": "[1, 2]"}, (), "options"),
    "no-id": ({}, ("id",), "id"),
    "finals-text": ({"finals": "many"}, (), "finals"),
    "checkpoint-garbage": ({"checkpoint": "zz"}, (), "checkpoint"),
    "checkpoint-frames-text": ({"checkpoint_frames": "x"}, (), "checkpoint"),
    "final-end-text": ({"final_end:0": "x"}, (), "final_end"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_META))
async def test_malformed_meta_fails_with_reason_and_ttl(
        case: str, worker: Transcriber, r: aioredis.Redis, keys: Keys) -> None:
    fields, drop, reason = MALFORMED_META[case]
    await write_raw(r, keys, "bad", drop, **fields)
    h = await raw_status(r, keys, "bad")
    assert h["status"] == "failed", h
    assert h["error"] and reason in h["error"], h["error"]
    await assert_settled(r, keys, "bad")


async def test_an_epoch_that_is_no_number_restarts_at_one(
        worker: Transcriber, r: aioredis.Redis, keys: Keys) -> None:
    await write_raw(r, keys, "ep", epoch="x")
    await publish(r, keys, "ep", watermark_pcm(10))
    h = await raw_status(r, keys, "ep")
    assert h["status"] == "finished" and h["epoch"] == "1", h
    words = [w for _, t in await read_finals(r, keys, "ep") for w in t.text.split()]
    assert words == expected_words(10)


async def test_audio_key_of_the_wrong_type_fails_the_session_alone(
        worker: Transcriber, r: aioredis.Redis, keys: Keys) -> None:
    await r.set(keys.audio("wt"), "not a stream")
    await write_raw(r, keys, "wt")
    h = await raw_status(r, keys, "wt")
    assert h["status"] == "failed" and "audio" in h["error"], h
    await assert_settled(r, keys, "wt")


async def test_meta_of_the_wrong_type_is_acknowledged_once(
        worker: Transcriber, r: aioredis.Redis, keys: Keys) -> None:
    await r.set(keys.meta("str"), "not a hash")
    await ensure_group(r, keys)
    await r.xadd(keys.sessions, {"sid": "str"})
    await r.xadd(keys.sessions, {"sid": "bad id{1}"})
    await r.xadd(keys.sessions, {"nosid": "1"})
    deadline = time.monotonic() + 30
    while await r.xlen(keys.sessions):
        assert time.monotonic() < deadline, await r.xrange(keys.sessions)
        await asyncio.sleep(0.05)
    await asyncio.sleep(3 * CLAIM_TIMEOUT_S)
    assert (await r.xpending(keys.sessions, TRANSCRIBERS_GROUP))["pending"] == 0
    assert await r.get(keys.meta("str")) == b"not a hash"


async def test_a_crashing_runner_fails_its_session_instead_of_looping(
        worker: Transcriber, r: aioredis.Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    async def crash(self: SessionRunner) -> Status:
        raise RuntimeError("a bug")  # fault injection: the runner itself breaks

    monkeypatch.setattr(SessionRunner, "_attempt", crash)
    await create(r, keys, "crash", vendor="voxq-ws")
    h = await raw_status(r, keys, "crash")
    assert h["status"] == "failed" and h["error"] == "internal error: RuntimeError", h
    await assert_settled(r, keys, "crash")


# --- finding: a meta naming another session loops takeover forever ------------------------

async def test_meta_naming_another_session_fails_at_claim(
        worker: Transcriber, r: aioredis.Redis, keys: Keys) -> None:
    await create(r, keys, "victim", vendor="voxq-ws")
    await publish(r, keys, "victim", watermark_pcm(20))
    await write_raw(r, keys, "liar", id="victim")
    h = await raw_status(r, keys, "liar")
    assert h["status"] == "failed" and "victim" in h["error"], h
    victim = await raw_status(r, keys, "victim")
    assert victim["status"] == "finished", victim
    assert int(victim["epoch"]) == 1
    await assert_settled(r, keys, "liar")
    words = [w for _, t in await read_finals(r, keys, "victim") for w in t.text.split()]
    assert words == expected_words(20)


# --- finding: malformed audio is skipped silently, oversized audio is held in memory ------

async def chunks_then_eos(r: aioredis.Redis, keys: Keys, sid: str,
                          entries: list[dict[str, Any]]) -> None:
    for e in entries:
        await r.xadd(keys.audio(sid), e)
    await r.xadd(keys.audio(sid), encode_eos(len(entries)))


GOOD_CHUNK = watermark_pcm(1)


async def test_every_chunk_malformed_fails_instead_of_finishing(
        worker: Transcriber, r: aioredis.Redis, keys: Keys) -> None:
    await create(r, keys, "allbad", vendor="voxq-ws")
    await chunks_then_eos(r, keys, "allbad", [
        encode_chunk(0, b"\0\0\0"),  # half a frame
        {"seq": "x", "pcm": GOOD_CHUNK},  # no number
        {"seq": "2"},  # no pcm
        {"pcm": GOOD_CHUNK},  # no seq
        encode_chunk(4, b"\0"),
    ])
    h = await raw_status(r, keys, "allbad")
    assert h["status"] == "failed", h
    assert "malformed audio" in h["error"], h["error"]
    assert int(h["bad_chunks"]) == MAX_BAD_CHUNKS + 1
    await assert_settled(r, keys, "allbad")


async def test_a_few_malformed_chunks_are_counted_on_a_finished_session(
        worker: Transcriber, r: aioredis.Redis, keys: Keys) -> None:
    await create(r, keys, "few", vendor="voxq-ws")
    await r.xadd(keys.audio("few"), {"seq": "x", "pcm": b"\0\0"})
    await publish(r, keys, "few", watermark_pcm(10), start_seq=1)
    h = await raw_status(r, keys, "few")
    assert h["status"] == "finished", h
    assert h["bad_chunks"] == "1"
    words = [w for _, t in await read_finals(r, keys, "few") for w in t.text.split()]
    assert words == expected_words(10)


async def test_oversized_chunk_fails_the_session_at_once(
        worker: Transcriber, r: aioredis.Redis, keys: Keys) -> None:
    await create(r, keys, "huge", vendor="voxq-ws")
    await chunks_then_eos(r, keys, "huge", [encode_chunk(0, GOOD_CHUNK),
                                            encode_chunk(1, b"\0" * 10_000_000),
                                            encode_chunk(2, GOOD_CHUNK)])
    h = await raw_status(r, keys, "huge")
    assert h["status"] == "failed", h
    assert "10000000 bytes" in h["error"] and "6400" in h["error"], h["error"]
    assert h["bad_chunks"] == "1"
    await assert_settled(r, keys, "huge")



# --- all of it at once, beside a good session ----------------------------------------------

async def test_every_hostile_record_beside_a_good_session(
        worker: Transcriber, r: aioredis.Redis, keys: Keys) -> None:
    await create(r, keys, "good", vendor="voxq-ws")
    feeder = asyncio.create_task(publish(r, keys, "good", watermark_pcm(60), realtime=10))
    bad: dict[str, str] = {}  # session -> what its error must say
    for case, (fields, drop, reason) in MALFORMED_META.items():
        await write_raw(r, keys, f"meta-{case}", drop, **fields)
        bad[f"meta-{case}"] = reason
    await write_raw(r, keys, "liar", id="good")  # names the good session
    bad["liar"] = "good"
    await r.set(keys.audio("wrongtype"), "x")
    await write_raw(r, keys, "wrongtype")
    bad["wrongtype"] = "audio"
    await create(r, keys, "allbad", vendor="voxq-ws")
    await chunks_then_eos(r, keys, "allbad", [encode_chunk(0, b"\0"), {"seq": "x", "pcm": b""},
                                              {"seq": "2"}, {"pcm": b"\0\0"}, encode_chunk(4, b"\0")])
    bad["allbad"] = "malformed audio"
    await create(r, keys, "huge", vendor="voxq-ws")
    await chunks_then_eos(r, keys, "huge", [encode_chunk(0, b"\0" * 10_000_000)])
    bad["huge"] = "10000000 bytes"
    await r.set(keys.meta("nothash"), "x")
    await r.xadd(keys.sessions, {"sid": "nothash"})
    await r.xadd(keys.sessions, {"sid": "bad id{1}"})
    await r.xadd(keys.sessions, {"nosid": "1"})

    await feeder
    good = await raw_status(r, keys, "good")
    assert good["status"] == "finished" and good["error"] == "" and good["epoch"] == "1", good
    words = [w for _, t in await read_finals(r, keys, "good") for w in t.text.split()]
    assert words == expected_words(60)
    for sid, reason in bad.items():
        h = await raw_status(r, keys, sid)
        assert h["status"] == "failed" and reason in h["error"], (sid, h)
        for key in keys.session_keys(sid):
            if await r.exists(key):
                assert 0 < await r.ttl(key) <= 3600, key
    await asyncio.sleep(3 * CLAIM_TIMEOUT_S)  # a loop would take something over by now
    assert await r.xlen(keys.sessions) == 0
    assert (await r.xpending(keys.sessions, TRANSCRIBERS_GROUP))["pending"] == 0
    for sid in [*bad, "good"]:
        assert await r.hget(keys.meta(sid), "epoch") == b"1", sid
    assert worker.stats.taken_over == 0 and worker.stats.fenced == 0
    assert worker.stats.rejected == len(MALFORMED_META) + 2  # the metas, liar and wrongtype
    assert await r.get(keys.meta("nothash")) == b"x"
