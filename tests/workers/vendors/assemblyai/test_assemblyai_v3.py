"""The `assemblyai` (Universal Streaming v3) recognizer against the strict v3 emulator: turns to
partials and finals, channels, chunking, keep-alive, ForceEndpoint, tokens, every error path,
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
from tests.emulators.assemblyai_v3 import (
    API_KEY,
    CANCELLED,
    MISSING_AUTH,
    SESSION_EXPIRED,
    TOO_MANY,
    AssemblyAIV3Emulator,
    Fault,
    duration_violation,
    rate_exceeded,
)
from tests.emulators.common import interleave, silence, tone
from tests.emulators.tone_words import Script, drive, formatted, render, utterances
from tests.support import create, publish, run_voxq, wait_status
from voxq.aio import within
from voxq.keys import Keys
from voxq.records import SessionMeta, Status, Transcript
from voxq.sessions import read_finals
from voxq.settings import Settings
from workers.transcriber import Transcriber
from workers.vendors.assemblyai.stt import AssemblyAIRecognizer
from workers.vendors.base import (
    VendorAuthError,
    VendorError,
    VendorRejected,
    VendorRetryable,
)
from workers.vendors.registry import create_recognizer

RATE = 16000
GAP = 0.4  # the emulator's default min_turn_silence
# three turns; the second has two words 200 ms apart
SCRIPT: Script = [(0.3, 500, 0.4), (0.6, 1200, 0.3), (0.2, 700, 0.3), (0.7, 2000, 0.4)]


def expected(words: list[tuple[str, float, float]], gap: float = GAP
             ) -> list[tuple[str, float, float]]:
    """(text, start, end) of the emulator's formatted finals."""
    return [(formatted([w[0] for w in u]), u[0][1], u[-1][2]) for u in utterances(words, gap)]


def finals(results: list[Transcript], channel: int | None = None) -> list[tuple[str, float, float]]:
    return [(t.text, t.start, t.end) for t in results
            if t.is_final and (channel is None or t.channel == channel)]


@pytest.fixture
async def emu() -> AsyncIterator[AssemblyAIV3Emulator]:
    """A running v3 emulator with the service's limits; tests tweak ``config`` and ``faults``."""
    async with AssemblyAIV3Emulator() as emulator:
        yield emulator


def recognizer(emu: AssemblyAIV3Emulator, channels: int = 1, paced: bool = False,
               settings: Settings | None = None, **options: Any) -> AssemblyAIRecognizer:
    if not paced:
        emu.config.realtime_factor = None  # these tests send unpaced; the worker paces sessions
    s = settings or emu.configure(Settings(redis_url="redis://unused"))
    rec = create_recognizer("assemblyai", "direct", "en-US", RATE, channels, options, s)
    assert isinstance(rec, AssemblyAIRecognizer)
    return rec


# --- results mapping --------------------------------------------------------------------------


async def test_turns_become_partials_and_one_formatted_final_each(emu: AssemblyAIV3Emulator) -> None:
    pcm, words = render(SCRIPT)
    got = await drive(recognizer(emu), pcm)
    assert finals(got) == expected(words)
    final_words = [[w.text, w.start, w.end, w.confidence] for t in got if t.is_final
                   for w in t.words]
    assert final_words == [[n, s, e, 0.75] for n, s, e in words]
    partials = [t for t in got if not t.is_final]
    assert partials[0].text == "tone500" and partials[0].start == 0.3
    assert {t.result_id for t in got} == {"0-0", "0-1", "0-2"}
    session = emu.sessions[0]
    assert session.params == {"sample_rate": "16000", "encoding": "pcm_s16le",
                              "speech_model": "universal-streaming-english",
                              "format_turns": "true"}
    assert session.auth == "key" and session.terminated and session.error is None
    assert bytes(session.audio[:len(pcm)]) == pcm
    # the service's message sequence: each turn's raw end of turn, then its formatted copy
    ends = [(t["turn_order"], t["turn_is_formatted"]) for t in session.turns if t["end_of_turn"]]
    assert ends == [(0, False), (0, True), (1, False), (1, True), (2, False), (2, True)]


