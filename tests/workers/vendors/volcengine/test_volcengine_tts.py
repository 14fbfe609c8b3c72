"""The `volcengine` (v1 binary) and `volcengine-v3` (bidirectional) synthesizers against the strict
Volcengine TTS emulator, framed by the shared codec: requests, event order, audio reassembly, and
every error code classified without leaking the token."""

from __future__ import annotations

import json
import math

import pytest
from pydantic import SecretStr

from tests.emulators import volcengine_tts as emulator
from tests.emulators.tts_audio import speech_seconds
from tests.emulators.volcengine_tts import EmulatorConfig, Fault, VolcengineTtsEmulator
from voxq.errors import InvalidInput
from voxq.settings import Settings
from workers.tts import mp3join
from workers.vendors.base import SynthesisRequest, VendorAuthError, VendorRejected, VendorRetryable
from workers.vendors.volcengine.frames import Event
from workers.vendors.volcengine.tts import (
    VolcengineTtsSynthesizer,
    VolcengineV3Synthesizer,
    classify_v1,
    classify_v3,
    resource_for,
    v1_request,
    v3_session,
)


def test_v1_request_and_v3_session_shapes() -> None:
    req = SynthesisRequest(text="你好", voice="BV002_streaming", speed=1.5, volume=0.5, pitch=2.0,
                           sample_rate=8000)
    assert v1_request(req, app_id="app", cluster="volcano_tts", reqid="r1") == {
        "app": {"appid": "app", "token": "access_token", "cluster": "volcano_tts"},
        "user": {"uid": "voxq"},
        "audio": {"voice_type": "BV002_streaming", "encoding": "mp3", "rate": 8000, "speed_ratio": 1.5,
                  "volume_ratio": 0.5, "pitch_ratio": 2.0},
        "request": {"reqid": "r1", "text": "你好", "text_type": "plain", "operation": "submit"}}
    start = v3_session(req)
    assert start["event"] == Event.START_SESSION and "text" not in start["req_params"]
    assert start["req_params"]["audio_params"] == {"format": "mp3", "sample_rate": 8000, "speech_rate": 50,
                                                   "loudness_rate": -50}
    assert json.loads(start["req_params"]["additions"]) == {"post_process": {"pitch": 12}}
    task = v3_session(SynthesisRequest(text="hi", voice="v"), text="hi")
    assert task["event"] == Event.TASK_REQUEST and task["req_params"]["text"] == "hi"
    assert "additions" not in task["req_params"]
    assert round(12 * math.log2(0.5)) == -12
    assert resource_for("zh_female_vv_uranus_bigtts") == "seed-tts-2.0"
    assert resource_for("zh_female_cancan_mars_bigtts") == "seed-tts-1.0"


def test_error_classification() -> None:
    assert classify_v1(3001, "authenticate request: load grant: requested grant not found") is VendorAuthError
    assert classify_v1(3001, "extract request resource id: get resource id: access denied") is VendorAuthError
    assert classify_v1(3003, "quota exceeded for types: concurrency") is VendorRetryable
    for code in (3005, 3006, 3030, 3031, 3032, 3040):
        assert classify_v1(code, "") is VendorRetryable
    for code in (3001, 3010, 3011, 3050):
        assert classify_v1(code, "x") is VendorRejected
    assert classify_v3(45000010, "") is VendorAuthError
    assert classify_v3(45000292, "") is VendorRetryable and classify_v3(55000031, "") is VendorRetryable
    assert classify_v3(55000000, "resource ID is mismatched with speaker related resource") is VendorRejected
    assert classify_v3(55000000, "internal") is VendorRetryable
    assert classify_v3(45000000, "quota exceeded for types: concurrency") is VendorRetryable
    assert classify_v3(45000000, "speaker permission denied") is VendorRejected
    assert classify_v3(40402003, "TTSExceededTextLimit") is VendorRejected


async def test_v1_streams_sequenced_chunks_into_one_mp3() -> None:
    async with VolcengineTtsEmulator(EmulatorConfig(chunk_bytes=256)) as emu:
        synth = VolcengineTtsSynthesizer(emu.configure(Settings()))
        text = "今天天气很好。Nice day."
        mp3 = await synth.synthesize(SynthesisRequest(text=text, speed=0.8, sample_rate=24000))
        [conn] = emu.connections
        assert conn.headers["Authorization"] == f"Bearer; {emulator.ACCESS_TOKEN}"
        [s] = emu.syntheses
        assert s.finished and s.chunks > 3 and s.request["audio"]["voice_type"] == "BV001_streaming"
        assert mp3join.duration(mp3) == pytest.approx(speech_seconds(text, 0.8), abs=0.002)
        assert synth.variant() == "volcano_tts"


