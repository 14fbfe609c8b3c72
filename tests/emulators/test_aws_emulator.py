"""The AWS Transcribe emulator is strict where the notes say the service is: SigV4 presigning,
parameters, framing, limits; and its tone-code recognition is exact and deterministic."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

from tests.emulators.aws_transcribe import (
    ACCESS_KEY,
    PATH,
    REGION,
    SECRET_KEY,
    TOO_BIG,
    UNEXPECTED_FRAME,
    AuthFailure,
    AwsTranscribeEmulator,
    Fault,
    Signing,
    canonical_request,
    expected_signature,
    signing_key,
    timeout_message,
    verify_presigned,
)
from tests.emulators.common import interleave, silence, tone
from workers.vendors.aws.eventstream import (
    HeaderValue,
    Message,
    Timestamp,
    audio_event,
    decode_message,
    encode_message,
    encode_raw,
)
from workers.vendors.aws.sigv4 import presign_transcribe_url

BASE = {"language-code": "en-US", "media-encoding": "pcm", "sample-rate": "16000"}
# §6.4 of the notes: the real server's answer to a text frame, byte for byte
TEXT_FRAME_ANSWER = bytes.fromhex(
    "000000a3" "00000061" "68106be1"
    "0f" + b":exception-type".hex() + "07" "0013" + b"BadRequestException".hex()
    + "0d" + b":content-type".hex() + "07" "0010" + b"application/json".hex()
    + "0d" + b":message-type".hex() + "07" "0009" + b"exception".hex()
    + b'{"Message":"Unexpected WebSocket frame received."}'.hex()
    + "bdce4b8a"
)


@pytest.fixture
async def aws_emulator() -> AsyncIterator[AwsTranscribeEmulator]:
    """A running emulator with AWS's limits; tests tweak its ``config`` and ``faults``."""
    async with AwsTranscribeEmulator() as emulator:
        yield emulator


def sign_url(port: int, params: dict[str, str], *, when: datetime | None = None,
             expires: str = "300", access: str = ACCESS_KEY, secret: str = SECRET_KEY,
             region: str = REGION, service: str = "transcribe",
             drop: str | None = None) -> str:
    """A presigned URL built with the emulator's own signer (to forge what the client refuses)."""
    when = when or datetime.now(UTC)
    amz_date = when.strftime("%Y%m%dT%H%M%SZ")
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    pairs = [("X-Amz-Algorithm", "AWS4-HMAC-SHA256"), ("X-Amz-Credential", f"{access}/{scope}"),
             ("X-Amz-Date", amz_date), ("X-Amz-Expires", expires),
             ("X-Amz-SignedHeaders", "host"), *params.items()]
    host = f"127.0.0.1:{port}"
    request = canonical_request(PATH, pairs, {"host": host}, ["host"])
    key = signing_key(secret, amz_date[:8], region, service)
    pairs.append(("X-Amz-Signature", expected_signature(key, amz_date, scope, request)))
    query = "&".join(f"{k}={v.replace('/', '%2F')}" for k, v in pairs if k != drop)
    return f"ws://{host}{PATH}?{query}"


def url_for(emu: AwsTranscribeEmulator, params: dict[str, str] | None = None, **kw: Any) -> str:
    """A presigned URL for the emulator made by the client's signer."""
    args: dict[str, Any] = {"region": REGION, "access_key": ACCESS_KEY, "secret_key": SECRET_KEY,
                            "now": datetime.now(UTC)}
    args.update(kw)
    return presign_transcribe_url(params=params if params is not None else BASE,
                                  host=f"127.0.0.1:{emu.port}", scheme="ws", **args)


def open_ws(url: str) -> connect:
    """A raw client connection, compression off (the emulator negotiates none)."""
    return connect(url, compression=None, ping_interval=None, open_timeout=5)


async def next_message(ws: ClientConnection) -> Message:
    """The next server message: always one event-stream message in one binary frame."""
    frame = await ws.recv()
    assert isinstance(frame, bytes), frame
    return decode_message(frame)


