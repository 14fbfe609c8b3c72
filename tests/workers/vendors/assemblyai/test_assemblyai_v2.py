"""The `assemblyai-v2` (legacy real-time) recognizer against the strict v2 emulator: transcripts,
base64 JSON audio, options, keep-alive silence, tokens, close codes 4000-4104, and whole
sessions through a real worker, Redis and `voxq produce`."""

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

from tests.emulators.assemblyai_v2 import API_KEY, REASONS, AssemblyAIV2Emulator, Fault
from tests.emulators.common import interleave, tone
from tests.emulators.tone_words import Script, drive, formatted, render, utterances
from tests.support import create, publish, run_voxq, wait_status
from voxq.aio import within
from voxq.keys import Keys
from voxq.records import Status, Transcript
from voxq.sessions import read_finals
from voxq.settings import Settings
from workers.transcriber import Transcriber
from workers.vendors.assemblyai.v2.stt import AssemblyAIV2Recognizer
from workers.vendors.base import VendorAuthError, VendorError, VendorRejected, VendorRetryable
from workers.vendors.registry import create_recognizer

RATE = 16000
GAP = 0.7  # the emulator's default end_utterance_silence_threshold
SCRIPT: Script = [(0.3, 500, 0.4), (0.9, 1200, 0.3), (0.3, 700, 0.3), (0.8, 2000, 0.4)]


def expected(words: list[tuple[str, float, float]], gap: float = GAP
             ) -> list[tuple[str, float, float]]:
    return [(formatted([w[0] for w in u]), u[0][1], u[-1][2]) for u in utterances(words, gap)]


def finals(results: list[Transcript], channel: int | None = None) -> list[tuple[str, float, float]]:
    return [(t.text, t.start, t.end) for t in results
            if t.is_final and (channel is None or t.channel == channel)]


@pytest.fixture
async def emu() -> AsyncIterator[AssemblyAIV2Emulator]:
    """A running v2 emulator; tests tweak ``config`` and ``faults``."""
    async with AssemblyAIV2Emulator() as emulator:
        yield emulator


def recognizer(emu: AssemblyAIV2Emulator, channels: int = 1, settings: Settings | None = None,
               **options: Any) -> AssemblyAIV2Recognizer:
    emu.config.too_fast_seconds = 1e9  # these tests send unpaced; the worker paces sessions
    s = settings or emu.configure(Settings(redis_url="redis://unused"))
    rec = create_recognizer("assemblyai-v2", "direct", "en-US", RATE, channels, options, s)
    assert isinstance(rec, AssemblyAIV2Recognizer)
    return rec


async def test_transcripts_words_and_json_audio(emu: AssemblyAIV2Emulator) -> None:
    pcm, words = render(SCRIPT)
    got = await drive(recognizer(emu), pcm, chunk_seconds=0.05)
    assert finals(got) == expected(words)
    assert [[w.text, w.start, w.end, w.confidence] for t in got if t.is_final for w in t.words] \
        == [[n, s, e, 0.75] for n, s, e in words]
    assert [t.text for t in got if not t.is_final][:2] == ["tone500", "tone500"]
    s = emu.sessions[0]
    assert s.params == {"sample_rate": "16000", "encoding": "pcm_s16le"}
    assert s.json_audio == len(s.chunk_ms) and s.binary_audio == 0
    assert set(s.chunk_ms[:-1]) == {100.0} and s.chunk_ms[-1] >= 100  # 50 ms sends re-cut
    assert bytes(s.audio[:len(pcm)]) == pcm and s.terminated and s.close_code == 1000
    assert [m for m in s.received] == [{"terminate_session": True}]


async def test_binary_audio_and_options(emu: AssemblyAIV2Emulator) -> None:
    pcm, words = render(SCRIPT)
    rec = recognizer(emu, word_boost="voxq,AssemblyAI", disable_partial_transcripts=True,
                     end_utterance_silence_threshold=1000, enable_extra_session_information=True)
    rec.json_audio = False
    got = await drive(rec, pcm)
    assert finals(got) == expected(words, 1.0)  # the 900 ms pause no longer ends an utterance
    assert all(t.is_final for t in got)
    s = emu.sessions[0]
    assert s.binary_audio == len(s.chunk_ms) and s.json_audio == 0
    assert s.params["word_boost"] == '["voxq", "AssemblyAI"]'
    assert s.params["disable_partial_transcripts"] == "true"
    assert s.received[0] == {"end_utterance_silence_threshold": 1000}
    assert [m["message_type"] for m in s.sent[-2:]] == ["SessionInformation", "SessionTerminated"]


