"""The `volcengine` recognizer against the strict sauc emulator: options, request and response
mapping, sequences, keep-alive, every error path, and whole sessions through a real worker."""

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

from tests.emulators.common import interleave, silence, tone, wait_for
from tests.emulators.volcengine_asr import (
    ACCESS_TOKEN,
    API_KEY,
    APP_ID,
    Fault,
    VolcengineEmulator,
)
from tests.support import create, publish, run_voxq, wait_status
from voxq.aio import within
from voxq.keys import Keys
from voxq.records import SessionMeta, Status, Transcript
from voxq.sessions import read_finals
from voxq.settings import Settings
from voxq.timeline import Timeline
from workers.transcriber import Transcriber
from workers.vendors.base import (
    VendorAuthError,
    VendorError,
    VendorOptionError,
    VendorRejected,
    VendorRetryable,
)
from workers.vendors.registry import create_recognizer, validate_session
from workers.vendors.volcengine import sauc
from workers.vendors.volcengine import stt as volc
from workers.vendors.volcengine.sauc import VolcengineOptions
from workers.vendors.volcengine.stt import VolcengineRecognizer

RATE = 16000
Script = list[tuple[float, float, float]]  # (silence before, tone Hz, tone seconds)
SCRIPT: Script = [(0.5, 500, 0.5), (0.6, 1200, 0.4), (0.1, 700, 0.3), (0.7, 2000, 0.6)]


@pytest.fixture
async def emulator() -> AsyncIterator[VolcengineEmulator]:
    """A running sauc emulator; tests tweak its ``config`` and ``faults``."""
    async with VolcengineEmulator() as emu:
        yield emu


def render(script: Script, rate: int = RATE, tail: float = 0.5) -> tuple[bytes, list[list[Any]]]:
    """PCM of a tone script and its expected words as [name, start, end]."""
    pcm = b""
    words: list[list[Any]] = []
    t = 0.0
    for gap, freq, seconds in script:
        pcm += silence(gap, rate) + tone(freq, seconds, rate)
        t = round(t + gap, 4)
        words.append([f"tone{round(freq / 100) * 100}", t, round(t + seconds, 4)])
        t = round(t + seconds, 4)
    return pcm + silence(tail, rate), words


def expected_finals(words: list[list[Any]]) -> list[tuple[str, float, float]]:
    """(text, start, end) of the emulator's finals: words < 300 ms apart are one utterance."""
    out: list[list[list[Any]]] = []
    for w in words:
        if out and round(w[1] - out[-1][-1][2], 4) < 0.3:
            out[-1].append(w)
        else:
            out.append([w])
    return [(" ".join(w[0] for w in u) + ".", u[0][1], u[-1][2]) for u in out]


def finals_of(results: list[Transcript], channel: int | None = None
              ) -> list[tuple[str, float, float]]:
    return [(t.text, t.start, t.end) for t in results
            if t.is_final and (channel is None or t.channel == channel)]


# --- options and pure mapping ---------------------------------------------------------------------


def test_options_are_checked_when_the_session_is_created() -> None:
    ok = validate_session("volcengine", "en-US", 8000, 2, {
        "mode": "bigmodel", "result_type": "full", "enable_itn": False, "end_window_size": 800,
        "boosting_table_id": "bt-1", "context": '{"hotwords":[{"word":"voxq"}]}'})
    assert isinstance(ok, VolcengineOptions) and ok.mode == "bigmodel"
    assert validate_session("volcengine", "ja-JP", 16000, 1,
                            {"mode": "bigmodel_nostream"}).mode == "bigmodel_nostream"  # type: ignore[attr-defined]
    bad: list[tuple[str, dict[str, Any], str]] = [
        ("en-US", {"mode": "bigmodel_fast"}, "mode"),
        ("en-US", {"model": "bigmodel"}, "model"),
        ("en-US", {"enable_nonstream": True, "mode": "bigmodel"}, "enable_nonstream"),
        ("en-US", {"accelerate_score": 5}, "accelerate_score"),
        ("en-US", {"accelerate_score": 30, "enable_accelerate_text": True}, "accelerate_score"),
        ("en-US", {"end_window_size": 100}, "end_window_size"),
        ("en-US", {"context": "{not json"}, "JSON"),
        ("en-US", {"result_type": "partial"}, "result_type"),
        ("en-US", {"enable_punc": "maybe"}, "enable_punc"),
        ("ja-JP", {}, "bigmodel_nostream"),
        ("klingon", {"mode": "bigmodel_nostream"}, "language code"),
    ]
    for language, options, word in bad:
        with pytest.raises(VendorOptionError, match=r"^volcengine: .*" + word):
            validate_session("volcengine", language, 16000, 1, options)


