"""The `dashscope` recognizer against the strict Paraformer emulator: options, instructions and
events, per-model rates, heartbeat through silence, every error path, and whole sessions
through a real worker and Redis."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from tests.emulators.common import interleave, silence, tone, wait_for
from tests.emulators.dashscope_asr import (
    API_KEY,
    PHRASE,
    VOCABULARY,
    DashScopeEmulator,
    Fault,
    timeout_message,
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
from workers.vendors.dashscope import protocol
from workers.vendors.dashscope import stt as ds
from workers.vendors.dashscope.protocol import DashScopeOptions
from workers.vendors.dashscope.stt import DashScopeRecognizer
from workers.vendors.registry import create_recognizer, validate_session

RATE = 16000
Script = list[tuple[float, float, float]]  # (silence before, tone Hz, tone seconds)
SCRIPT: Script = [(0.5, 500, 0.5), (0.6, 1200, 0.4), (0.1, 700, 0.3), (0.7, 2000, 0.6)]


@pytest.fixture
async def emulator() -> AsyncIterator[DashScopeEmulator]:
    """A running Paraformer emulator; tests tweak its ``config`` and ``faults``."""
    async with DashScopeEmulator() as emu:
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
    """(text, start, end) of the emulator's finals: words < 300 ms apart are one sentence."""
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


# --- options and the pure protocol ----------------------------------------------------------------


def test_options_are_checked_when_the_session_is_created() -> None:
    ok = validate_session("dashscope", "zh-CN", 16000, 2, {
        "vocabulary_id": "vocab-1", "language_hints": "zh,en", "max_sentence_silence": 800,
        "disfluency_removal_enabled": True, "heartbeat": False})
    assert isinstance(ok, DashScopeOptions) and ok.language_hints == ("zh", "en")
    assert validate_session("dashscope", "zh", 16000, 1, {
        "model": "paraformer-realtime-8k-v2"}).model == "paraformer-realtime-8k-v2"  # type: ignore[attr-defined]
    assert validate_session("dashscope", "auto", 16000, 1, {"model": "paraformer-realtime-v1",
                                                            "phrase_id": "p-1"})
    bad: list[tuple[str, int, dict[str, Any], str]] = [
        ("en-US", 16000, {"model": "paraformer-v3"}, "model"),
        ("en-US", 16000, {"format": "wav"}, "format"),
        ("en-US", 16000, {"language_hints": ["en", "xx"]}, "language_hints"),
        ("en-US", 16000, {"max_sentence_silence": 100}, "max_sentence_silence"),
        ("en-US", 16000, {"max_sentence_silence": 6001}, "max_sentence_silence"),
        ("en-US", 16000, {"vocabulary_id": "bad id!"}, "vocabulary_id"),
        ("en-US", 16000, {"semantic_punctuation_enabled": True, "max_sentence_silence": 800},
         "semantic_punctuation_enabled is false"),
        ("zh-CN", 16000, {"model": "paraformer-realtime-v1", "vocabulary_id": "v"}, "v2 models"),
        ("zh-CN", 16000, {"model": "paraformer-realtime-8k-v2", "language_hints": "zh"},
         "language_hints"),
        ("en-US", 16000, {"phrase_id": "p"}, "phrase_id"),
        ("en-US", 16000, {"model": "paraformer-realtime-8k-v1"}, "Chinese only"),
        ("sv-SE", 16000, {}, "not one paraformer-realtime-v2 recognises"),
        ("zh-CN", 8000, {"model": "paraformer-realtime-v1"}, "16000 Hz"),
        ("en-US", 16000, {"heartbeat": "sometimes"}, "heartbeat"),
    ]
    for language, rate, options, word in bad:
        with pytest.raises(VendorOptionError, match=r"^dashscope: .*" + word):
            validate_session("dashscope", language, rate, 1, options)


