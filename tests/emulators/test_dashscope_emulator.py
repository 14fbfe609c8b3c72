"""The DashScope emulator is strict where the notes say the service is (handshake, every
instruction, audio rules, timers) and its tone-code results have the documented shapes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

from tests.emulators.common import silence, tone
from tests.emulators.dashscope_asr import (
    API_KEY,
    INVALID_PAYLOAD,
    MISSING_INPUT,
    MISSING_MODEL,
    MODEL_NOT_FOUND,
    PATH,
    VOCABULARY,
    DashScopeEmulator,
    Fault,
    timeout_message,
)
from voxq.aio import within

TASK = "2bf83b9a-baeb-4fda-8d9a-000000000001"


@pytest.fixture
async def emu() -> AsyncIterator[DashScopeEmulator]:
    """A running emulator; tests tweak its ``config`` and ``faults``."""
    async with DashScopeEmulator() as emulator:
        yield emulator


def open_ws(emu: DashScopeEmulator, path: str = PATH, auth: str | None = f"Bearer {API_KEY}"
            ) -> connect:
    headers = {"Authorization": auth} if auth is not None else {}
    return connect(f"ws://127.0.0.1:{emu.port}{path}", additional_headers=headers,
                   compression=None, ping_interval=None, open_timeout=5)


def run_task(task_id: str = TASK, model: str = "paraformer-realtime-v2", **params: Any
             ) -> dict[str, Any]:
    parameters = {"format": "pcm", "sample_rate": 16000, **params}
    return {"header": {"action": "run-task", "task_id": task_id, "streaming": "duplex"},
            "payload": {"task_group": "audio", "task": "asr", "function": "recognition",
                        "model": model, "parameters": parameters, "input": {}}}


def finish(task_id: str = TASK) -> dict[str, Any]:
    return {"header": {"action": "finish-task", "task_id": task_id, "streaming": "duplex"},
            "payload": {"input": {}}}


async def event(ws: ClientConnection) -> dict[str, Any]:
    """The next server message: always JSON in a text frame for recognition."""
    raw = await within(ws.recv(), 5)
    assert isinstance(raw, str), raw
    doc: dict[str, Any] = json.loads(raw)
    assert doc["header"]["attributes"] == {}
    return doc


async def started(ws: ClientConnection, task: dict[str, Any] | None = None) -> None:
    await ws.send(json.dumps(task or run_task()))
    doc = await event(ws)
    assert doc == {"header": {"task_id": (task or run_task())["header"]["task_id"],
                              "event": "task-started", "attributes": {}}, "payload": {}}


async def failure(ws: ClientConnection) -> tuple[str, str]:
    """Skip results up to task-failed; its code and message; then the server closes."""
    while True:
        doc = await event(ws)
        if doc["header"]["event"] == "task-failed":
            break
    assert doc["payload"] == {}
    with pytest.raises(ConnectionClosed):
        await within(ws.recv(), 5)
    assert ws.close_code == 1000
    return doc["header"]["error_code"], doc["header"]["error_message"]


async def results_until_finished(ws: ClientConnection) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        doc = await event(ws)
        if doc["header"]["event"] == "task-finished":
            assert doc["payload"] == {"output": {}, "usage": None}
            return out
        assert doc["header"]["event"] == "result-generated"
        out.append(doc)


# --- handshake ------------------------------------------------------------------------------------


async def test_handshake_checks_path_and_bearer_key(emu: DashScopeEmulator) -> None:
    for path, auth, status in ((PATH + "/x", f"Bearer {API_KEY}", 404), (PATH, None, 401),
                               (PATH, f"Token {API_KEY}", 401), (PATH, "Bearer sk-nope", 401)):
        with pytest.raises(InvalidStatus) as info:
            async with open_ws(emu, path, auth):
                pass
        assert info.value.response.status_code == status
    body = json.loads(info.value.response.body)
    assert (body["code"], body["message"]) == ("InvalidApiKey", "Invalid API-key provided.")
    async with open_ws(emu, PATH + "/", f"bearer {API_KEY}") as ws:  # SDK spelling, trailing /
        await started(ws)


# --- instructions ---------------------------------------------------------------------------------


def _without(doc: dict[str, Any], *path: str) -> dict[str, Any]:
    out = json.loads(json.dumps(doc))
    target = out
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return out


def _with(doc: dict[str, Any], value: Any, *path: str) -> dict[str, Any]:
    out = json.loads(json.dumps(doc))
    target = out
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return out


BAD_RUN_TASKS: list[tuple[Any, str, str]] = [
    ("not json", "InvalidParameter", INVALID_PAYLOAD),
    ([], "InvalidParameter", INVALID_PAYLOAD),
    (_without(run_task(), "payload"), "InvalidParameter", INVALID_PAYLOAD),
    (_with(run_task(), "start-task", "header", "action"), "InvalidParameter", "Unsupported action"),
    (_with(run_task(), "", "header", "task_id"), "InvalidParameter", "task_id"),
    (_with(run_task(), "out", "header", "streaming"), "InvalidParameter", "streaming"),
    (_with(run_task(), "tts", "payload", "task"), "InvalidParameter", "task can not be null"),
    (_with(run_task(), "text", "payload", "task_group"), "InvalidParameter", "task can not be null"),
    (_without(run_task(), "payload", "model"), "InvalidParameter", MISSING_MODEL),
    (run_task(model="paraformer-realtime-v9"), "ModelNotFound", MODEL_NOT_FOUND),
    (_without(run_task(), "payload", "input"), "InvalidParameter", MISSING_INPUT),
    (_without(run_task(), "payload", "parameters", "format"), "InvalidParameter", "format"),
    (run_task(format="flac"), "InvalidParameter", "format"),
    (_without(run_task(), "payload", "parameters", "sample_rate"), "InvalidParameter",
     "sample_rate"),
    (run_task(sample_rate="16000"), "InvalidParameter", "sample_rate"),
    (run_task(model="paraformer-realtime-8k-v2"), "InvalidParameter", "8000"),
    (run_task(model="paraformer-realtime-v1", sample_rate=8000), "InvalidParameter", "16000"),
    (run_task(max_sentence_silence=199), "InvalidParameter", "max_sentence_silence"),
    (run_task(max_sentence_silence=6001), "InvalidParameter", "max_sentence_silence"),
    (run_task(language_hints=["en", "tlh"]), "InvalidParameter", "language_hints"),
    (run_task(heartbeat="yes"), "InvalidParameter", "heartbeat"),
    (run_task(vocabulary_id="vocab-unknown"), "NotFound", "vocab-unknown"),
    (finish(), "InvalidParameter", "not running"),
    ({"header": {"action": "continue-task", "task_id": TASK, "streaming": "duplex"},
      "payload": {"input": {"text": "hi"}}}, "InvalidParameter", "not running"),
]


@pytest.mark.parametrize(("message", "code", "text"), BAD_RUN_TASKS)
async def test_bad_instructions_fail_the_task_and_close(emu: DashScopeEmulator, message: Any,
                                                        code: str, text: str) -> None:
    async with open_ws(emu) as ws:
        await ws.send(message if isinstance(message, str) else json.dumps(message))
        got = await failure(ws)
    assert got[0] == code and text in got[1]


async def test_unknown_parameters_are_accepted(emu: DashScopeEmulator) -> None:
    async with open_ws(emu) as ws:
        await started(ws, run_task(intermediate_result_enabled=True, vocabulary_id=VOCABULARY,
                                   semantic_punctuation_enabled=False))
        await ws.send(json.dumps(finish()))
        assert await results_until_finished(ws) == []


@pytest.mark.parametrize(("follow_up", "code", "text"), [
    (run_task(task_id="0" * 32), "InvalidParameter", "already running"),
    (finish("f" * 32), "InvalidParameter", "not running"),
    (_with(finish(), {"end_of_stream": True}, "payload", "input"), "InvalidParameter",
     INVALID_PAYLOAD),
    ({"header": {"action": "continue-task", "task_id": TASK, "streaming": "duplex"},
      "payload": {"input": {"text": "hi"}}}, "InvalidParameter", "not part of a recognition"),
])
async def test_bad_instructions_during_a_task(emu: DashScopeEmulator, follow_up: dict[str, Any],
                                              code: str, text: str) -> None:
    async with open_ws(emu) as ws:
        await started(ws)
        await ws.send(json.dumps(follow_up))
        got = await failure(ws)
    assert got[0] == code and text in got[1]
    assert emu.tasks[0].failure == got


async def test_connection_reuse_needs_a_new_task_id(emu: DashScopeEmulator) -> None:
    async with open_ws(emu) as ws:
        for task_id in (TASK, "a" * 32):
            await started(ws, run_task(task_id=task_id))
            await ws.send(silence(0.1))
            await ws.send(json.dumps(finish(task_id)))
            await results_until_finished(ws)
        await ws.send(json.dumps(run_task()))
        code, message = await failure(ws)
    assert code == "InvalidParameter" and "Duplicate task_id" in message
    assert [t.finished for t in emu.tasks] == [True, True]


# --- audio ----------------------------------------------------------------------------------------


async def test_audio_outside_a_task_fails(emu: DashScopeEmulator) -> None:
    async with open_ws(emu) as ws:
        await ws.send(silence(0.1))
        assert await failure(ws) == ("InvalidParameter",
                                     "Audio received while no task is running.")
    emu.config.task_started_delay = 0.3
    async with open_ws(emu) as ws:
        await ws.send(json.dumps(run_task()))
        await ws.send(silence(0.1))  # not waiting for task-started
        code, message = await failure(ws)
    assert (code, message) == ("InvalidParameter", "Audio received before task-started.")


async def test_frame_size_cap_and_odd_pcm(emu: DashScopeEmulator) -> None:
    async with open_ws(emu) as ws:
        await started(ws)
        await ws.send(bytes(16 * 1024))  # the documented recommendation is never refused
        await ws.send(b"\x00")
        await ws.send(json.dumps(finish()))
        code, _ = await failure(ws)
    assert code == "NO_VALID_AUDIO_ERROR"
    emu.config.max_frame_bytes = 20_000
    async with open_ws(emu) as ws:
        await started(ws)
        await ws.send(bytes(20_001))
        code, message = await failure(ws)
    assert code == "InvalidParameter" and "too large" in message


def wav_file(pcm: bytes, rate: int = 16000, extra: bytes = b"") -> bytes:
    """A WAV file of mono s16 ``pcm``, with a LIST chunk of ``extra`` before its data."""
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt
    if extra:
        chunks += b"LIST" + struct.pack("<I", len(extra)) + extra
    chunks += b"data" + struct.pack("<I", len(pcm)) + pcm
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


async def test_wav_header_is_not_audio(emu: DashScopeEmulator) -> None:
    pcm = silence(0.2) + tone(500, 0.3) + silence(0.4)
    got: dict[str, list[dict[str, Any]]] = {}
    for fmt, stream in (("pcm", pcm), ("wav", wav_file(pcm, extra=b"\x7f" * 4000))):
        async with open_ws(emu) as ws:
            await started(ws, run_task(task_id=f"{TASK[:-3]}{fmt}", format=fmt))
            for i in range(0, len(stream), 3200):
                await ws.send(stream[i:i + 3200])
            await ws.send(json.dumps(finish(f"{TASK[:-3]}{fmt}")))
            got[fmt] = [s for doc in await results_until_finished(ws)
                        if (s := doc["payload"]["output"]["sentence"])["sentence_end"]]
    assert got["wav"] == got["pcm"]  # same words at the same times: the header was skipped
    assert [s["text"] for s in got["wav"]] == ["tone500."]


@pytest.mark.parametrize(("stream", "why"), [
    (bytes(3200), "RIFF"),
    (wav_file(bytes(3200), rate=8000), "rate"),
    (wav_file(bytes(3200)).replace(b"\x01\x00\x01\x00", b"\x03\x00\x01\x00", 1), "PCM"),
    (wav_file(bytes(3200))[:30], "data"),
], ids=["no-riff", "other-rate", "float", "no-data"])
async def test_bad_wav_is_no_valid_audio(emu: DashScopeEmulator, stream: bytes, why: str) -> None:
    async with open_ws(emu) as ws:
        await started(ws, run_task(format="wav"))
        await ws.send(stream)
        await ws.send(json.dumps(finish()))
        code, message = await failure(ws)
    assert code == "NO_VALID_AUDIO_ERROR" and why in message


async def test_timers(emu: DashScopeEmulator) -> None:
    emu.config.no_audio_timeout = 0.4
    async with open_ws(emu) as ws:
        await started(ws)
        t0 = time.monotonic()
        assert await failure(ws) == ("CLIENT_ERROR", "request timeout after 0.4 seconds.")
        assert time.monotonic() - t0 >= 0.35
    assert timeout_message(23) == "request timeout after 23 seconds."
    emu.config.idle_timeout = 0.3
    async with open_ws(emu) as ws:  # no task at all: closed, no event
        with pytest.raises(ConnectionClosed):
            await within(ws.recv(), 5)
    emu.config.silence_timeout = 0.3
    emu.config.no_audio_timeout = 5.0
    async with open_ws(emu) as ws:
        await started(ws, run_task(heartbeat=False))
        with contextlib.suppress(ConnectionClosed):  # the task fails while we send
            for _ in range(8):
                await ws.send(silence(0.1))
                await asyncio.sleep(0.06)
        assert await failure(ws) == ("RequestTimeOut", "Response timeout!")


async def test_heartbeat_results_while_silence_flows(emu: DashScopeEmulator) -> None:
    emu.config.silence_timeout = 0.2
    emu.config.heartbeat_every = 0.5
    async with open_ws(emu) as ws:
        await started(ws, run_task(heartbeat=True))
        for _ in range(10):
            await ws.send(silence(0.1))
            await asyncio.sleep(0.03)
        await ws.send(json.dumps(finish()))
        got = await results_until_finished(ws)
    assert len(got) == 2
    assert got[0]["payload"] == {"output": {"sentence": {
        "begin_time": 0, "end_time": None, "text": "", "heartbeat": True, "sentence_end": False,
        "sentence_id": 0, "words": []}}, "usage": None}


# --- results --------------------------------------------------------------------------------------


async def test_result_shapes_follow_the_notes(emu: DashScopeEmulator) -> None:
    pcm = silence(0.2) + tone(500, 0.3) + silence(0.1) + tone(1000, 0.2) + silence(0.4)
    async with open_ws(emu) as ws:
        await started(ws, run_task(vocabulary_id=VOCABULARY))
        for i in range(0, len(pcm), 3200):
            await ws.send(pcm[i:i + 3200])
        await ws.send(json.dumps(finish()))
        got = await results_until_finished(ws)
    assert all(doc["header"]["task_id"] == TASK for doc in got)  # echoed as sent (hyphens)
    sentences = [(doc["payload"]["output"]["sentence"], doc["payload"]["usage"]) for doc in got]
    for s, usage in sentences:
        assert (s["end_time"] is None) == (not s["sentence_end"])
        assert (usage is None) == (not s["sentence_end"])
    final, usage = sentences[-1]
    assert usage == {"duration": 2}
    assert final == {"begin_time": 200, "end_time": 800, "text": "hello tone1000.",
                     "heartbeat": False, "sentence_end": True, "words": [
                         {"begin_time": 200, "end_time": 500, "text": "hello", "punctuation": ""},
                         {"begin_time": 600, "end_time": 800, "text": "tone1000",
                          "punctuation": "."}]}
    assert sentences[0][0]["text"] == "hello" and sentences[0][0]["end_time"] is None


async def test_fault_knobs(emu: DashScopeEmulator) -> None:
    emu.faults.extend([Fault("http", status=429, code="Throttling", message="slow down"),
                       Fault("task-failed", after_frames=2, code="InternalError",
                             message="boom"),
                       Fault("abort", after_frames=1)])
    with pytest.raises(InvalidStatus) as info:
        async with open_ws(emu):
            pass
    assert info.value.response.status_code == 429
    async with open_ws(emu) as ws:
        await started(ws)
        await ws.send(silence(0.1))
        await ws.send(silence(0.1))
        assert await failure(ws) == ("InternalError", "boom")
    async with open_ws(emu) as ws:
        await started(ws)
        with pytest.raises(ConnectionClosedError) as closed:
            await ws.send(silence(0.1))
            await within(ws.recv(), 5)
        assert closed.value.rcvd is None  # no close frame: an abrupt drop
    async with open_ws(emu) as ws:  # the queue is spent: a healthy connection
        await started(ws)
        await ws.send(json.dumps(finish()))
        await results_until_finished(ws)
