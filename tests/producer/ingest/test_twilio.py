"""`/v1/ingest/twilio` against the strict Twilio client emulator and a real Redis: both tracks
become a two-channel session aligned on timestamps, listen and bidirectional modes, the request
signature, custom parameters, and bad input."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import numpy as np
import pytest
import redis.asyncio as aioredis
from ingesttest_support import (
    KEY,
    TWILIO_TOKEN,
    Running,
    gateway_settings,
    pcm_of,
    running,
    wait_eos,
    wait_meta,
)
from pydantic import SecretStr
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from api.transcript_formats import CHANNEL_LABELS
from producer.ingest.twilio_protocol import mulaw_to_s16
from tests.conftest import SAMPLE
from tests.emulators.twilio_media import FRAME_BYTES, TwilioCall, ulaw_encode
from tests.support import load_pcm
from voxq.keys import Keys
from voxq.records import Status, Transcript
from voxq.sessions import read_finals
from voxq.settings import Settings
from workers.transcriber import Transcriber

pytestmark = pytest.mark.timeout(90)
PUBLIC = "wss://voice.example.com"


@pytest.fixture
async def tw(settings: Settings) -> AsyncIterator[Running]:
    """A gateway that checks Twilio's signature against a public URL (as behind a proxy)."""
    s = gateway_settings(settings, twilio_auth_token=SecretStr(TWILIO_TOKEN),
                         ingest_public_url=PUBLIC)
    async with running(s) as g:
        yield g


def call(g: Running, **kw: object) -> TwilioCall:
    url = g.url("twilio")
    return TwilioCall(url, auth_token=TWILIO_TOKEN, public_url=PUBLIC + "/v1/ingest/twilio",
                      speed=25.0, **kw)  # type: ignore[arg-type]


def decoded(pcm: bytes) -> np.ndarray:
    """What μ-law transport makes of s16 audio."""
    return mulaw_to_s16(ulaw_encode(pcm))


def tone(seconds: float, freq: float) -> bytes:
    t = np.arange(int(seconds * 8000)) / 8000
    return (np.sin(2 * np.pi * freq * t) * 12000).astype("<i2").tobytes()


async def test_both_tracks_become_two_aligned_channels(tw: Running, r: aioredis.Redis,
                                                       keys: Keys) -> None:
    inbound, outbound = tone(2.0, 440), tone(1.4, 700)  # the agent's track ends early
    c = call(tw, inbound=inbound, outbound=outbound, custom={"session": "call-1", "agent": "a7"},
             drop={"inbound": {10, 11}, "outbound": {3}})  # lost messages on both tracks
    await c.run()
    assert c.close_code == 1000 and c.received == []  # listen mode: the server sends nothing
    pcm = np.frombuffer(pcm_of(await wait_eos(r, keys, "call-1")), "<i2")
    st = pcm.reshape(-1, 2)
    assert len(st) == 16000
    want_in, want_out = decoded(inbound), decoded(outbound)
    gap_in = slice(9 * FRAME_BYTES, 11 * FRAME_BYTES)   # chunks 10 and 11: 180-220 ms
    gap_out = slice(2 * FRAME_BYTES, 3 * FRAME_BYTES)   # chunk 3
    assert not st[gap_in, 1].any() and not st[gap_out, 0].any()  # gaps are silence
    keep_in = np.ones(16000, bool)
    keep_in[gap_in] = False
    assert (st[keep_in, 1] == want_in[keep_in]).all()          # never shifted
    keep_out = np.ones(len(want_out), bool)
    keep_out[gap_out] = False
    assert (st[:len(want_out)][keep_out, 0] == want_out[keep_out]).all()
    assert not st[len(want_out):, 0].any()                     # padded after the agent stopped
    meta = await r.hgetall(keys.meta("call-1"))
    assert meta[b"channels"] == b"2" and meta[b"rate"] == b"8000"
    assert json.loads(meta[b"metadata"]) == {"agent": "a7", "callSid": c.call_sid,
                                             "streamSid": c.stream_sid}


async def test_bidirectional_inbound_only_is_mono_named_by_call_sid(
        tw: Running, r: aioredis.Redis, keys: Keys) -> None:
    inbound = tone(0.6, 300)
    c = call(tw, inbound=inbound, mode="connect", tracks=("inbound",))
    await c.run()
    assert c.close_code == 1000
    pcm = np.frombuffer(pcm_of(await wait_eos(r, keys, c.call_sid)), "<i2")
    assert (pcm == decoded(inbound)).all()


@pytest.mark.parametrize("signature", ["", "bm90IHRoZSBzaWduYXR1cmU="])
async def test_bad_or_missing_signature_is_403(tw: Running, r: aioredis.Redis, keys: Keys,
                                               signature: str) -> None:
    c = call(tw, inbound=tone(0.1, 300), custom={"session": "unsigned"})
    if signature:
        c.signature = signature
    else:
        c.auth_token = None
    with pytest.raises(InvalidStatus) as e:
        await c.run()
    assert e.value.response.status_code == 403
    assert not await r.exists(keys.meta("unsigned"))


async def test_signature_of_another_url_is_403(tw: Running) -> None:
    c = call(tw, inbound=tone(0.1, 300))
    c.public_url = "wss://attacker.example.com/v1/ingest/twilio"
    with pytest.raises(InvalidStatus) as e:
        await c.run()
    assert e.value.response.status_code == 403