def test_request_body_follows_the_notes() -> None:
    opts = VolcengineOptions(mode="bigmodel_async", enable_ddc=True, enable_nonstream=True,
                             boosting_table_name="names", output_zh_variant="tw")
    assert sauc.request_body(opts, uid="s1", language=None) == {
        "user": {"uid": "s1"},
        "audio": {"format": "pcm", "codec": "raw", "rate": 16000, "bits": 16, "channel": 1},
        "request": {"model_name": "bigmodel", "show_utterances": True, "result_type": "single",
                    "enable_ddc": True, "enable_nonstream": True, "output_zh_variant": "tw",
                    "corpus": {"boosting_table_name": "names"}}}
    body = sauc.request_body(VolcengineOptions(mode="bigmodel_nostream", uid="me"), uid="s1",
                             language=sauc.stream_language("de", "bigmodel_nostream"))
    assert body["audio"]["language"] == "de-DE" and body["user"] == {"uid": "me"}
    assert sauc.stream_language("pt_br", "bigmodel_nostream") == "pt-BR"
    assert sauc.stream_language("sv-SE", "bigmodel_nostream") == "sv-SE"  # the list ends in "…"
    assert sauc.stream_language("auto", "bigmodel") is None
    assert sauc.endpoint("wss://h/api/v3/sauc", "bigmodel") == "wss://h/api/v3/sauc/bigmodel"
    assert sauc.endpoint("wss://h/api/v3/sauc/bigmodel_async/", "bigmodel_nostream") == \
        "wss://h/api/v3/sauc/bigmodel_nostream"


def test_response_parsing() -> None:
    doc = {"audio_info": {"duration": 3696},
           "result": {"text": "这是字节跳动，今日头条母公司。", "utterances": [
               {"definite": True, "start_time": 0, "end_time": 1705, "text": "这是字节跳动，",
                "words": [{"blank_duration": 0, "start_time": 740, "end_time": 860, "text": "这"}]},
               {"definite": False, "start_time": 2110, "end_time": 3696,
                "text": "今日头条母公司。", "words": []}]}}
    r = sauc.response_of(doc)
    assert r.duration_ms == 3696 and r.text.startswith("这是")
    assert r.utterances[0] == sauc.Utterance("这是字节跳动，", 0, 1705, True, (("这", 740, 860),))
    assert not r.utterances[1].definite
    assert sauc.response_of({"result": [{"text": "a"}, {"text": "b"}]}).text == "ab"
    assert sauc.response_of({"audio_info": {"duration": 0}}).utterances == ()
    bad: Any
    for bad in ([], {"result": "x"}, {"result": {"utterances": [{"start_time": -1}]}},
                {"result": {"utterances": [{"start_time": 0, "end_time": "1"}]}},
                {"result": {"utterances": {"a": 1}}}, {"result": {"text": 3}}):
        with pytest.raises(sauc.ProtocolError):
            sauc.response_of(bad)


@pytest.mark.parametrize(("code", "cls"), [
    (45000001, VendorRejected), (45000002, VendorRejected), (45000151, VendorRejected),
    (45000081, VendorRetryable), (55000031, VendorRetryable), (55000123, VendorRetryable),
    (45000292, VendorRetryable), (45000010, VendorAuthError), (45000030, VendorAuthError),
    (12345, VendorRejected),
])
def test_error_codes_map_to_retryable_or_not(code: int, cls: type[VendorError]) -> None:
    error = volc.frame_error(code, f"message with {ACCESS_TOKEN}", (ACCESS_TOKEN,))
    assert type(error) is cls
    assert str(error) == f"volcengine: {code}: message with ***"


