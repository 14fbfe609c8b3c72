"""The `aws` recognizer against the strict Transcribe emulator: options, framing, result mapping,
keep-alive, roll-over, every exception path, and whole sessions through a real worker and Redis."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from tests.emulators.aws_transcribe import (
    ACCESS_KEY,
    SECRET_KEY,
    UNEXPECTED_FRAME,
    AwsTranscribeEmulator,
    Fault,
    timeout_message,
)
from tests.emulators.common import interleave, silence, tone
from tests.support import create, publish, run_voxq, wait_status
from voxq.aio import within
from voxq.errors import InvalidInput
from voxq.keys import Keys
from voxq.records import SessionMeta, Status, Transcript
from voxq.sessions import read_finals
from voxq.settings import Settings
from voxq.stt_offers.aws import AwsTranscribeOptions
from voxq.timeline import Timeline
from workers.transcriber import Transcriber
from workers.vendors.aws import protocol as aws
from workers.vendors.aws import stt as aws_stt
from workers.vendors.aws.eventstream import Message
from workers.vendors.aws.stt import AwsTranscribeRecognizer
from workers.vendors.base import (
    RecognizerConfig,
    VendorAuthError,
    VendorError,
    VendorOptionError,
    VendorRejected,
    VendorRetryable,
)
from workers.vendors.registry import create_recognizer, validate_session

RATE = 16000
Script = list[tuple[float, float, float]]  # (silence before, tone Hz, tone seconds)

# three utterances; the second has two words (100 ms apart)
SCRIPT: Script = [(0.5, 500, 0.5), (0.6, 1200, 0.4), (0.1, 700, 0.3), (0.7, 2000, 0.6)]


@pytest.fixture
async def aws_emulator() -> AsyncIterator[AwsTranscribeEmulator]:
    """A running emulator with AWS's limits; tests tweak its ``config`` and ``faults``."""
    async with AwsTranscribeEmulator() as emulator:
        yield emulator


def render(script: Script, rate: int = RATE, tail: float = 0.5) -> tuple[bytes, list[list[Any]]]:
    """PCM of a tone script and its expected words as [name, start, end]."""
    pcm = b""
    words: list[list[Any]] = []
    t = 0.0
    for gap, freq, seconds in script:
        pcm += silence(gap, rate) + tone(freq, seconds, rate)
        t = round(t + gap, 4)
        words.append([f"tone{round(freq / 100) * 100}", t, round(t + seconds, 4)])
        t = round(t + seconds, 4)
    return pcm + silence(tail, rate), words


def expected_finals(words: list[list[Any]]) -> list[tuple[str, float, float]]:
    """(text, start, end) of the emulator's finals for words; < 300 ms apart = one utterance."""
    out: list[list[list[Any]]] = []
    for w in words:
        if out and round(w[1] - out[-1][-1][2], 4) < 0.3:
            out[-1].append(w)
        else:
            out.append([w])
    return [(" ".join(w[0] for w in u) + ".", u[0][1], u[-1][2]) for u in out]


def finals_of(finals: list[tuple[str, Transcript]], channel: int | None = None
              ) -> list[tuple[str, float, float]]:
    """(text, start, end) of a session's finals, optionally of one channel."""
    return [(t.text, t.start, t.end) for _, t in finals if channel is None or t.channel == channel]


def words_of(finals: list[tuple[str, Transcript]]) -> list[list[Any]]:
    """[word, start, end] of every word of a session's finals."""
    return [[w.text, w.start, w.end] for _, t in finals for w in t.words]


# --- options --------------------------------------------------------------------------------------