@pytest.mark.parametrize("shape", [
    {"last_flags": 0b0010}, {"ack_first": True}, {"frontend_first": True},
    {"ack_first": True, "frontend_first": True, "last_flags": 0b0010}])
async def test_v1_accepts_every_frame_shape_of_the_reference_client(shape: dict[str, object]) -> None:
    # the last audio frame flagged 0b0010 still carries its sequence; a bare ACK `11 B0 00 00`
    # and a gzipped frontend response may come before the audio
    async with VolcengineTtsEmulator(EmulatorConfig(chunk_bytes=256, **shape)) as emu:  # type: ignore[arg-type]
        text = "今天天气很好。"
        mp3 = await VolcengineTtsSynthesizer(emu.configure(Settings())).synthesize(
            SynthesisRequest(text=text))
        [s] = emu.syntheses
        assert s.finished and s.chunks > 1
        assert mp3join.duration(mp3) == pytest.approx(speech_seconds(text, 1.0), abs=0.002)


async def test_v1_gzipped_error_message_is_read() -> None:
    async with VolcengineTtsEmulator(EmulatorConfig(gzip_errors=True)) as emu:
        emu.faults.append(Fault(code=3050, message="voice does not exist"))
        with pytest.raises(VendorRejected, match="3050: voice does not exist"):
            await VolcengineTtsSynthesizer(emu.configure(Settings())).synthesize(
                SynthesisRequest(text="Hello there."))


@pytest.mark.parametrize(("fault", "error", "code"), [
    (Fault(code=3005, message="backend busy"), VendorRetryable, 3005),
    (Fault(code=3003, message="quota exceeded for types: concurrency"), VendorRetryable, 3003),
    (Fault(code=3031, message="processing error", after_chunks=2), VendorRetryable, 3031),
    (Fault(code=3050, message="voice does not exist"), VendorRejected, 3050),
    (Fault(kind="drop", after_chunks=2), VendorRetryable, None),
    (Fault(kind="http", status=502, message="bad gateway"), VendorRetryable, 502),
    (Fault(kind="http", status=403, message="forbidden"), VendorAuthError, 403),
])
async def test_v1_failures_are_classified(fault: Fault, error: type[Exception], code: int | None) -> None:
    async with VolcengineTtsEmulator(EmulatorConfig(chunk_bytes=256)) as emu:
        emu.faults.append(fault)
        with pytest.raises(error) as e:
            await VolcengineTtsSynthesizer(emu.configure(Settings())).synthesize(
                SynthesisRequest(text="Hello there. " * 10))
        assert getattr(e.value, "code", None) == code


async def test_v1_protocol_answers_from_the_service() -> None:
    async with VolcengineTtsEmulator() as emu:
        synth = VolcengineTtsSynthesizer(emu.configure(Settings()))
        with pytest.raises(VendorRejected, match="3011: illegal input text!"):
            await synth.synthesize(SynthesisRequest(text="。！？"))
        with pytest.raises(VendorRejected, match="3010"):
            await synth.synthesize(SynthesisRequest(text="好" * 400))
        with pytest.raises(VendorRejected, match="3001: invalid rate"):
            await synth.synthesize(SynthesisRequest(text="x", sample_rate=22050))
        cluster = VolcengineTtsSynthesizer(emu.configure(Settings(), volcengine_tts_cluster="nope"))
        with pytest.raises(VendorRejected, match="Init Engine Instance failed"):
            await cluster.synthesize(SynthesisRequest(text="x"))


async def test_v1_credentials_missing_or_wrong() -> None:
    async with VolcengineTtsEmulator() as emu:
        settings = emu.configure(Settings())
        with pytest.raises(VendorAuthError, match="VOLCENGINE_APP_ID"):
            await VolcengineTtsSynthesizer(settings.model_copy(update={"volcengine_access_token": None})
                                           ).synthesize(SynthesisRequest(text="x"))
        wrong = settings.model_copy(update={"volcengine_access_token": SecretStr("tok-wrong-1")})
        with pytest.raises(VendorAuthError, match="requested grant not found") as e:
            await VolcengineTtsSynthesizer(wrong).synthesize(SynthesisRequest(text="x"))
        assert "tok-wrong-1" not in str(e.value)
        emu.faults.append(Fault(code=3031, message=f"echo {emulator.ACCESS_TOKEN}"))
        with pytest.raises(VendorRetryable) as e2:
            await VolcengineTtsSynthesizer(settings).synthesize(SynthesisRequest(text="x"))
        assert emulator.ACCESS_TOKEN not in str(e2.value) and "***" in str(e2.value)