async def test_without_a_twilio_token_the_gateway_key_is_required(
        gateway: Running, r: aioredis.Redis, keys: Keys) -> None:
    c = TwilioCall(gateway.url("twilio"), inbound=tone(0.2, 300), tracks=("inbound",),
                   custom={"session": "keyed"}, speed=25.0)
    with pytest.raises(InvalidStatus):
        await c.run()
    async with connect(gateway.url("twilio"),
                       additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
    assert not await r.exists(keys.meta("keyed"))


async def raw_twilio(g: Running, messages: list[dict[str, object]]) -> tuple[int | None, str]:
    from tests.emulators.twilio_media import sign_url

    sig = sign_url(TWILIO_TOKEN, PUBLIC + "/v1/ingest/twilio")
    async with connect(g.url("twilio"), additional_headers={"x-twilio-signature": sig}) as ws:
        with pytest.raises(ConnectionClosed):
            for m in messages:
                await ws.send(json.dumps(m))
            await ws.recv()
    return ws.close_code, ws.close_reason or ""


START = {"event": "start", "sequenceNumber": "1", "streamSid": "MZ1", "start": {
    "streamSid": "MZ1", "accountSid": "AC1", "callSid": "CAbad", "tracks": ["inbound"],
    "customParameters": {}, "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                            "channels": 1}}}


def media(seq: int, ts: int, payload: str = "//////////8=") -> dict[str, object]:
    return {"event": "media", "sequenceNumber": str(seq), "streamSid": "MZ1",
            "media": {"track": "inbound", "chunk": str(seq - 1), "timestamp": str(ts),
                      "payload": payload}}


async def test_media_before_start_closes_with_a_reason(tw: Running, r: aioredis.Redis,
                                                       keys: Keys) -> None:
    code, reason = await raw_twilio(tw, [media(1, 0)])
    assert code == 1008 and "before start" in reason
    assert not await r.exists(keys.meta("CAbad"))


@pytest.mark.parametrize(("bad", "code", "words"), [
    (media(2, 0, "not base64!"), 1007, "base64"),
    (media(5, 0) | {"sequenceNumber": "1"}, 1007, "sequenceNumber"),
    ({"event": "bogus"}, 1003, "unknown event"),
    (media(2, 0) | {"streamSid": "MZother"}, 1007, "streamSid"),
])
async def test_bad_messages_fail_the_session(tw: Running, r: aioredis.Redis, keys: Keys,
                                             bad: dict[str, object], code: int,
                                             words: str) -> None:
    got, reason = await raw_twilio(tw, [START, bad])
    assert got == code and words in reason, reason
    meta = await wait_meta(r, keys, "CAbad", "failed")
    assert words in meta.error


async def test_unsupported_media_format_is_refused(tw: Running, r: aioredis.Redis,
                                                   keys: Keys) -> None:
    start = json.loads(json.dumps(START))
    start["start"]["mediaFormat"]["encoding"] = "audio/x-l16"
    code, reason = await raw_twilio(tw, [start])
    assert code == 1003 and "media format" in reason
    assert not await r.exists(keys.meta("CAbad"))


# --- the transcript labels agent and customer --------------------------------------------------

@pytest.fixture
async def worker(settings: Settings) -> AsyncIterator[Transcriber]:
    assert settings.redis_url
    w = Transcriber(settings.model_copy(update={"claim_timeout_seconds": 2.0}),
                    settings.redis_url, name="w-twilio")
    stop = asyncio.Event()
    task = asyncio.create_task(w.run(stop))
    try:
        yield w
    finally:
        stop.set()
        async with asyncio.timeout(30):
            await task


@pytest.mark.timeout(240)
async def test_call_transcript_labels_agent_and_customer(
        tw: Running, worker: Transcriber, r: aioredis.Redis, keys: Keys) -> None:
    speech = load_pcm(SAMPLE, rate=8000)
    half = len(speech) // 2 // 2 * 2
    silence = bytes(half)
    # the customer speaks first, then the agent
    c = call(tw, inbound=speech[:half] + silence, outbound=silence + speech[half:],
             custom={"session": "labelled"})
    await c.run()
    meta = await wait_meta(r, keys, "labelled", Status.FINISHED.value, timeout=200)
    assert meta.channels == 2
    finals = [t for _, t in await read_finals(r, keys, "labelled")]
    by_label: dict[str, list[Transcript]] = {}
    for t in finals:
        by_label.setdefault(CHANNEL_LABELS[t.channel], []).append(t)
    assert by_label.get("customer") and by_label.get("agent"), finals
    mid = half / 2 / 8000
    assert max(t.end for t in by_label["customer"]) <= mid + 0.5
    assert min(t.start for t in by_label["agent"]) >= mid - 0.5


async def test_a_call_in_progress_finishes_during_the_drain(tw: Running, r: aioredis.Redis,
                                                            keys: Keys) -> None:
    """SIGTERM's drain stops new handshakes but lets a platform call end by itself."""
    c = call(tw, inbound=tone(1.0, 300), tracks=("inbound",), custom={"session": "drained"})
    c.speed = 2.0  # half a second of streaming
    running_call = asyncio.create_task(c.run())
    async with asyncio.timeout(30):
        while not any(tw.gw.connections.values()):  # the call is connected
            await asyncio.sleep(0.01)
    drain = asyncio.create_task(tw.server.drain(10.0))
    await asyncio.sleep(0.1)
    with pytest.raises(OSError):  # no new calls meanwhile: the listening socket is closed
        await call(tw, inbound=tone(0.1, 300), custom={"session": "late"}).run()
    async with asyncio.timeout(30):
        await running_call
        await drain
    assert c.close_code == 1000
    assert len(pcm_of(await wait_eos(r, keys, "drained"))) == 8000 * 2
