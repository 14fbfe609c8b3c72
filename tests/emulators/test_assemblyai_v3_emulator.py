"""The AssemblyAI v3 emulator is strict where the notes say the service is (auth, tokens,
parameters, message types, chunk durations, pacing, limits, close codes in both numberings)
and its tone-code turns are exact, so the `assemblyai` client is proven against the protocol."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.emulators.assemblyai_v3 import (
    API_KEY,
    MISSING_AUTH,
    SEE_ERROR,
    SESSION_EXPIRED,
    TOO_MANY,
    AssemblyAIV3Emulator,
    duration_violation,
)
from tests.emulators.common import silence, tone

BASE = "sample_rate=16000&speech_model=universal-streaming-english"


@pytest.fixture
async def emu() -> AsyncIterator[AssemblyAIV3Emulator]:
    async with AssemblyAIV3Emulator() as emulator:
        yield emulator


async def exchange(emu: AssemblyAIV3Emulator, query: str = BASE, frames: list[Any] | None = None,
                   headers: dict[str, str] | None = None, pause: float = 0.0
                   ) -> tuple[list[dict[str, Any]], int | None, str]:
    """Connect, send ``frames`` (``None`` entries pause), and read until the server closes."""
    headers = {"Authorization": API_KEY} if headers is None else headers
    messages: list[dict[str, Any]] = []
    async with connect(f"{emu.url}?{query}", additional_headers=headers,
                       compression=None) as ws:
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
        assert ws.close_code is not None
        return messages, ws.close_code, ws.close_reason or ""


def error_of(messages: list[dict[str, Any]]) -> tuple[int, str]:
    errors = [m for m in messages if m.get("type") == "Error"]
    assert len(errors) == 1
    return errors[0]["error_code"], errors[0]["error"]


async def test_session_shape_and_terminate(emu: AssemblyAIV3Emulator) -> None:
    pcm = silence(0.2) + tone(440, 0.3) + silence(0.5)
    msgs, code, _ = await exchange(emu, BASE + "&format_turns=True&speaker_labels=true",
                                   [pcm[i:i + 3200] for i in range(0, len(pcm), 3200)]
                                   + ['{"type":"Terminate"}'])
    assert code == 1000
    assert msgs[0]["type"] == "Begin" and set(msgs[0]) == {"type", "id", "expires_at",
                                                           "configuration"}
    assert msgs[0]["configuration"]["model"] == "universal-streaming-english"
    turns = [m for m in msgs if m["type"] == "Turn"]
    assert turns[0]["words"] == [{"start": 200, "end": 300, "text": "tone400", "confidence": 0.75,
                                  "word_is_final": False}]
    assert turns[0]["transcript"] == "" and not turns[0]["end_of_turn"]
    ends = [t for t in turns if t["end_of_turn"]]
    assert [(t["transcript"], t["turn_is_formatted"], t["utterance"]) for t in ends] == [
        ("tone400", False, "Tone400."), ("Tone400.", True, "")]
    assert ends[0]["speaker_label"] == "A" and ends[0]["words"][0]["speaker"] == "A"
    assert msgs[-1] == {"type": "Termination", "audio_duration_seconds": 1,
                        "session_duration_seconds": 0}


async def test_auth_is_checked(emu: AssemblyAIV3Emulator) -> None:
    for headers in ({}, {"Authorization": f"Bearer {API_KEY}"}, {"Authorization": "other"}):
        msgs, code, reason = await exchange(emu, headers=headers)
        assert code == 1008 and reason == MISSING_AUTH
        assert error_of(msgs) == (1008, MISSING_AUTH)
    emu.config.auth_failure = "http"
    with pytest.raises(InvalidStatus) as info:
        await exchange(emu, headers={})
    assert info.value.response.status_code == 401


async def test_tokens_are_minted_single_use_and_expire(emu: AssemblyAIV3Emulator) -> None:
    async with httpx.AsyncClient() as http:
        r = await http.get(emu.token_url, params={"expires_in_seconds": 60},
                           headers={"Authorization": API_KEY})
        assert r.status_code == 200 and r.json()["expires_in_seconds"] == 60
        token = r.json()["token"]
        assert (await http.get(emu.token_url, params={"expires_in_seconds": 60})).status_code == 401
        for bad in ({"expires_in_seconds": 0}, {"expires_in_seconds": 601}, {},
                    {"expires_in_seconds": 60, "max_session_duration_seconds": 59}):
            r = await http.get(emu.token_url, params=bad, headers={"Authorization": API_KEY})
            assert r.status_code == 400 and "error" in r.json()
    _, code, _ = await exchange(emu, f"{BASE}&token={token}", ['{"type":"Terminate"}'],
                                headers={})
    assert code == 1000 and emu.sessions[-1].auth == "token"
    _, code, reason = await exchange(emu, f"{BASE}&token={token}", headers={})
    assert code == 1008 and reason == "Unauthorized Connection: Token already used"
    expired = emu.mint(expires_in=0.0)
    await asyncio.sleep(0.01)
    _, code, reason = await exchange(emu, f"{BASE}&token={expired}", headers={})
    assert code == 1008 and reason == "Unauthorized Connection: Token expired"
    short = emu.mint(max_session=0.3)
    _msgs, code, reason = await exchange(emu, f"{BASE}&token={short}", [None], headers={},
                                        pause=1.0)
    assert code == 3008 and reason == SESSION_EXPIRED


@pytest.mark.parametrize(("query", "text"), [
    ("speech_model=universal-streaming-english", "Invalid sample_rate: None"),
    ("sample_rate=0&speech_model=universal-streaming-english", "Invalid sample_rate: 0"),
    ("sample_rate=16000", "Invalid speech_model: None"),
    ("sample_rate=16000&speech_model=best", "Invalid speech_model: best"),
    (BASE + "&encoding=opus2", "Invalid encoding: opus2"),
    (BASE + "&format_turns=yes", "Invalid format_turns: yes"),
    (BASE + "&inactivity_timeout=4", "Invalid inactivity_timeout: 4 (expected 5-3600)"),
    (BASE + "&max_speakers=11", "Invalid max_speakers: 11 (expected 1-10)"),
    (BASE + "&vad_threshold=x", "Invalid vad_threshold: x"),
    (BASE + "&keyterms_prompt=a,b", "Invalid keyterms_prompt: a,b"),
])
async def test_parameters_are_checked(emu: AssemblyAIV3Emulator, query: str, text: str) -> None:
    msgs, code, reason = await exchange(emu, query)
    assert (code, reason) == (3006, text) and error_of(msgs) == (3006, text)


async def test_unknown_parameters_are_ignored(emu: AssemblyAIV3Emulator) -> None:
    _, code, _ = await exchange(emu, BASE + "&speechModel=x&format_turns=False",
                                ['{"type":"Terminate"}'])
    assert code == 1000 and emu.sessions[-1].ignored_params == ["speechModel"]


@pytest.mark.parametrize(("frame", "text"), [
    ("not json", "Invalid JSON: not json"),
    ("[]", "Invalid Message: []"),
    ('{"type":"Hello"}', "Invalid Message Type: Hello"),
    ("{}", "Invalid Message Type: {}"),
    ('{"type":"Terminate","now":true}', 'Invalid Message: {"type":"Terminate","now":true}'),
    ('{"type":"UpdateConfiguration","sample_rate":8000}',
     'Invalid Message: {"type":"UpdateConfiguration","sample_rate":8000}'),
    ('{"type":"UpdateConfiguration","vad_threshold":2}',
     'Invalid Message: {"type":"UpdateConfiguration","vad_threshold":2}'),
])
async def test_text_frames_are_checked(emu: AssemblyAIV3Emulator, frame: str, text: str) -> None:
    msgs, code, reason = await exchange(emu, frames=[frame])
    assert (code, reason) == (3006, text) and error_of(msgs) == (3006, text)


async def test_chunk_durations_and_legacy_numbering(emu: AssemblyAIV3Emulator) -> None:
    msgs, code, reason = await exchange(emu, frames=[bytes(1280)])  # 40 ms
    assert (code, reason) == (3007, duration_violation(40))
    _, code, reason = await exchange(emu, frames=[bytes(35200)])  # 1100 ms
    assert (code, reason) == (3007, duration_violation(1100))
    emu.config.legacy_codes = True
    msgs, code, reason = await exchange(emu, frames=[bytes(1280)])
    assert (code, reason) == (3005, duration_violation(40)) and error_of(msgs)[0] == 3005
    emu.config.legacy_codes = False
    emu.config.min_applies_to_last = False  # the notes leave the last chunk open
    _, code, _ = await exchange(emu, frames=[bytes(3200), bytes(1281), '{"type":"Terminate"}'])
    assert code == 1000 and emu.sessions[-1].chunk_ms == [100.0, 40.0]  # odd bytes buffered
    _, code, reason = await exchange(emu, frames=[bytes(1280), bytes(3200)])
    assert (code, reason) == (3007, duration_violation(40))


async def test_pacing_and_session_limits(emu: AssemblyAIV3Emulator) -> None:
    _msgs, code, reason = await exchange(emu, frames=[bytes(32000)] * 4)
    assert code == 3007 and reason.startswith("Audio Transmission Rate Exceeded: Received 3.0 sec")
    emu.config.max_sessions_per_minute = 1
    emu._opened.clear()
    await exchange(emu, frames=['{"type":"Terminate"}'])
    _, code, reason = await exchange(emu)
    assert (code, reason) == (3009, TOO_MANY)
    emu.config.legacy_codes = True
    _, code, reason = await exchange(emu)
    assert (code, reason) == (1008, TOO_MANY)
    emu.config.max_sessions_per_minute = None
    emu.config.legacy_codes = False
    emu.config.max_session_seconds = 0.3
    _, code, reason = await exchange(emu, frames=[None], pause=1.0)
    assert (code, reason) == (3008, SESSION_EXPIRED)


async def test_long_reasons_are_replaced(emu: AssemblyAIV3Emulator) -> None:
    frame = '{"type":"' + "x" * 200 + '"}'
    msgs, code, reason = await exchange(emu, frames=[frame])
    assert (code, reason) == (3006, SEE_ERROR)
    assert error_of(msgs) == (3006, "Invalid Message Type: " + "x" * 200)


async def test_inactivity_timeout_and_keepalive(emu: AssemblyAIV3Emulator) -> None:
    emu.config.inactivity_seconds = 0.4
    q = BASE + "&inactivity_timeout=5"
    frames: list[Any] = [bytes(3200), None, '{"type":"KeepAlive"}', None, '{"type":"KeepAlive"}',
                         None, '{"type":"Terminate"}']
    msgs, code, _ = await exchange(emu, q, frames, pause=0.25)
    assert code == 1000 and emu.sessions[-1].keepalives == 2 and msgs[-1]["type"] == "Termination"
    msgs, code, _ = await exchange(emu, q, [bytes(3200), None], pause=1.0)
    assert code == 1000 and msgs[-1]["type"] == "Termination"  # the session ended by itself
    emu.config.inactivity_error = (3005, "Session Cancelled: inactivity")
    msgs, code, _ = await exchange(emu, q, [None], pause=1.0)
    assert code == 3005


async def test_force_endpoint_and_update_configuration(emu: AssemblyAIV3Emulator) -> None:
    frames: list[Any] = [tone(600, 0.2), '{"type":"ForceEndpoint"}',
                         '{"type":"UpdateConfiguration","min_turn_silence":100,"format_turns":false}',
                         tone(600, 0.2) + silence(0.2), '{"type":"Terminate"}']
    msgs, code, _ = await exchange(emu, BASE + "&format_turns=true", frames)
    ends = [(t["turn_order"], t["transcript"]) for t in msgs
            if t["type"] == "Turn" and t["end_of_turn"]]
    assert code == 1000 and ends == [(0, "tone600"), (0, "Tone600."), (1, "tone600")]
