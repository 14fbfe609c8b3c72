"""The Deepgram emulator refuses at the upgrade what Deepgram refuses there (401/400/429 with
dg-error), closes with DATA-0000 / NET-0001 where the service does, follows KeepAlive,
Finalize and CloseStream, and its tone-code Results are exact."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.emulators.common import interleave, silence, tone
from tests.emulators.deepgram import API_KEY, DATA0000, JWT, NET0001, DeepgramEmulator

RAW = "encoding=linear16&sample_rate=16000"


@pytest.fixture
async def emu() -> AsyncIterator[DeepgramEmulator]:
    async with DeepgramEmulator() as emulator:
        yield emulator


async def exchange(emu: DeepgramEmulator, query: str = RAW, frames: list[Any] | None = None,
                   headers: dict[str, str] | None = None, pause: float = 0.0,
                   subprotocols: list[str] | None = None
                   ) -> tuple[list[dict[str, Any]], int | None, str]:
    """Connect, send ``frames`` (``None`` entries pause), and read until the server closes."""
    headers = {"Authorization": f"Token {API_KEY}"} if headers is None else headers
    messages: list[dict[str, Any]] = []
    async with connect(f"{emu.url}?{query}", additional_headers=headers, compression=None,
                       subprotocols=subprotocols) as ws:  # type: ignore[arg-type]
        assert ws.response is not None and ws.response.headers["dg-request-id"]
        for frame in frames or []:
            if frame is None:
                await asyncio.sleep(pause)
                continue
            try:
                await ws.send(frame)
            except ConnectionClosed:
                break
        try:
            async for raw in ws:
                messages.append(json.loads(raw))
        except ConnectionClosed:
            pass
        return messages, ws.close_code, ws.close_reason or ""


async def refused(emu: DeepgramEmulator, query: str = RAW,
                  headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], str]:
    with pytest.raises(InvalidStatus) as info:
        await exchange(emu, query, headers=headers)
    r = info.value.response
    body = json.loads(r.body or b"{}")
    assert r.headers["dg-request-id"] == body["request_id"]
    assert r.headers["dg-error"] == body["err_msg"]
    return r.status_code, body, r.headers["Content-Type"]


async def test_auth_schemes(emu: DeepgramEmulator) -> None:
    for headers in ({}, {"Authorization": API_KEY}, {"Authorization": "Token wrong"},
                    {"Authorization": f"Bearer {API_KEY}"}):
        status, body, kind = await refused(emu, headers=headers)
        assert (status, body["err_code"], body["err_msg"], kind) == \
            (401, "INVALID_AUTH", "Invalid credentials.", "application/json")
    for headers, auth in (({"Authorization": f"token {API_KEY}"}, "token"),
                          ({"Authorization": f"Bearer {JWT}"}, "bearer")):
        _, code, _ = await exchange(emu, headers=headers, frames=['{"type":"CloseStream"}'])
        assert code == 1000 and emu.streams[-1].auth == auth
    async with connect(f"{emu.url}?{RAW}", subprotocols=["token", API_KEY]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "token" and emu.streams[-1].auth == "subprotocol"


@pytest.mark.parametrize(("query", "message"), [
    (RAW + "&model=nova-9", "No such model: nova-9"),
    (RAW + "&language=english", "No such language: english"),
    ("encoding=pcm&sample_rate=16000", "unknown encoding: pcm"),
    ("encoding=linear16", "sample_rate is required with encoding"),
    ("encoding=amr-nb&sample_rate=16000", "amr-nb needs sample_rate 8000"),
    (RAW + "&sample_rate=16k", "invalid value for sample_rate: '16k'"),
    (RAW + "&endpointing=soon", "invalid value for endpointing: 'soon'"),
    (RAW + "&interim_results=True", "invalid value for interim_results: 'True', expected true "
                                    "or false"),
    (RAW + "&diarize=true&diarize_model=v2", "invalid diarize_model: v2"),
    (RAW + "&speechModel=x", "unknown field `speechModel`"),
])
async def test_parameters_are_checked_before_the_upgrade(emu: DeepgramEmulator, query: str,
                                                         message: str) -> None:
    status, body, _ = await refused(emu, query)
    assert (status, body["err_code"]) == (400, "INVALID_QUERY_PARAMETER")
    assert body["err_msg"] == f"Failed to deserialize query parameters: {message}"


async def test_concurrency_limit(emu: DeepgramEmulator) -> None:
    emu.config.max_concurrent = 1
    async with connect(f"{emu.url}?{RAW}",
                       additional_headers={"Authorization": f"Token {API_KEY}"}):
        status, body, _ = await refused(emu)
        assert (status, body["err_code"]) == (429, "TOO_MANY_REQUESTS")


async def test_undecodable_audio_and_text(emu: DeepgramEmulator) -> None:
    _, code, reason = await exchange(emu, "model=nova-3", frames=[bytes(3200)])
    assert (code, reason) == (1008, DATA0000)  # raw PCM without encoding is not a container
    _, code, _ = await exchange(emu, "model=nova-3", frames=[b"RIFF" + bytes(3196),
                                                            '{"type":"CloseStream"}'])
    assert code == 1000
    for frame in ("hello", '{"type":"Flush"}', '{"type":"Finalize","channel":-1}'):
        _, code, reason = await exchange(emu, frames=[frame])
        assert (code, reason) == (1008, DATA0000)
    emu.config.bad_text = "ignore"
    _, code, _ = await exchange(emu, frames=["hello", '{"type":"CloseStream"}'])
    assert code == 1000


async def test_configure_changes_settings_without_closing(emu: DeepgramEmulator) -> None:
    frames = [bytes(3200),
              json.dumps({"type": "Configure", "features": {"numerals": True}}),
              json.dumps({"type": "Configure", "keyterms": ["voxq", "call centre"]}),
              json.dumps({"type": "Configure", "features": {"numerals": "yes"}}),
              json.dumps({"type": "Configure", "keyterms": "voxq"}),
              bytes(3200), '{"type":"CloseStream"}']
    msgs, code, _ = await exchange(emu, f"model=nova-3&{RAW}", frames=frames)
    assert code == 1000  # the stream kept running through every Configure
    answers = [m for m in msgs if m["type"].startswith("Configure")]
    assert [m["type"] for m in answers] == ["ConfigureSuccess", "ConfigureSuccess",
                                            "ConfigureFailure", "ConfigureFailure"]
    assert answers[1]["keyterms"] == ["voxq", "call centre"] and "keyterms" not in answers[0]
    [s] = emu.streams
    assert s.numerals is True and s.keyterms == ["voxq", "call centre"]
    assert len(s.audio) == 6400
    msgs, code, _ = await exchange(emu, f"model=nova-2&{RAW}", frames=[
        json.dumps({"type": "Configure", "keyterms": ["x"]}), '{"type":"CloseStream"}'])
    assert code == 1000 and msgs[0]["type"] == "ConfigureFailure" and "Nova-3" in msgs[0]["description"]


async def test_net0001_and_keepalive(emu: DeepgramEmulator) -> None:
    emu.config.net0001_timeout = 0.4
    msgs, code, reason = await exchange(emu, frames=[None], pause=1.0)
    assert (code, reason) == (1011, NET0001)
    assert msgs[-1]["type"] == "Metadata" and msgs[-1]["channels"] == 0
    keepalives: list[Any] = [None, '{"type":"KeepAlive"}'] * 4
    _, code, _ = await exchange(emu, frames=keepalives, pause=0.2)
    assert code == 1011  # KeepAlive alone does not hold a stream that never had audio
    _, code, _ = await exchange(emu, frames=[bytes(3200), *keepalives, '{"type":"CloseStream"}'],
                                pause=0.2)
    assert code == 1000


async def test_results_finalize_and_close(emu: DeepgramEmulator) -> None:
    q = RAW + "&interim_results=true&punctuate=true&endpointing=100&vad_events=true"
    msgs, code, _ = await exchange(emu, q, [tone(500, 0.2), '{"type":"Finalize"}',
                                            tone(1500, 0.2) + silence(0.2), b""])
    assert code == 1000
    kinds = [(m["type"], m.get("is_final"), m.get("from_finalize")) for m in msgs]
    assert kinds == [("SpeechStarted", None, None), ("Results", False, False),
                     ("Results", True, True), ("SpeechStarted", None, None),
                     ("Results", True, False), ("Metadata", None, None)]  # no interim: one frame
    final = msgs[4]
    assert (final["start"], final["duration"], final["speech_final"]) == (0.2, 0.3, True)  # to the endpoint
    assert final["channel"]["alternatives"][0]["transcript"] == "Tone1500."
    assert final["channel"]["alternatives"][0]["words"] == [
        {"word": "tone1500", "start": 0.2, "end": 0.4, "confidence": 0.75,
         "punctuated_word": "Tone1500."}]
    meta = msgs[-1]
    assert (meta["transaction_key"], meta["sha256"], meta["duration"]) == \
        ("deprecated", "incomplete", 0.6)


async def test_channels(emu: DeepgramEmulator) -> None:
    stereo = interleave(tone(500, 0.2) + silence(0.2), silence(0.1) + tone(1200, 0.2) + silence(0.1))
    q = RAW + "&channels=2&endpointing=100"
    msgs, _, _ = await exchange(emu, q + "&multichannel=true&diarize=true",
                                [stereo, '{"type":"CloseStream"}'])
    finals = [(m["channel_index"], m["channel"]["alternatives"][0]["words"][0]["speaker"])
              for m in msgs if m["type"] == "Results" and m["is_final"]]
    assert finals == [([0, 2], 0), ([1, 2], 1)]
    msgs, _, _ = await exchange(emu, q, [stereo, '{"type":"CloseStream"}'])
    mixed = [(m["channel_index"], m["channel"]["alternatives"][0]["transcript"])
             for m in msgs if m["type"] == "Results" and m["is_final"]]
    assert [c for c, _ in mixed] == [[0, 1]] and len(mixed) == 1  # one mixed channel
    _, code, _ = await exchange(emu, q, [bytes(3), bytes(5), '{"type":"CloseStream"}'])
    assert code == 1000 and emu.streams[-1].frame_sizes == [3, 5]  # partial frames buffered