async def exception_of(ws: ClientConnection) -> tuple[str, str]:
    """Skip TranscriptEvents to an exception message, after which the server closes."""
    message = await next_message(ws)
    while message.message_type == "event":
        message = await next_message(ws)
    assert message.message_type == "exception", message
    body = json.loads(message.payload)
    with pytest.raises(ConnectionClosed):
        await ws.recv()
    assert message.exception_type is not None
    return message.exception_type, body["Message"]


async def collect(ws: ClientConnection) -> list[dict[str, Any]]:
    """Every result until the server closes after the end of stream."""
    results: list[dict[str, Any]] = []
    try:
        while True:
            message = await next_message(ws)
            assert message.message_type == "event" and message.event_type == "TranscriptEvent"
            assert message.content_type == "application/json"
            results += json.loads(message.payload)["Transcript"]["Results"]
    except ConnectionClosed as e:
        assert e.rcvd is not None and e.rcvd.code == 1000
    return results


async def stream(ws: ClientConnection, pcm: bytes, chunk: int = 3200) -> None:
    """Send PCM as AudioEvents, then the empty one."""
    for i in range(0, len(pcm), chunk):
        await ws.send(audio_event(pcm[i:i + chunk]))
    await ws.send(audio_event(b""))


# --- SigV4 --------------------------------------------------------------------------------------


def test_verifier_accepts_the_notes_worked_vectors() -> None:
    """§2.4: the emulator's independent verifier agrees with the published signatures."""
    creds = {"AKIAIOSFODNN7EXAMPLE": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}
    host = {"host": "transcribestreaming.us-east-1.amazonaws.com:8443"}
    now = datetime(2024, 1, 15, 8, 31, tzinfo=UTC)
    query = ("X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20240115"
             "%2Fus-east-1%2Ftranscribe%2Faws4_request&X-Amz-Date=20240115T083000Z&"
             "X-Amz-Expires=300&X-Amz-SignedHeaders=host&language-code=en-US&"
             "media-encoding=pcm&sample-rate=16000")
    sig = "0c43e7d1d243d9b0a27c15e630dc3043649ab37e405fb412b407520f4cfd7451"
    ok = verify_presigned(PATH, f"{query}&X-Amz-Signature={sig}", host, now, creds, "us-east-1")
    assert isinstance(ok, Signing) and ok.signature == sig
    bad = verify_presigned(PATH, f"{query}&X-Amz-Signature={sig[:-1]}0", host, now, creds,
                           "us-east-1")
    assert isinstance(bad, AuthFailure) and bad.type == "InvalidSignatureException"
    token = ("&X-Amz-Security-Token=IQoJb3JpZ2luX2VjEXAMPLE%2Ftoken%2Bwith%3Dchars&X-Amz-Signature="
             "bc0c824e327d7dae49c564d5d343626f55892beea7f1db4cddc68cf3f3d2a769")
    assert isinstance(verify_presigned(PATH, query + token, host, now, creds, "us-east-1"), Signing)
    # a raw '+' in the token is a space once decoded: the signature no longer matches
    raw_plus = token.replace("%2B", "+")
    assert isinstance(verify_presigned(PATH, query + raw_plus, host, now, creds, "us-east-1"),
                      AuthFailure)


async def test_client_presigned_url_is_accepted(aws_emulator: AwsTranscribeEmulator) -> None:
    async with open_ws(url_for(aws_emulator, {**BASE, "user-agent": "x/1"},
                               session_token="tok/+=en")) as ws:
        await stream(ws, silence(0.2))
        await collect(ws)
    log = aws_emulator.streams[0]
    assert log.exception is None and log.ended and log.params["user-agent"] == "x/1"