async def test_v3_session_events_and_audio() -> None:
    async with VolcengineTtsEmulator(EmulatorConfig(chunk_bytes=300)) as emu:
        synth = VolcengineV3Synthesizer(emu.configure(Settings()))
        text = "第一句。第二句！Third sentence."
        mp3 = await synth.synthesize(SynthesisRequest(text=text, speed=1.5, volume=2.0, sample_rate=32000))
        [conn] = emu.connections
        assert conn.headers["X-Api-App-Key"] == emulator.APP_ID
        assert conn.headers["X-Api-Access-Key"] == emulator.ACCESS_TOKEN
        assert conn.headers["X-Api-Resource-Id"] == "seed-tts-1.0" and conn.headers["X-Api-Connect-Id"]
        [s] = emu.syntheses
        assert s.finished and s.text == text
        assert s.request["req_params"]["audio_params"]["loudness_rate"] == 100
        assert mp3join.duration(mp3) == pytest.approx(speech_seconds(text, 1.5), abs=0.002)
        assert mp3join.inspect(mp3).sample_rate == 32000
        assert synth.variant() == "auto"


async def test_v3_api_key_resource_override_and_refusals() -> None:
    async with VolcengineTtsEmulator() as emu:
        keyed = emu.configure(Settings(), volcengine_app_id=None, volcengine_access_token=None,
                              volcengine_api_key=SecretStr(emulator.API_KEY))
        await VolcengineV3Synthesizer(keyed).synthesize(SynthesisRequest(text="好。"))
        assert emu.connections[-1].headers["X-Api-Key"] == emulator.API_KEY
        mismatch = emu.configure(Settings(), volcengine_tts_resource_id="seed-tts-2.0")
        with pytest.raises(VendorRejected, match="55000000: resource ID is mismatched"):
            await VolcengineV3Synthesizer(mismatch).synthesize(SynthesisRequest(text="好。"))
        ungranted = emu.configure(Settings(), volcengine_tts_resource_id="volc.megatts.default")
        with pytest.raises(VendorAuthError, match="45000030"):
            await VolcengineV3Synthesizer(ungranted).synthesize(SynthesisRequest(text="好。"))
        wrong = emu.configure(Settings(), volcengine_access_token=SecretStr("nope-token"))
        with pytest.raises(VendorAuthError, match="45000010") as e:
            await VolcengineV3Synthesizer(wrong).synthesize(SynthesisRequest(text="好。"))
        assert "nope-token" not in str(e.value)
        none = emu.configure(Settings(), volcengine_app_id=None, volcengine_access_token=None)
        with pytest.raises(VendorAuthError, match="VOLCENGINE_API_KEY"):
            await VolcengineV3Synthesizer(none).synthesize(SynthesisRequest(text="好。"))
        with pytest.raises(InvalidInput, match="volume"):
            await VolcengineV3Synthesizer(keyed).synthesize(SynthesisRequest(text="好。", volume=0.3))
        with pytest.raises(VendorRejected, match="40402003"):
            await VolcengineV3Synthesizer(keyed).synthesize(SynthesisRequest(text="好" * 400))


@pytest.mark.parametrize(("fault", "error"), [
    (Fault(code=45000292, message="quota exceeded"), VendorRetryable),
    (Fault(code=55000031, message="server busy", after_chunks=1), VendorRetryable),
    (Fault(code=45000001, message="invalid parameter"), VendorRejected),
    (Fault(kind="drop", after_chunks=1), VendorRetryable),
])
async def test_v3_failures_are_classified(fault: Fault, error: type[Exception]) -> None:
    async with VolcengineTtsEmulator(EmulatorConfig(chunk_bytes=200)) as emu:
        emu.faults.append(fault)
        with pytest.raises(error):
            await VolcengineV3Synthesizer(emu.configure(Settings())).synthesize(
                SynthesisRequest(text="Hello there. " * 10))