async def test_two_channels_and_temporary_tokens(emu: AssemblyAIV2Emulator) -> None:
    settings = emu.configure(Settings(redis_url="redis://unused"), assemblyai_temporary_tokens=True)
    left, lw = render([(0.2, 600, 0.4)])
    right, rw = render([(0.6, 1500, 0.3)])
    got = await drive(recognizer(emu, channels=2, settings=settings), interleave(left, right))
    assert finals(got, 0) == expected(lw) and finals(got, 1) == expected(rw)
    assert [s.auth for s in emu.sessions] == ["token", "token"]
    assert [r["body"] for r in emu.token_server.requests] == ['{"expires_in":60}'] * 2


async def test_pauses_are_bridged_with_silence_removed_from_times(
        emu: AssemblyAIV2Emulator) -> None:
    emu.config.idle_timeout = 0.8
    rec = recognizer(emu)
    rec.keepalive_after = 0.25
    out: list[Transcript] = []
    await rec.start()

    async def collect() -> None:
        async for t in rec.results():
            out.append(t)

    task = asyncio.create_task(collect())
    a, _ = render([(0.2, 500, 0.3)], tail=0.05)  # the 50 ms tail waits, then goes out padded
    for i in range(0, len(a), 3200):
        await rec.send(a[i:i + 3200])
    await asyncio.sleep(2.0)
    b, _ = render([(0.1, 900, 0.3)], tail=0.8)
    for i in range(0, len(b), 3200):
        await rec.send(b[i:i + 3200])
    await rec.finish()
    await within(task, 10)
    await rec.close()
    s = emu.sessions[0]
    assert s.close_code == 1000 and len(emu.sessions) == 1
    assert len(s.audio) - len(a + b) >= 5 * 3200  # ≥ 5 keep-alives of 100 ms
    assert bytes(s.audio[:len(a)]) == a
    # session times skip the inserted silence: b starts right where a ended (0.55 s)
    assert finals(out) == [("Tone500.", 0.2, 0.5), ("Tone900.", 0.65, 0.95)]


async def test_without_keepalive_the_idle_timeout_is_retryable(emu: AssemblyAIV2Emulator) -> None:
    emu.config.idle_timeout = 0.5
    rec = recognizer(emu)
    rec.keepalive_after = 60
    await rec.start()
    await rec.send(tone(500, 0.2))
    with pytest.raises(VendorRetryable) as info:
        async for _ in rec.results():
            pass
    await rec.close()
    assert str(info.value) == "assemblyai-v2: 4031: Session idle for too long"


@pytest.mark.parametrize(("fault", "cls", "text"), [
    (Fault("close", 3, 4029, REASONS[4029]), VendorRetryable, "4029: Client sent audio too fast"),
    (Fault("close", 3, 4102), VendorRetryable, f"4102: {REASONS[4102]}"),
    (Fault("close", 3, 4008), VendorRetryable, "4008: Session Expired"),
    (Fault("close", 3, 4002), VendorRejected, "4002: Insufficient Funds"),
    (Fault("close", 3, 4101), VendorRejected, f"4101: {REASONS[4101]}"),
    (Fault("close", 3, 1013), VendorRetryable, "1013: Temporary server condition"),
    (Fault("abort", 3), VendorRetryable, "1006: the connection dropped"),
    (Fault("http", status=503), VendorRetryable, "503: HTTP 503 at the WebSocket handshake"),
])
async def test_close_codes_map_to_clear_errors(emu: AssemblyAIV2Emulator, fault: Fault,
                                               cls: type[VendorError], text: str) -> None:
    emu.faults.append(fault)
    with pytest.raises(VendorError) as info:
        await drive(recognizer(emu), render(SCRIPT)[0])
    assert type(info.value) is cls and str(info.value).startswith(f"assemblyai-v2: {text}")