@pytest.mark.parametrize(("case", "kind", "text"), [
    ("wrong secret", "InvalidSignatureException", "does not match"),
    ("unknown key", "UnrecognizedClientException", "security token"),
    ("expired", "InvalidSignatureException", "Signature expired"),
    ("future", "InvalidSignatureException", "not yet current"),
    ("expires 301", "InvalidSignatureException", "between 1 and 300"),
    ("expires 0", "InvalidSignatureException", "between 1 and 300"),
    ("no signature", "IncompleteSignatureException", "must include"),
    ("wrong region", "InvalidSignatureException", "valid region"),
    ("wrong service", "InvalidSignatureException", "correct service"),
])
async def test_bad_presigned_urls_get_http_403(aws_emulator: AwsTranscribeEmulator, case: str,
                                               kind: str, text: str) -> None:
    port = aws_emulator.port
    now = datetime.now(UTC)
    url = {
        "wrong secret": lambda: url_for(aws_emulator, secret_key="not-the-secret"),
        "unknown key": lambda: url_for(aws_emulator, access_key="AKIDUNKNOWN"),
        "expired": lambda: url_for(aws_emulator, now=now - timedelta(seconds=301)),
        "future": lambda: url_for(aws_emulator, now=now + timedelta(minutes=6)),
        "expires 301": lambda: sign_url(port, BASE, expires="301"),
        "expires 0": lambda: sign_url(port, BASE, expires="0"),
        "no signature": lambda: sign_url(port, BASE, drop="X-Amz-Signature"),
        "wrong region": lambda: url_for(aws_emulator, region="eu-west-1"),
        "wrong service": lambda: sign_url(port, BASE, service="transcribestreaming"),
    }[case]()
    with pytest.raises(InvalidStatus) as info:
        async with open_ws(url):
            pass
    response = info.value.response
    assert response.status_code == 403
    assert response.headers["x-amzn-ErrorType"] == kind
    assert text in json.loads(response.body)["message"]
    assert aws_emulator.streams[-1].http_status == 403


async def test_auth_failure_as_exception_frame(aws_emulator: AwsTranscribeEmulator) -> None:
    aws_emulator.config.auth_failure = "frame"
    async with open_ws(url_for(aws_emulator, access_key="AKIDUNKNOWN")) as ws:
        assert await exception_of(ws) == ("UnrecognizedClientException",
                                          "The security token included in the request is invalid.")


async def test_tampered_query_and_wrong_path(aws_emulator: AwsTranscribeEmulator) -> None:
    url = url_for(aws_emulator).replace("sample-rate=16000", "sample-rate=8000")
    with pytest.raises(InvalidStatus) as info:
        async with open_ws(url):
            pass
    assert info.value.response.status_code == 403
    with pytest.raises(InvalidStatus) as info:
        async with open_ws(url_for(aws_emulator, path="/stream-transcription")):
            pass
    assert info.value.response.status_code == 404


# --- parameters ---------------------------------------------------------------------------------


@pytest.mark.parametrize("change", [
    {"sample-rate": "7999"}, {"sample-rate": "48001"}, {"sample-rate": "16k"},
    {"media-encoding": "wav"}, {"language-code": "xx-XX"},
    {"identify-language": "true", "language-options": "en-US,es-US"},  # plus language-code
    {"language-code": None},
    {"show-speaker-label": "true", "enable-channel-identification": "true",
     "number-of-channels": "2"},
    {"enable-channel-identification": "true"},  # without number-of-channels
    {"number-of-channels": "1", "enable-channel-identification": "true"},
    {"content-identification-type": "PII", "content-redaction-type": "PII"},
    {"pii-entity-types": "SSN"},
    {"partial-results-stability": "extreme"},
    {"vocabulary-filter-method": "blur"},
    {"vocabulary-name": "bad name!"},
    {"session-id": "not-a-uuid"},
    {"show-speaker-label": "maybe"},
    {"channel-identification": "TRUE"},  # unknown parameter
    {"language-code": None, "identify-language": "true", "language-options": "en-US,en-GB"},
    {"language-code": None, "identify-language": "true", "language-options": "en-US"},
    {"language-code": None, "identify-language": "true", "language-options": "en-US,es-US",
     "content-redaction-type": "PII"},
])
async def test_bad_parameters_get_bad_request(aws_emulator: AwsTranscribeEmulator,
                                              change: dict[str, str | None]) -> None:
    params = {k: v for k, v in {**BASE, **change}.items() if v is not None}
    async with open_ws(url_for(aws_emulator, params)) as ws:
        kind, _ = await exception_of(ws)
    assert kind == "BadRequestException"


