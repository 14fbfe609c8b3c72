"""`/v1/ingest/jambonz` as jambonz' listen verb uses it: subprotocol audio.jambonz.org, a JSON
preamble, binary L16 (mono or stereo), and a normal close at the end of the call."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import redis.asyncio as aioredis
from ingesttest_support import KEY, Running, pcm_of, read_audio, wait_eos, wait_meta
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from producer.ingest.core import Rejected
from producer.ingest.jambonz_protocol import parse_preamble
from voxq.keys import Keys

pytestmark = pytest.mark.timeout(60)
SUB = [Subprotocol("audio.jambonz.org")]


def preamble(**over: object) -> str:
    d = {"callSid": "jz-1", "from": "+1555", "to": "+1666", "direction": "inbound",
         "sampleRate": 16000, "mixType": "stereo", "metadata": {"session": "jz", "team": "b"}}
    d.update(over)
    return json.dumps(d)


async def test_stereo_call(gateway: Running, r: aioredis.Redis, keys: Keys) -> None:
    pcm = np.arange(-16000, 16000, dtype="<i2").tobytes()  # 16000 stereo frames
    async with connect(gateway.url("jambonz", f"key={KEY}"), subprotocols=SUB) as ws:
        assert ws.subprotocol == "audio.jambonz.org"
        await ws.send(preamble())
        for i in range(0, len(pcm), 640 * 2):
            await ws.send(pcm[i:i + 640 * 2])
    assert pcm_of(await wait_eos(r, keys, "jz")) == pcm
    meta = await r.hgetall(keys.meta("jz"))
    assert (meta[b"rate"], meta[b"channels"]) == (b"16000", b"2")
    assert json.loads(meta[b"metadata"]) == {"callSid": "jz-1", "from": "+1555", "to": "+1666",
                                             "direction": "inbound", "team": "b"}


async def test_dropped_call_has_no_end_of_stream(gateway: Running, r: aioredis.Redis,
                                                 keys: Keys) -> None:
    async with connect(gateway.url("jambonz", f"key={KEY}"), subprotocols=SUB) as ws:
        await ws.send(preamble(mixType="mono", metadata={"session": "jzd"}))
        await ws.send(bytes(3200 * 3))
        while len(await read_audio(r, keys, "jzd")) < 3:
            await asyncio.sleep(0.02)
        ws.transport.abort()
    chunks = await read_audio(r, keys, "jzd")
    assert not any(c.eos for c in chunks)


@pytest.mark.parametrize(("first", "code"), [(b"\0\0", 1008), (preamble(sampleRate=11025), 1003),
                                             (preamble(mixType="quad"), 1003), ("[]", 1007)])
async def test_bad_preamble(gateway: Running, r: aioredis.Redis, keys: Keys,
                            first: str | bytes, code: int) -> None:
    async with connect(gateway.url("jambonz", f"key={KEY}"), subprotocols=SUB) as ws:
        await ws.send(first)
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert ws.close_code == code
    assert not await r.exists(keys.meta("jz"))


async def test_partial_frame_fails_the_session(gateway: Running, r: aioredis.Redis,
                                               keys: Keys) -> None:
    async with connect(gateway.url("jambonz", f"key={KEY}"), subprotocols=SUB) as ws:
        await ws.send(preamble(metadata={"session": "jzp"}))
        await ws.send(bytes(6))  # not whole stereo frames
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert ws.close_code == 1007
    assert "whole" in (await wait_meta(r, keys, "jzp", "failed")).error


def test_preamble_defaults() -> None:
    p = parse_preamble(json.dumps({"callSid": "c"}))
    assert (p.session, p.rate, p.channels) == ("c", 8000, 1)
    with pytest.raises(Rejected):
        parse_preamble(json.dumps({"sampleRate": 8000}))
