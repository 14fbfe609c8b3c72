"""The `dashscope` synthesizer (CosyVoice) against the strict DashScope TTS emulator: the task it
runs, waiting for task-started, audio reassembly, and every failure classified without leaking
the API key."""

from __future__ import annotations

import json
import socket

import pytest
from pydantic import SecretStr

from tests.emulators.dashscope_tts import API_KEY, DashScopeTtsEmulator, EmulatorConfig, Fault
from tests.emulators.tts_audio import speech_seconds
from voxq.settings import Settings
from workers.tts import mp3join
from workers.vendors.base import SynthesisRequest, VendorAuthError, VendorRejected, VendorRetryable
from workers.vendors.dashscope.tts import CosyVoiceSynthesizer, continue_task, finish_task, run_task


def test_instructions_have_the_documented_shape() -> None:
    doc = json.loads(run_task("ab" * 16, "cosyvoice-v2", SynthesisRequest(
        text="x", voice="longwan_v2", volume=2.0, speed=0.5, pitch=2.0, sample_rate=8000)))
    assert doc == {"header": {"action": "run-task", "task_id": "ab" * 16, "streaming": "duplex"},
                   "payload": {"task_group": "audio", "task": "tts", "function": "SpeechSynthesizer",
                               "model": "cosyvoice-v2", "input": {},
                               "parameters": {"text_type": "PlainText", "voice": "longwan_v2",
                                              "format": "mp3", "sample_rate": 8000, "volume": 100,
                                              "rate": 0.5, "pitch": 2.0}}}
    assert json.loads(continue_task("t", "床前"))["payload"] == {"input": {"text": "床前"}}
    assert "床前" in continue_task("t", "床前")  # UTF-8, not \\u escapes
    assert json.loads(finish_task("t"))["payload"] == {"input": {}}


async def test_synthesizes_after_task_started_and_joins_the_chunks() -> None:
    async with DashScopeTtsEmulator(EmulatorConfig(task_started_delay=0.2, chunk_bytes=300)) as emu:
        synth = CosyVoiceSynthesizer(emu.configure(Settings(), dashscope_workspace="ws-1"))
        text = "床前明月光。疑是地上霜。Hello."
        mp3 = await synth.synthesize(SynthesisRequest(text=text, speed=1.25, sample_rate=24000))
        [conn] = emu.connections
        assert conn.headers["Authorization"] == f"Bearer {API_KEY}"
        assert conn.headers["X-DashScope-WorkSpace"] == "ws-1"
        [task] = conn.tasks
        assert task.finished and task.texts == [text] and task.audio_bytes == len(mp3)
        assert task.run_task["payload"]["parameters"]["voice"] == "longxiaochun_v2"  # the default
        assert mp3join.duration(mp3) == pytest.approx(speech_seconds(text, 1.25), abs=0.002)
        assert synth.variant() == "cosyvoice-v2"


async def test_v1_model_uses_v1_voices() -> None:
    async with DashScopeTtsEmulator() as emu:
        synth = CosyVoiceSynthesizer(emu.configure(Settings(), dashscope_tts_model="cosyvoice-v1"))
        assert synth.voices()[0] == "longxiaochun" and "longwan_v2" not in synth.voices()
        await synth.synthesize(SynthesisRequest(text="好。", voice="longwan"))
        assert emu.tasks[0].run_task["payload"]["model"] == "cosyvoice-v1"
        with pytest.raises(VendorRejected, match="not a cosyvoice-v1 voice"):
            await synth.synthesize(SynthesisRequest(text="好。", voice="longwan_v2"))


@pytest.mark.parametrize(("fault", "error", "words"), [
    (Fault(kind="fail", code="Throttling.RateQuota", message="slow down"), VendorRetryable, "Throttling.RateQuota"),
    (Fault(kind="fail", code="InvalidParameter", message="[tts:]Engine return error code: 418"),
     VendorRejected, "418"),
    (Fault(kind="fail", code="Arrearage", message="Access denied, please make sure your account is in good "
                                                  "standing."), VendorRejected, "Arrearage"),
    (Fault(kind="fail", code="AccessDenied.Unpurchased", message="no"), VendorAuthError, "Unpurchased"),
    (Fault(kind="http", status=429, code="Throttling", message="busy"), VendorRetryable, "HTTP 429"),
    (Fault(kind="http", status=503, code="ServiceUnavailable", message="x"), VendorRetryable, "HTTP 503"),
    (Fault(kind="http", status=403, code="AccessDenied", message="x"), VendorAuthError, "HTTP 403"),
    (Fault(kind="drop", after_chunks=1), VendorRetryable, "connection lost"),
])
async def test_failures_are_classified(fault: Fault, error: type[Exception], words: str) -> None:
    async with DashScopeTtsEmulator(EmulatorConfig(chunk_bytes=200)) as emu:
        emu.faults.append(fault)
        with pytest.raises(error, match=words.replace("[", r"\[").replace(".", r"\.")) as e:
            await CosyVoiceSynthesizer(emu.configure(Settings())).synthesize(SynthesisRequest(text="Hello. " * 20))
        if error is VendorRejected:
            assert not isinstance(e.value, VendorAuthError)


async def test_key_missing_wrong_or_echoed_never_shows() -> None:
    async with DashScopeTtsEmulator() as emu:
        settings = emu.configure(Settings())
        with pytest.raises(VendorAuthError, match="DASHSCOPE_API_KEY"):
            await CosyVoiceSynthesizer(settings.model_copy(update={"dashscope_api_key": None})).synthesize(
                SynthesisRequest(text="x"))
        wrong = settings.model_copy(update={"dashscope_api_key": SecretStr("sk-wrong-key")})
        with pytest.raises(VendorAuthError, match="InvalidApiKey") as e:
            await CosyVoiceSynthesizer(wrong).synthesize(SynthesisRequest(text="x"))
        assert "sk-wrong-key" not in str(e.value)
        emu.faults.append(Fault(kind="fail", code="InternalError", message=f"key {API_KEY} crashed"))
        with pytest.raises(VendorRetryable) as e2:
            await CosyVoiceSynthesizer(settings).synthesize(SynthesisRequest(text="x"))
        assert API_KEY not in str(e2.value) and "***" in str(e2.value)


async def test_unreachable_and_invalid_endpoints() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = Settings(dashscope_api_key=SecretStr("sk-x"))  # type: ignore[call-arg]
    with pytest.raises(VendorRetryable, match="cannot connect"):
        await CosyVoiceSynthesizer(base.model_copy(update={"dashscope_url": f"ws://127.0.0.1:{port}/x"})
                                   ).synthesize(SynthesisRequest(text="x"))
    with pytest.raises(VendorRejected, match="invalid endpoint"):
        await CosyVoiceSynthesizer(base.model_copy(update={"dashscope_url": "http//bad"})).synthesize(
            SynthesisRequest(text="x"))