def test_options_are_validated_like_the_service() -> None:
    parsed = validate_session("aws", "en-us", 16000, 2, {})
    assert isinstance(parsed, AwsTranscribeOptions) and parsed.enable_channel_identification
    assert validate_session("aws", "en-US", 8000, 1, {}).enable_channel_identification is False  # type: ignore[attr-defined]
    ok = validate_session("aws", "de-DE", 48000, 1, {
        "vocabulary_name": "my.vocab-1", "vocabulary_filter_name": "f",
        "vocabulary_filter_method": "mask", "show_speaker_label": "true",
        "enable_partial_results_stabilization": True, "partial_results_stability": "low",
        "content_redaction_type": "PII", "pii_entity_types": "SSN,NAME",
        "language_model_name": "lm_1"})
    assert isinstance(ok, AwsTranscribeOptions) and ok.pii_entity_types == ("SSN", "NAME")
    ident = validate_session("aws", "en-US", 16000, 1, {
        "identify_language": True, "language_options": ["en-us", "es-US"],
        "preferred_language": "es-US", "vocabulary_names": "a,b"})
    assert isinstance(ident, AwsTranscribeOptions) and ident.language_options == ("en-US", "es-US")
    bad: list[tuple[str, int, int, dict[str, Any]]] = [
        ("xx-XX", 16000, 1, {}),
        ("en-US", 7999, 1, {}),
        ("en-US", 48001, 1, {}),
        ("en-US", 16000, 2, {"show_speaker_label": True}),
        ("en-US", 16000, 2, {"enable_channel_identification": False}),
        ("en-US", 16000, 1, {"enable_channel_identification": True}),
        ("en-US", 16000, 1, {"number_of_channels": 2}),
        ("en-US", 16000, 1, {"partial_results_stability": "high"}),
        ("en-US", 16000, 1, {"content_identification_type": "PII",
                             "content_redaction_type": "PII"}),
        ("en-US", 16000, 1, {"pii_entity_types": ["SSN"]}),
        ("en-US", 16000, 1, {"content_redaction_type": "PII", "pii_entity_types": ["SSNX"]}),
        ("en-US", 16000, 1, {"vocabulary_name": "bad name"}),
        ("en-US", 16000, 1, {"vocabulary_name": "x" * 201}),
        ("en-US", 16000, 1, {"vocabulary_filter_method": "blur"}),
        ("en-US", 16000, 1, {"identify_language": True}),
        ("en-US", 16000, 1, {"identify_language": True, "language_options": "en-US"}),
        ("en-US", 16000, 1, {"identify_language": True, "language_options": "en-US,en-GB"}),
        ("en-US", 16000, 1, {"identify_language": True, "language_options": "en-US,xx-XX"}),
        ("en-US", 16000, 1, {"identify_language": True, "language_options": "en-US,es-US",
                             "preferred_language": "fr-FR"}),
        ("en-US", 16000, 1, {"identify_language": True, "identify_multiple_languages": True,
                             "language_options": "en-US,es-US"}),
        ("en-US", 16000, 1, {"identify_language": True, "language_options": "en-US,es-US",
                             "language_model_name": "lm"}),
        ("en-US", 16000, 1, {"identify_language": True, "language_options": "en-US,es-US",
                             "vocabulary_name": "v"}),
        ("en-US", 16000, 1, {"vocabulary_names": "a,b"}),
        ("en-US", 16000, 1, {"session_id": "12345678-90ab-cdef-1234-567890abcdef"}),
    ]
    for language, rate, channels, options in bad:
        with pytest.raises(VendorOptionError, match=r"^aws: "):
            validate_session("aws", language, rate, channels, options)
        assert issubclass(VendorOptionError, InvalidInput)


def _config(channels: int = 1, language: str = "en-US", **options: Any) -> RecognizerConfig:
    """A validated RecognizerConfig for direct use."""
    parsed = AwsTranscribeRecognizer.validate_options(language, RATE, channels, options)
    return RecognizerConfig(session_id="s", rate=RATE, channels=channels, language=language,
                            options=parsed)


def test_query_parameters_follow_the_notes_naming() -> None:
    assert aws.query_params(_config(2, "fr-ca", vocabulary_name="v")) == {
        "media-encoding": "pcm", "sample-rate": "16000", "language-code": "fr-CA",
        "enable-channel-identification": "true", "number-of-channels": "2",
        "vocabulary-name": "v"}
    assert aws.query_params(_config(1, identify_language=True, language_options="en-US,es-US",
                                    content_identification_type="PII",
                                    pii_entity_types=["SSN", "PIN"])) == {
        "media-encoding": "pcm", "sample-rate": "16000", "identify-language": "true",
        "content-identification-type": "PII", "pii-entity-types": "SSN,PIN",
        "language-options": "en-US,es-US"}


# --- error mapping --------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "message", "cls"), [
    ("LimitExceededException", "You have reached your limit.", VendorRetryable),
    ("InternalFailureException", "An internal error occurred.", VendorRetryable),
    ("ServiceUnavailableException", "Service unavailable.", VendorRetryable),
    ("BadRequestException", timeout_message(15), VendorRetryable),
    ("BadRequestException", UNEXPECTED_FRAME, VendorRejected),
    ("ConflictException", "A new stream with the same session ID was started.", VendorRejected),
    ("UnrecognizedClientException", "The security token included in the request is invalid.",
     VendorAuthError),
    ("SomethingNewException", "?", VendorRejected),
])
def test_exception_types_map_to_retryable_or_not(kind: str, message: str,
                                                 cls: type[VendorError]) -> None:
    error = aws.exception_error(kind, message)
    assert type(error) is cls
    assert str(error) == f"aws: {kind}: {message}"