@pytest.mark.parametrize(("mode", "format_turns", "text"), [
    ("every", True, formatted), ("separate", False, lambda names: " ".join(names)),
])
async def test_formatting_variants(emu: AssemblyAIV3Emulator, mode: Any, format_turns: bool,
                                   text: Any) -> None:
    emu.config.format_mode = mode
    pcm, words = render(SCRIPT)
    got = await drive(recognizer(emu, format_turns=format_turns), pcm)
    assert finals(got) == [(text([w[0] for w in u]), u[0][1], u[-1][2])
                           for u in utterances(words, GAP)]
    assert len([t for t in emu.sessions[0].turns if t["end_of_turn"]]) == 3  # no copies


async def test_held_end_of_turn_is_released_when_no_formatted_copy_comes(
        emu: AssemblyAIV3Emulator) -> None:
    """format_turns asked, but the service never formats: each raw end of turn is held, then
    final at the next turn or at Termination; none is lost or doubled."""
    emu.config.format_mode = "never"
    pcm, words = render(SCRIPT)
    got = await drive(recognizer(emu), pcm)
    raw = [(" ".join(w[0] for w in u), u[0][1], u[-1][2]) for u in utterances(words, GAP)]
    assert finals(got) == raw


async def test_speaker_labels_map_to_speakers(emu: AssemblyAIV3Emulator) -> None:
    pcm, _ = render(SCRIPT)
    got = await drive(recognizer(emu, speaker_labels=True, max_speakers=2), pcm)
    final = [t for t in got if t.is_final]
    assert [t.speaker for t in final] == ["A", "B", "B"]
    assert [w.speaker for w in final[1].words] == ["B", "A"]
    assert emu.sessions[0].params["speaker_labels"] == "true"
    assert emu.sessions[0].params["max_speakers"] == "2"


async def test_two_channels_run_one_connection_each(emu: AssemblyAIV3Emulator) -> None:
    left, lw = render([(0.2, 600, 0.4), (0.8, 900, 0.3)])
    right, rw = render([(0.7, 1500, 0.5)])
    got = await drive(recognizer(emu, channels=2), interleave(left, right), chunk_seconds=0.2)
    assert finals(got, 0) == expected(lw) and finals(got, 1) == expected(rw)
    assert len(emu.sessions) == 2
    audio = {bytes(s.audio[:len(left)]) for s in emu.sessions}
    assert audio == {left, right + bytes(len(left) - len(right))}  # one channel each


async def test_options_reach_the_query(emu: AssemblyAIV3Emulator) -> None:
    pcm, _ = render(SCRIPT[:1])
    await drive(recognizer(emu, speech_model="universal-streaming-multilingual",
                           end_of_turn_confidence_threshold=0.7, min_turn_silence=300,
                           max_turn_silence=1500, vad_threshold=0.5,
                           keyterms_prompt="voxq,Universal Streaming", inactivity_timeout=30,
                           language_detection=True, filter_profanity=True), pcm)
    p = emu.sessions[0].params
    assert p["speech_model"] == "universal-streaming-multilingual"
    assert p["keyterms_prompt"] == '["voxq", "Universal Streaming"]'
    assert (p["min_turn_silence"], p["max_turn_silence"], p["inactivity_timeout"]) == \
        ("300", "1500", "30")
    assert p["language_detection"] == p["filter_profanity"] == "true"
    assert emu.sessions[0].ignored_params == []


async def test_audio_is_rechunked_and_the_last_short_chunk_padded(
        emu: AssemblyAIV3Emulator) -> None:
    pcm = tone(440, 1.03)
    await drive(recognizer(emu), pcm, chunk_seconds=0.02)  # 20 ms sends
    s = emu.sessions[0]
    assert s.error is None and s.terminated
    assert s.chunk_ms == [100.0] * 10 + [50.0]  # 30 ms tail padded to the 50 ms minimum
    assert bytes(s.audio) == pcm + bytes(640)


