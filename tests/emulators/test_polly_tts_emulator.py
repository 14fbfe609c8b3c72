"""The Polly emulator is strict: requests signed by botocore (not voxq's signer) pass, and every
documented way to get SynthesizeSpeech wrong gets the service's error type and status."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.emulators.polly import ACCESS_KEY, REGION, SECRET_KEY, EmulatorConfig, Fault, PollyEmulator
from workers.tts import mp3join

GOOD = {"Engine": "neural", "OutputFormat": "mp3", "SampleRate": "24000", "Text": "Hello world",
        "TextType": "text", "VoiceId": "Joanna"}


@pytest.fixture
async def emu() -> AsyncIterator[PollyEmulator]:
    async with PollyEmulator(EmulatorConfig(max_concurrent=64)) as e:
        yield e


def signed(url: str, body: Any, *, secret: str = SECRET_KEY, access: str = ACCESS_KEY,
           region: str = REGION, service: str = "polly", raw: bytes | None = None) -> dict[str, str]:
    """Headers botocore's SigV4 signer puts on a POST of ``body``."""
    data = raw if raw is not None else json.dumps(body).encode()
    req = AWSRequest(method="POST", url=url, data=data, headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials(access, secret), service, region).add_auth(req)
    return dict(req.headers.items())


async def post(emu: PollyEmulator, body: Any = None, path: str = "/v1/speech",
               headers: dict[str, str] | None = None, raw: bytes | None = None,
               **sign: Any) -> httpx.Response:
    url = emu.url + path
    data = raw if raw is not None else json.dumps(body).encode()
    hdrs = headers if headers is not None else signed(url, body, raw=data, **sign)
    async with httpx.AsyncClient() as c:
        return await c.post(url, content=data, headers=hdrs)


def error(resp: httpx.Response) -> tuple[int, str, str]:
    return resp.status_code, resp.headers.get("x-amzn-errortype", ""), resp.json()["message"]


async def test_botocore_signed_request_gets_mp3(emu: PollyEmulator) -> None:
    resp = await post(emu, GOOD)
    assert resp.status_code == 200 and resp.headers["content-type"] == "audio/mpeg"
    assert resp.headers["x-amzn-requestcharacters"] == "11" and resp.headers["x-amzn-requestid"]
    assert mp3join.inspect(resp.content).sample_rate == 24000
    assert mp3join.duration(resp.content) == pytest.approx(0.2, abs=0.002)  # 10 word characters


@pytest.mark.parametrize(("sign", "status", "kind"), [
    ({"secret": "wrong"}, 403, "InvalidSignatureException"),
    ({"access": "AKIAOTHER"}, 403, "UnrecognizedClientException"),
    ({"region": "us-east-1"}, 403, "InvalidSignatureException"),
    ({"service": "transcribe"}, 403, "InvalidSignatureException"),
])
async def test_signature_problems(emu: PollyEmulator, sign: dict[str, str], status: int, kind: str) -> None:
    code, got, _ = error(await post(emu, GOOD, **sign))
    assert (code, got) == (status, kind)


async def test_missing_malformed_stale_or_tampered_auth(emu: PollyEmulator) -> None:
    assert error(await post(emu, GOOD, headers={"Content-Type": "application/json"}))[:2] == (
        403, "MissingAuthenticationTokenException")
    assert error(await post(emu, GOOD, headers={"Authorization": "AWS4-HMAC-SHA256 junk"}))[:2] == (
        403, "IncompleteSignatureException")
    hdrs = signed(emu.url + "/v1/speech", GOOD)
    hdrs["X-Amz-Date"] = "20200101T000000Z"
    assert error(await post(emu, GOOD, headers=hdrs))[0] == 403
    hdrs = signed(emu.url + "/v1/speech", GOOD)
    tampered = json.dumps({**GOOD, "Text": "Goodbye"}).encode()
    assert error(await post(emu, headers=hdrs, raw=tampered))[:2] == (403, "InvalidSignatureException")