def test_instructions_follow_the_notes() -> None:
    opts = DashScopeOptions(vocabulary_id="vocab-9", disfluency_removal_enabled=False,
                            inverse_text_normalization_enabled=True)
    run = json.loads(protocol.run_task("t" * 32, opts, sample_rate=48000,
                                       language_hints=["ja"]))
    assert run == {
        "header": {"action": "run-task", "task_id": "t" * 32, "streaming": "duplex"},
        "payload": {"task_group": "audio", "task": "asr", "function": "recognition",
                    "model": "paraformer-realtime-v2", "input": {},
                    "parameters": {"format": "pcm", "sample_rate": 48000,
                                   "vocabulary_id": "vocab-9",
                                   "disfluency_removal_enabled": False,
                                   "inverse_text_normalization_enabled": True,
                                   "language_hints": ["ja"], "heartbeat": True}}}
    v1 = json.loads(protocol.run_task("x", DashScopeOptions(model="paraformer-realtime-v1",
                                                            phrase_id="ph"),
                                      sample_rate=16000, language_hints=None))
    assert "heartbeat" not in v1["payload"]["parameters"]
    assert v1["payload"]["resources"] == [{"resource_id": "ph", "resource_type": "asr_phrase"}]
    assert json.loads(protocol.finish_task("abc")) == {
        "header": {"action": "finish-task", "task_id": "abc", "streaming": "duplex"},
        "payload": {"input": {}}}
    assert protocol.session_hints("en-GB", DashScopeOptions()) == ["en"]
    assert protocol.session_hints("yue", DashScopeOptions()) == ["yue"]
    assert protocol.session_hints("en-US", DashScopeOptions(language_hints=("zh", "en"))) == \
        ["zh", "en"]
    assert protocol.valid_task_id("2bf83b9a-baeb-4fda-8d9a-000000000001")
    assert protocol.valid_task_id("0" * 32) and not protocol.valid_task_id("x")


def test_events_of_the_notes_parse() -> None:
    tid = "2bf83b9a-baeb-4fda-8d9a-000000000001"
    partial = protocol.parse_event(json.dumps({
        "header": {"task_id": tid, "event": "result-generated", "attributes": {}},
        "payload": {"output": {"sentence": {
            "begin_time": 170, "end_time": None, "text": "好我知", "heartbeat": False,
            "sentence_end": False, "words": [
                {"begin_time": 170, "end_time": 295, "text": "好", "punctuation": ""},
                {"begin_time": 295, "end_time": 503, "text": "我", "punctuation": None}]}},
            "usage": None}}, ensure_ascii=False))
    assert partial.kind == "result-generated" and partial.task_id == tid
    assert partial.sentence == protocol.Sentence(
        "好我知", 170, None, False, False,
        (protocol.Word("好", 170, 295), protocol.Word("我", 295, 503)))
    final = protocol.parse_event(json.dumps({
        "header": {"task_id": tid, "event": "result-generated", "attributes": {}},
        "payload": {"output": {"sentence": {"begin_time": 170, "end_time": 920,
                                            "text": "好，我知道了", "sentence_end": True,
                                            "words": []}}, "usage": {"duration": 3}}}))
    assert final.sentence is not None and final.sentence.is_final and final.sentence.end_ms == 920
    beat = protocol.parse_event(json.dumps({
        "header": {"task_id": tid, "event": "result-generated", "attributes": {}},
        "payload": {"output": {"sentence": {"begin_time": 0, "end_time": None, "text": "",
                                            "heartbeat": True, "sentence_end": False,
                                            "words": []}}}}))
    assert beat.sentence is not None and beat.sentence.heartbeat
    failed = protocol.parse_event(json.dumps({
        "header": {"task_id": tid, "event": "task-failed", "error_code": "CLIENT_ERROR",
                   "error_message": "request timeout after 23 seconds.", "attributes": {}},
        "payload": {}}))
    assert (failed.kind, failed.error_code, failed.error_message) == \
        ("task-failed", "CLIENT_ERROR", "request timeout after 23 seconds.")
    done = protocol.parse_event('{"header":{"task_id":"a","event":"task-finished","attributes":{}},'
                                '"payload":{"output":{},"usage":null}}')
    assert done.kind == "task-finished" and done.sentence is None
    for bad in (b"{}", "not json", "[]", '{"header":{"event":"task-paused"}}',
                '{"header":{"event":"result-generated"},"payload":{"output":{"sentence":[]}}}',
                '{"header":{"event":"result-generated"},"payload":{"output":{"sentence":'
                '{"begin_time":-5}}}}'):
        with pytest.raises(protocol.ProtocolError):
            protocol.parse_event(bad)