async def test_force_endpoint_ends_the_turn(emu: AssemblyAIV3Emulator) -> None:
    rec = recognizer(emu)
    out: list[Transcript] = []
    await rec.start()
    collector = asyncio.create_task(_collect(rec, out))
    for i in range(0, 9600, 3200):
        await rec.send(tone(800, 0.3)[i:i + 3200])
    await rec.force_endpoint()
    await rec.update_configuration(min_turn_silence=300)
    await rec.send(silence(0.1) + tone(800, 0.2))
    await rec.finish()
    await within(collector, 10)
    await rec.close()
    assert finals(out) == [("Tone800.", 0.0, 0.3), ("Tone800.", 0.4, 0.6)]
    kinds = [m["type"] for m in emu.sessions[0].received]
    assert kinds == ["ForceEndpoint", "UpdateConfiguration", "Terminate"]


async def _collect(rec: AssemblyAIRecognizer, out: list[Transcript]) -> None:
    async for t in rec.results():
        out.append(t)


# --- keep-alive ---------------------------------------------------------------------------------


async def _pause_session(rec: AssemblyAIRecognizer, pause: float) -> list[Transcript]:
    out: list[Transcript] = []
    await rec.start()
    collector = asyncio.create_task(_collect(rec, out))
    try:
        a, _ = render([(0.2, 500, 0.3)], tail=0.5)
        for i in range(0, len(a), 3200):
            await rec.send(a[i:i + 3200])
        await asyncio.sleep(pause)
        b, _ = render([(0.1, 900, 0.3)], tail=0.5)
        for i in range(0, len(b), 3200):
            await rec.send(b[i:i + 3200])
        await rec.finish()
        await within(collector, 10)
    finally:
        collector.cancel()
        await rec.close()
    return out


async def test_keepalive_holds_the_session_through_a_long_silence(
        emu: AssemblyAIV3Emulator) -> None:
    emu.config.inactivity_seconds = 0.6  # stands for inactivity_timeout (min 5 s at the service)
    rec = recognizer(emu, inactivity_timeout=5)
    rec.keepalive_after = 0.2
    out = await _pause_session(rec, 2.0)
    s = emu.sessions[0]
    assert s.error is None and s.terminated and len(emu.sessions) == 1
    assert s.keepalives >= 5
    assert finals(out) == [("Tone500.", 0.2, 0.5), ("Tone900.", 1.1, 1.4)]  # times unshifted


async def test_without_keepalive_the_inactivity_timeout_ends_the_session_retryably(
        emu: AssemblyAIV3Emulator) -> None:
    emu.config.inactivity_seconds = 0.6
    rec = recognizer(emu, inactivity_timeout=5)
    rec.keepalive_after = 60.0
    with pytest.raises(VendorRetryable) as info:
        await _pause_session(rec, 1.5)
    assert str(info.value) == ("assemblyai: Termination: the service terminated the session "
                               "before the end of the audio")


# --- auth and tokens ------------------------------------------------------------------------------


async def test_temporary_tokens_are_minted_per_connection(emu: AssemblyAIV3Emulator) -> None:
    settings = emu.configure(Settings(redis_url="redis://unused"), assemblyai_temporary_tokens=True)
    left, lw = render([(0.2, 600, 0.4)])
    right, rw = render([(0.5, 1500, 0.3)])
    got = await drive(recognizer(emu, channels=2, settings=settings), interleave(left, right))
    assert finals(got, 0) == expected(lw) and finals(got, 1) == expected(rw)
    assert [s.auth for s in emu.sessions] == ["token", "token"]
    assert all("authorization" not in s.headers for s in emu.sessions)
    assert len({s.params["token"] for s in emu.sessions}) == 2
    assert emu.token_requests == [{"expires_in_seconds": "60"}] * 2


async def test_a_configured_token_works_once(emu: AssemblyAIV3Emulator) -> None:
    token = emu.mint()
    settings = emu.configure(Settings(redis_url="redis://unused"), assemblyai_api_key=None,
                             assemblyai_token=SecretStr(token))
    pcm, words = render(SCRIPT[:1])
    assert finals(await drive(recognizer(emu, settings=settings), pcm)) == expected(words)
    with pytest.raises(VendorAuthError) as info:
        await drive(recognizer(emu, settings=settings), pcm)
    assert str(info.value) == "assemblyai: 1008: Unauthorized Connection: Token already used"
    with pytest.raises(VendorRejected, match="single-use token"):
        await recognizer(emu, channels=2, settings=settings).start()