async def test_good_parameter_combinations_are_accepted(
        aws_emulator: AwsTranscribeEmulator) -> None:
    for params in (
        {**BASE, "show-speaker-label": "TRUE", "enable-partial-results-stabilization": "True",
         "partial-results-stability": "low", "vocabulary-name": "my.vocab-1",
         "content-redaction-type": "PII", "pii-entity-types": "SSN,NAME",
         "session-id": "12345678-90ab-cdef-1234-567890abcdef"},
        {"media-encoding": "pcm", "sample-rate": "8000", "identify-language": "true",
         "language-options": "en-US,es-US,fr-FR", "preferred-language": "es-US",
         "vocabulary-names": "a,b"},
        {**BASE, "enable-channel-identification": "true", "number-of-channels": "2"},
    ):
        async with open_ws(url_for(aws_emulator, params)) as ws:
            await stream(ws, silence(0.1, int(params["sample-rate"])))
            await collect(ws)
    assert all(s.exception is None for s in aws_emulator.streams)


async def test_declared_rate_must_match_when_the_test_says_so(
        aws_emulator: AwsTranscribeEmulator) -> None:
    aws_emulator.config.expected_sample_rate = 8000
    async with open_ws(url_for(aws_emulator)) as ws:
        kind, message = await exception_of(ws)
    assert kind == "BadRequestException" and "does not match" in message


# --- framing ------------------------------------------------------------------------------------


async def test_json_text_frame_gets_the_exact_real_exception_frame(
        aws_emulator: AwsTranscribeEmulator) -> None:
    """The classic mistake (JSON in a text frame) gets §6.4's bytes, then a close."""
    async with open_ws(url_for(aws_emulator)) as ws:
        await ws.send(json.dumps({"AudioEvent": {"AudioChunk": "AAAA"}}))
        assert await ws.recv() == TEXT_FRAME_ANSWER
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert aws_emulator.streams[0].exception == ("BadRequestException", UNEXPECTED_FRAME)


def _corrupt(kind: str) -> bytes:
    """A binary frame with one kind of framing defect (CRCs kept right unless the CRC is the defect)."""
    good = audio_event(silence(0.01))
    if kind == "prelude crc":
        return good[:8] + bytes([good[8] ^ 1]) + good[9:]
    if kind == "message crc":
        return good[:-1] + bytes([good[-1] ^ 1])
    if kind == "truncated":
        return good[:-5]
    if kind == "two messages":
        return good + good
    if kind == "bad header type":
        return encode_raw(b"\x02:x\x0a", b"")
    if kind == "duplicate header":
        h = b"\x02:x\x07\x00\x01a"
        return encode_raw(h + h, b"")
    return b"not an event stream at all"


@pytest.mark.parametrize("kind", ["prelude crc", "message crc", "truncated", "two messages",
                                  "bad header type", "duplicate header", "garbage"])
async def test_malformed_binary_frames_are_rejected(aws_emulator: AwsTranscribeEmulator,
                                                    kind: str) -> None:
    async with open_ws(url_for(aws_emulator)) as ws:
        await ws.send(_corrupt(kind))
        assert await exception_of(ws) == ("BadRequestException", UNEXPECTED_FRAME)


async def test_only_audio_events_are_accepted(aws_emulator: AwsTranscribeEmulator) -> None:
    frame = encode_message({":message-type": "event", ":event-type": "ConfigurationEvent"}, b"{}")
    async with open_ws(url_for(aws_emulator)) as ws:
        await ws.send(frame)
        kind, message = await exception_of(ws)
    assert kind == "BadRequestException" and "AudioEvent" in message


async def test_two_header_audio_event_and_odd_lengths_are_accepted(
        aws_emulator: AwsTranscribeEmulator) -> None:
    two = {":message-type": "event", ":event-type": "AudioEvent"}
    pcm = tone(1000, 0.3) + silence(0.4)
    async with open_ws(url_for(aws_emulator)) as ws:
        await ws.send(encode_message(two, pcm[:3201]))
        await ws.send(encode_message(two, pcm[3201:]))
        await ws.send(encode_message(two, b""))
        results = await collect(ws)
    assert [r["Alternatives"][0]["Transcript"] for r in results if not r["IsPartial"]] == \
        ["tone1000."]