@pytest.mark.parametrize(("code", "cls"), [
    ("CLIENT_ERROR", VendorRetryable), ("RequestTimeOut", VendorRetryable),
    ("Throttling.RateQuota", VendorRetryable), ("InternalError.Algo", VendorRetryable),
    ("ModelUnavailable", VendorRetryable), ("InvalidParameter", VendorRejected),
    ("ModelNotFound", VendorRejected), ("NotFound", VendorRejected),
    ("NO_VALID_AUDIO_ERROR", VendorRejected), ("Arrearage", VendorRejected),
    ("InvalidApiKey", VendorAuthError), ("Model.AccessDenied", VendorAuthError),
    ("SomethingNew", VendorRejected),
])
def test_error_codes_map_to_retryable_or_not(code: str, cls: type[VendorError]) -> None:
    error = ds.task_error(code, f"boom for {API_KEY}", (API_KEY,))
    assert type(error) is cls
    assert str(error) == f"dashscope: {code}: boom for ***"


def test_handshake_errors_map_by_status() -> None:
    err = ds.handshake_error(401, b'{"code":"InvalidApiKey","message":"Invalid API-key provided."}')
    assert isinstance(err, VendorAuthError)
    assert str(err) == ("dashscope: InvalidApiKey: HTTP 401 at the WebSocket handshake: "
                        "Invalid API-key provided.")
    assert isinstance(ds.handshake_error(503, b"service unavailable"), VendorRetryable)
    assert isinstance(ds.handshake_error(404, b""), VendorRejected)


def test_sentence_mapping_and_keepalive_time() -> None:
    """Partials end at their last word; heartbeats and repeats are dropped; keep-alive silence
    inserted at 1.0-2.0 s is taken out of the times; the result id follows the sentence."""
    rec = create_recognizer("dashscope", "m", "en-US", RATE, 1, {},
                            Settings(redis_url="redis://unused"))
    assert isinstance(rec, DashScopeRecognizer)
    timeline = Timeline(rec.input_rate)
    timeline.add(RATE)
    timeline.add(RATE, inserted=True)
    timeline.add(RATE)
    state = protocol.SentenceState()

    def transcript(s: protocol.Sentence) -> Transcript | None:
        t = protocol.to_transcript(s, state, 0)
        return None if t is None else timeline.rebase(t, rec.time_digits)

    words = (protocol.Word("好", 170, 295), protocol.Word("我", 2295, 2503, "，"))
    partial = protocol.Sentence("好我", 170, None, False, False, words)
    t = transcript(partial)
    assert t is not None and (t.text, t.is_final, t.start, t.end, t.result_id) == \
        ("好我", False, 0.17, 1.503, "ch0-0")
    assert [(w.text, w.start, w.end) for w in t.words] == [("好", 0.17, 0.295),
                                                           ("我", 1.295, 1.503)]
    assert transcript(partial) is None  # unchanged partial
    assert transcript(protocol.Sentence("", 0, None, False, True)) is None
    final = transcript(protocol.Sentence("好，我。", 170, 2600, True, False, words))
    assert final is not None and (final.is_final, final.end, final.result_id) == \
        (True, 1.6, "ch0-0")
    nxt = transcript(protocol.Sentence("再", 2700, None, False, False, ()))
    assert nxt is not None and (nxt.start, nxt.end, nxt.result_id) == (1.7, 1.7, "ch0-1")


