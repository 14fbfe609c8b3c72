"""The `aws` synthesizer (Polly SynthesizeSpeech) against the strict Polly emulator: the request it
signs and sends, SSML for speed/volume/pitch, and every error mapped to retryable, auth or
rejected without a secret in any message."""

from __future__ import annotations

import json
import socket

import httpx
import pytest
from pydantic import SecretStr

from tests.emulators import polly as emulator
from tests.emulators.polly import EmulatorConfig, Fault, PollyEmulator
from tests.emulators.tts_audio import speech_seconds
from voxq.errors import InvalidInput
from voxq.settings import Settings
from workers.tts import mp3join
from workers.vendors.aws.tts import PollySynthesizer, polly_error, request_body
from workers.vendors.base import (
    SynthesisRequest,
    VendorAuthError,
    VendorRejected,
    VendorRetryable,
)


def test_plain_text_body_and_ssml_when_prosody_is_asked() -> None:
    plain = request_body(SynthesisRequest(text="Hi & bye", voice="Ivy", sample_rate=16000), "neural")
    assert plain == {"Engine": "neural", "OutputFormat": "mp3", "SampleRate": "16000", "VoiceId": "Ivy",
                     "TextType": "text", "Text": "Hi & bye"}
    ssml = request_body(SynthesisRequest(text="a < b & c", speed=0.5, volume=2.0, pitch=1.2), "standard")
    assert ssml["TextType"] == "ssml"
    assert ssml["Text"] == ('<speak><prosody rate="50%" volume="+6.0dB" pitch="+20%">'
                            "a &lt; b &amp; c</prosody></speak>")


def test_error_type_from_header_or_body_and_its_class() -> None:
    h = httpx.Headers({"x-amzn-ErrorType": "ThrottlingException:http://internal.amazon.com/"})
    e = polly_error(400, h, b'{"message":"Rate exceeded"}')
    assert isinstance(e, VendorRetryable) and e.code == "ThrottlingException" and e.message == "Rate exceeded"
    e = polly_error(400, httpx.Headers(), b'{"__type":"com.amazonaws#InvalidSsmlException","Message":"bad"}')
    assert isinstance(e, VendorRejected) and not isinstance(e, VendorAuthError) and e.code == "InvalidSsmlException"
    assert isinstance(polly_error(403, httpx.Headers(), b"denied"), VendorAuthError)
    assert isinstance(polly_error(503, httpx.Headers(), b"<html>"), VendorRetryable)
    assert isinstance(polly_error(400, httpx.Headers({"x-amzn-ErrorType": "ExpiredTokenException"}), b"{}"),
                      VendorAuthError)


async def test_synthesizes_signed_requests_with_the_configured_engine() -> None:
    async with PollyEmulator(EmulatorConfig(session_token="session-token-123")) as emu:
        synth = PollySynthesizer(emu.configure(Settings(), aws_polly_engine="standard"))
        mp3 = await synth.synthesize(SynthesisRequest(text="Hello there.", voice="Hans", speed=1.5,
                                                      pitch=0.8, sample_rate=22050))
        [req] = emu.requests
        assert req.status == 200 and req.body["Engine"] == "standard" and req.body["VoiceId"] == "Hans"
        assert req.headers["x-amz-security-token"] == "session-token-123"
        assert "x-amz-security-token" in req.headers["authorization"]
        assert mp3join.inspect(mp3).sample_rate == 22050
        assert mp3join.duration(mp3) == pytest.approx(speech_seconds("Hello there.", 1.5), abs=0.002)
        assert synth.variant() == "standard" and "Hans" in synth.voices()
    assert PollySynthesizer(Settings()).voices()[0] == "Joanna"
    assert PollySynthesizer(Settings()).url == "https://polly.us-east-1.amazonaws.com/v1/speech"


async def test_error_answers_map_to_the_right_class() -> None:
    async with PollyEmulator() as emu:
        synth = PollySynthesizer(emu.configure(Settings()))
        req = SynthesisRequest(text="x", voice="Joanna")
        cases = [(Fault(status=500), VendorRetryable, "ServiceFailureException"),
                 (Fault(status=400, error_type="ThrottlingException", message="Rate exceeded"),
                  VendorRetryable, "Rate exceeded"),
                 (Fault(status=400, error_type="TextLengthExceededException", message="long"),
                  VendorRejected, "TextLengthExceededException"),
                 (Fault(kind="drop"), VendorRetryable, "cannot reach Polly"),
                 (Fault(kind="garbage"), None, "")]
        for fault, error, words in cases:
            emu.faults.append(fault)
            if error is None:
                body = await synth.synthesize(req)  # 200 with junk: the job's MP3 check refuses it
                assert body.startswith(b"<html>")
                continue
            with pytest.raises(error) as e:
                await synth.synthesize(req)
            assert words in str(e.value) and not isinstance(e.value, VendorAuthError)
        with pytest.raises(VendorRejected, match="EngineNotSupportedException"):
            await PollySynthesizer(emu.configure(Settings(), aws_polly_engine="long-form")).synthesize(
                SynthesisRequest(text="x", voice="Joanna"))


async def test_credentials_missing_wrong_or_unknown_are_auth_errors_without_secrets() -> None:
    async with PollyEmulator() as emu:
        good = emu.configure(Settings())
        with pytest.raises(VendorAuthError, match="AWS_ACCESS_KEY_ID"):
            await PollySynthesizer(good.model_copy(update={"aws_access_key_id": None})).synthesize(
                SynthesisRequest(text="x"))
        wrong = good.model_copy(update={"aws_secret_access_key": SecretStr("not-the-secret")})
        with pytest.raises(VendorAuthError, match="InvalidSignatureException") as e:
            await PollySynthesizer(wrong).synthesize(SynthesisRequest(text="x"))
        assert "not-the-secret" not in str(e.value) and emulator.SECRET_KEY not in str(e.value)
        unknown = good.model_copy(update={"aws_access_key_id": SecretStr("AKIAUNKNOWN")})
        with pytest.raises(VendorAuthError, match="UnrecognizedClientException"):
            await PollySynthesizer(unknown).synthesize(SynthesisRequest(text="x"))
        elsewhere = good.model_copy(update={"aws_region": "us-west-2"})
        with pytest.raises(VendorAuthError, match="region"):
            await PollySynthesizer(elsewhere).synthesize(SynthesisRequest(text="x"))


async def test_pitch_on_neural_is_refused_before_any_call() -> None:
    synth = PollySynthesizer(Settings())
    with pytest.raises(InvalidInput, match="pitch"):
        synth.check_request(SynthesisRequest(text="x", pitch=1.2))
    with pytest.raises(InvalidInput):
        await synth.synthesize(SynthesisRequest(text="x", pitch=1.2))


async def test_unreachable_or_invalid_endpoints() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    creds = {"aws_access_key_id": SecretStr("AKIA1"), "aws_secret_access_key": SecretStr("s")}
    closed = Settings(aws_polly_endpoint=f"http://127.0.0.1:{port}", **creds)  # type: ignore[arg-type]
    with pytest.raises(VendorRetryable, match="cannot reach Polly"):
        await PollySynthesizer(closed).synthesize(SynthesisRequest(text="x"))
    bad = Settings(aws_polly_endpoint="ftp://nowhere", **creds)  # type: ignore[arg-type]
    with pytest.raises(VendorRejected, match="scheme") as e:
        await PollySynthesizer(bad).synthesize(SynthesisRequest(text="x"))
    assert not isinstance(e.value, VendorAuthError)
    assert json.dumps(request_body(SynthesisRequest(text="é"), "neural"), ensure_ascii=False)