def test_handshake_errors_map_by_status_and_hide_secrets() -> None:
    body = json.dumps({"message": "Signature mismatch for sekrit-token. The Canonical String for "
                                  "this request should have been X-Amz-Security-Token=sekrit"})
    err = aws._handshake_error(403, {"x-amzn-ErrorType": "InvalidSignatureException:http://x"},
                               body.encode(), ("sekrit-token",))
    assert isinstance(err, VendorAuthError)
    assert str(err) == ("aws: InvalidSignatureException: HTTP 403 at the WebSocket handshake: "
                        "Signature mismatch for ***.")
    assert isinstance(aws._handshake_error(503, {}, b"", ()), VendorRetryable)
    assert isinstance(aws._handshake_error(429, {}, b"slow down", ()), VendorRetryable)
    assert isinstance(aws._handshake_error(400, {}, b"bad", ()), VendorRejected)
    assert not isinstance(aws._handshake_error(400, {}, b"bad", ()), VendorAuthError)


def test_transcript_event_mapping() -> None:
    """§6.1's example shape: Alternatives[0], punctuation dropped from words, speaker, channel."""
    timeline = Timeline(RATE, base_frames=RATE * 10)
    timeline.inserted = [[RATE * 2, RATE]]  # one second of keep-alive silence at 2.0 s
    open_results: set[str] = set()

    def transcripts(payload: bytes) -> list[Transcript]:
        return [timeline.rebase(t) for t in aws.transcripts(payload, 2, open_results)]

    doc = {"Transcript": {"Results": [
        {"ResultId": "r1", "StartTime": 1.65, "EndTime": 4.165, "IsPartial": False,
         "ChannelId": "ch_1",
         "Alternatives": [
             {"Transcript": "Welcome to Amazon.",
              "Items": [
                  {"Content": "Welcome", "StartTime": 1.65, "EndTime": 2.4225,
                   "Type": "pronunciation", "Stable": True, "Confidence": 0.97, "Speaker": "0"},
                  {"Content": "to", "StartTime": 3.5, "EndTime": 3.6, "Type": "pronunciation",
                   "Confidence": 0.5, "Speaker": "0"},
                  {"Content": ".", "StartTime": 3.635, "EndTime": 3.635, "Type": "punctuation"}],
              "Entities": []},
             {"Transcript": "Welcome to a maze on.", "Items": []}]},
        {"ResultId": "r2", "StartTime": 5.0, "EndTime": 5.5, "IsPartial": True,
         "Alternatives": [{"Transcript": "next", "Items": []}]},
        {"ResultId": "r3", "StartTime": 6.0, "EndTime": 6.5, "IsPartial": True,
         "Alternatives": []},
    ]}}
    got = transcripts(json.dumps(doc).encode())
    assert got[0] == Transcript(
        text="Welcome to Amazon.", is_final=True, start=11.65, end=13.165, channel=1,
        speaker="0", result_id="r1", words=(
            aws.Word("Welcome", 11.65, 12.0, 0.97, "0"),  # 2.0-2.4225 was keep-alive silence
            aws.Word("to", 12.5, 12.6, 0.5, "0")))
    assert got[1].text == "next" and not got[1].is_final and got[1].channel == 0
    assert len(got) == 2 and open_results == {"r2", "r3"}
    assert transcripts(b'{"Transcript":{"Results":[]}}') == []
    with pytest.raises(VendorRetryable, match="malformed TranscriptEvent"):
        transcripts(b'{"Transcript":{"Results":[{"Alternatives":[{"Items":[{}]}]}]}}')



def test_error_messages_raise_and_unknown_events_are_ignored() -> None:
    """The generic ``error`` message type maps like an exception; other events are skipped."""
    open_results: set[str] = set()

    def handle(message: Message) -> list[Transcript]:
        return aws.message_transcripts(message, 1, open_results)

    assert handle(Message({":message-type": "event", ":event-type": "SomethingNew"}, b"{}")) == []
    assert handle(Message({":message-type": "whatever"}, b"")) == []
    error = Message({":message-type": "error", ":error-code": "InternalFailureException",
                     ":error-message": "boom"})
    with pytest.raises(VendorRetryable, match=r"^aws: InternalFailureException: boom$"):
        handle(error)
    exception = Message({":message-type": "exception", ":exception-type": "BadRequestException"},
                        b"not json")
    with pytest.raises(VendorRejected, match=r"^aws: BadRequestException: not json$"):
        handle(exception)