def test_server_garbage_is_a_retryable_protocol_error() -> None:
    rec = create_recognizer("dashscope", "g", "en-US", RATE, 1, {},
                            Settings(redis_url="redis://unused"))
    assert isinstance(rec, DashScopeRecognizer)
    with pytest.raises(VendorRetryable, match="unexpected message from the service"):
        rec._parse(b"\x00\x01")
    with pytest.raises(VendorRetryable, match="unknown event"):
        rec._parse('{"header":{"event":"task-paused"},"payload":{}}')


# --- the recognizer on its own against the emulator -----------------------------------------------


async def run(rec: DashScopeRecognizer, pcm: bytes, chunk_s: float = 0.1) -> list[Transcript]:
    """Start, send ``pcm`` in chunks, finish, and return every result."""
    out: list[Transcript] = []
    await rec.start()

    async def collect() -> None:
        async for t in rec.results():
            out.append(t)

    task = asyncio.create_task(collect())
    size = round(chunk_s * rec.input_rate) * 2 * rec.config.channels
    try:
        for i in range(0, len(pcm), size):
            await rec.send(pcm[i:i + size])
        await rec.finish()
        await within(task, 20)
    finally:
        task.cancel()
        await rec.close()
    return out


def recognizer(emu: DashScopeEmulator, channels: int = 1, language: str = "en-US",
               rate: int = RATE, settings: Settings | None = None,
               **options: Any) -> DashScopeRecognizer:
    rec = create_recognizer("dashscope", "direct", language, rate, channels, options,
                            settings or emu.configure(Settings(redis_url="redis://unused")))
    assert isinstance(rec, DashScopeRecognizer)
    return rec


async def test_results_partials_finals_and_words(emulator: DashScopeEmulator) -> None:
    pcm, words = render(SCRIPT)
    got = await run(recognizer(emulator), pcm, chunk_s=0.04)
    assert finals_of(got) == expected_finals(words)
    assert [[w.text, w.start, w.end] for t in got if t.is_final for w in t.words] == words
    assert [t.result_id for t in got if t.is_final] == ["ch0-0", "ch0-1", "ch0-2"]
    partials = [t for t in got if not t.is_final]
    assert partials[0].text == "tone500" and (partials[0].start, partials[0].end) == (0.5, 0.6)
    assert {t.result_id for t in partials} == {"ch0-0", "ch0-1", "ch0-2"}
    task = emulator.tasks[0]
    assert task.failure is None and task.finished and bytes(task.audio) == pcm
    assert set(task.frame_sizes[:-1]) == {3200}  # 40 ms sends re-cut into 100 ms frames
    assert task.params == {"format": "pcm", "sample_rate": 16000, "language_hints": ["en"],
                           "heartbeat": True}
    assert emulator.connections[0].headers["Authorization"] == f"Bearer {API_KEY}"
    assert len(task.task_id) == 32


async def test_vocabulary_reaches_the_task(emulator: DashScopeEmulator) -> None:
    pcm, _ = render(SCRIPT[:2])
    got = await run(recognizer(emulator, vocabulary_id=VOCABULARY, language_hints="en,zh",
                               max_sentence_silence=500), pcm)
    assert [t.text for t in got if t.is_final] == ["hello.", "tone1200."]
    params = emulator.tasks[0].params
    assert params["vocabulary_id"] == VOCABULARY and params["language_hints"] == ["en", "zh"]
    assert params["max_sentence_silence"] == 500


