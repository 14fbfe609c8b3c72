"""The `deepgram` recognizer against the strict Deepgram emulator: Results to partials and finals,
multichannel, diarization, KeepAlive through silence, Finalize / CloseStream, every error path,
and whole sessions through a real worker, Redis, `voxq produce` and the API."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from api.app import create_app
from tests.emulators.common import interleave, silence, tone
from tests.emulators.deepgram import API_KEY, DATA0000, JWT, NET0000, NET0001, DeepgramEmulator, Fault
from tests.emulators.tone_words import Script, drive, formatted, render, utterances
from tests.support import create, publish, run_voxq, wait_status
from voxq.aio import within
from voxq.keys import Keys
from voxq.records import Status, Transcript
from voxq.sessions import read_finals
from voxq.settings import Settings
from workers.transcriber import Transcriber
from workers.vendors.base import VendorAuthError, VendorError, VendorRejected, VendorRetryable
from workers.vendors.deepgram.stt import DeepgramRecognizer
from workers.vendors.registry import create_recognizer

RATE = 16000
SCRIPT: Script = [(0.3, 500, 0.4), (0.6, 1200, 0.3), (0.2, 700, 0.3), (0.7, 2000, 0.4)]
EP = 300  # endpointing the tests ask for, ms


def expected(words: list[tuple[str, float, float]], gap: float = EP / 1000
             ) -> list[tuple[str, float, float]]:
    return [(formatted([w[0] for w in u]), u[0][1], u[-1][2]) for u in utterances(words, gap)]


def finals(results: list[Transcript], channel: int | None = None) -> list[tuple[str, float, float]]:
    return [(t.text, t.start, t.end) for t in results
            if t.is_final and (channel is None or t.channel == channel)]


@pytest.fixture
async def emu() -> AsyncIterator[DeepgramEmulator]:
    """A running Deepgram emulator; tests tweak ``config`` and ``faults``."""
    async with DeepgramEmulator() as emulator:
        yield emulator


def recognizer(emu: DeepgramEmulator, channels: int = 1, settings: Settings | None = None,
               language: str = "en-US", **options: Any) -> DeepgramRecognizer:
    s = settings or emu.configure(Settings(redis_url="redis://unused"))
    rec = create_recognizer("deepgram", "direct", language, RATE, channels, options, s)
    assert isinstance(rec, DeepgramRecognizer)
    return rec


async def test_results_map_to_partials_and_finals(emu: DeepgramEmulator) -> None:
    pcm, words = render(SCRIPT)
    got = await drive(recognizer(emu, endpointing=EP), pcm)
    assert finals(got) == expected(words)
    assert [[w.text, w.start, w.end, w.confidence] for t in got if t.is_final for w in t.words] == [
        ["Tone500.", 0.3, 0.7, 0.75], ["Tone1200", 1.3, 1.6, 0.75], ["tone700.", 1.8, 2.1, 0.75],
        ["Tone2000.", 2.8, 3.2, 0.75]]
    partials = [t for t in got if not t.is_final]
    assert partials[0].text == "Tone500" and (partials[0].start, partials[0].end) == (0.3, 0.4)
    s = emu.streams[0]
    assert s.params == [("model", "nova-3"), ("language", "en-US"), ("encoding", "linear16"),
                        ("sample_rate", "16000"), ("channels", "1"), ("interim_results", "true"),
                        ("punctuate", "true"), ("endpointing", "300")]
    assert s.auth == "token" and s.close == (1000, "") and s.too_fast  # unpaced on purpose
    assert bytes(s.audio) == pcm and [m["type"] for m in s.received] == ["Finalize", "CloseStream"]
    assert s.sent[-1]["type"] == "Metadata"


async def test_default_endpointing_and_plain_words(emu: DeepgramEmulator) -> None:
    pcm, words = render(SCRIPT)
    got = await drive(recognizer(emu, punctuate=False, interim_results=False), pcm)
    assert finals(got) == [(n, s, e) for n, s, e in words]  # 10 ms endpointing: a final per word
    assert all(t.is_final for t in got)


async def test_multichannel_and_diarization(emu: DeepgramEmulator) -> None:
    left, lw = render([(0.2, 600, 0.4), (0.8, 900, 0.3)])
    right, rw = render([(0.7, 1500, 0.5), (0.1, 400, 0.2)])
    got = await drive(recognizer(emu, channels=2, endpointing=EP, diarize=True,
                                 diarize_model="latest"), interleave(left, right), 0.2)
    assert finals(got, 0) == expected(lw) and finals(got, 1) == expected(rw)
    assert emu.streams[0].query["multichannel"] == "true" and len(emu.streams) == 1
    right_final = next(t for t in got if t.is_final and t.channel == 1)
    assert right_final.speaker is None and [w.speaker for w in right_final.words] == ["1", "0"]
    assert [t.speaker for t in got if t.is_final and t.channel == 0] == ["0", "0"]


async def test_list_and_flag_options_reach_the_query(emu: DeepgramEmulator) -> None:
    await drive(recognizer(emu, language="en-GB", model="nova-3-general", smart_format=True,
                           endpointing=False, utterance_end_ms=1000, vad_events=True,
                           keyterm=["voxq", "Redis"], keywords="foo:2,bar", redact="pci,ssn",
                           numerals=False, tag="calls"), render(SCRIPT[:1], tail=1.2)[0])
    q = emu.streams[0].params
    assert ("endpointing", "false") in q and ("smart_format", "true") in q
    assert [v for k, v in q if k == "keyterm"] == ["voxq", "Redis"]
    assert [v for k, v in q if k == "keywords"] == ["foo:2", "bar"]
    assert [v for k, v in q if k == "redact"] == ["pci", "ssn"]
    assert ("numerals", "false") in q and ("tag", "calls") in q
    kinds = [m["type"] for m in emu.streams[0].sent]
    assert "SpeechStarted" in kinds and "UtteranceEnd" in kinds


async def test_finalize_flushes_mid_session(emu: DeepgramEmulator) -> None:
    rec = recognizer(emu, endpointing=EP)
    out: list[Transcript] = []
    await rec.start()
    task = asyncio.create_task(_collect(rec, out))
    await rec.send(tone(800, 0.2))
    await rec.finalize()
    await rec.send(tone(800, 0.2) + silence(0.2))
    await rec.finish()
    await within(task, 10)
    await rec.close()
    assert finals(out) == [("Tone800.", 0.0, 0.2), ("Tone800.", 0.2, 0.4)]
    assert emu.streams[0].finals[0]["from_finalize"] is True


async def _collect(rec: DeepgramRecognizer, out: list[Transcript]) -> None:
    async for t in rec.results():
        out.append(t)


# --- keep-alive ---------------------------------------------------------------------------------


async def _paused(rec: DeepgramRecognizer, before: float, pause: float) -> list[Transcript]:
    out: list[Transcript] = []
    await rec.start()
    task = asyncio.create_task(_collect(rec, out))
    try:
        await asyncio.sleep(before)
        a, _ = render([(0.2, 500, 0.3)], tail=0.4)
        await rec.send(a)
        await asyncio.sleep(pause)
        await rec.send(render([(0.1, 900, 0.3)], tail=0.4)[0])
        await rec.finish()
        await within(task, 10)
    finally:
        task.cancel()
        await rec.close()
    return out


async def test_keepalive_through_silence(emu: DeepgramEmulator) -> None:
    emu.config.net0001_timeout = 0.6
    rec = recognizer(emu, endpointing=EP)
    rec.keepalive_after = 0.2
    out = await _paused(rec, before=0.0, pause=2.0)
    s = emu.streams[0]
    assert s.close == (1000, "") and len(emu.streams) == 1
    assert sum(1 for m in s.received if m["type"] == "KeepAlive") >= 5
    assert finals(out) == [("Tone500.", 0.2, 0.5), ("Tone900.", 1.0, 1.3)]


async def test_silence_before_any_audio_is_bridged_and_removed_from_times(
        emu: DeepgramEmulator) -> None:
    """KeepAlive alone does not hold a stream that never had audio: 100 ms of silence first."""
    emu.config.net0001_timeout = 0.6
    rec = recognizer(emu, endpointing=EP)
    rec.keepalive_after = 0.2
    out = await _paused(rec, before=1.2, pause=0.0)
    s = emu.streams[0]
    assert s.close == (1000, "") and s.frame_sizes[0] == 3200 and not any(s.audio[:3200])
    assert finals(out) == [("Tone500.", 0.2, 0.5), ("Tone900.", 1.0, 1.3)]


async def test_without_keepalive_net0001_is_retryable(emu: DeepgramEmulator) -> None:
    emu.config.net0001_timeout = 0.5
    rec = recognizer(emu)
    rec.keepalive_after = 60
    with pytest.raises(VendorRetryable) as info:
        await _paused(rec, before=0.0, pause=1.5)
    assert str(info.value) == f"deepgram: 1011: {NET0001}"
    assert emu.streams[0].sent[-1]["type"] == "Metadata"


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fault", "cls", "text"), [
    (Fault("close", 3, 1011, NET0000), VendorRetryable, f"1011: {NET0000}"),
    (Fault("close", 3, 1008, DATA0000), VendorRejected, f"1008: {DATA0000}"),
    (Fault("abort", 3), VendorRetryable, "1006: the connection dropped without a close frame"),
    (Fault("close", 3, 1000, ""), VendorRetryable, "1000: the service "),
    (Fault("http", status=503), VendorRetryable,
     f"503: HTTP 503 at the WebSocket handshake: SERVICE_UNAVAILABLE: {NET0000} (dg-request-id "),
    (Fault("http", status=429, err_code="TOO_MANY_REQUESTS", message="Too many requests."),
     VendorRetryable, "429: HTTP 429 at the WebSocket handshake: TOO_MANY_REQUESTS"),
    (Fault("http", status=402, err_code="ASR_PAYMENT_REQUIRED", message="No credits."),
     VendorRejected, "402: HTTP 402 at the WebSocket handshake: ASR_PAYMENT_REQUIRED: No credits."),
])
async def test_faults_map_to_clear_errors(emu: DeepgramEmulator, fault: Fault,
                                          cls: type[VendorError], text: str) -> None:
    emu.faults.append(fault)
    with pytest.raises(VendorError) as info:
        await drive(recognizer(emu), render(SCRIPT)[0])
    assert type(info.value) is cls and str(info.value).startswith(f"deepgram: {text}")


async def test_auth(emu: DeepgramEmulator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    bad = emu.configure(Settings(redis_url="redis://unused"), deepgram_api_key=SecretStr("wrong"))
    with pytest.raises(VendorAuthError) as info:
        await recognizer(emu, settings=bad).start()
    rid = emu.streams[-1].request_id
    assert str(info.value) == ("deepgram: 401: HTTP 401 at the WebSocket handshake: INVALID_AUTH: "
                               f"Invalid credentials. (dg-request-id {rid})")
    none = emu.configure(Settings(redis_url="redis://unused"), deepgram_api_key=None)
    with pytest.raises(VendorAuthError, match="set DEEPGRAM_API_KEY"):
        await recognizer(emu, settings=none).start()
    jwt = emu.configure(Settings(redis_url="redis://unused"), deepgram_api_key=SecretStr("wrong"),
                        deepgram_access_token=SecretStr(JWT))
    pcm, words = render(SCRIPT[:1])
    assert finals(await drive(recognizer(emu, settings=jwt, endpointing=EP), pcm)) == expected(words)
    assert emu.streams[-1].auth == "bearer"
    await drive(recognizer(emu), pcm)
    text = "\n".join(r.getMessage() for r in caplog.records
                     if not r.name.startswith("websockets.server"))
    assert "GET /v1/listen?model=nova-3" in text and "Authorization: ***" in text
    assert API_KEY not in text and JWT not in text and "wrong" not in text


async def test_failures_reach_send_only_after_results(emu: DeepgramEmulator) -> None:
    """The worker writes a final before it asks for the next result; send() must not report the
    failure first (the worker would cancel the write of the last final)."""
    emu.faults.append(Fault("close", 8, 1011, NET0000))
    rec = recognizer(emu, endpointing=EP)
    await rec.start()
    order: list[str] = []

    async def consume() -> None:
        try:
            async for t in rec.results():
                if t.is_final:
                    order.append(t.text)
                    await asyncio.sleep(0.3)  # a slow write
        except VendorRetryable:
            order.append("results raised")

    task = asyncio.create_task(consume())
    pcm, _ = render([(0.1, 500, 0.3)], tail=1.0)
    with pytest.raises(VendorRetryable):
        for i in range(0, len(pcm), 3200):
            await rec.send(pcm[i:i + 3200])
            await asyncio.sleep(0.01)
    order.append("send raised")
    await task
    await rec.close()
    assert order == ["Tone500.", "results raised", "send raised"]


# --- whole sessions through a worker --------------------------------------------------------------


@pytest.fixture
async def worker(settings: Settings, emu: DeepgramEmulator) -> AsyncIterator[Transcriber]:
    """An in-process worker whose deepgram sessions go to the emulator."""
    assert settings.redis_url
    w = Transcriber(emu.configure(settings, claim_timeout_seconds=2.0), settings.redis_url,
                    name="w-dg")
    stop = asyncio.Event()
    task = asyncio.create_task(w.run(stop))
    yield w
    stop.set()
    await within(task, 30)


def texts(rows: list[tuple[str, Transcript]], channel: int | None = None
          ) -> list[tuple[str, float, float]]:
    return [(t.text, t.start, t.end) for _, t in rows if channel is None or t.channel == channel]


async def test_sessions_retry_and_fail_through_the_worker(
        worker: Transcriber, r: aioredis.Redis, keys: Keys, emu: DeepgramEmulator) -> None:
    left, lw = render(SCRIPT[:2])
    right, rw = render(SCRIPT[2:])
    emu.faults.append(Fault("abort", 12))
    await create(r, keys, "st", vendor="deepgram", channels=2, options={"endpointing": EP})
    await publish(r, keys, "st", interleave(left, right), channels=2)
    meta = await wait_status(r, keys, "st", timeout=60)
    assert meta.status is Status.FINISHED, meta.error
    rows = await read_finals(r, keys, "st")
    assert texts(rows, 0) == expected(lw) and texts(rows, 1) == expected(rw)
    assert len(emu.streams) == 2 and not any(s.too_fast for s in emu.streams)
    emu.faults.append(Fault("close", 4, 1008, DATA0000))
    await create(r, keys, "bad", vendor="deepgram")
    await publish(r, keys, "bad", left)
    meta = await wait_status(r, keys, "bad", timeout=60)
    assert meta.status is Status.FAILED and meta.error == f"deepgram: 1008: {DATA0000}"
    assert len(emu.streams) == 3


async def test_produce_cli_worker_and_api(worker: Transcriber, r: aioredis.Redis, keys: Keys,
                                          settings: Settings, env: dict[str, str],
                                          emu: DeepgramEmulator, tmp_path: Path) -> None:
    """`python -m voxq produce FILE --vendor deepgram --fast` → worker → emulator → API."""
    import httpx
    import soundfile

    pcm, words = render(SCRIPT)
    wav = tmp_path / "tones.wav"
    soundfile.write(wav, np.frombuffer(pcm, "<i2"), RATE, subtype="PCM_16")
    child = {**env, "VOXQ_DEEPGRAM_URL": emu.url, "DEEPGRAM_API_KEY": API_KEY}
    proc = await run_voxq(
        "produce", str(wav), "--vendor", "deepgram", "--session",
        "cli", "--fast", "--no-progress", "--option", f"endpointing={EP}", env=child)
    err = proc.stderr
    assert proc.returncode == 0, err.decode()
    meta = await wait_status(r, keys, "cli", timeout=60)
    assert meta.status is Status.FINISHED, meta.error
    app = create_app(settings, settings.redis_url or "")
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://api") as client:
            doc = (await client.get("/v1/sessions/cli/transcript")).json()
    assert doc["status"] == "finished"
    assert [(s["text"], s["start"], s["end"]) for s in doc["segments"]] == expected(words)
    bad = await run_voxq(
        "produce", str(wav), "--vendor", "deepgram", "--session",
        "cli-bad", "--fast", "--no-progress", "--option", "utterance_end_ms=1000",
        "--option", "interim_results=false", env=child)
    err = bad.stderr
    assert bad.returncode == 2 and "utterance_end_ms needs interim_results" in err.decode()
    assert not await r.exists(keys.meta("cli-bad"))