def test_endpoint_override_is_parsed_for_signing() -> None:
    def endpoint(url: str | None) -> tuple[str, str, str]:
        """What the recognizer would connect to with this override."""
        settings = Settings(redis_url="redis://unused", aws_transcribe_endpoint=url,
                            aws_region="eu-west-2")
        return AwsTranscribeRecognizer(_config(), settings)._endpoint()

    assert endpoint(None) == ("wss", "transcribestreaming.eu-west-2.amazonaws.com:8443",
                              "/stream-transcription-websocket")
    assert endpoint("ws://127.0.0.1:9000") == ("ws", "127.0.0.1:9000",
                                               "/stream-transcription-websocket")
    assert endpoint("wss://example.com:443/x") == ("wss", "example.com", "/x")
    assert endpoint("ws://[::1]:81") == ("ws", "[::1]:81", "/stream-transcription-websocket")
    for bad in ("http://example.com", "ws://example.com:99999", "ws://h/?a=b", "wss://"):
        with pytest.raises(VendorRejected, match="AWS_TRANSCRIBE_ENDPOINT"):
            endpoint(bad)


# --- the recognizer on its own against the emulator -----------------------------------------------


async def run(rec: AwsTranscribeRecognizer, pcm: bytes, chunk_s: float = 0.1,
              pace: float = 0.0) -> list[Transcript]:
    """Start, send ``pcm`` in chunks, finish, and return every result."""
    out: list[Transcript] = []
    await rec.start()

    async def collect() -> None:
        """Gather results concurrently with sending."""
        async for t in rec.results():
            out.append(t)

    task = asyncio.create_task(collect())
    size = round(chunk_s * rec.config.rate) * 2 * rec.config.channels
    try:
        for i in range(0, len(pcm), size):
            await rec.send(pcm[i:i + size])
            if pace:
                await asyncio.sleep(pace)
        await rec.finish()
        await within(task, 20)
    finally:
        task.cancel()
        await rec.close()
    return out


def recognizer(emu: AwsTranscribeEmulator, channels: int = 1, rate: int = RATE, **options: Any
               ) -> AwsTranscribeRecognizer:
    """A recognizer pointed at the emulator, outside any worker."""
    emu.config.realtime_factor = None  # these tests send unpaced; the worker paces sessions
    rec = create_recognizer("aws", "direct", "en-US", rate, channels, options,
                            emu.configure(Settings(redis_url="redis://unused")))
    assert isinstance(rec, AwsTranscribeRecognizer)
    return rec


async def test_results_partials_finals_words_and_speakers(
        aws_emulator: AwsTranscribeEmulator) -> None:
    pcm, words = render(SCRIPT)
    got = await run(recognizer(aws_emulator, show_speaker_label=True), pcm, chunk_s=0.04)
    finals = [t for t in got if t.is_final]
    assert [(t.text, t.start, t.end) for t in finals] == expected_finals(words)
    assert [[w.text, w.start, w.end] for t in finals for w in t.words] == words
    assert all(w.confidence == 0.75 for t in finals for w in t.words)
    assert [t.speaker for t in finals] == ["0", None, "1"]  # the middle one has both speakers
    assert [w.speaker for w in finals[1].words] == ["1", "0"]
    partials = [t for t in got if not t.is_final]
    assert partials and all(not t.words or t.words[0].confidence is None for t in partials)
    assert {t.result_id for t in partials} == {t.result_id for t in finals}
    assert partials[0].text == "tone500" and partials[0].start == 0.5
    log = aws_emulator.streams[0]
    assert bytes(log.audio) == pcm  # every byte, in order, once
    # 40 ms sends re-chunked: nothing above 100 ms, nothing below 50 ms but the very last
    assert all(1600 <= n <= 3200 for n in log.event_sizes[:-1]) and log.event_sizes[-1] <= 3200


async def test_two_channels_map_channel_ids(aws_emulator: AwsTranscribeEmulator) -> None:
    left, lw = render([(0.2, 600, 0.4), (0.8, 900, 0.3)])
    right, rw = render([(0.7, 1500, 0.5)])
    got = await run(recognizer(aws_emulator, channels=2), interleave(left, right))
    assert aws_emulator.streams[0].params["enable-channel-identification"] == "true"
    assert aws_emulator.streams[0].params["number-of-channels"] == "2"
    finals = [t for t in got if t.is_final]
    assert [(t.text, t.start, t.end) for t in finals if t.channel == 0] == expected_finals(lw)
    assert [(t.text, t.start, t.end) for t in finals if t.channel == 1] == expected_finals(rw)


async def test_audio_is_chunked_within_the_limits(aws_emulator: AwsTranscribeEmulator) -> None:
    rec = recognizer(aws_emulator, channels=2, rate=48000)
    pcm = interleave(tone(440, 1.0, 48000), tone(880, 1.0, 48000))
    await run(rec, pcm, chunk_s=0.2)
    log = aws_emulator.streams[0]
    assert log.exception is None and bytes(log.audio) == pcm
    assert log.event_sizes == [19200] * 10  # 200 ms sends → 100 ms AudioEvents (< 32 KB)