async def test_two_channels_are_two_tagged_tasks(emulator: DashScopeEmulator) -> None:
    left, lw = render([(0.2, 600, 0.4), (0.8, 900, 0.3)])
    right, rw = render([(0.7, 1500, 0.5)])
    got = await run(recognizer(emulator, channels=2), interleave(left, right))
    assert finals_of(got, 0) == expected_finals(lw)
    assert finals_of(got, 1) == expected_finals(rw)
    assert len(emulator.connections) == 2 and all(len(c.tasks) == 1 for c in emulator.connections)
    assert [len(t.audio) for t in emulator.tasks] == [len(left), len(left)]


@pytest.mark.parametrize(("model", "rate"), [("paraformer-realtime-8k-v2", 8000),
                                             ("paraformer-realtime-v1", 16000),
                                             ("paraformer-realtime-8k-v1", 8000)])
async def test_fixed_rate_models_get_their_rate(emulator: DashScopeEmulator, model: str,
                                                rate: int) -> None:
    rec = recognizer(emulator, language="zh-CN", rate=48000, model=model)
    assert rec.input_rate == rate  # the worker resamples the bus audio to it
    pcm, words = render(SCRIPT[:2], rate=rate)
    assert finals_of(await run(rec, pcm)) == expected_finals(words)
    params = emulator.tasks[0].params
    assert params["sample_rate"] == rate and "language_hints" not in params
    assert ("heartbeat" in params) == model.endswith("-v2")


async def test_heartbeat_and_keepalive_through_a_long_silence(
        emulator: DashScopeEmulator) -> None:
    """No audio for 2 s against a 0.8 s no-audio and 1 s silence timeout: the task survives;
    heartbeat results are skipped; times skip the keep-alive silence."""
    emulator.config.no_audio_timeout = 0.8
    emulator.config.silence_timeout = 1.0
    emulator.config.heartbeat_every = 0.3
    rec = recognizer(emulator)
    rec.keepalive_after = 0.2
    out: list[Transcript] = []
    await rec.start()

    async def collect() -> None:
        async for t in rec.results():
            out.append(t)

    collector = asyncio.create_task(collect())
    a, _ = render([(0.2, 500, 0.3)], tail=0.4)
    b, _ = render([(0.1, 900, 0.3)], tail=0.4)
    await rec.send(a)
    await asyncio.sleep(2.0)
    await rec.send(b)
    await rec.finish()
    await within(collector, 10)
    await rec.close()
    task = emulator.tasks[0]
    assert task.failure is None and task.finished and task.heartbeats >= 2
    assert len(task.audio) - len(a) - len(b) >= 8 * 3200  # keep-alive frames of 100 ms zeros
    assert finals_of(out) == [("tone500.", 0.2, 0.5), ("tone900.", 1.0, 1.3)]
    assert all(t.text for t in out)


async def test_silence_without_heartbeat_times_out_with_the_vendor_error(
        emulator: DashScopeEmulator) -> None:
    emulator.config.silence_timeout = 0.5
    rec = recognizer(emulator, heartbeat=False)
    rec.keepalive_after = 0.1
    await rec.start()
    with pytest.raises(VendorRetryable, match=r"^dashscope: RequestTimeOut: Response timeout!$"):
        async for _ in rec.results():
            pass
    await rec.close()
    assert emulator.tasks[0].params["heartbeat"] is False


async def test_no_audio_at_all_times_out_without_keepalive(emulator: DashScopeEmulator) -> None:
    emulator.config.no_audio_timeout = 0.4
    rec = recognizer(emulator)
    rec.keepalive_after = 30.0
    await rec.start()
    with pytest.raises(VendorRetryable) as info:
        async for _ in rec.results():
            pass
    await rec.close()
    assert str(info.value) == f"dashscope: CLIENT_ERROR: {timeout_message(0.4)}"


async def test_the_client_waits_for_task_started(emulator: DashScopeEmulator) -> None:
    emulator.config.task_started_delay = 0.3
    pcm, words = render(SCRIPT[:1])
    assert finals_of(await run(recognizer(emulator), pcm)) == expected_finals(words)