def test_handshake_errors_map_by_status() -> None:
    body = b'{"header":{"code":45000010,"message":"load grant: requested grant not found"}}'
    err = volc.handshake_error(401, body)
    assert isinstance(err, VendorAuthError)
    assert str(err) == ("volcengine: 45000010: HTTP 401 at the WebSocket handshake: load grant: "
                        "requested grant not found")
    assert isinstance(volc.handshake_error(400, b"resourceId x is not allowed"), VendorRejected)
    assert isinstance(volc.handshake_error(503, b""), VendorRetryable)
    assert isinstance(volc.handshake_error(429, b"slow down"), VendorRetryable)


def test_result_mapping_dedupes_finals_and_maps_keepalive_time() -> None:
    """Full mode repeats definite utterances (reported once); the last response makes the open
    utterance final; keep-alive silence inserted at 1.0-2.0 s is taken out of the times."""
    settings = Settings(redis_url="redis://unused", volcengine_app_id="a")
    rec = create_recognizer("volcengine", "m", "en-US", RATE, 2, {}, settings)
    assert isinstance(rec, VolcengineRecognizer)
    timeline = Timeline(rec.input_rate)
    timeline.add(RATE)  # 1 s of audio, 1 s of keep-alive, then more audio
    timeline.add(RATE, inserted=True)
    timeline.add(RATE)
    state = sauc.StreamState()

    def transcripts(response: sauc.Response, last: bool) -> list[Transcript]:
        return [timeline.rebase(t, rec.time_digits)
                for t in sauc.to_transcripts(response, state, 1, last)]

    def utt(text: str, start: int, end: int, definite: bool) -> sauc.Utterance:
        return sauc.Utterance(text, start, end, definite, ((text, start, end),))

    a = utt("a.", 200, 800, True)
    first = transcripts(sauc.Response("", (a, utt("b", 900, 2500, False)), None),
                             False)
    assert [(t.text, t.is_final, t.start, t.end, t.channel, t.result_id) for t in first] == [
        ("a.", True, 0.2, 0.8, 1, "ch1-0"), ("b", False, 0.9, 1.5, 1, "ch1-1")]
    assert first[1].words[0].end == 1.5  # 2.5 s on the wire minus 1 s of keep-alive
    again = transcripts(sauc.Response("", (a, utt("b", 900, 2500, False)), None),
                             False)
    assert again == []  # a repeated final and an unchanged partial are not re-emitted
    last = transcripts(sauc.Response("", (a, utt("b c", 900, 2700, False)), None),
                            True)
    assert [(t.text, t.is_final, t.end, t.result_id) for t in last] == [
        ("b c", True, 1.7, "ch1-1")]


def test_server_garbage_is_a_retryable_protocol_error() -> None:
    rec = create_recognizer("volcengine", "g", "en-US", RATE, 1, {},
                            Settings(redis_url="redis://unused"))
    assert isinstance(rec, VolcengineRecognizer)
    with pytest.raises(VendorRetryable, match="undecodable frame from the service"):
        rec._decode(b"\x21\x90\x11\x00")
    with pytest.raises(VendorRetryable, match="text frame"):
        rec._decode("{}")


# --- the recognizer on its own against the emulator -----------------------------------------------


async def run(rec: VolcengineRecognizer, pcm: bytes, chunk_s: float = 0.1,
              pace: float = 0.0) -> list[Transcript]:
    """Start, send ``pcm`` in chunks, finish, and return every result."""
    out: list[Transcript] = []
    await rec.start()

    async def collect() -> None:
        async for t in rec.results():
            out.append(t)

    task = asyncio.create_task(collect())
    size = round(chunk_s * RATE) * 2 * rec.config.channels
    try:
        for i in range(0, len(pcm), size):
            await rec.send(pcm[i:i + size])
            if pace:
                await asyncio.sleep(pace)
        await rec.finish()
        await within(task, 20)
    finally:
        task.cancel()
        await rec.close()
    return out