async def test_secrets_never_reach_the_logs(aws_emulator: AwsTranscribeEmulator,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    settings = aws_emulator.configure(Settings(redis_url="redis://unused"),
                                      aws_session_token=SecretStr("TOKEN/with+chars=="))
    rec = create_recognizer("aws", "logs", "en-US", RATE, 1, {}, settings)
    assert isinstance(rec, AwsTranscribeRecognizer)
    await run(rec, tone(500, 0.3) + silence(0.4))
    ours = [r for r in caplog.records if not r.name.startswith("websockets.server")]  # not AWS's
    assert any("GET /stream-transcription-websocket" in r.getMessage() for r in ours)
    signature = aws_emulator.streams[0].signing
    assert signature is not None
    text = "\n".join(r.getMessage() for r in ours)
    for secret in (SECRET_KEY, "TOKEN", signature.signature, ACCESS_KEY):
        assert secret not in text


async def test_missing_credentials_name_the_variables(aws_emulator: AwsTranscribeEmulator) -> None:
    settings = aws_emulator.configure(Settings(redis_url="redis://unused"),
                                      aws_access_key_id=None)
    rec = create_recognizer("aws", "nokeys", "en-US", RATE, 1, {}, settings)
    with pytest.raises(VendorAuthError) as info:
        await rec.start()
    assert str(info.value) == (
        "aws: AWS credentials are missing: set AWS_ACCESS_KEY_ID (plus AWS_SESSION_TOKEN for "
        "temporary credentials) in the worker's environment")
    assert SECRET_KEY not in str(info.value)
    assert aws_emulator.streams == []


async def test_silence_longer_than_the_timeout_is_kept_alive(
        aws_emulator: AwsTranscribeEmulator) -> None:
    aws_emulator.config.no_audio_timeout = 0.8
    rec = recognizer(aws_emulator)
    rec.keepalive_after = 0.25
    out: list[Transcript] = []
    await rec.start()
    collector = asyncio.create_task(_collect(rec, out))
    a, _ = render([(0.2, 500, 0.3)], tail=0.4)
    for i in range(0, len(a), 3200):
        await rec.send(a[i:i + 3200])
    await asyncio.sleep(2.0)  # nothing to send for 2.5 × the service's timeout
    b, _ = render([(0.1, 900, 0.3)], tail=0.4)
    for i in range(0, len(b), 3200):
        await rec.send(b[i:i + 3200])
    await rec.finish()
    await within(collector, 10)
    await rec.close()
    log = aws_emulator.streams[0]
    assert log.exception is None and len(aws_emulator.streams) == 1
    inserted = len(log.audio) - len(a) - len(b)
    assert inserted >= 6 * 3200  # ≥ 6 keep-alives of 100 ms of zeros
    assert bytes(log.audio[:len(a)]) == a and bytes(log.audio[-len(b):]) == b
    finals = [(t.text, t.start, t.end) for t in out if t.is_final]
    # session times skip the keep-alive silence: b starts right where a ended
    assert finals == [("tone500.", 0.2, 0.5), ("tone900.", 1.0, 1.3)]


async def _collect(rec: AwsTranscribeRecognizer, out: list[Transcript]) -> None:
    """Append every result of ``rec`` to ``out``."""
    async for t in rec.results():
        out.append(t)


async def test_roll_over_at_utterance_boundaries_loses_and_repeats_nothing(
        aws_emulator: AwsTranscribeEmulator) -> None:
    aws_emulator.config.max_stream_seconds = 3.0
    pcm, words = render([(0.3, 300 + 100 * i, 0.4) for i in range(12)])  # 8.9 s, 12 utterances
    rec = recognizer(aws_emulator)
    rec.rollover_after, rec.rollover_deadline = 1.5, 2.8
    got = await run(rec, pcm, pace=0.01)
    assert len(aws_emulator.streams) >= 3
    assert all(s.exception is None and s.ended for s in aws_emulator.streams)
    assert b"".join(bytes(s.audio) for s in aws_emulator.streams) == pcm
    finals = [t for t in got if t.is_final]
    assert [(t.text, t.start, t.end) for t in finals] == expected_finals(words)
    # every stream was cut between utterances: no stream's audio ends inside a tone
    for s in aws_emulator.streams[:-1]:
        tail = np.frombuffer(bytes(s.audio[-320:]), "<i2")
        assert not tail.any()


async def test_roll_over_deadline_cuts_mid_utterance_without_a_gap(
        aws_emulator: AwsTranscribeEmulator) -> None:
    pcm = silence(0.2) + tone(1000, 3.0) + silence(0.5)
    rec = recognizer(aws_emulator)
    rec.rollover_after, rec.rollover_deadline = 1.0, 1.5
    got = await run(rec, pcm)
    assert [len(s.audio) // 32000 for s in aws_emulator.streams][:1] == [1]
    assert b"".join(bytes(s.audio) for s in aws_emulator.streams) == pcm
    words = [w for t in got if t.is_final for w in t.words]
    assert [w.text for w in words] == ["tone1000"] * len(words) and len(words) >= 2
    assert words[0].start == 0.2 and words[-1].end == 3.2
    for before, after in itertools.pairwise(words):
        assert before.end == after.start  # cut on a 100 ms boundary: times are continuous



async def test_late_results_are_drained_after_the_end_of_audio(
        aws_emulator: AwsTranscribeEmulator) -> None:
    aws_emulator.config.result_delay = 0.4
    pcm, words = render(SCRIPT[:2], tail=0.1)  # the last final only comes with the end marker
    got = await run(recognizer(aws_emulator), pcm)
    assert [(t.text, t.start, t.end) for t in got if t.is_final] == expected_finals(words)


async def test_a_service_that_never_ends_the_stream_is_a_retryable_failure(
        aws_emulator: AwsTranscribeEmulator) -> None:
    aws_emulator.faults.append(Fault("hang", after_events=3))
    rec = recognizer(aws_emulator)
    rec.drain_timeout = 0.5
    with pytest.raises(VendorRetryable, match=r"did not end the stream within 0\.5 s"):
        await run(rec, render(SCRIPT[:1])[0])


# --- whole sessions through a worker --------------------------------------------------------------


@pytest.fixture
async def worker(settings: Settings, aws_emulator: AwsTranscribeEmulator
                 ) -> AsyncIterator[Transcriber]:
    """An in-process worker whose aws sessions go to the emulator."""
    assert settings.redis_url
    s = aws_emulator.configure(settings, claim_timeout_seconds=2.0)
    w = Transcriber(s, settings.redis_url, name="w-aws")
    stop = asyncio.Event()
    task = asyncio.create_task(w.run(stop))
    yield w
    stop.set()
    await within(task, 30)


async def session(r: aioredis.Redis, keys: Keys, sid: str, pcm: bytes, channels: int = 1,
                  **options: Any) -> tuple[SessionMeta, list[tuple[str, Transcript]]]:
    """Run one aws session through the worker; its end meta and finals."""
    await create(r, keys, sid, vendor="aws", channels=channels, options=options)
    await publish(r, keys, sid, pcm, channels=channels)
    meta = await wait_status(r, keys, sid, timeout=60)
    return meta, await read_finals(r, keys, sid)


async def test_mono_session_end_to_end(worker: Transcriber, r: aioredis.Redis, keys: Keys,
                                       aws_emulator: AwsTranscribeEmulator) -> None:
    pcm, words = render(SCRIPT)
    meta, finals = await session(r, keys, "mono", pcm)
    assert meta.status is Status.FINISHED, meta.error
    assert finals_of(finals) == expected_finals(words)
    assert words_of(finals) == words
    assert [t.seq for _, t in finals] == [0, 1, 2]
    assert await r.xlen(keys.partial("mono")) > 0
    assert len(aws_emulator.streams) == 1 and bytes(aws_emulator.streams[0].audio) == pcm


async def test_two_channel_session_end_to_end(worker: Transcriber, r: aioredis.Redis, keys: Keys
                                              ) -> None:
    left, lw = render([(0.3, 400, 0.5), (1.0, 800, 0.4)])
    right, rw = render([(0.9, 1600, 0.6)])
    meta, finals = await session(r, keys, "stereo", interleave(left, right), channels=2)
    assert meta.status is Status.FINISHED, meta.error
    assert finals_of(finals, 0) == expected_finals(lw)
    assert finals_of(finals, 1) == expected_finals(rw)


async def test_json_text_frames_fail_the_session_with_the_service_answer(
        worker: Transcriber, r: aioredis.Redis, keys: Keys, aws_emulator: AwsTranscribeEmulator,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The classic mistake reproduced: audio as JSON in text frames."""
    def as_json(pcm: bytes) -> str:
        """Audio the wrong way: base64 in JSON, sent as a text frame."""
        return json.dumps({"AudioEvent": {"AudioChunk": base64.b64encode(pcm).decode()}})

    monkeypatch.setattr(aws_stt, "audio_event", as_json)
    pcm, _ = render(SCRIPT[:1])
    meta, finals = await session(r, keys, "text", pcm)
    assert meta.status is Status.FAILED
    assert "BadRequestException: Unexpected WebSocket frame received." in meta.error
    assert finals == [] and len(aws_emulator.streams) == 1  # not retried


async def test_keepalive_session_through_a_producer_pause(
        worker: Transcriber, r: aioredis.Redis, keys: Keys, aws_emulator: AwsTranscribeEmulator,
        monkeypatch: pytest.MonkeyPatch) -> None:
    aws_emulator.config.no_audio_timeout = 1.0
    monkeypatch.setattr(AwsTranscribeRecognizer, "keepalive_after", 0.3)
    a, aw = render([(0.2, 500, 0.4)])
    b, bw = render([(0.3, 1300, 0.5)])
    await create(r, keys, "pause", vendor="aws")
    seq = await publish(r, keys, "pause", a, eos=False)
    await asyncio.sleep(3.0)
    await publish(r, keys, "pause", b, start_seq=seq)
    meta = await wait_status(r, keys, "pause", timeout=60)
    assert meta.status is Status.FINISHED, meta.error
    shift = len(a) / 2 / RATE
    expected = expected_finals(aw) + [(t, round(s + shift, 4), round(e + shift, 4))
                                      for t, s, e in expected_finals(bw)]
    assert finals_of(await read_finals(r, keys, "pause")) == expected
    assert len(aws_emulator.streams) == 1 and len(aws_emulator.streams[0].audio) > len(a + b)


async def test_roll_over_session_has_an_exact_continuous_transcript(
        worker: Transcriber, r: aioredis.Redis, keys: Keys, aws_emulator: AwsTranscribeEmulator,
        monkeypatch: pytest.MonkeyPatch) -> None:
    aws_emulator.config.max_stream_seconds = 4.0  # a stream past this gets LimitExceeded
    monkeypatch.setattr(AwsTranscribeRecognizer, "rollover_after", 2.0)
    monkeypatch.setattr(AwsTranscribeRecognizer, "rollover_deadline", 3.5)
    pcm, words = render([(0.4 + 0.1 * (i % 3), 300 + 100 * i, 0.4) for i in range(14)])
    meta, finals = await session(r, keys, "roll", pcm)
    assert meta.status is Status.FINISHED, meta.error
    assert len(aws_emulator.streams) >= 4
    assert all(s.exception is None for s in aws_emulator.streams)
    assert b"".join(bytes(s.audio) for s in aws_emulator.streams) == pcm
    assert finals_of(finals) == expected_finals(words)
    assert words_of(finals) == words


@pytest.mark.parametrize(("kind", "message"), [
    ("LimitExceededException", "You have reached your limit of concurrent streams."),
    ("InternalFailureException", "An internal error occurred."),
    ("ServiceUnavailableException", "Service unavailable."),
    ("BadRequestException", timeout_message(15)),
])
async def test_retryable_exceptions_are_retried_to_an_exact_transcript(
        worker: Transcriber, r: aioredis.Redis, keys: Keys, aws_emulator: AwsTranscribeEmulator,
        kind: str, message: str) -> None:
    aws_emulator.faults.append(Fault("exception", after_events=22, exception_type=kind,
                                     message=message))
    pcm, words = render(SCRIPT)
    meta, finals = await session(r, keys, "retry", pcm)
    assert meta.status is Status.FINISHED, meta.error
    assert len(aws_emulator.streams) == 2 and aws_emulator.streams[0].exception == (kind, message)
    assert finals_of(finals) == expected_finals(words)  # nothing lost, nothing said twice


@pytest.mark.parametrize(("kind", "message"), [
    ("BadRequestException", "Your stream is too big. Reduce the frame size and try your request "
                            "again."),
    ("ConflictException", "A new stream with the same session ID was started."),
    ("UnrecognizedClientException", "The security token included in the request is invalid."),
])
async def test_non_retryable_exceptions_fail_the_session(
        worker: Transcriber, r: aioredis.Redis, keys: Keys, aws_emulator: AwsTranscribeEmulator,
        kind: str, message: str) -> None:
    aws_emulator.faults.append(Fault("exception", after_events=5, exception_type=kind,
                                     message=message))
    meta, _ = await session(r, keys, "fail", render(SCRIPT)[0])
    assert meta.status is Status.FAILED
    assert meta.error == f"aws: {kind}: {message}"
    assert len(aws_emulator.streams) == 1


async def test_abrupt_close_is_retried_to_an_exact_transcript(
        worker: Transcriber, r: aioredis.Redis, keys: Keys,
        aws_emulator: AwsTranscribeEmulator) -> None:
    aws_emulator.faults.extend([Fault("abort", after_events=14), Fault("abort", after_events=30)])
    pcm, words = render(SCRIPT)
    meta, finals = await session(r, keys, "abort", pcm)
    assert meta.status is Status.FINISHED, meta.error
    assert len(aws_emulator.streams) == 3
    assert finals_of(finals) == expected_finals(words)
    assert words_of(finals) == words


async def test_handshake_statuses(worker: Transcriber, r: aioredis.Redis, keys: Keys,
                                  aws_emulator: AwsTranscribeEmulator) -> None:
    aws_emulator.faults.append(Fault("http", status=503, exception_type="ServiceUnavailableException",
                                     message="Service unavailable."))
    pcm, words = render(SCRIPT[:2])
    meta, finals = await session(r, keys, "h503", pcm)
    assert meta.status is Status.FINISHED, meta.error
    assert finals_of(finals) == expected_finals(words)
    aws_emulator.faults.append(Fault("http", status=400, exception_type="BadRequestException",
                                     message="Nope."))
    meta, _ = await session(r, keys, "h400", pcm)
    assert meta.status is Status.FAILED
    assert meta.error == "aws: BadRequestException: HTTP 400 at the WebSocket handshake: Nope."


async def test_bad_signature_fails_as_an_auth_error(
        r: aioredis.Redis, keys: Keys, settings: Settings,
        aws_emulator: AwsTranscribeEmulator) -> None:
    assert settings.redis_url
    s = aws_emulator.configure(settings, aws_secret_access_key=SecretStr("wrong-secret"))
    w = Transcriber(s, settings.redis_url, name="w-badsig")
    stop = asyncio.Event()
    task = asyncio.create_task(w.run(stop))
    try:
        meta, _ = await session(r, keys, "badsig", render(SCRIPT[:1])[0])
    finally:
        stop.set()
        await within(task, 30)
    assert meta.status is Status.FAILED
    assert meta.error.startswith("aws: InvalidSignatureException: HTTP 403 at the WebSocket "
                                 "handshake: The request signature we calculated does not match")
    assert "wrong-secret" not in meta.error
    assert len(aws_emulator.streams) == 1  # an auth error is not retried


async def test_missing_credentials_fail_the_session_clearly(
        r: aioredis.Redis, keys: Keys, settings: Settings,
        aws_emulator: AwsTranscribeEmulator) -> None:
    assert settings.redis_url
    s = aws_emulator.configure(settings, aws_access_key_id=None, aws_secret_access_key=None)
    w = Transcriber(s, settings.redis_url, name="w-nokeys")
    stop = asyncio.Event()
    task = asyncio.create_task(w.run(stop))
    try:
        meta, _ = await session(r, keys, "nokeys", render(SCRIPT[:1])[0])
    finally:
        stop.set()
        await within(task, 30)
    assert meta.status is Status.FAILED
    assert meta.error == ("aws: AWS credentials are missing: set AWS_ACCESS_KEY_ID and "
                          "AWS_SECRET_ACCESS_KEY (plus AWS_SESSION_TOKEN for temporary "
                          "credentials) in the worker's environment")


async def test_produce_cli_with_vendor_aws(worker: Transcriber, r: aioredis.Redis, keys: Keys,
                                           env: dict[str, str], tmp_path: Path) -> None:
    """`python -m voxq produce FILE --vendor aws` through the worker to the emulator."""
    pytest.importorskip("producer.cli")
    import soundfile

    pcm, words = render(SCRIPT)
    wav = tmp_path / "tones.wav"
    soundfile.write(wav, np.frombuffer(pcm, "<i2"), RATE, subtype="PCM_16")
    proc = await run_voxq(
        "produce", str(wav), "--vendor", "aws", "--session",
        "cli", "--fast", "--no-progress", "--option", "vocabulary_filter_method=tag", env=env)
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip() == "cli"
    meta = await wait_status(r, keys, "cli", timeout=60)
    assert meta.status is Status.FINISHED, meta.error
    assert meta.vendor == "aws" and meta.options == {"vocabulary_filter_method": "tag"}
    finals = await read_finals(r, keys, "cli")
    assert finals_of(finals) == expected_finals(words)
    # a bad option fails in the producer, before anything reaches Redis
    bad = await run_voxq(
        "produce", str(wav), "--vendor", "aws", "--session",
        "cli-bad", "--fast", "--no-progress", "--option", "show_speaker_label=maybe", env=env)
    err = bad.stderr
    assert bad.returncode == 2 and "show_speaker_label" in err.decode()
    assert not await r.exists(keys.meta("cli-bad"))