async def test_a_task_with_no_audio_still_ends_cleanly(emulator: DashScopeEmulator) -> None:
    assert await run(recognizer(emulator), b"") == []
    assert emulator.tasks[0].frame_sizes == [3200] and emulator.tasks[0].finished


async def test_task_failed_ends_the_results_with_the_vendor_message(
        emulator: DashScopeEmulator) -> None:
    emulator.faults.append(Fault("task-failed", after_frames=3, code="Throttling.RateQuota",
                                 message="Requests rate limit exceeded."))
    with pytest.raises(VendorRetryable,
                       match=r"^dashscope: Throttling.RateQuota: Requests rate limit exceeded.$"):
        await run(recognizer(emulator), render(SCRIPT)[0])
    emulator.faults.append(Fault("task-failed", after_frames=2, code="NO_VALID_AUDIO_ERROR",
                                 message="Invalid audio."))
    with pytest.raises(VendorRejected, match=r"NO_VALID_AUDIO_ERROR: Invalid audio\."):
        await run(recognizer(emulator), render(SCRIPT)[0])
    emulator.faults.append(Fault("abort", after_frames=2))
    with pytest.raises(VendorRetryable, match="closed before task-finished"):
        await run(recognizer(emulator), render(SCRIPT)[0])


async def test_no_speech_after_finish_is_a_clean_end(emulator: DashScopeEmulator) -> None:
    """NO_INPUT_AUDIO_ERROR answering finish-task (a silent call leg) is not a failure."""
    pcm = silence(0.5)
    emulator.faults.append(Fault("task-failed", after_frames=5, code="NO_INPUT_AUDIO_ERROR",
                                 message="no valid speech"))
    assert await run(recognizer(emulator), pcm, chunk_s=0.1) == []


async def test_start_fails_with_a_clear_error(emulator: DashScopeEmulator) -> None:
    base = emulator.configure(Settings(redis_url="redis://unused"))
    with pytest.raises(VendorAuthError) as info:
        await recognizer(emulator, settings=base.model_copy(
            update={"dashscope_api_key": SecretStr("sk-wrong")})).start()
    assert str(info.value) == ("dashscope: InvalidApiKey: HTTP 401 at the WebSocket handshake: "
                               "Invalid API-key provided.")
    with pytest.raises(VendorAuthError, match="set DASHSCOPE_API_KEY"):
        await recognizer(emulator, settings=base.model_copy(
            update={"dashscope_api_key": None})).start()
    with pytest.raises(VendorRejected, match="HTTP 404"):
        await recognizer(emulator, settings=base.model_copy(
            update={"dashscope_url": base.dashscope_url + "/v2"})).start()
    with pytest.raises(VendorRejected, match=r"^dashscope: NotFound: Vocabulary 'vocab-x'"):
        await recognizer(emulator, vocabulary_id="vocab-x").start()
    emulator.faults.append(Fault("http", status=503, code="ServiceUnavailable",
                                 message="service unavailable"))
    rec = recognizer(emulator, channels=2)
    with pytest.raises(VendorRetryable, match="HTTP 503"):
        await rec.start()
    await rec.close()
    await wait_for(lambda: not emulator.active, 5, "the other channel's socket to close")


async def test_workspace_header_and_secrets_never_reach_the_logs(
        emulator: DashScopeEmulator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    settings = emulator.configure(Settings(redis_url="redis://unused"),
                                  dashscope_workspace="ws-123")
    await run(recognizer(emulator, settings=settings), render(SCRIPT[:1])[0])
    assert emulator.connections[0].headers["X-DashScope-WorkSpace"] == "ws-123"
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("workers.")]
    assert any("Authorization: ***" in m for m in ours)
    assert not any(API_KEY in m for m in ours)