def recognizer(emu: VolcengineEmulator, channels: int = 1, language: str = "en-US",
               settings: Settings | None = None, **options: Any) -> VolcengineRecognizer:
    rec = create_recognizer("volcengine", "direct", language, RATE, channels, options,
                            settings or emu.configure(Settings(redis_url="redis://unused")))
    assert isinstance(rec, VolcengineRecognizer)
    return rec


@pytest.mark.parametrize(("mode", "result_type"), [
    ("bigmodel", "full"), ("bigmodel_async", "single"), ("bigmodel_async", "full"),
    ("bigmodel_nostream", "single"),
])
async def test_results_finals_partials_words(emulator: VolcengineEmulator, mode: str,
                                             result_type: str) -> None:
    pcm, words = render(SCRIPT)
    got = await run(recognizer(emulator, mode=mode, result_type=result_type), pcm)
    assert finals_of(got) == expected_finals(words)
    assert [[w.text, w.start, w.end] for t in got if t.is_final for w in t.words] == words
    assert [t.result_id for t in got if t.is_final] == ["ch0-0", "ch0-1", "ch0-2"]
    partials = [t for t in got if not t.is_final]
    if mode == "bigmodel_nostream":
        assert partials == []  # answers only at the end (the audio is under 15 s)
    else:
        assert partials[0].text == "tone500" and partials[0].start == 0.5
        assert len({(t.text, t.end) for t in partials}) == len(partials)  # no repeats
    log = emulator.streams[0]
    assert log.mode == mode and log.error is None and bytes(log.audio) == pcm
    assert log.request is not None and log.request["request"]["result_type"] == result_type
    assert log.headers["X-Api-App-Key"] == APP_ID
    assert log.headers["X-Api-Resource-Id"] == "volc.bigasr.sauc.duration"
    assert "X-Api-Connect-Id" in log.headers


