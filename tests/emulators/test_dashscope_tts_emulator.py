"""The DashScope CosyVoice emulator is strict: a raw WebSocket client walks the documented happy
path (and connection reuse), and each §6 checklist violation gets task-failed and a close."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.emulators.dashscope_tts import API_KEY, DashScopeTtsEmulator, EmulatorConfig, text_units
from workers.tts import mp3join

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture
async def emu() -> AsyncIterator[DashScopeTtsEmulator]:
    async with DashScopeTtsEmulator(EmulatorConfig(text_timeout=0.5, idle_timeout=0.5)) as e:
        yield e


def run_task(task_id: str, **change: Any) -> dict[str, Any]:
    params = {"text_type": "PlainText", "voice": "longxiaochun_v2", "format": "mp3", "sample_rate": 16000,
              "volume": 50, "rate": 1.0, "pitch": 1.0, "seed": 7, "type": 0}
    params.update(change.pop("parameters", {}))
    payload = {"task_group": "audio", "task": "tts", "function": "SpeechSynthesizer",
               "model": "cosyvoice-v2", "parameters": params, "input": {}}
    payload.update(change.pop("payload", {}))
    header = {"action": "run-task", "task_id": task_id, "streaming": "duplex", **change}
    return {"header": header, "payload": {k: v for k, v in payload.items() if v is not None}}


def instruction(action: str, task_id: str, payload: dict[str, Any]) -> str:
    return json.dumps({"header": {"action": action, "task_id": task_id, "streaming": "duplex"},
                       "payload": payload}, ensure_ascii=False)


async def events(ws: ClientConnection) -> AsyncIterator[Any]:
    try:
        async for msg in ws:
            yield msg if isinstance(msg, bytes) else json.loads(msg)
    except ConnectionClosed:
        return


async def failure(ws: ClientConnection) -> tuple[str, str]:
    async for ev in events(ws):
        if isinstance(ev, dict) and ev["header"]["event"] == "task-failed":
            assert ev["header"]["attributes"] == {} and ev["payload"] == {}
            code, message = ev["header"]["error_code"], ev["header"]["error_message"]
            with pytest.raises(ConnectionClosed):  # the service closes after task-failed
                await ws.recv()
            return code, message
    raise AssertionError("no task-failed")


async def start(ws: ClientConnection, **change: Any) -> str:
    task_id = uuid.uuid4().hex
    await ws.send(json.dumps(run_task(task_id, **change)))
    ev = json.loads(await ws.recv())
    assert ev["header"] == {"task_id": task_id, "event": "task-started", "attributes": {}}
    return task_id


async def test_happy_path_events_audio_and_reuse(emu: DashScopeTtsEmulator) -> None:
    async with connect(emu.url, additional_headers=AUTH) as ws:
        for text in ("床前明月光。Hello there.", "Second task on the same connection."):
            task_id = await start(ws)
            await ws.send(instruction("continue-task", task_id, {"input": {"text": text}}))
            await ws.send(instruction("finish-task", task_id, {"input": {}}))
            audio, kinds, usage = bytearray(), [], None
            async for ev in events(ws):
                if isinstance(ev, bytes):
                    audio += ev
                    continue
                assert ev["header"]["task_id"] == task_id
                if ev["header"]["event"] == "task-finished":
                    break
                kinds.append(ev["payload"]["output"]["type"])
                usage = ev["payload"].get("usage", usage)
            assert kinds[0] == "sentence-begin" and kinds[-1] == "sentence-end"
            assert usage == {"characters": text_units(text)}
            assert mp3join.inspect(bytes(audio)).sample_rate == 16000
    assert text_units("床前ab") == 6


async def test_handshake_refusals(emu: DashScopeTtsEmulator) -> None:
    for url, headers, status in ((emu.url.replace("inference", "other"), AUTH, 404),
                                 (emu.url, {}, 401), (emu.url, {"Authorization": "Basic x"}, 401),
                                 (emu.url, {"Authorization": "Bearer sk-nope"}, 401)):
        with pytest.raises(InvalidStatus) as e:
            async with connect(url, additional_headers=headers):
                pass
        assert e.value.response.status_code == status
    body = json.loads(e.value.response.body or b"{}")
    assert body["code"] == "InvalidApiKey"
    async with connect(emu.url + "/", additional_headers={"Authorization": f"bearer {API_KEY}"}):
        pass  # trailing slash and a lower-case scheme are accepted


@pytest.mark.parametrize(("change", "code", "words"), [
    ({"streaming": "out"}, "InvalidParameter", "duplex"),
    ({"payload": {"task": "asr"}}, "InvalidParameter", "task can not be null"),
    ({"payload": {"model": None}}, "InvalidParameter", "payload.model"),
    ({"payload": {"input": None}}, "InvalidParameter", "payload.input"),
    ({"payload": {"input": {"text": "x"}}}, "InvalidParameter", "must be {}"),
    ({"payload": {"model": "cosyvoice-v9"}}, "ModelNotFound", "Model can not be found."),
    ({"parameters": {"voice": ""}}, "InvalidParameter", "Request voice is invalid!"),
    ({"parameters": {"voice": "longwan"}}, "InvalidParameter", "[tts:]Engine return error code: 418"),
    ({"parameters": {"text_type": "SSML"}}, "InvalidParameter", "text_type"),
    ({"parameters": {"format": "flac"}}, "InvalidParameter", "format"),
    ({"parameters": {"sample_rate": 12000}}, "InvalidParameter", "sample_rate"),
    ({"parameters": {"volume": 101}}, "InvalidParameter", "volume"),
    ({"parameters": {"rate": 2.5}}, "InvalidParameter", "rate"),
    ({"parameters": {"pitch": 0.2}}, "InvalidParameter", "pitch"),
    ({"parameters": {"seed": 70000}}, "InvalidParameter", "seed"),
])
async def test_run_task_validation(emu: DashScopeTtsEmulator, change: dict[str, Any], code: str,
                                   words: str) -> None:
    async with connect(emu.url, additional_headers=AUTH) as ws:
        await ws.send(json.dumps(run_task(uuid.uuid4().hex, **change)))
        got_code, message = await failure(ws)
        assert got_code == code and words in message


async def test_sequence_and_framing_violations(emu: DashScopeTtsEmulator) -> None:
    cases: list[tuple[str, Any]] = [
        ("not json", "Invalid payload data"), ('{"header": 1}', "Invalid payload data"),
        (instruction("dance", "x", {}), "unknown action"),
        (instruction("continue-task", uuid.uuid4().hex, {"input": {"text": "x"}}), "before task-started"),
        (json.dumps(run_task("short")), "task_id"),
    ]
    for message, words in cases:
        async with connect(emu.url, additional_headers=AUTH) as ws:
            await ws.send(message)
            code, text = await failure(ws)
            assert code == "InvalidParameter" and words in text, (message, text)
    async with connect(emu.url, additional_headers=AUTH) as ws:
        task_id = await start(ws)
        await ws.send(b"\x00\x01")
        assert (await failure(ws))[1].startswith("binary frames")
    for payload, words in (({"input": {}}, "input.text"), ({"input": {"text": "好" * 10001}}, "20000"),
                           ({"input": {"text": "x"}, "other": 1}, None)):
        async with connect(emu.url, additional_headers=AUTH) as ws:
            task_id = await start(ws)
            await ws.send(instruction("continue-task", task_id, payload))
            if words is None:
                await ws.send(instruction("finish-task", uuid.uuid4().hex, {"input": {}}))
                assert "does not match" in (await failure(ws))[1]
            else:
                assert words in (await failure(ws))[1]
    async with connect(emu.url, additional_headers=AUTH) as ws:
        task_id = await start(ws)
        await ws.send(instruction("finish-task", task_id, {"input": {}}))
        assert (await failure(ws))[1] == "Please ensure input text is valid."
    async with connect(emu.url, additional_headers=AUTH) as ws:
        task_id = await start(ws)
        await ws.send(instruction("finish-task", task_id, {"input": {"end_of_stream": True}}))
        assert "must be {}" in (await failure(ws))[1]
    async with connect(emu.url, additional_headers=AUTH) as ws:
        task_id = await start(ws)
        await ws.send(json.dumps(run_task(uuid.uuid4().hex)))
        assert "already running" in (await failure(ws))[1]


async def test_cancel_reuse_reused_ids_and_timers(emu: DashScopeTtsEmulator) -> None:
    async with connect(emu.url, additional_headers=AUTH) as ws:
        task_id = await start(ws)
        await ws.send(instruction("finish-task", task_id, {"input": {"directive": "cancel"}}))
        assert json.loads(await ws.recv())["header"]["event"] == "task-finished"
        await ws.send(json.dumps(run_task(task_id)))  # a finished task's id may not come back
        assert "reused" in (await failure(ws))[1]
    async with connect(emu.url, additional_headers=AUTH) as ws:
        await start(ws)
        assert await failure(ws) == ("CLIENT_ERROR", "request timeout after 0.5 seconds.")
    async with connect(emu.url, additional_headers=AUTH) as ws:
        with pytest.raises(ConnectionClosed):
            await ws.recv()  # idle: closed with no event
