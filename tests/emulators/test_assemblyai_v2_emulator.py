"""The AssemblyAI v2 emulator closes with the codes the notes list (4000-4104) where the real
service does, mints single-use tokens over POST, and its transcripts are exact."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.emulators.assemblyai_v2 import API_KEY, REASONS, AssemblyAIV2Emulator
from tests.emulators.common import silence, tone


@pytest.fixture
async def emu() -> AsyncIterator[AssemblyAIV2Emulator]:
    async with AssemblyAIV2Emulator() as emulator:
        yield emulator


async def exchange(emu: AssemblyAIV2Emulator, query: str = "sample_rate=16000",
                   frames: list[Any] | None = None, headers: dict[str, str] | None = None,
                   pause: float = 0.0) -> tuple[list[dict[str, Any]], int | None, str]:
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
        return messages, ws.close_code, ws.close_reason or ""


def audio(pcm: bytes) -> str:
    return json.dumps({"audio_data": base64.b64encode(pcm).decode()})


TERMINATE = '{"terminate_session": true}'


async def test_session_shape(emu: AssemblyAIV2Emulator) -> None:
    pcm = tone(500, 0.3) + silence(0.8)
    msgs, code, _ = await exchange(
        emu, "sample_rate=16000&enable_extra_session_information=true",
        [audio(pcm[i:i + 3200]) for i in range(0, len(pcm), 3200)] + [TERMINATE])
    assert code == 1000
    begins = msgs[0]
    assert begins["message_type"] == "SessionBegins" and "+" not in begins["expires_at"]
    kinds = [m["message_type"] for m in msgs]
    assert kinds == ["SessionBegins", "PartialTranscript", "PartialTranscript", "PartialTranscript",
                     "FinalTranscript", "SessionInformation", "SessionTerminated"]
    final = msgs[4]
    assert (final["text"], final["audio_start"], final["punctuated"]) == ("Tone500.", 0, True)
    assert final["words"] == [{"start": 0, "end": 300, "confidence": 0.75, "text": "tone500"}]
    assert msgs[1]["text"] == "tone500" and "punctuated" not in msgs[1]
    assert msgs[5]["audio_duration_seconds"] == pytest.approx(1.1)


@pytest.mark.parametrize(("query", "headers", "code"), [
    ("sample_rate=16000", {}, 4001),
    ("sample_rate=16000", {"Authorization": f"Bearer {API_KEY}"}, 4001),
    ("sample_rate=16000&token=made-up", {}, 4001),
    ("", None, 4000), ("sample_rate=0", None, 4000), ("sample_rate=16k", None, 4000),
    ("sample_rate=16000&word_boost=a,b", None, 4104),
    ("sample_rate=16000&word_boost=[1]", None, 4104),
    ("sample_rate=16000&encoding=opus", None, 4101),
])
async def test_handshake_checks_close_with_the_documented_codes(
        emu: AssemblyAIV2Emulator, query: str, headers: dict[str, str] | None, code: int) -> None:
    msgs, got, reason = await exchange(emu, query, headers=headers)
    assert (got, reason) == (code, REASONS.get(code, "")) and msgs == []


async def test_tokens_and_concurrency(emu: AssemblyAIV2Emulator) -> None:
    async with httpx.AsyncClient() as http:
        r = await http.post(emu.token_url, json={"expires_in": 60},
                            headers={"Authorization": API_KEY})
        assert r.status_code == 200
        token = r.json()["token"]
        assert (await http.post(emu.token_url, json={"expires_in": 60})).status_code == 401
        assert (await http.post(emu.token_url, json={"expires_in": 59},
                                headers={"Authorization": API_KEY})).status_code == 400
        assert (await http.get(emu.token_url, headers={"Authorization": API_KEY})).status_code == 405
    _, code, _ = await exchange(emu, f"sample_rate=16000&token={token}", [TERMINATE], headers={})
    assert code == 1000 and emu.sessions[-1].auth == "token"
    _, code, _ = await exchange(emu, f"sample_rate=16000&token={token}", headers={})
    assert code == 4001  # single use
    emu.config.max_concurrent = 1
    async with connect(f"{emu.url}?sample_rate=16000",
                       additional_headers={"Authorization": API_KEY}) as first:
        await first.recv()
        _, code, _ = await exchange(emu)
        assert code == 4102


@pytest.mark.parametrize(("frame", "code"), [
    (bytes(1600), 4032), (bytes(64032), 4033), (audio(bytes(1600)), 4032),
    ("not json", 4100), ("[]", 4101), ('{"foo": 1}', 4101),
    ('{"audio_data": "%%%"}', 4101), ('{"terminate_session": false}', 4101),
    ('{"terminate_session": true, "force_end_utterance": true}', 4101),
    ('{"end_utterance_silence_threshold": 20001}', 4101),
    ('{"end_utterance_silence_threshold": true}', 4101),
])
async def test_messages_are_checked(emu: AssemblyAIV2Emulator, frame: Any, code: int) -> None:
    _, got, reason = await exchange(emu, frames=[frame])
    assert (got, reason) == (code, REASONS[code])


async def test_limits(emu: AssemblyAIV2Emulator) -> None:
    emu.config.too_fast_seconds = 1.0
    msgs, code, _ = await exchange(emu, frames=[bytes(64000)] * 2)
    assert code == 4029 and msgs[-1] == {"error": "Client sent audio too fast"}
    emu.config.too_fast_seconds = 5.0
    emu.config.idle_timeout = 0.3
    _, code, _ = await exchange(emu, frames=[bytes(3200), None], pause=1.0)
    assert code == 4031
    emu.config.idle_timeout = 60
    emu.config.max_session_seconds = 0.3
    _, code, _ = await exchange(emu, frames=[None], pause=1.0)
    assert code == 4008


async def test_force_end_and_silence_threshold(emu: AssemblyAIV2Emulator) -> None:
    frames: list[Any] = [audio(tone(700, 0.2)), '{"force_end_utterance": true}',
                         '{"end_utterance_silence_threshold": 200}',
                         tone(700, 0.2) + silence(0.3), tone(900, 0.2), TERMINATE]
    msgs, code, _ = await exchange(emu, "sample_rate=16000&disable_partial_transcripts=true",
                                   frames)
    finals = [(m["text"], m["words"][0]["start"]) for m in msgs
              if m["message_type"] == "FinalTranscript"]
    assert code == 1000 and finals == [("Tone700.", 0), ("Tone700.", 200), ("Tone900.", 700)]
    assert not any(m["message_type"] == "PartialTranscript" for m in msgs)