async def test_packets_sequences_and_compression(emulator: VolcengineEmulator,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    pcm, _ = render(SCRIPT[:1])  # 1.5 s
    await run(recognizer(emulator), pcm, chunk_s=0.04)
    log = emulator.streams[0]
    assert log.compression == 1
    n = len(log.packet_sizes)
    assert log.sequences == [*range(1, n + 1), -(n + 1)]
    assert log.packet_sizes[:-2] == [6400] * (n - 2) and log.packet_sizes[-1] == 0
    monkeypatch.setattr(VolcengineRecognizer, "use_sequence", False)
    monkeypatch.setattr(VolcengineRecognizer, "compress", False)
    got = await run(recognizer(emulator), pcm)
    log = emulator.streams[1]
    assert log.compression == 0 and set(log.sequences) == {None} and bytes(log.audio) == pcm
    assert finals_of(got) == [("tone500.", 0.5, 1.0)]


async def test_two_channels_are_two_tagged_streams(emulator: VolcengineEmulator) -> None:
    left, lw = render([(0.2, 600, 0.4), (0.8, 900, 0.3)])
    right, rw = render([(0.7, 1500, 0.5)])
    got = await run(recognizer(emulator, channels=2), interleave(left, right))
    assert finals_of(got, 0) == expected_finals(lw)
    assert finals_of(got, 1) == expected_finals(rw)
    assert [len(s.audio) for s in emulator.streams] == [len(left), len(left)]
    assert all(s.request and s.request["audio"]["channel"] == 1 for s in emulator.streams)


async def test_nostream_language_and_api_key_auth(emulator: VolcengineEmulator) -> None:
    settings = emulator.configure(Settings(redis_url="redis://unused"), volcengine_app_id=None,
                                  volcengine_access_token=None,
                                  volcengine_api_key=SecretStr(API_KEY),
                                  volcengine_asr_resource_id="volc.seedasr.sauc.duration")
    rec = recognizer(emulator, language="ja-jp", settings=settings, mode="bigmodel_nostream")
    pcm, words = render(SCRIPT[:2])
    assert finals_of(await run(rec, pcm)) == expected_finals(words)
    log = emulator.streams[0]
    assert log.headers["X-Api-Key"] == API_KEY and "X-Api-Access-Key" not in log.headers
    assert log.request is not None and log.request["audio"]["language"] == "ja-JP"


async def test_long_silence_is_kept_alive_and_times_map_back(
        emulator: VolcengineEmulator) -> None:
    emulator.config.packet_timeout = 0.8
    rec = recognizer(emulator)
    rec.keepalive_after = 0.25
    out: list[Transcript] = []
    await rec.start()

    async def collect() -> None:
        async for t in rec.results():
            out.append(t)

    collector = asyncio.create_task(collect())
    a, _ = render([(0.2, 500, 0.3)], tail=0.4)
    b, _ = render([(0.1, 900, 0.3)], tail=0.4)
    await rec.send(a)
    await asyncio.sleep(2.0)  # no audio for 2.5 × the packet timeout
    await rec.send(b)
    await rec.finish()
    await within(collector, 10)
    await rec.close()
    log = emulator.streams[0]
    assert log.error is None and len(emulator.streams) == 1
    assert len(log.audio) - len(a) - len(b) >= 6 * 6400  # ≥ 6 keep-alives of 200 ms zeros
    assert bytes(log.audio[:len(a)]) == a and bytes(log.audio[-len(b):]) == b
    assert finals_of(out) == [("tone500.", 0.2, 0.5), ("tone900.", 1.0, 1.3)]


async def test_a_stream_with_no_audio_still_ends_cleanly(emulator: VolcengineEmulator) -> None:
    """A replay that resumes at the very end sends nothing: the service would say 45000002."""
    assert await run(recognizer(emulator), b"") == []
    log = emulator.streams[0]
    assert log.error is None and log.packet_sizes == [6400, 0]


async def test_error_frames_end_the_results_with_the_vendor_message(
        emulator: VolcengineEmulator) -> None:
    emulator.faults.append(Fault("error", after_packets=2, code=55000031, message="server busy"))
    with pytest.raises(VendorRetryable, match=r"^volcengine: 55000031: server busy$"):
        await run(recognizer(emulator), render(SCRIPT)[0])
    emulator.config.error_json = False
    emulator.faults.append(Fault("error", after_packets=1, code=45000151, message="bad audio"))
    with pytest.raises(VendorRejected, match=r"^volcengine: 45000151: bad audio$"):
        await run(recognizer(emulator), render(SCRIPT)[0])
    emulator.faults.append(Fault("abort", after_packets=2))
    with pytest.raises(VendorRetryable, match="closed before the last response"):
        await run(recognizer(emulator), render(SCRIPT)[0])


async def test_start_fails_with_a_clear_error(emulator: VolcengineEmulator) -> None:
    base = emulator.configure(Settings(redis_url="redis://unused"))
    wrong = base.model_copy(update={"volcengine_access_token": SecretStr("wrong-token")})
    with pytest.raises(VendorAuthError) as info:
        await recognizer(emulator, settings=wrong).start()
    assert str(info.value) == ("volcengine: 45000010: HTTP 401 at the WebSocket handshake: "
                               "load grant: requested grant not found")
    bad_resource = base.model_copy(update={"volcengine_asr_resource_id": "volc.nope"})
    with pytest.raises(VendorRejected, match=r"resourceId volc\.nope is not allowed"):
        await recognizer(emulator, settings=bad_resource).start()
    missing = base.model_copy(update={"volcengine_access_token": None})
    with pytest.raises(VendorAuthError, match="set VOLCENGINE_APP_ID and VOLCENGINE_ACCESS_TOKEN"):
        await recognizer(emulator, settings=missing).start()
    emulator.config.max_concurrent = 0
    with pytest.raises(VendorRetryable, match="55000031"):
        await recognizer(emulator).start()
    emulator.config.max_concurrent = 100
    emulator.faults.append(Fault("http", status=503, code=55000000, message="unavailable"))
    rec = recognizer(emulator, channels=2)
    with pytest.raises(VendorRetryable, match="HTTP 503"):
        await rec.start()
    await rec.close()
    await wait_for(lambda: not emulator.active, 5, "the other channel's socket to close")


async def test_secrets_never_reach_the_logs(emulator: VolcengineEmulator,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await run(recognizer(emulator), render(SCRIPT[:1])[0])
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("workers.")]
    assert any("X-Api-Access-Key: ***" in m for m in ours)
    assert not any(ACCESS_TOKEN in m for m in ours)
    with pytest.raises(VendorAuthError) as info:
        await recognizer(emulator, settings=emulator.configure(
            Settings(redis_url="redis://unused"),
            volcengine_access_token=SecretStr("leaky-token"))).start()
    assert "leaky-token" not in str(info.value)
    assert not any("leaky-token" in r.getMessage() for r in caplog.records
                   if r.name.startswith("workers."))


# --- whole sessions through a worker --------------------------------------------------------------


@pytest.fixture
async def worker(settings: Settings, emulator: VolcengineEmulator) -> AsyncIterator[Transcriber]:
    """An in-process worker whose volcengine sessions go to the emulator."""
    assert settings.redis_url
    w = Transcriber(emulator.configure(settings), settings.redis_url, name="w-volc")
    stop = asyncio.Event()
    task = asyncio.create_task(w.run(stop))
    yield w
    stop.set()
    await within(task, 30)


async def session(r: aioredis.Redis, keys: Keys, sid: str, pcm: bytes, channels: int = 1,
                  rate: int = RATE, **options: Any) -> tuple[SessionMeta, list[Transcript]]:
    """Run one volcengine session through the worker; its end meta and finals."""
    await create(r, keys, sid, vendor="volcengine", channels=channels, rate=rate,
                 options=options)
    await publish(r, keys, sid, pcm, rate=rate, channels=channels)
    meta = await wait_status(r, keys, sid, timeout=60)
    return meta, [t for _, t in await read_finals(r, keys, sid)]


async def test_two_channel_session_end_to_end(worker: Transcriber, r: aioredis.Redis,
                                              keys: Keys) -> None:
    left, lw = render([(0.3, 400, 0.5), (1.0, 800, 0.4)])
    right, rw = render([(0.9, 1600, 0.6)])
    meta, finals = await session(r, keys, "stereo", interleave(left, right), channels=2)
    assert meta.status is Status.FINISHED, meta.error
    assert finals_of(finals, 0) == expected_finals(lw)
    assert finals_of(finals, 1) == expected_finals(rw)


async def test_8khz_session_is_resampled_to_16khz(worker: Transcriber, r: aioredis.Redis,
                                                  keys: Keys, emulator: VolcengineEmulator) -> None:
    pcm, words = render(SCRIPT[:2], rate=8000)
    meta, finals = await session(r, keys, "narrow", pcm, rate=8000)
    assert meta.status is Status.FINISHED, meta.error
    assert [t.text for t in finals] == [t for t, _, _ in expected_finals(words)]
    for t, (_, start, end) in zip(finals, expected_finals(words), strict=True):
        assert t.start == pytest.approx(start, abs=0.02) and t.end == pytest.approx(end, abs=0.02)
    assert len(emulator.streams[0].audio) == pytest.approx(2 * len(pcm), abs=64)


async def test_retryable_error_is_retried_to_an_exact_transcript(
        worker: Transcriber, r: aioredis.Redis, keys: Keys,
        emulator: VolcengineEmulator) -> None:
    emulator.faults.extend([Fault("error", after_packets=8, code=55000031, message="busy"),
                            Fault("http", status=503, code=55000000, message="unavailable"),
                            Fault("abort", after_packets=6)])
    pcm, words = render(SCRIPT)
    meta, finals = await session(r, keys, "retry", pcm)
    assert meta.status is Status.FINISHED, meta.error
    assert len(emulator.streams) == 4 and emulator.streams[1].http_status == 503
    assert emulator.streams[0].error == (55000031, "busy")
    assert finals_of(finals) == expected_finals(words)  # nothing lost, nothing said twice


async def test_rejected_error_fails_the_session_once(
        worker: Transcriber, r: aioredis.Redis, keys: Keys,
        emulator: VolcengineEmulator) -> None:
    emulator.faults.append(Fault("error", after_packets=3, code=45000151,
                                 message="incorrect audio format"))
    meta, _ = await session(r, keys, "bad", render(SCRIPT)[0])
    assert meta.status is Status.FAILED
    assert meta.error == "volcengine: 45000151: incorrect audio format"
    assert len(emulator.streams) == 1


async def test_bad_token_fails_the_session_once_without_the_token(
        r: aioredis.Redis, keys: Keys, settings: Settings, emulator: VolcengineEmulator) -> None:
    assert settings.redis_url
    s = emulator.configure(settings, volcengine_access_token=SecretStr("wrong-token-123"))
    w = Transcriber(s, settings.redis_url, name="w-volc-badtoken")
    stop = asyncio.Event()
    task = asyncio.create_task(w.run(stop))
    try:
        meta, _ = await session(r, keys, "badtoken", render(SCRIPT[:1])[0])
    finally:
        stop.set()
        await within(task, 30)
    assert meta.status is Status.FAILED
    assert meta.error == ("volcengine: 45000010: HTTP 401 at the WebSocket handshake: "
                          "load grant: requested grant not found")
    assert len(emulator.streams) == 1  # an auth error is not retried


async def test_produce_cli_with_vendor_volcengine(
        worker: Transcriber, r: aioredis.Redis, keys: Keys, env: dict[str, str],
        tmp_path: Path, emulator: VolcengineEmulator) -> None:
    """`python -m voxq produce FILE --vendor volcengine --fast` → worker → emulator → Redis."""
    import soundfile

    pcm, words = render(SCRIPT)
    wav = tmp_path / "tones.wav"
    soundfile.write(wav, np.frombuffer(pcm, "<i2"), RATE, subtype="PCM_16")
    child_env = {**env, "VOXQ_VOLCENGINE_ASR_URL": emulator.url, "VOLCENGINE_APP_ID": APP_ID,
                 "VOLCENGINE_ACCESS_TOKEN": ACCESS_TOKEN}
    proc = await run_voxq(
        "produce", str(wav), "--vendor", "volcengine",
        "--session", "cli", "--fast", "--no-progress", "--option", "result_type=full", env=child_env)
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip() == "cli"
    meta = await wait_status(r, keys, "cli", timeout=60)
    assert meta.status is Status.FINISHED, meta.error
    assert meta.options == {"result_type": "full"}
    assert finals_of([t for _, t in await read_finals(r, keys, "cli")]) == expected_finals(words)
    bad = await run_voxq(
        "produce", str(wav), "--vendor", "volcengine",
        "--session", "cli-bad", "--fast", "--no-progress", "--option", "mode=bigmodel_fast", env=child_env)
    err = bad.stderr
    assert bad.returncode == 2 and "volcengine: invalid options: mode" in err.decode()
    assert not await r.exists(keys.meta("cli-bad"))


# --- rolling to a fresh stream before the limit ----------------------------------------------------


ROLL_SCRIPT: Script = [(0.6, 500 + 100 * i, 0.3) for i in range(10)]  # 9 s, ten utterances


@pytest.mark.parametrize("channels", [1, 2])
async def test_rolls_between_utterances_with_an_exact_transcript(
        emulator: VolcengineEmulator, channels: int) -> None:
    """With the stream limit shortened to 3 s the recognizer opens fresh streams (per
    channel) between utterances: every final once, in session time, across at least two
    rolls; without rolling the limit ends the session."""
    emulator.config.max_stream_seconds = 3.0
    left, lw = render(ROLL_SCRIPT)
    right, rw = render([(g, f + 1000, s) for g, f, s in ROLL_SCRIPT])
    pcm = left if channels == 1 else interleave(left, right)
    rec = recognizer(emulator, channels=channels)
    rec.rollover_after, rec.rollover_deadline = 1.5, 2.8
    got = await run(rec, pcm, pace=0.03)
    assert finals_of(got, 0) == expected_finals(lw)
    if channels == 2:
        assert finals_of(got, 1) == expected_finals(rw)
    assert len(emulator.streams) >= 3 * channels  # at least two rolls
    assert all(s.error is None and s.ended for s in emulator.streams)
    assert b"".join(bytes(s.audio) for s in emulator.streams[::channels]) == left
    with pytest.raises(VendorRetryable, match="maximum duration"):
        await run(recognizer(emulator, channels=channels), pcm, pace=0.03)