async def test_phrase_resource_on_v1(emulator: DashScopeEmulator) -> None:
    pcm, words = render(SCRIPT[:1])
    rec = recognizer(emulator, language="zh", model="paraformer-realtime-v1", phrase_id=PHRASE)
    assert finals_of(await run(rec, pcm)) == expected_finals(words)
    assert emulator.tasks[0].run_task["payload"]["resources"] == [
        {"resource_id": PHRASE, "resource_type": "asr_phrase"}]


# --- whole sessions through a worker --------------------------------------------------------------


@pytest.fixture
async def worker(settings: Settings, emulator: DashScopeEmulator) -> AsyncIterator[Transcriber]:
    """An in-process worker whose dashscope sessions go to the emulator."""
    assert settings.redis_url
    w = Transcriber(emulator.configure(settings), settings.redis_url, name="w-dashscope")
    stop = asyncio.Event()
    task = asyncio.create_task(w.run(stop))
    yield w
    stop.set()
    await within(task, 30)


async def session(r: aioredis.Redis, keys: Keys, sid: str, pcm: bytes, channels: int = 1,
                  rate: int = RATE, language: str = "en-US",
                  **options: Any) -> tuple[SessionMeta, list[Transcript]]:
    """Run one dashscope session through the worker; its end meta and finals."""
    await create(r, keys, sid, vendor="dashscope", channels=channels, rate=rate,
                 language=language, options=options)
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
    assert [t.seq for t in finals] == [0, 1, 2]


async def test_8k_model_on_a_16k_session(worker: Transcriber, r: aioredis.Redis, keys: Keys,
                                         emulator: DashScopeEmulator) -> None:
    pcm, words = render(SCRIPT[:2])
    meta, finals = await session(r, keys, "8k", pcm, language="zh-CN",
                                 model="paraformer-realtime-8k-v2")
    assert meta.status is Status.FINISHED, meta.error
    assert [t.text for t in finals] == [t for t, _, _ in expected_finals(words)]
    for t, (_, start, end) in zip(finals, expected_finals(words), strict=True):
        assert t.start == pytest.approx(start, abs=0.02) and t.end == pytest.approx(end, abs=0.02)
    assert emulator.tasks[0].rate == 8000


async def test_retryable_failure_is_retried_to_an_exact_transcript(
        worker: Transcriber, r: aioredis.Redis, keys: Keys, emulator: DashScopeEmulator) -> None:
    emulator.faults.extend([Fault("task-failed", after_frames=14, code="InternalError",
                                  message="Internal server error!"),
                            Fault("http", status=503, code="ServiceUnavailable",
                                  message="service unavailable"),
                            Fault("abort", after_frames=9)])
    pcm, words = render(SCRIPT)
    meta, finals = await session(r, keys, "retry", pcm)
    assert meta.status is Status.FINISHED, meta.error
    assert len(emulator.connections) == 4 and emulator.connections[1].http_status == 503
    assert emulator.connections[0].failure == ("InternalError", "Internal server error!")
    assert finals_of(finals) == expected_finals(words)  # nothing lost, nothing said twice


async def test_rejected_failure_fails_the_session_once(
        worker: Transcriber, r: aioredis.Redis, keys: Keys, emulator: DashScopeEmulator) -> None:
    emulator.faults.append(Fault("task-failed", after_frames=4, code="Arrearage",
                                 message="Access denied, please make sure your account is in "
                                         "good standing."))
    meta, _ = await session(r, keys, "owed", render(SCRIPT)[0])
    assert meta.status is Status.FAILED
    assert meta.error == ("dashscope: Arrearage: Access denied, please make sure your account "
                          "is in good standing.")
    assert len(emulator.connections) == 1