async def test_auth_failures(emu: AssemblyAIV3Emulator) -> None:
    bad = emu.configure(Settings(redis_url="redis://unused"),
                        assemblyai_api_key=SecretStr("wrong-key"))
    with pytest.raises(VendorAuthError) as info:
        await recognizer(emu, settings=bad).start()
    assert str(info.value) == f"assemblyai: 1008: {MISSING_AUTH}"
    assert emu.sessions[-1].error == (1008, MISSING_AUTH)
    emu.config.auth_failure = "http"
    with pytest.raises(VendorAuthError, match=r"^assemblyai: 401: HTTP 401 at the WebSocket "):
        await recognizer(emu, settings=bad).start()
    minting = emu.configure(Settings(redis_url="redis://unused"),
                            assemblyai_api_key=SecretStr("wrong-key"),
                            assemblyai_temporary_tokens=True)
    with pytest.raises(VendorAuthError) as info:
        await recognizer(emu, settings=minting).start()
    assert str(info.value) == ("assemblyai: 401: HTTP 401 at the temporary-token request: "
                               "Invalid API key")
    none = emu.configure(Settings(redis_url="redis://unused"), assemblyai_api_key=None)
    with pytest.raises(VendorAuthError, match="set ASSEMBLYAI_API_KEY"):
        await recognizer(emu, settings=none).start()


async def test_secrets_never_reach_the_logs(emu: AssemblyAIV3Emulator,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    pcm, _ = render(SCRIPT[:1])
    await drive(recognizer(emu), pcm)
    minting = emu.configure(Settings(redis_url="redis://unused"), assemblyai_temporary_tokens=True)
    await drive(recognizer(emu, settings=minting), pcm)
    ours = [r for r in caplog.records if not r.name.startswith("websockets.server")]
    text = "\n".join(r.getMessage() for r in ours)
    assert "GET /v3/ws?sample_rate=16000" in text and "Authorization: ***" in text
    token = emu.sessions[-1].params["token"]
    assert API_KEY not in text and token not in text and "token=***" in text


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "message", "legacy", "cls", "shown"), [
    (3005, CANCELLED, False, VendorRetryable, 3005),
    (3006, "Invalid Message Type: Hello", False, VendorRejected, 3006),
    (3007, duration_violation(20), False, VendorRejected, 3007),
    (3007, rate_exceeded(12, 6), False, VendorRetryable, 3007),
    (3008, SESSION_EXPIRED, False, VendorRetryable, 3008),
    (3009, TOO_MANY, False, VendorRetryable, 3009),
    (3006, "Invalid JSON: {", True, VendorRejected, 3005),  # pre-2026 numbering
    (3007, rate_exceeded(12, 6), True, VendorRetryable, 3005),
    (3008, SESSION_EXPIRED, True, VendorRetryable, 3005),
    (3009, TOO_MANY, True, VendorRetryable, 1008),
    (4029, "Client sent audio too fast", False, VendorRetryable, 4029),  # SDK fallback codes
    (4001, "Not Authorized", False, VendorAuthError, 4001),
])
async def test_error_closes_map_to_clear_errors(emu: AssemblyAIV3Emulator, code: int, message: str,
                                                legacy: bool, cls: type[VendorError],
                                                shown: int) -> None:
    emu.config.legacy_codes = legacy
    emu.faults.append(Fault("error", after_chunks=3, code=code, message=message))
    with pytest.raises(VendorError) as info:
        await drive(recognizer(emu), render(SCRIPT)[0])
    assert type(info.value) is cls
    assert str(info.value) == f"assemblyai: {shown}: {message}"


async def test_a_long_error_text_comes_from_the_error_frame(emu: AssemblyAIV3Emulator) -> None:
    message = "Invalid Message: " + "x" * 150
    emu.faults.append(Fault("error", after_chunks=1, code=3006, message=message))
    with pytest.raises(VendorRejected) as info:
        await drive(recognizer(emu), render(SCRIPT)[0])
    assert str(info.value) == f"assemblyai: 3006: {message}"


