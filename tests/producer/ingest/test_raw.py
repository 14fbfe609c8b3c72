"""`/v1/ingest/raw` end to end against a real Redis: the seed tutorial's client unchanged but for
the URL, vosk/WhisperLive/voxq configurations and end markers, results on the socket, resume, and
every bad input."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis
import soundfile as sf
from ingesttest_support import KEY, Running, pcm_of, read_audio, wait_eos, wait_meta
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import SAMPLE
from tests.emulators.watermark import WatermarkEmulator, expected_words, watermark_pcm
from voxq.audio import float_to_s16
from voxq.keys import Keys
from voxq.settings import Settings
from workers.transcriber import Transcriber

pytestmark = pytest.mark.timeout(60)


async def seed_client(url: str, path: str) -> None:
    """The seed tutorial's client, as it is written there (only the URL differs)."""
    async with connect(url) as websocket:
        with sf.SoundFile(path) as file:
            while True:
                data = file.read(4096, dtype="float32")
                if not len(data):
                    break
                await websocket.send(data.tobytes())
        await websocket.send("Done")


async def test_seed_tutorial_client(gateway: Running, r: aioredis.Redis, keys: Keys) -> None:
    await seed_client(gateway.url("raw", f"session=seed&key={KEY}"), str(SAMPLE))
    pcm = pcm_of(await wait_eos(r, keys, "seed"))
    data, _ = sf.read(str(SAMPLE), dtype="float32")
    assert pcm == float_to_s16(data).tobytes()  # every sample, converted f32 → s16 exactly
    meta = await r.hgetall(keys.meta("seed"))
    assert meta[b"rate"] == b"16000" and meta[b"channels"] == b"1"
    assert all(len(c.pcm) == 3200 for c in (await read_audio(r, keys, "seed"))[:-2])


