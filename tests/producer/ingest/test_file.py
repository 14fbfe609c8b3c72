"""`/v1/ingest/file` end to end: an encoded-file client (the file's bytes as they are, in frames
of any size, then Done) for WAV, FLAC, OGG and MP3; the session holds the decoded audio; a file
that is not audio, or stops being decodable, is a clear error."""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest
import redis.asyncio as aioredis
import soundfile as sf
from ingesttest_support import KEY, Running, pcm_of, wait_eos, wait_meta
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import SAMPLE
from voxq.audio import convert, read_file
from voxq.keys import Keys

pytestmark = pytest.mark.timeout(60)


async def send_file(url: str, data: bytes, seed: int = 0) -> tuple[int | None, str]:
    """The encoded-file client: the bytes as they are, in frames of random sizes, then Done."""
    rng = random.Random(seed)
    async with connect(url) as ws:
        i = 0
        while i < len(data):
            n = rng.choice([1, 7, 100, 1000, 4096, 20000])
            await ws.send(data[i:i + n])
            i += n
        await ws.send("Done")
        try:
            while True:
                await ws.recv()
        except ConnectionClosed:
            pass
    return ws.close_code, ws.close_reason or ""


def encoded(fmt: str, subtype: str, x: np.ndarray, rate: int) -> bytes:
    b = io.BytesIO()
    sf.write(b, x, rate, format=fmt, subtype=subtype)
    return b.getvalue()


async def test_flac_sample_is_decoded_exactly(gateway: Running, r: aioredis.Redis,
                                              keys: Keys) -> None:
    code, reason = await send_file(gateway.url("file", f"key={KEY}&session=flac"),
                                   SAMPLE.read_bytes())
    assert code == 1000, reason
    x, rate = read_file(SAMPLE)
    assert pcm_of(await wait_eos(r, keys, "flac")) == convert(x, rate, rate, 1)


@pytest.mark.parametrize(("fmt", "subtype", "rate", "exact"), [
    ("WAV", "PCM_16", 22050, True),
    ("OGG", "VORBIS", 16000, False),
    ("MP3", "MPEG_LAYER_III", 16000, False),
])
async def test_wav_ogg_mp3(gateway: Running, r: aioredis.Redis, keys: Keys, fmt: str,
                           subtype: str, rate: int, exact: bool) -> None:
    t = np.arange(rate * 2) / rate
    x = np.column_stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 660 * t)])
    sid = fmt.lower()
    code, reason = await send_file(gateway.url("file", f"key={KEY}&session={sid}"),
                                   encoded(fmt, subtype, x.astype(np.float32), rate), seed=3)
    assert code == 1000, reason
    meta = await r.hgetall(keys.meta(sid))
    assert (meta[b"rate"], meta[b"channels"]) == (str(rate).encode(), b"2")  # the file's own
    got = np.frombuffer(pcm_of(await wait_eos(r, keys, sid)), "<i2").reshape(-1, 2)
    if exact:
        ref, _ = sf.read(io.BytesIO(encoded(fmt, subtype, x.astype(np.float32), rate)),
                         dtype="float32", always_2d=True)
        want = np.frombuffer(convert(ref, rate, rate, 2), "<i2").reshape(-1, 2)
        assert (got == want).all()
    else:  # lossy codecs: the same length (give or take codec padding) and the same tones
        assert abs(len(got) - len(t)) < rate // 10
        spec = np.abs(np.fft.rfft(got[: rate, 0].astype(float)))
        assert abs(np.argmax(spec) - 440) <= 2


async def test_resampled_to_the_asked_format(gateway: Running, r: aioredis.Redis,
                                             keys: Keys) -> None:
    code, _ = await send_file(gateway.url("file", f"key={KEY}&session=rs&rate=8000&channels=1"),
                              SAMPLE.read_bytes())
    assert code == 1000
    x, rate = read_file(SAMPLE)
    assert pcm_of(await wait_eos(r, keys, "rs")) == convert(x, rate, 8000, 1)


async def test_not_audio_is_refused_and_creates_nothing(gateway: Running, r: aioredis.Redis,
                                                        keys: Keys) -> None:
    code, reason = await send_file(gateway.url("file", f"key={KEY}&session=txt"),
                                   b"this is not an audio file at all" * 10)
    assert code == 1003 and "unknown header" in reason
    assert not await r.exists(keys.meta("txt"))


async def test_corrupt_audio_after_a_good_header_fails_the_session(
        gateway: Running, r: aioredis.Redis, keys: Keys) -> None:
    good = SAMPLE.read_bytes()
    data = good[:20000] + bytes(random.Random(1).randbytes(60000))
    code, reason = await send_file(gateway.url("file", f"key={KEY}&session=bad"), data)
    assert code in (1003, 1007) and "decode" in reason, reason
    meta = await wait_meta(r, keys, "bad", "failed")
    assert "decode" in meta.error


async def test_ready_then_results_shape(gateway: Running) -> None:
    async with connect(gateway.url("file", f"key={KEY}&session=rd")) as ws:
        await ws.send(SAMPLE.read_bytes()[:50000])
        ready = json.loads(await ws.recv())
        assert ready["event"] == "ready" and ready["session"] == "rd"
        await ws.send("Done")