@pytest.mark.parametrize(("fault", "cls", "text"), [
    (Fault("abort", after_chunks=4), VendorRetryable, "1006: the connection dropped"),
    (Fault("terminate", after_chunks=4), VendorRetryable, "Termination: the service terminated the"),
    (Fault("http", status=503, message="busy"), VendorRetryable, "503: HTTP 503 at the WebSocket"),
    (Fault("http", status=400, message="no"), VendorRejected, "400: HTTP 400 at the WebSocket"),
])
async def test_drops_and_refusals(emu: AssemblyAIV3Emulator, fault: Fault,
                                  cls: type[VendorError], text: str) -> None:
    emu.faults.append(fault)
    with pytest.raises(VendorError) as info:
        await drive(recognizer(emu), render(SCRIPT)[0])
    assert type(info.value) is cls and str(info.value).startswith(f"assemblyai: {text}")


async def test_unreachable_or_malformed_endpoints(emu: AssemblyAIV3Emulator) -> None:
    closed = emu.configure(Settings(redis_url="redis://unused"), assemblyai_url="ws://127.0.0.1:9/v3/ws")
    with pytest.raises(VendorRetryable, match=r"cannot connect to ws://127\.0\.0\.1:9/v3/ws:"):
        await recognizer(emu, settings=closed).start()
    http = emu.configure(Settings(redis_url="redis://unused"), assemblyai_url="https://x/v3/ws")
    with pytest.raises(VendorRejected, match="needs ws:// or wss://"):
        await recognizer(emu, settings=http).start()


async def test_failures_reach_send_only_after_results(emu: AssemblyAIV3Emulator) -> None:
    """The worker writes a final before it asks for the next result; send() must not report a
    failure first (the worker would cancel the write of the last final)."""
    emu.faults.append(Fault("error", after_chunks=9, code=3005, message=CANCELLED))
    rec = recognizer(emu)
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
async def worker(settings: Settings, emu: AssemblyAIV3Emulator) -> AsyncIterator[Transcriber]:
    """An in-process worker whose assemblyai sessions go to the emulator."""
    assert settings.redis_url
    w = Transcriber(emu.configure(settings, claim_timeout_seconds=2.0), settings.redis_url,
                    name="w-aai3")
    stop = asyncio.Event()
    task = asyncio.create_task(w.run(stop))
    yield w
    stop.set()
    await within(task, 30)


async def session(r: aioredis.Redis, keys: Keys, sid: str, pcm: bytes, channels: int = 1,
                  **options: Any) -> tuple[SessionMeta, list[tuple[str, Transcript]]]:
    await create(r, keys, sid, vendor="assemblyai", channels=channels, options=options)
    await publish(r, keys, sid, pcm, channels=channels)
    meta = await wait_status(r, keys, sid, timeout=60)
    return meta, await read_finals(r, keys, sid)


def texts(rows: list[tuple[str, Transcript]], channel: int | None = None
          ) -> list[tuple[str, float, float]]:
    return [(t.text, t.start, t.end) for _, t in rows if channel is None or t.channel == channel]


async def test_mono_and_stereo_sessions_end_to_end(worker: Transcriber, r: aioredis.Redis,
                                                   keys: Keys, emu: AssemblyAIV3Emulator) -> None:
    pcm, words = render(SCRIPT)
    (meta, rows), (meta2, rows2) = await asyncio.gather(
        session(r, keys, "mono", pcm),
        session(r, keys, "stereo", interleave(*[render(s)[0] for s in (SCRIPT[:2], SCRIPT[2:])]),
                channels=2))
    assert meta.status is Status.FINISHED, meta.error
    assert texts(rows) == expected(words)
    assert [t.seq for _, t in rows] == [0, 1, 2] and await r.xlen(keys.partial("mono")) > 0
    assert meta2.status is Status.FINISHED, meta2.error
    assert texts(rows2, 0) == expected(render(SCRIPT[:2])[1])
    assert texts(rows2, 1) == expected(render(SCRIPT[2:])[1])
    assert all(s.error is None and s.terminated for s in emu.sessions)


@pytest.mark.parametrize("fault", [Fault("error", after_chunks=16, code=3005, message=CANCELLED),
                                   Fault("abort", after_chunks=16)])