async def test_bad_key_fails_the_session_once_without_the_key(
        r: aioredis.Redis, keys: Keys, settings: Settings, emulator: DashScopeEmulator) -> None:
    assert settings.redis_url
    s = emulator.configure(settings, dashscope_api_key=SecretStr("sk-wrong-key"))
    w = Transcriber(s, settings.redis_url, name="w-dashscope-badkey")
    stop = asyncio.Event()
    task = asyncio.create_task(w.run(stop))
    try:
        meta, _ = await session(r, keys, "badkey", render(SCRIPT[:1])[0])
    finally:
        stop.set()
        await within(task, 30)
    assert meta.status is Status.FAILED
    assert meta.error == ("dashscope: InvalidApiKey: HTTP 401 at the WebSocket handshake: "
                          "Invalid API-key provided.")
    assert len(emulator.connections) == 1  # an auth error is not retried


async def test_produce_cli_with_vendor_dashscope(
        worker: Transcriber, r: aioredis.Redis, keys: Keys, env: dict[str, str],
        tmp_path: Path, emulator: DashScopeEmulator) -> None:
    """`python -m voxq produce FILE --vendor dashscope --fast` → worker → emulator → Redis."""
    import soundfile

    pcm, words = render(SCRIPT)
    wav = tmp_path / "tones.wav"
    soundfile.write(wav, np.frombuffer(pcm, "<i2"), RATE, subtype="PCM_16")
    child_env = {**env, "VOXQ_DASHSCOPE_URL": emulator.url, "DASHSCOPE_API_KEY": API_KEY}
    proc = await run_voxq(
        "produce", str(wav), "--vendor", "dashscope",
        "--session", "cli", "--fast", "--no-progress", "--option",
        f"vocabulary_id={VOCABULARY}", env=child_env)
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip() == "cli"
    meta = await wait_status(r, keys, "cli", timeout=60)
    assert meta.status is Status.FINISHED, meta.error
    assert meta.options == {"vocabulary_id": VOCABULARY}
    want = [(text.replace("tone500", "hello"), s, e) for text, s, e in expected_finals(words)]
    assert finals_of([t for _, t in await read_finals(r, keys, "cli")]) == want
    bad = await run_voxq(
        "produce", str(wav), "--vendor", "dashscope",
        "--session", "cli-bad", "--fast", "--no-progress", "--option",
        "max_sentence_silence=50", env=child_env)
    err = bad.stderr
    assert bad.returncode == 2 and "dashscope: invalid options: max_sentence_silence" in err.decode()
    assert not await r.exists(keys.meta("cli-bad"))


# --- rolling to a fresh task before the limit ------------------------------------------------------


ROLL_SCRIPT: Script = [(0.6, 500 + 100 * i, 0.3) for i in range(10)]  # 9 s, ten utterances


@pytest.mark.parametrize("channels", [1, 2])
async def test_rolls_between_utterances_with_an_exact_transcript(
        emulator: DashScopeEmulator, channels: int) -> None:
    """With the task limit shortened to 3 s the recognizer opens fresh tasks (per channel)
    between utterances: every final once, in session time, across at least two rolls."""
    from tests.emulators.dashscope_asr import TASK_TOO_LONG
    from tests.emulators.tone_words import drive

    emulator.config.max_task_seconds = 3.0
    left, lw = render(ROLL_SCRIPT)
    right, rw = render([(g, f + 1000, s) for g, f, s in ROLL_SCRIPT])
    pcm = left if channels == 1 else interleave(left, right)
    rec = recognizer(emulator, channels=channels)
    rec.rollover_after, rec.rollover_deadline = 1.5, 2.8
    got = await drive(rec, pcm, pace=0.03)
    assert finals_of(got, 0) == expected_finals(lw)
    if channels == 2:
        assert finals_of(got, 1) == expected_finals(rw)
    assert len(emulator.tasks) >= 3 * channels  # at least two rolls
    assert all(t.failure is None and t.finished for t in emulator.tasks)
    assert b"".join(bytes(t.audio) for t in emulator.tasks[::channels]) == left
    with pytest.raises(VendorRetryable, match=TASK_TOO_LONG):  # without rolling: the limit
        await drive(recognizer(emulator, channels=channels), pcm, pace=0.03)