async def test_bearer_header_s16_stereo_and_vosk_eof(gateway: Running, r: aioredis.Redis,
                                                     keys: Keys) -> None:
    pcm = np.arange(-8000, 8000, dtype="<i2").repeat(2).tobytes()  # 8000 stereo frames
    url = gateway.url("raw", "session=st&format=s16&rate=8000&channels=2&option=vad_mode=1")
    async with connect(url, additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
        for i in range(0, len(pcm), 1000):
            await ws.send(pcm[i:i + 1000])
        # the session opens with the first frame (the client said nothing before it)
        assert json.loads(await ws.recv()) == {"event": "ready", "session": "st",
                                               "acked_samples": 0}
        await ws.send('{"eof" : 1}')
    assert pcm_of(await wait_eos(r, keys, "st")) == pcm
    meta = await r.hgetall(keys.meta("st"))
    assert (meta[b"rate"], meta[b"channels"], meta[b"options"]) == (b"8000", b"2", b'{"vad_mode":1}')


async def test_vosk_config_frame(gateway: Running, r: aioredis.Redis, keys: Keys) -> None:
    pcm = (np.sin(np.arange(8000) / 5) * 9000).astype("<i2").tobytes()
    async with connect(gateway.url("raw", f"session=vosk&key={KEY}")) as ws:
        await ws.send(json.dumps({"config": {"sample_rate": 8000, "words": True}}))
        assert json.loads(await ws.recv())["session"] == "vosk"
        for i in range(0, len(pcm), 4000):
            await ws.send(pcm[i:i + 4000])
        await ws.send('{"eof" : 1}')
    assert pcm_of(await wait_eos(r, keys, "vosk")) == pcm
    assert (await r.hget(keys.meta("vosk"), "rate")) == b"8000"


async def test_whisperlive_end_of_audio_and_clipping(gateway: Running, r: aioredis.Redis,
                                                     keys: Keys) -> None:
    x = np.array([0.0, 0.5, -0.5, 1.7, -3.0, 1.0, -1.0], dtype="<f4")
    async with connect(gateway.url("raw", f"key={KEY}")) as ws:
        await ws.send(json.dumps({"uid": "abc", "language": "en-US", "task": "transcribe",
                                  "session": "wl"}))
        await ws.recv()
        await ws.send(x.tobytes())
        await ws.send(b"END_OF_AUDIO")
    got = np.frombuffer(pcm_of(await wait_eos(r, keys, "wl")), "<i2")
    assert list(got) == [0, 16384, -16384, 32767, -32768, 32767, -32768]  # clipped, not wrapped


async def test_generated_session_id_in_ready(gateway: Running, r: aioredis.Redis,
                                             keys: Keys) -> None:
    async with connect(gateway.url("raw", f"key={KEY}&format=s16")) as ws:
        await ws.send(b"\1\0" * 1600)
        ready = json.loads(await ws.recv())
        await ws.send("Done")
    sid = ready["session"]
    assert len(sid) == 32
    assert pcm_of(await wait_eos(r, keys, sid)) == b"\1\0" * 1600


# --- results back on the socket ---------------------------------------------------------------

@pytest.fixture
async def wm_worker(settings: Settings) -> AsyncIterator[WatermarkEmulator]:
    with WatermarkEmulator() as emu:
        assert settings.redis_url
        # a short idle timeout: a worker that could still write would mark a silent session
        # `abandoned` within the tests' waits
        w = Transcriber(settings.model_copy(update={"voxqws_url": emu.url,
                                                    "claim_timeout_seconds": 2.0,
                                                    "idle_timeout_seconds": 2.0}),
                        settings.redis_url, name="w-ingest")
        stop = asyncio.Event()
        task = asyncio.create_task(w.run(stop))
        try:
            yield emu
        finally:
            stop.set()
            async with asyncio.timeout(30):
                await task


async def final_words(ws: ClientConnection) -> tuple[list[str], dict[str, Any]]:
    """The words of every final the gateway sends back, and its ``end`` frame."""
    words: list[str] = []
    async with asyncio.timeout(60):
        async for raw in ws:
            d = json.loads(raw)
            if d["event"] == "final":
                words += d["text"].split()
            elif d["event"] == "end":
                return words, d
    raise AssertionError(f"the socket closed without an end frame after {words}")


async def test_results_come_back_on_the_socket(gateway: Running, wm_worker: WatermarkEmulator,
                                               r: aioredis.Redis, keys: Keys) -> None:
    pcm = watermark_pcm(30)
    url = gateway.url("raw", f"key={KEY}&session=res&format=s16&vendor=voxq-ws&results=1")
    async with connect(url) as ws:
        for i in range(0, len(pcm), 3200):
            await ws.send(pcm[i:i + 3200])
        await ws.send("Done")
        assert json.loads(await ws.recv())["event"] == "ready"
        finals, end = await final_words(ws)
    assert end["status"] == "finished", end
    assert finals == expected_words(30)


async def test_an_unreadable_stored_result_is_skipped_not_fatal(
        gateway: Running, wm_worker: WatermarkEmulator, r: aioredis.Redis, keys: Keys) -> None:
    """A transcript entry nobody can decode (a hostile writer's) is skipped with a warning; the
    socket still gets every real final and the end frame."""
    pcm = watermark_pcm(30)
    url = gateway.url("raw", f"key={KEY}&session=res-bad&format=s16&vendor=voxq-ws&results=1")
    async with connect(url) as ws:
        await ws.send(pcm[:3200])
        assert json.loads(await ws.recv())["event"] == "ready"
        await r.xadd(keys.final("res-bad"), {"text": "forged", "start": "soon", "end": "x"})
        for i in range(3200, len(pcm), 3200):
            await ws.send(pcm[i:i + 3200])
        await ws.send("Done")
        finals, end = await final_words(ws)
    assert end["status"] == "finished", end
    assert finals == expected_words(30)


# --- resume -----------------------------------------------------------------------------------

async def test_resume_after_a_dropped_connection(gateway: Running, r: aioredis.Redis,
                                                 keys: Keys) -> None:
    pcm = np.arange(48000, dtype="<i2").tobytes()  # 3 s at 16 kHz, every sample distinct
    base = gateway.url("raw", f"key={KEY}&session=rs&format=s16")
    async with connect(base) as ws:
        for i in range(0, 40000, 4000):
            await ws.send(pcm[i:i + 4000])
        await ws.recv()  # ready
        while len(await read_audio(r, keys, "rs")) < 4:
            await asyncio.sleep(0.02)
        ws.transport.abort()  # the client vanishes: no end marker
    async with connect(base + "&resume=1") as ws:
        ready = json.loads(await ws.recv())
        assert ready["event"] == "ready" and ready["session"] == "rs"
        acked = ready["acked_samples"]
        assert acked > 0 and acked % 1600 == 0  # whole 100 ms chunks
        await ws.send(pcm[acked * 2:])
        await ws.send("Done")
    assert pcm_of(await wait_eos(r, keys, "rs")) == pcm


async def test_resume_of_an_ended_session_is_refused(gateway: Running, r: aioredis.Redis,
                                                     keys: Keys) -> None:
    async with connect(gateway.url("raw", f"key={KEY}&session=ended&format=s16")) as ws:
        await ws.send(b"\0\0" * 100)
        await ws.send("Done")
    await wait_eos(r, keys, "ended")
    async with connect(gateway.url("raw", f"key={KEY}&session=ended&resume=1")) as ws:
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert ws.close_code == 1008 and "ended" in (ws.close_reason or "")


# --- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("auth", [{}, {"q": "key=wrong"}, {"h": "Bearer wrong"}, {"h": "Basic x"}])
async def test_missing_or_wrong_key_is_401(gateway: Running, auth: dict[str, str]) -> None:
    q = auth.get("q", "")
    headers = {"Authorization": auth["h"]} if "h" in auth else {}
    with pytest.raises(InvalidStatus) as e:
        async with connect(gateway.url("raw", q), additional_headers=headers):
            pass
    assert e.value.response.status_code == 401
    assert b"wrong" not in e.value.response.body  # the key is never echoed


async def test_partial_frame_fails_the_session(gateway: Running, r: aioredis.Redis,
                                               keys: Keys) -> None:
    async with connect(gateway.url("raw", f"key={KEY}&session=pf")) as ws:
        await ws.send(b"\0" * 3200)
        await ws.send(b"\0" * 6)  # not a whole float32 sample
        with pytest.raises(ConnectionClosed):
            while True:
                await ws.recv()
    assert ws.close_code == 1007 and "whole number" in (ws.close_reason or "")
    meta = await wait_meta(r, keys, "pf", "failed")
    assert "whole number" in meta.error


@pytest.mark.parametrize(("query", "first", "code", "words"), [
    ("format=u8", None, 1003, "unknown sample format"),
    ("rate=4000", None, 1003, "outside"),
    ("channels=3", None, 1003, "channels"),
    ("", "hello", 1003, "neither"),
    ("vendor=nosuchvendor", b"\0\0\0\0", 1008, "nosuchvendor"),
])
async def test_bad_configuration_closes_and_creates_nothing(
        gateway: Running, r: aioredis.Redis, keys: Keys, query: str, first: str | bytes | None,
        code: int, words: str) -> None:
    async with connect(gateway.url("raw", f"key={KEY}&session=bc&{query}")) as ws:
        with pytest.raises(ConnectionClosed):
            if first is not None:
                await ws.send(first)
            await ws.recv()
    assert ws.close_code == code and words in (ws.close_reason or ""), ws.close_reason
    assert not await r.exists(keys.meta("bc"))


async def test_nan_and_late_config_fail_the_session(gateway: Running, r: aioredis.Redis,
                                                    keys: Keys) -> None:
    for sid, bad, code in (("nan", np.array([np.nan], "<f4").tobytes(), 1007),
                           ("late", '{"rate": 8000}', 1008)):
        async with connect(gateway.url("raw", f"key={KEY}&session={sid}")) as ws:
            await ws.send(b"\0" * 400)
            await ws.send(bad)
            with pytest.raises(ConnectionClosed):
                while True:
                    await ws.recv()
        assert ws.close_code == code
        assert (await wait_meta(r, keys, sid, "failed")).error


async def test_unknown_path_is_404(gateway: Running) -> None:
    with pytest.raises(InvalidStatus) as e:
        async with connect(f"ws://127.0.0.1:{gateway.port}/v1/ingest/nope?key={KEY}"):
            pass
    assert e.value.response.status_code == 404


async def test_failing_a_session_a_worker_drives_sticks(gateway: Running,
                                                       wm_worker: WatermarkEmulator,
                                                       r: aioredis.Redis, keys: Keys) -> None:
    pcm = watermark_pcm(20)
    url = gateway.url("raw", f"key={KEY}&session=fw&format=s16&vendor=voxq-ws")
    async with connect(url) as ws:
        for i in range(0, len(pcm), 3200):
            await ws.send(pcm[i:i + 3200])
        await wait_meta(r, keys, "fw", "active")  # a worker owns it now
        await ws.send(b"\0" * 3)  # half a sample
        with pytest.raises(ConnectionClosed):
            while True:
                await ws.recv()
    meta = await wait_meta(r, keys, "fw", "failed")
    assert "whole number" in meta.error
    await asyncio.sleep(5)  # past the idle timeout: the fenced owner wrote no `abandoned` over it
    after = await wait_meta(r, keys, "fw", "failed")
    assert after.error == meta.error