async def test_auth_failures_and_secrets(emu: AssemblyAIV2Emulator,
                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    bad = emu.configure(Settings(redis_url="redis://unused"), assemblyai_api_key=SecretStr("nope"))
    with pytest.raises(VendorAuthError) as info:
        await recognizer(emu, settings=bad).start()
    assert str(info.value) == "assemblyai-v2: 4001: Not Authorized"
    minting = emu.configure(Settings(redis_url="redis://unused"), assemblyai_api_key=SecretStr("nope"),
                            assemblyai_temporary_tokens=True)
    with pytest.raises(VendorAuthError, match="HTTP 401 at the temporary-token request"):
        await recognizer(emu, settings=minting).start()
    used = emu.mint()
    emu.tokens[used] = True
    spent = emu.configure(Settings(redis_url="redis://unused"), assemblyai_token=SecretStr(used))
    with pytest.raises(VendorAuthError, match="4001"):
        await recognizer(emu, settings=spent).start()
    good = emu.configure(Settings(redis_url="redis://unused"), assemblyai_temporary_tokens=True)
    await drive(recognizer(emu, settings=good), render(SCRIPT[:1])[0])
    text = "\n".join(r.getMessage() for r in caplog.records
                     if not r.name.startswith("websockets.server"))
    assert API_KEY not in text and emu.sessions[-1].params["token"] not in text
    assert "nope" not in text and used not in text


# --- whole sessions through a worker --------------------------------------------------------------


@pytest.fixture
async def worker(settings: Settings, emu: AssemblyAIV2Emulator) -> AsyncIterator[Transcriber]:
    """An in-process worker whose assemblyai-v2 sessions go to the emulator."""
    assert settings.redis_url
    w = Transcriber(emu.configure(settings, claim_timeout_seconds=2.0), settings.redis_url,
                    name="w-aai2")
    stop = asyncio.Event()
    task = asyncio.create_task(w.run(stop))
    yield w
    stop.set()
    await within(task, 30)


def texts(rows: list[tuple[str, Transcript]]) -> list[tuple[str, float, float]]:
    return [(t.text, t.start, t.end) for _, t in rows]


async def test_sessions_retry_and_fail_through_the_worker(
        worker: Transcriber, r: aioredis.Redis, keys: Keys, emu: AssemblyAIV2Emulator) -> None:
    pcm, words = render(SCRIPT)
    emu.faults.append(Fault("close", 14, 4029, REASONS[4029]))
    await create(r, keys, "retry", vendor="assemblyai-v2")
    await publish(r, keys, "retry", pcm)
    meta = await wait_status(r, keys, "retry", timeout=60)
    assert meta.status is Status.FINISHED, meta.error
    assert texts(await read_finals(r, keys, "retry")) == expected(words)  # exact after a retry
    assert len(emu.sessions) == 2 and emu.sessions[0].close_code == 4029
    emu.faults.append(Fault("close", 4, 4104))
    await create(r, keys, "fail", vendor="assemblyai-v2")
    await publish(r, keys, "fail", pcm)
    meta = await wait_status(r, keys, "fail", timeout=60)
    assert meta.status is Status.FAILED
    assert meta.error == "assemblyai-v2: 4104: Could not parse word boost parameter"
    assert len(emu.sessions) == 3  # a rejection is not retried


async def test_produce_cli_to_the_final_stream(worker: Transcriber, r: aioredis.Redis, keys: Keys,
                                               env: dict[str, str], emu: AssemblyAIV2Emulator,
                                               tmp_path: Path) -> None:
    """`python -m voxq produce FILE --vendor assemblyai-v2 --fast` → worker → emulator → Redis."""
    import soundfile

    pcm, words = render(SCRIPT)
    wav = tmp_path / "tones.wav"
    soundfile.write(wav, np.frombuffer(pcm, "<i2"), RATE, subtype="PCM_16")
    child = {**env, "VOXQ_ASSEMBLYAI_V2_URL": emu.url, "ASSEMBLYAI_API_KEY": API_KEY}
    proc = await run_voxq(
        "produce", str(wav), "--vendor", "assemblyai-v2",
        "--session", "cli", "--fast", "--no-progress", "--option", "word_boost=[\"tone\"]", env=child)
    err = proc.stderr
    assert proc.returncode == 0, err.decode()
    meta = await wait_status(r, keys, "cli", timeout=60)
    assert meta.status is Status.FINISHED, meta.error
    assert texts(await read_finals(r, keys, "cli")) == expected(words)
    assert emu.sessions[0].params["word_boost"] == '["tone"]'
    bad = await run_voxq(
        "produce", str(wav), "--vendor", "assemblyai-v2",
        "--session", "cli-bad", "--fast", "--no-progress", "--option",
        "end_utterance_silence_threshold=20001", env=child)
    err = bad.stderr
    assert bad.returncode == 2 and "end_utterance_silence_threshold" in err.decode()
    assert not await r.exists(keys.meta("cli-bad"))


# --- rolling to a fresh session before the limit ---------------------------------------------------


async def test_rolls_between_utterances_with_an_exact_transcript(emu: AssemblyAIV2Emulator) -> None:
    """The emulator's session limit (wall clock) shortened to 1 s and audio sent at 5x real
    time: fresh sessions between utterances, every final once, in session time, across at
    least two rolls; without rolling the limit (4008) ends the session."""
    emu.config.max_session_seconds = 1.0
    script: Script = [(0.9, 500 + 100 * i, 0.3) for i in range(8)]
    pcm, words = render(script)
    rec = recognizer(emu)
    rec.rollover_after, rec.rollover_deadline = 2.0, 4.0
    got = await drive(rec, pcm, pace=0.02)
    assert [(t.text, t.start, t.end) for t in got if t.is_final] == expected(words)
    assert len(emu.sessions) >= 3 and all(s.terminated for s in emu.sessions)
    assert b"".join(bytes(s.audio) for s in emu.sessions).startswith(pcm)
    with pytest.raises(VendorRetryable):
        await drive(recognizer(emu), pcm, pace=0.02)
    assert emu.sessions[-1].close_code == 4008
