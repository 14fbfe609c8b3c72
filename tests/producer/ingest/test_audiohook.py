"""`/v1/ingest/audiohook` against the strict AudioHook client emulator and a real Redis: open →
opened, ping → pong, pause and discarded audio as silence, close → closed once durable, probe
sessions, the API key and message signature, and protocol violations."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator

import numpy as np
import pytest
import redis.asyncio as aioredis
from ingesttest_support import AH_KEY, AH_SECRET, Running, gateway_settings, pcm_of, read_audio, running, wait_meta
from pydantic import SecretStr
from websockets.exceptions import ConnectionClosed, InvalidStatus

from api.transcript_formats import CHANNEL_LABELS
from producer.ingest.twilio_protocol import mulaw_to_s16
from tests.conftest import SAMPLE
from tests.emulators.audiohook_client import (
    MONO_PCMU,
    PROBE_CONVERSATION,
    STEREO_PCMU,
    AudioHookClient,
    sign,
)
from tests.emulators.twilio_media import ulaw_encode
from tests.support import load_pcm
from voxq.keys import Keys
from voxq.records import Transcript
from voxq.sessions import read_finals
from voxq.settings import Settings
from workers.transcriber import Transcriber

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def ah(settings: Settings) -> AsyncIterator[Running]:
    s = gateway_settings(settings, audiohook_api_key=SecretStr(AH_KEY),
                         audiohook_client_secret=SecretStr(AH_SECRET))
    async with running(s) as g:
        yield g


def client(g: Running, **kw: object) -> AudioHookClient:
    return AudioHookClient(g.url("audiohook"), api_key=AH_KEY, client_secret=AH_SECRET, **kw)  # type: ignore[arg-type]


def stereo_pcmu(ext: np.ndarray, internal: np.ndarray) -> bytes:
    """Interleaved PCMU, external first."""
    a = np.frombuffer(ulaw_encode(ext.astype("<i2").tobytes()), np.uint8)
    b = np.frombuffer(ulaw_encode(internal.astype("<i2").tobytes()), np.uint8)
    return np.column_stack([a, b]).tobytes()


async def test_session_with_pause_discard_and_close(ah: Running, r: aioredis.Redis,
                                                    keys: Keys) -> None:
    c = await client(ah).connect()
    opened = await c.open()
    assert opened["type"] == "opened" and c.opened == STEREO_PCMU  # stereo chosen over mono
    assert await r.exists(keys.meta(c.session_id))  # the session exists once opened is sent
    ext = (np.sin(np.arange(4000) / 3) * 9000)
    internal = (np.cos(np.arange(4000) / 7) * 5000)
    wire = stereo_pcmu(ext, internal)
    for i in range(0, 4000 * 2, 1600):  # 100 ms frames
        await c.audio(wire[i:i + 1600])
    assert (await c.ping())["type"] == "pong"
    await c.pause(0.3)
    await c.audio(wire[:1600])
    await c.discarded(0.2)
    await c.audio(wire[1600:3200])
    closed = await c.close()
    assert closed["type"] == "closed"
    # closed means durable: the whole stream, eos included, is already in Redis
    chunks = await read_audio(r, keys, c.session_id)
    pcm = np.frombuffer(pcm_of(chunks), "<i2").reshape(-1, 2)
    dec = mulaw_to_s16(np.frombuffer(wire, np.uint8)).reshape(-1, 2)
    want = np.concatenate([dec, np.zeros((2400, 2), "<i2"), dec[:800],
                           np.zeros((1600, 2), "<i2"), dec[800:1600]])
    assert (pcm[:, 0] == want[:, 1]).all()  # channel 0: internal = agent
    assert (pcm[:, 1] == want[:, 0]).all()  # channel 1: external = customer
    meta = await r.hgetall(keys.meta(c.session_id))
    assert meta[b"channels"] == b"2" and meta[b"rate"] == b"8000"
    assert json.loads(meta[b"metadata"])["conversationId"] == c.conversation_id


async def test_opened_answers_at_once_and_mono_works(ah: Running, r: aioredis.Redis,
                                                     keys: Keys) -> None:
    c = await client(ah, offers=[MONO_PCMU]).connect()
    assert (await c.open())["type"] == "opened"
    await c.audio(ulaw_encode(bytes(1600)))
    assert (await c.close())["type"] == "closed"
    assert (await r.hget(keys.meta(c.session_id), "channels")) == b"1"


async def test_probe_creates_nothing(ah: Running, r: aioredis.Redis, keys: Keys) -> None:
    c = await client(ah, conversation_id=PROBE_CONVERSATION).connect()
    assert (await c.open())["type"] == "opened"
    await c.audio(bytes(1600))
    assert (await c.close())["type"] == "closed"
    assert not await r.exists(keys.meta(c.session_id))
    assert await r.xlen(keys.sessions) == 0


@pytest.mark.parametrize("bad", ["key", "signature", "unsigned", "expired", "replay"])
async def test_bad_credentials_are_401(ah: Running, r: aioredis.Redis, keys: Keys,
                                       bad: str) -> None:
    c = client(ah)
    if bad == "key":
        c.api_key = "wrong"
    elif bad == "signature":
        c.client_secret = "d3Jvbmctc2VjcmV0"
    elif bad == "unsigned":
        c.client_secret = None
    elif bad in ("expired", "replay"):
        h = {"Audiohook-Organization-Id": c.organization_id,
             "Audiohook-Correlation-Id": c.correlation_id,
             "Audiohook-Session-Id": c.session_id, "X-API-KEY": AH_KEY}
        created = int(time.time()) - (600 if bad == "expired" else 0)
        c.signature_override = sign(h, "/v1/ingest/audiohook", f"127.0.0.1:{ah.port}", AH_KEY,
                                    AH_SECRET, nonce="n-" + bad, created=created)
        if bad == "replay":
            await c.connect()
            assert c.ws is not None
            await c.ws.close()
    with pytest.raises(InvalidStatus) as e:
        await c.connect()
    assert e.value.response.status_code == 401
    assert AH_KEY.encode() not in e.value.response.body


async def expect_disconnect(c: AudioHookClient) -> dict[str, object]:
    d = await c.receive()
    assert d["type"] == "disconnect" and d["parameters"]["reason"] == "error"  # type: ignore[index]
    assert c.ws is not None
    with pytest.raises(ConnectionClosed):
        await c.ws.recv()
    return d


async def test_audio_before_open_disconnects(ah: Running) -> None:
    c = await client(ah).connect()
    assert c.ws is not None
    await c.ws.send(bytes(1600))
    d = await expect_disconnect(c)
    assert "before opened" in d["parameters"]["info"]  # type: ignore[index]


@pytest.mark.parametrize("violation", ["seq", "serverseq", "id", "type", "half-sample"])
async def test_protocol_violations_fail_the_session(ah: Running, r: aioredis.Redis, keys: Keys,
                                                    violation: str) -> None:
    c = await client(ah).connect()
    await c.open()
    assert c.ws is not None
    msg = {"version": "2", "id": c.session_id, "type": "ping", "seq": c.seq + 1,
           "serverseq": c.server_seq, "position": "PT0S", "parameters": {}}
    if violation == "seq":
        msg["seq"] = c.seq + 2
    elif violation == "serverseq":
        msg["serverseq"] = c.server_seq + 5
    elif violation == "id":
        msg["id"] = str(uuid.uuid4())
    elif violation == "type":
        msg["type"] = "dance"
    if violation == "half-sample":
        await c.ws.send(bytes(1601))
    else:
        await c.ws.send(json.dumps(msg))
    await expect_disconnect(c)
    meta = await wait_meta(r, keys, c.session_id, "failed")
    assert meta.error


async def test_dropped_connection_keeps_what_was_received(ah: Running, r: aioredis.Redis,
                                                          keys: Keys) -> None:
    c = await client(ah).connect()
    await c.open()
    for _ in range(5):
        await c.audio(bytes(1600))
    assert (await c.ping())["type"] == "pong"  # everything before the ping was read
    assert c.ws is not None
    c.ws.transport.abort()
    async with asyncio.timeout(20):
        while len(await read_audio(r, keys, c.session_id)) < 5:
            await asyncio.sleep(0.05)
    chunks = await read_audio(r, keys, c.session_id)
    assert not any(ch.eos for ch in chunks)  # no end of stream: the idle timeout ends it
    assert sum(len(ch.pcm) for ch in chunks) == 5 * 800 * 4


# --- the transcript labels agent and customer --------------------------------------------------

@pytest.fixture
async def worker(settings: Settings) -> AsyncIterator[Transcriber]:
    assert settings.redis_url
    w = Transcriber(settings.model_copy(update={"claim_timeout_seconds": 2.0}),
                    settings.redis_url, name="w-audiohook")
    stop = asyncio.Event()
    task = asyncio.create_task(w.run(stop))
    try:
        yield w
    finally:
        stop.set()
        async with asyncio.timeout(30):
            await task


@pytest.mark.timeout(240)
async def test_transcript_labels_agent_and_customer(ah: Running, worker: Transcriber,
                                                    r: aioredis.Redis, keys: Keys) -> None:
    speech = np.frombuffer(load_pcm(SAMPLE, rate=8000), "<i2")
    half = len(speech) // 2
    silence = np.zeros(half, "<i2")
    ext = np.concatenate([speech[:half], silence])            # the customer speaks first
    internal = np.concatenate([silence, speech[half:2 * half]])  # then the agent
    wire = stereo_pcmu(ext, internal)
    c = await client(ah).connect()
    await c.open()
    for i in range(0, len(wire), 1600):
        await c.audio(wire[i:i + 1600])
    assert (await c.close())["type"] == "closed"
    meta = await wait_meta(r, keys, c.session_id, "finished", timeout=200)
    assert meta.channels == 2
    finals = [t for _, t in await read_finals(r, keys, c.session_id)]
    by_label: dict[str, list[Transcript]] = {}
    for t in finals:
        by_label.setdefault(CHANNEL_LABELS[t.channel], []).append(t)
    assert by_label.get("customer") and by_label.get("agent"), finals
    mid = half / 8000
    assert max(t.end for t in by_label["customer"]) <= mid + 0.5
    assert min(t.start for t in by_label["agent"]) >= mid - 0.5