# --- limits -------------------------------------------------------------------------------------


async def test_oversized_audio_events_are_too_big(aws_emulator: AwsTranscribeEmulator) -> None:
    async with open_ws(url_for(aws_emulator, {**BASE, "sample-rate": "8000"})) as ws:
        await ws.send(audio_event(silence(1.1, 8000)))  # 17 600 bytes but more than 1 s
        assert await exception_of(ws) == ("BadRequestException", TOO_BIG)
    params = {**BASE, "sample-rate": "48000", "enable-channel-identification": "true",
              "number-of-channels": "2"}
    async with open_ws(url_for(aws_emulator, params)) as ws:
        await ws.send(audio_event(silence(0.2, 48000, 2)))  # 38 400 bytes: over 32 KB
        assert await exception_of(ws) == ("BadRequestException", TOO_BIG)


async def test_audio_faster_than_real_time_is_too_big(aws_emulator: AwsTranscribeEmulator) -> None:
    aws_emulator.config.realtime_factor = 1.5
    aws_emulator.config.burst_seconds = 1.0
    async with open_ws(url_for(aws_emulator)) as ws:
        with contextlib.suppress(ConnectionClosed):
            for _ in range(40):
                await ws.send(audio_event(silence(0.1)))
        assert await exception_of(ws) == ("BadRequestException", TOO_BIG)
    assert 10 < aws_emulator.streams[0].events < 15


async def test_no_audio_for_the_timeout_ends_the_stream(aws_emulator: AwsTranscribeEmulator) -> None:
    aws_emulator.config.no_audio_timeout = 0.6
    async with open_ws(url_for(aws_emulator)) as ws:
        # audio (even digital silence) keeps the stream alive: five events 0.2 s apart span
        # at least 0.8 s, so a timer counted from the first audio would end the stream before
        # the fifth; counted from the last audio, every one is taken
        for _ in range(5):
            await ws.send(audio_event(silence(0.05)))
            await asyncio.sleep(0.2)
        kind, message = await exception_of(ws)
    assert (kind, message) == ("BadRequestException", timeout_message(0.6))
    assert message == ("Your request timed out because no new audio was received for "
                       "0.6 seconds.")
    assert aws_emulator.streams[0].events == 5


async def test_stream_longer_than_the_maximum_is_limit_exceeded(
        aws_emulator: AwsTranscribeEmulator) -> None:
    aws_emulator.config.max_stream_seconds = 0.5
    async with open_ws(url_for(aws_emulator)) as ws:
        with contextlib.suppress(ConnectionClosed):
            for _ in range(10):
                await ws.send(audio_event(silence(0.1)))
        kind, _ = await exception_of(ws)
    assert kind == "LimitExceededException"
    assert aws_emulator.streams[0].events == 6


async def test_concurrent_stream_quota(aws_emulator: AwsTranscribeEmulator) -> None:
    aws_emulator.config.max_concurrent = 1
    async with open_ws(url_for(aws_emulator)) as first:
        async with open_ws(url_for(aws_emulator)) as second:
            kind, _ = await exception_of(second)
        assert kind == "LimitExceededException"
        await stream(first, silence(0.1))
        await collect(first)


async def test_reused_session_id_terminates_the_older_stream(
        aws_emulator: AwsTranscribeEmulator) -> None:
    params = {**BASE, "session-id": "12345678-90ab-cdef-1234-567890abcdef"}
    async with open_ws(url_for(aws_emulator, params)) as old:
        await old.send(audio_event(silence(0.1)))
        async with open_ws(url_for(aws_emulator, params)) as new:
            kind, _ = await exception_of(old)
            assert kind == "ConflictException"
            await stream(new, silence(0.1))
            await collect(new)


# --- signed envelopes (§5.3) --------------------------------------------------------------------