async def test_retryable_failures_are_retried_to_an_exact_transcript(
        worker: Transcriber, r: aioredis.Redis, keys: Keys, emu: AssemblyAIV3Emulator,
        fault: Fault) -> None:
    emu.faults.append(fault)
    pcm, words = render(SCRIPT)
    meta, rows = await session(r, keys, "retry", pcm)
    assert meta.status is Status.FINISHED, meta.error
    assert len(emu.sessions) == 2
    assert texts(rows) == expected(words)  # nothing lost, nothing said twice


async def test_rejections_fail_the_session_with_the_vendor_message(
        worker: Transcriber, r: aioredis.Redis, keys: Keys, emu: AssemblyAIV3Emulator) -> None:
    emu.faults.append(Fault("error", after_chunks=5, code=3007, message=duration_violation(20)))
    meta, _ = await session(r, keys, "rej", render(SCRIPT)[0])
    assert meta.status is Status.FAILED
    assert meta.error == f"assemblyai: 3007: {duration_violation(20)}"
    assert len(emu.sessions) == 1  # not retried


async def test_produce_cli_worker_and_api(worker: Transcriber, r: aioredis.Redis, keys: Keys,
                                          settings: Settings, env: dict[str, str],
                                          emu: AssemblyAIV3Emulator, tmp_path: Path) -> None:
    """`python -m voxq produce FILE --vendor assemblyai --fast` → worker → emulator → API."""
    import httpx
    import soundfile

    pcm, words = render(SCRIPT)
    wav = tmp_path / "tones.wav"
    soundfile.write(wav, np.frombuffer(pcm, "<i2"), RATE, subtype="PCM_16")
    child = {**env, "VOXQ_ASSEMBLYAI_URL": emu.url, "ASSEMBLYAI_API_KEY": API_KEY}
    proc = await run_voxq(
        "produce", str(wav), "--vendor", "assemblyai", "--session",
        "cli", "--fast", "--no-progress", "--option", "min_turn_silence=400", env=child)
    err = proc.stderr
    assert proc.returncode == 0, err.decode()
    meta = await wait_status(r, keys, "cli", timeout=60)
    assert meta.status is Status.FINISHED, meta.error
    assert emu.sessions[0].params["min_turn_silence"] == "400"
    app = create_app(settings, settings.redis_url or "")
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://api") as client:
            doc = (await client.get("/v1/sessions/cli/transcript")).json()
    assert doc["status"] == "finished"
    assert [(s["text"], s["start"], s["end"]) for s in doc["segments"]] == expected(words)
    assert [w["text"] for s in doc["segments"] for w in s["words"]] == [w[0] for w in words]
    bad = await run_voxq(
        "produce", str(wav), "--vendor", "assemblyai", "--session",
        "cli-bad", "--fast", "--no-progress", "--option", "max_speakers=3", env=child)
    err = bad.stderr
    assert bad.returncode == 2 and "max_speakers needs speaker_labels" in err.decode()
    assert not await r.exists(keys.meta("cli-bad"))


# --- rolling to a fresh session before the limit ---------------------------------------------------


async def test_rolls_between_turns_with_an_exact_transcript(emu: AssemblyAIV3Emulator) -> None:
    """The emulator's session limit (wall clock) shortened to 1 s and audio sent at 5x real
    time: the recognizer opens fresh sessions between turns, every final once, in session time,
    across at least two rolls; without rolling the limit (3008) ends the session."""
    emu.config.max_session_seconds = 1.0
    script: Script = [(0.6, 500 + 100 * i, 0.3) for i in range(10)]
    pcm, words = render(script)
    rec = recognizer(emu)
    rec.rollover_after, rec.rollover_deadline = 1.5, 2.8
    got = await drive(rec, pcm, pace=0.02)
    assert finals(got) == expected(words)
    assert len(emu.sessions) >= 3 and all(s.error is None and s.terminated for s in emu.sessions)
    assert b"".join(bytes(s.audio)[:len(s.audio)] for s in emu.sessions).startswith(pcm)
    with pytest.raises(VendorRetryable):
        await drive(recognizer(emu), pcm, pace=0.02)
    assert emu.sessions[-1].error is not None and emu.sessions[-1].error[0] == 3008