async def test_unknown_operation_and_non_json(emu: PollyEmulator) -> None:
    assert error(await post(emu, GOOD, path="/v1/lexicons"))[:2] == (404, "UnknownOperationException")
    assert error(await post(emu, raw=b"{oops"))[:2] == (400, "SerializationException")
    assert error(await post(emu, [1, 2]))[:2] == (400, "SerializationException")


@pytest.mark.parametrize(("change", "kind", "words"), [
    ({"VoiceId": None}, "ValidationException", "voiceId"),
    ({"Text": None}, "ValidationException", "text"),
    ({"OutputFormat": "flac"}, "ValidationException", "outputFormat"),
    ({"Engine": "turbo"}, "ValidationException", "engine"),
    ({"VoiceId": "Bob"}, "ValidationException", "voiceId"),
    ({"Unknown": 1}, "ValidationException", "Unknown"),
    ({"VoiceId": "Hans"}, "EngineNotSupportedException", "engine"),
    ({"SampleRate": "11025"}, "InvalidSampleRateException", "11025"),
    ({"SampleRate": 24000}, "InvalidSampleRateException", "24000"),
    ({"Text": "x" * 3001}, "TextLengthExceededException", "3000"),
    ({"TextType": "ssml", "Text": "<speak>" + "x" * 6000 + "</speak>"}, "TextLengthExceededException", "6000"),
    ({"TextType": "ssml", "Text": "<speak>unclosed"}, "InvalidSsmlException", "Invalid SSML"),
    ({"TextType": "ssml", "Text": "<voice>x</voice>"}, "InvalidSsmlException", "speak"),
    ({"TextType": "ssml", "Text": '<speak><prosody pitch="+10%">x</prosody></speak>'},
     "InvalidSsmlException", "pitch"),
    ({"TextType": "ssml", "Text": '<speak><prosody rate="500%">x</prosody></speak>'},
     "InvalidSsmlException", "rate"),
    ({"TextType": "ssml", "Text": '<speak><audio src="x"/></speak>'}, "InvalidSsmlException", "audio"),
    ({"Text": " ... "}, "ValidationException", "speak"),
])
async def test_request_validation(emu: PollyEmulator, change: dict[str, Any], kind: str, words: str) -> None:
    body = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    status, got, message = error(await post(emu, body))
    assert (status, got) == (400, kind) and words in message


async def test_ssml_billing_excludes_tags_and_prosody_rate_sets_the_length(emu: PollyEmulator) -> None:
    ssml = '<speak><prosody rate="200%" volume="-6dB">' + "y" * 2990 + "</prosody></speak>"
    resp = await post(emu, {**GOOD, "TextType": "ssml", "Text": ssml})
    assert resp.status_code == 200 and resp.headers["x-amzn-requestcharacters"] == "2990"
    assert mp3join.duration(resp.content) == pytest.approx(2990 * 0.02 / 2, abs=0.002)


async def test_faults_throttling_and_chunked_bodies(emu: PollyEmulator) -> None:
    emu.faults.append(Fault(status=503, error_type="ServiceUnavailableException", message="later"))
    assert error(await post(emu, GOOD)) == (503, "ServiceUnavailableException", "later")
    emu.config.max_concurrent = 0
    assert error(await post(emu, GOOD))[:2] == (400, "ThrottlingException")
    emu.config.max_concurrent = 8
    emu.faults.append(Fault(kind="drop"))
    with pytest.raises(httpx.HTTPError):
        await post(emu, GOOD)

    async def chunks() -> AsyncIterator[bytes]:
        yield json.dumps(GOOD).encode()

    async with httpx.AsyncClient() as c:
        resp = await c.post(emu.url + "/v1/speech", content=chunks(),
                            headers=signed(emu.url + "/v1/speech", GOOD))
    assert resp.status_code == 411
    assert (await post(emu, GOOD)).status_code == 200