def envelope(key: bytes, scope: str, prior: str, when: datetime, inner: bytes) -> tuple[bytes, str]:
    """A §5.3 signed envelope around ``inner`` and its signature (hex) for the next one."""
    stamp = Timestamp.from_datetime(when)
    date_header = encode_message({":date": stamp})[12:-4]
    headers: dict[str, HeaderValue]
    to_sign = "\n".join(("AWS4-HMAC-SHA256-PAYLOAD", when.strftime("%Y%m%dT%H%M%SZ"), scope,
                         prior, hashlib.sha256(date_header).hexdigest(),
                         hashlib.sha256(inner).hexdigest()))
    sig = hmac.new(key, to_sign.encode(), hashlib.sha256).digest()
    headers = {":date": stamp, ":chunk-signature": sig}
    return encode_message(headers, inner), sig.hex()


def test_envelope_signer_matches_the_notes_vector() -> None:
    key = signing_key("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "20240115", "us-east-1")
    inner = audio_event(bytes.fromhex("0000e80318fc0000"))
    frame, sig = envelope(key, "20240115/us-east-1/transcribe/aws4_request",
                          "0c43e7d1d243d9b0a27c15e630dc3043649ab37e405fb412b407520f4cfd7451",
                          datetime(2024, 1, 15, 8, 30, 1, tzinfo=UTC), inner)
    assert sig == "8abb7d4d04dbf10967f5be92aa870cbc5b237f9a5707c9102615aa099e7779a7"
    assert len(frame) == 195 and frame.endswith(bytes.fromhex("93f0d6bd"))


async def test_signed_envelopes_are_verified(aws_emulator: AwsTranscribeEmulator) -> None:
    url = url_for(aws_emulator)
    prior = url.rsplit("X-Amz-Signature=", 1)[1]
    now = datetime.now(UTC).replace(microsecond=0)
    key = signing_key(SECRET_KEY, now.strftime("%Y%m%d"), REGION)
    scope = f"{now:%Y%m%d}/{REGION}/transcribe/aws4_request"
    async with open_ws(url) as ws:
        pcm = tone(700, 0.2) + silence(0.4)
        for i in range(0, len(pcm), 3200):
            frame, prior = envelope(key, scope, prior, now, audio_event(pcm[i:i + 3200]))
            await ws.send(frame)
        frame, prior = envelope(key, scope, prior, now, b"")
        await ws.send(frame)
        results = await collect(ws)
    assert results[-1]["Alternatives"][0]["Transcript"] == "tone700."
    async with open_ws(url_for(aws_emulator)) as ws:
        frame, _ = envelope(key, scope, "0" * 64, now, audio_event(silence(0.1)))
        await ws.send(frame)
        kind, message = await exception_of(ws)
    assert kind == "BadRequestException" and "signature" in message


# --- recognition --------------------------------------------------------------------------------


async def test_tone_code_partials_and_finals(aws_emulator: AwsTranscribeEmulator) -> None:
    pcm = (silence(0.5) + tone(440, 0.5) + silence(0.1) + tone(1000, 0.3, amplitude=32767)
           + silence(0.6) + tone(2000, 0.4) + silence(0.1))
    async with open_ws(url_for(aws_emulator)) as ws:
        await stream(ws, pcm)
        results = await collect(ws)
    finals = [r for r in results if not r["IsPartial"]]
    assert [f["Alternatives"][0]["Transcript"] for f in finals] == ["tone400 tone1000.",
                                                                    "tone2000."]
    first = finals[0]
    assert (first["StartTime"], first["EndTime"]) == (0.5, 1.4)
    assert first["Alternatives"][0]["Items"] == [
        {"Content": "tone400", "StartTime": 0.5, "EndTime": 1.0, "Type": "pronunciation",
         "VocabularyFilterMatch": False, "Confidence": 0.75},
        {"Content": "tone1000", "StartTime": 1.1, "EndTime": 1.4, "Type": "pronunciation",
         "VocabularyFilterMatch": False, "Confidence": 1.0},
        {"Content": ".", "StartTime": 1.4, "EndTime": 1.4, "Type": "punctuation",
         "VocabularyFilterMatch": False},
    ]
    assert (finals[1]["StartTime"], finals[1]["EndTime"]) == (2.0, 2.4)  # flushed at the end
    partials = [r for r in results if r["IsPartial"]]
    assert partials and all("Confidence" not in i for p in partials
                            for i in p["Alternatives"][0]["Items"])
    assert {p["ResultId"] for p in partials} == {f["ResultId"] for f in finals}
    assert partials[0]["Alternatives"][0]["Transcript"] == "tone400"
    assert "ChannelId" not in first


async def test_channels_speakers_and_stability(aws_emulator: AwsTranscribeEmulator) -> None:
    left = silence(0.2) + tone(600, 0.3) + silence(0.5)
    right = silence(0.6) + tone(1500, 0.2) + silence(0.4)
    params = {**BASE, "enable-channel-identification": "true", "number-of-channels": "2",
              "enable-partial-results-stabilization": "true"}
    async with open_ws(url_for(aws_emulator, params)) as ws:
        await stream(ws, interleave(left, right), chunk=6400)
        results = await collect(ws)
    finals = {r["ChannelId"]: r for r in results if not r["IsPartial"]}
    assert finals["ch_0"]["Alternatives"][0]["Transcript"] == "tone600."
    assert (finals["ch_0"]["StartTime"], finals["ch_0"]["EndTime"]) == (0.2, 0.5)
    assert finals["ch_1"]["Alternatives"][0]["Transcript"] == "tone1500."
    assert (finals["ch_1"]["StartTime"], finals["ch_1"]["EndTime"]) == (0.6, 0.8)
    assert all(i["Stable"] for i in finals["ch_0"]["Alternatives"][0]["Items"][:1])
    async with open_ws(url_for(aws_emulator, {**BASE, "show-speaker-label": "true"})) as ws:
        await stream(ws, tone(500, 0.2) + silence(0.1) + tone(1500, 0.2) + silence(0.4))
        results = await collect(ws)
    items = next(r for r in results if not r["IsPartial"])["Alternatives"][0]["Items"]
    assert [(i["Content"], i.get("Speaker")) for i in items] == [
        ("tone500", "0"), ("tone1500", "1"), (".", None)]


async def test_empty_result_events_are_sent_for_silence(aws_emulator: AwsTranscribeEmulator) -> None:
    async with open_ws(url_for(aws_emulator)) as ws:
        for _ in range(3):
            await ws.send(audio_event(silence(0.1)))
        message = await next_message(ws)
        assert json.loads(message.payload) == {"Transcript": {"Results": []}}
        await ws.send(audio_event(b""))
        assert await collect(ws) == []


def test_tone_naming_is_exact_at_every_rate() -> None:
    from tests.emulators.aws_transcribe import ResultOptions, ToneChannel

    for rate in (8000, 11025, 16000, 44100, 48000):
        ch = ToneChannel(rate, 0, 0, ResultOptions())
        x = np.frombuffer(tone(1234, 0.25, rate) + silence(0.35, rate), "<i2")
        results = ch.feed(x)
        assert results[-1]["Alternatives"][0]["Transcript"] == "tone1200."


# --- faults -------------------------------------------------------------------------------------


async def test_fault_knobs(aws_emulator: AwsTranscribeEmulator) -> None:
    aws_emulator.faults.extend([
        Fault("abort", after_events=2),
        Fault("exception", after_events=1, exception_type="ServiceUnavailableException",
              message="Service unavailable."),
        Fault("http", status=503, exception_type="ServiceUnavailableException"),
    ])
    async with open_ws(url_for(aws_emulator)) as ws:
        with pytest.raises(ConnectionClosedError) as info:
            for _ in range(5):
                await ws.send(audio_event(silence(0.1)))
                await asyncio.sleep(0.05)
            await ws.recv()
        assert info.value.rcvd is None  # no close frame: an abrupt drop
    async with open_ws(url_for(aws_emulator)) as ws:
        await ws.send(audio_event(silence(0.1)))
        assert await exception_of(ws) == ("ServiceUnavailableException", "Service unavailable.")
    with pytest.raises(InvalidStatus) as status:
        async with open_ws(url_for(aws_emulator)):
            pass
    assert status.value.response.status_code == 503
    async with open_ws(url_for(aws_emulator)) as ws:  # the queue is spent: a healthy stream
        await stream(ws, silence(0.1))
        await collect(ws)
    assert [s.events for s in aws_emulator.streams] == [2, 1, 0, 1]
