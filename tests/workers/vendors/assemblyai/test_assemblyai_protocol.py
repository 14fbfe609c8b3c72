"""AssemblyAI's pure protocol modules: options validated at session creation, query building,
message decoding (fuzzed: garbage only ever raises ProtocolError), turn assembly, and the
mapping of both close-code numberings and HTTP answers to voxq errors."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voxq.errors import InvalidInput
from voxq.records import Word
from workers.vendors.assemblyai import codes
from workers.vendors.assemblyai import protocol as p3
from workers.vendors.assemblyai.v2 import protocol as p2
from workers.vendors.base import (
    VendorAuthError,
    VendorError,
    VendorOptionError,
    VendorRejected,
    VendorRetryable,
)
from workers.vendors.registry import validate_session

# --- options ----------------------------------------------------------------------------------


def test_v3_options_are_validated_at_session_creation() -> None:
    ok = validate_session("assemblyai", "de-DE", 8000, 2, {
        "speech_model": "u3-rt-pro", "prompt": "support call", "min_turn_silence": 100,
        "max_turn_silence": 1000, "vad_threshold": 0.3, "keyterms_prompt": "voxq, Redis",
        "inactivity_timeout": 3600, "speaker_labels": "true", "max_speakers": 10,
        "format_turns": False, "language_detection": True, "filter_profanity": 1})
    assert isinstance(ok, p3.AssemblyAIOptions) and ok.keyterms_prompt == ("voxq", "Redis")
    assert ok.speaker_labels is True and ok.filter_profanity is True
    bad: list[dict[str, Any]] = [
        {"speech_model": "best"}, {"speechModel": "universal-streaming-english"},
        {"format_turns": "maybe"}, {"end_of_turn_confidence_threshold": 1.5},
        {"min_turn_silence": -1}, {"vad_threshold": -0.1}, {"inactivity_timeout": 4},
        {"inactivity_timeout": 3601}, {"max_speakers": 2}, {"speaker_labels": True, "max_speakers": 11},
        {"keyterms_prompt": []}, {"keyterms_prompt": ["ok", " "]}, {"prompt": "x"},
        {"min_turn_silence": 900, "max_turn_silence": 800},
        {"speech_model": "u3-rt-pro", "end_of_turn_confidence_threshold": 0.5},
        {"encoding": "pcm_mulaw"}, {"sample_rate": 8000}, {"token": "x"},
    ]
    for options in bad:
        with pytest.raises(VendorOptionError, match=r"^assemblyai: invalid options: "):
            validate_session("assemblyai", "en-US", 16000, 1, options)
    assert issubclass(VendorOptionError, InvalidInput)


def test_v3_query_parameters() -> None:
    opts = p3.AssemblyAIOptions(keyterms_prompt=("a b", "c"), min_turn_silence=300,
                                speaker_labels=True, max_speakers=2)
    assert p3.query_params("en-GB", 8000, opts, token="t/k+n") == [
        ("sample_rate", "8000"), ("encoding", "pcm_s16le"),
        ("speech_model", "universal-streaming-english"), ("format_turns", "true"),
        ("min_turn_silence", "300"), ("max_speakers", "2"), ("keyterms_prompt", '["a b", "c"]'),
        ("speaker_labels", "true"), ("token", "t/k+n")]
    assert p3.speech_model_for("fr", p3.AssemblyAIOptions()) == "universal-streaming-multilingual"
    assert p3.build_url("wss://h/v3/ws", [("a", "1 2"), ("token", "x&y")]) == \
        "wss://h/v3/ws?a=1+2&token=x%26y"
    assert p3.build_url("ws://h/?x=1", [("a", "b")]) == "ws://h/?x=1&a=b"
    assert json.loads(p3.update_configuration(min_turn_silence=200)) == \
        {"type": "UpdateConfiguration", "min_turn_silence": 200}
    with pytest.raises(ValueError, match="cannot update"):
        p3.update_configuration(sample_rate=8000)


def test_v2_options_and_query() -> None:
    ok = validate_session("assemblyai-v2", "en-US", 16000, 1, {
        "word_boost": "voxq,Redis", "end_utterance_silence_threshold": 20000,
        "disable_partial_transcripts": True})
    assert isinstance(ok, p2.AssemblyAIV2Options)
    assert p2.query_params(16000, ok, token="tk") == [
        ("sample_rate", "16000"), ("encoding", "pcm_s16le"), ("word_boost", '["voxq", "Redis"]'),
        ("disable_partial_transcripts", "true"), ("token", "tk")]
    bad: list[dict[str, Any]] = [{"word_boost": ["x" * 2500]}, {"word_boost": []},
                                 {"end_utterance_silence_threshold": 20001}, {"format_turns": True}]
    for options in bad:
        with pytest.raises(VendorOptionError, match=r"^assemblyai-v2: invalid options: "):
            validate_session("assemblyai-v2", "en-US", 16000, 1, options)
    with pytest.raises(VendorOptionError, match="3 channels"):
        validate_session("assemblyai-v2", "en-US", 16000, 3, {})
    assert p2.encode_audio(b"\x01\x02\x03") == '{"audio_data":"AQID"}'
    assert p2.silence_threshold(0) == '{"end_utterance_silence_threshold":0}'
    with pytest.raises(ValueError):
        p2.silence_threshold(20001)


# --- v3 messages and turns ------------------------------------------------------------------------

TURN = {"turn_order": 0, "turn_is_formatted": False, "end_of_turn": True,
        "transcript": "hi my name is sonny", "end_of_turn_confidence": 0.5005,
        "words": [{"start": 1920, "end": 2000, "text": "hi", "confidence": 0.874618,
                   "word_is_final": True},
                  {"start": 3600, "end": 3840, "text": "sonny", "confidence": 0.822963,
                   "word_is_final": True}],
        "utterance": "Hi my name is sonny", "type": "Turn"}


def turn(order: int, end: bool, fmt: bool, text: str, words: list[tuple[str, int, int, bool]],
         speaker: str | None = None) -> p3.Turn:
    return p3.Turn(order, end, fmt, text,
                   tuple(p3.TurnWord(w, s, e, 0.9, final, None) for w, s, e, final in words),
                   speaker)


def test_v3_server_messages_decode() -> None:
    begin = p3.decode_server('{"type":"Begin","id":"de5d","expires_at":1759796682,'
                             '"configuration":{"model":"u3-rt-pro"}}')
    assert begin == p3.Begin("de5d", 1759796682, "u3-rt-pro")
    t = p3.decode_server(json.dumps(TURN))
    assert isinstance(t, p3.Turn) and t.end_of_turn and not t.formatted
    assert t.words[1] == p3.TurnWord("sonny", 3600, 3840, 0.822963, True, None)
    assert p3.decode_server('{"type":"Termination","audio_duration_seconds":12,'
                            '"session_duration_seconds":14}') == p3.Termination(12.0)
    assert p3.decode_server('{"type":"Error","error_code":3006,"error":"Invalid JSON: x"}') == \
        p3.ErrorMessage(3006, "Invalid JSON: x")
    assert p3.decode_server('{"error":"Client sent audio too fast"}') == \
        p3.ErrorMessage(None, "Client sent audio too fast")
    assert p3.decode_server('{"type":"Warning","warning_code":1,"warning":"w"}') == \
        p3.WarningMessage(1, "w")
    assert p3.decode_server('{"type":"SpeechStarted","timestamp":1}') == p3.Ignored("SpeechStarted")
    for bad in (b"{}", "[]", "{", '{"type":1}', '{"type":"Turn"}',
                '{"type":"Turn","turn_order":-1}', '{"type":"Turn","turn_order":0,"words":{}}',
                '{"type":"Turn","turn_order":0,"words":[{"start":1}]}',
                '{"type":"Turn","turn_order":0,"words":[{"start":"1","end":2}]}',
                '{"type":"Begin","expires_at":"soon"}', '{"type":"Termination",'
                '"audio_duration_seconds":NaN}', "[" * 100_000):
        with pytest.raises(p3.ProtocolError):
            p3.decode_server(bad)


def test_turns_become_partials_then_one_final() -> None:
    a = p3.TurnAssembler(1, format_turns=True)
    out = a.feed(turn(0, False, False, "hi", [("hi", 100, 300, True), ("the", 400, 500, False)]))
    assert [(t.text, t.is_final, t.start, t.end, t.channel) for t in out] == \
        [("hi the", False, 0.1, 0.5, 1)]
    held = a.feed(turn(0, True, False, "hi there", [("hi", 100, 300, True),
                                                    ("there", 400, 600, True)]))
    assert [(t.text, t.is_final) for t in held] == [("hi there", False)]  # waits for the copy
    final = a.feed(turn(0, True, True, "Hi there.", [("Hi", 100, 300, True),
                                                    ("there.", 400, 600, True)], speaker="A"))
    assert [(t.text, t.is_final, t.start, t.end, t.speaker, t.result_id) for t in final] == \
        [("Hi there.", True, 0.1, 0.6, "A", "1-0")]
    assert final[0].words[0] == Word("Hi", 0.1, 0.3, 0.9, "A")
    assert a.feed(turn(0, True, True, "Hi there.", [])) == []  # a late duplicate
    assert a.flush() == []


def test_held_turns_are_released_by_the_next_turn_or_flush() -> None:
    a = p3.TurnAssembler(0, format_turns=True)
    a.feed(turn(0, True, False, "one", [("one", 0, 200, True)]))
    out = a.feed(turn(1, False, False, "", [("two", 500, 600, False)]))
    assert [(t.text, t.is_final) for t in out] == [("one", True), ("two", False)]
    a.feed(turn(1, True, False, "two", [("two", 500, 700, True)]))
    assert [(t.text, t.is_final, t.end) for t in a.flush()] == [("two", True, 0.7)]
    assert a.flush() == []
    b = p3.TurnAssembler(0, format_turns=False)
    assert [t.is_final for t in b.feed(turn(0, True, False, "x", [("x", 0, 10, True)]))] == [True]
    assert b.feed(turn(0, True, True, "X.", [("X.", 0, 10, True)])) == []  # copy ignored
    assert b.feed(turn(1, True, False, "  ", [])) == []  # nothing said
    c = p3.TurnAssembler(0, format_turns=True)  # a formatted copy without words keeps the times
    c.feed(turn(0, True, False, "x", [("x", 100, 200, True)]))
    got = c.feed(turn(0, True, True, "X.", []))
    assert [(t.text, t.start, t.end, len(t.words)) for t in got] == [("X.", 0.1, 0.2, 1)]


# --- v2 messages -----------------------------------------------------------------------------------


def test_v2_server_messages_decode_and_map() -> None:
    assert p2.decode_server('{"message_type":"SessionBegins","session_id":"f1",'
                            '"expires_at":"2023-11-04T16:51:38.316048"}') == \
        p2.SessionBegins("f1", "2023-11-04T16:51:38.316048")
    msg = p2.decode_server(json.dumps({
        "message_type": "FinalTranscript", "created": "2023-11-03T17:14:35.00332",
        "audio_start": 5310, "audio_end": 25580, "confidence": 0.85,
        "text": "How can I show these two slides?", "punctuated": True, "text_formatted": True,
        "words": [{"start": 7140, "end": 7175, "confidence": 0.46, "text": "How"}]}))
    assert isinstance(msg, p2.Utterance) and msg.final
    t = p2.to_transcript(msg, 1)
    assert t is not None and (t.text, t.start, t.end, t.channel, t.is_final) == \
        ("How can I show these two slides?", 7.14, 7.175, 1, True)
    no_words = p2.Utterance(False, "hi", 1000, 1500, ())
    t = p2.to_transcript(no_words, 0, lambda ms: ms / 1000 - 0.5)
    assert t is not None and (t.start, t.end, t.is_final) == (0.5, 1.0, False)
    assert p2.to_transcript(p2.Utterance(True, " ", 0, 0, ()), 0) is None
    assert p2.decode_server('{"message_type":"SessionTerminated"}') == p2.SessionTerminated()
    assert p2.decode_server('{"error":"Client sent audio too fast"}') == \
        p2.ErrorMessage("Client sent audio too fast")
    assert p2.decode_server('{"message_type":"SessionInformation","audio_duration_seconds":1.5}') \
        == p2.Ignored("SessionInformation")
    for bad in (b"x", "nope", "1", '{"message_type":null}', '{"message_type":"FinalTranscript"}',
                '{"message_type":"PartialTranscript","audio_start":0,"audio_end":1,"text":1}',
                '{"message_type":"PartialTranscript","audio_start":0,"audio_end":1,"text":"a",'
                '"words":[{"start":0}]}'):
        with pytest.raises(p2.ProtocolError):
            p2.decode_server(bad)


# --- fuzzing: garbage only raises ProtocolError -------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20)
TYPES = st.sampled_from(["Begin", "Turn", "Termination", "Error", "Warning", "x", None, 3])
MESSAGE_TYPES = st.sampled_from(["SessionBegins", "PartialTranscript", "FinalTranscript",
                                 "SessionTerminated", "SessionInformation", None, 1])


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=50), JSON.map(json.dumps),
                 st.fixed_dictionaries({"type": TYPES}, optional={
                     "turn_order": JSON | st.integers(0, 5), "end_of_turn": JSON,
                     "transcript": JSON, "words": st.lists(JSON | st.fixed_dictionaries(
                         {"start": JSON, "end": JSON}, optional={"text": JSON,
                                                                "confidence": JSON}), max_size=3),
                     "speaker_label": JSON, "error_code": JSON, "error": JSON,
                     "expires_at": JSON, "configuration": JSON,
                     "audio_duration_seconds": JSON}).map(json.dumps)))
def test_v3_decoder_and_assembler_never_crash(frame: str | bytes) -> None:
    try:
        msg = p3.decode_server(frame)
    except p3.ProtocolError:
        return
    if isinstance(msg, p3.Turn):
        a = p3.TurnAssembler(0, format_turns=True)
        for t in [*a.feed(msg), *a.flush()]:
            assert (t.text and t.start <= t.end) or not t.words


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=50), JSON.map(json.dumps),
                 st.fixed_dictionaries({"message_type": MESSAGE_TYPES}, optional={
                     "text": JSON, "audio_start": JSON | st.integers(), "audio_end": JSON,
                     "words": st.lists(JSON | st.fixed_dictionaries(
                         {"start": JSON, "end": JSON, "text": JSON}), max_size=3),
                     "error": JSON, "session_id": JSON}).map(json.dumps)))
def test_v2_decoder_never_crashes(frame: str | bytes) -> None:
    try:
        msg = p2.decode_server(frame)
    except p2.ProtocolError:
        return
    if isinstance(msg, p2.Utterance):
        p2.to_transcript(msg, 0)


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "reason", "frame", "cls", "text"), [
    (1008, "Unauthorized Connection: Missing Authorization header", None, VendorAuthError,
     "1008: Unauthorized Connection: Missing Authorization header"),
    (1008, "Unauthorized Connection: Too many concurrent sessions", None, VendorRetryable,
     "1008: Unauthorized Connection: Too many concurrent sessions"),  # pre-2026 numbering
    (3005, "Session Cancelled: An error occurred", None, VendorRetryable, "3005: Session Cancelled"),
    (3005, "Invalid JSON: {", None, VendorRejected, "3005: Invalid JSON: {"),
    (3005, "Input duration violation: 20 ms. Expected between 50 and 1000 ms", None,
     VendorRejected, "3005: Input duration violation"),
    (3005, "Session Expired: Maximum session duration exceeded", None, VendorRetryable, "3005"),
    (3005, "Invalid sample_rate: 0", None, VendorRejected, "3005: Invalid sample_rate: 0"),
    (3006, "See Error message for details", "Invalid Message: " + "x" * 200, VendorRejected,
     "3006: Invalid Message: xxx"),
    (3007, "Audio Transmission Rate Exceeded: Received 3 sec. audio in 1 sec", None,
     VendorRetryable, "3007: Audio Transmission Rate Exceeded"),
    (3007, "", "Input duration violation: 1200 ms. Expected between 50 and 1000 ms",
     VendorRejected, "3007: Input duration violation: 1200 ms"),
    (3008, "", None, VendorRetryable, "3008: closed with code 3008"),
    (3009, "Unauthorized Connection: Too many concurrent sessions", None, VendorRetryable, "3009"),
    (4000, "", None, VendorRejected, "4000: Sample rate must be a positive integer"),
    (4001, "", None, VendorAuthError, "4001: Not Authorized"),
    (4002, "Insufficient Funds", None, VendorRejected, "4002: Insufficient Funds"),
    (4008, "", None, VendorRetryable, "4008: Session Expired"),
    (4029, "", "Client sent audio too fast", VendorRetryable, "4029: Client sent audio too fast"),
    (4031, "", None, VendorRetryable, "4031: Session idle for too long"),
    (4032, "", None, VendorRejected, "4032: Audio duration is too short"),
    (4100, "", None, VendorRejected, "4100: Endpoint received invalid JSON"),
    (4102, "", None, VendorRetryable, "4102: This account has exceeded"),
    (4103, "", None, VendorRetryable, "4103: This session has been reconnected"),
    (4104, "", None, VendorRejected, "4104: Could not parse word boost parameter"),
    (4999, "who knows", None, VendorRejected, "4999: who knows"),
    (1011, "internal", None, VendorRetryable, "1011: internal"),
    (1013, "", None, VendorRetryable, "1013: Temporary server condition"),
    (1000, "", None, VendorRetryable, "1000: the service closed the session before the end"),
    (None, "", None, VendorRetryable, "1006: the connection dropped without a close frame"),
])
def test_close_codes_of_both_generations(code: int | None, reason: str, frame: str | None,
                                         cls: type[VendorError], text: str) -> None:
    error = codes.close_error("assemblyai", code, reason, frame)
    assert type(error) is cls
    assert str(error).startswith(f"assemblyai: {text}")


def test_errors_are_cleaned_of_secrets() -> None:
    error = codes.close_error("assemblyai", 1008, "bad key sekrit-key\nin token=abc&x", None,
                              ("sekrit-key",))
    assert str(error) == "assemblyai: 1008: bad key *** in token=***&x"
    http = codes.http_error("assemblyai", 401, b'{"error": "Invalid API key sekrit-key"}',
                            ("sekrit-key",), what="the temporary-token request")
    assert type(http) is VendorAuthError
    assert str(http) == "assemblyai: 401: HTTP 401 at the temporary-token request: Invalid API key ***"
    assert type(codes.http_error("a", 429, b"slow", ())) is VendorRetryable
    assert type(codes.http_error("a", 502, b"", ())) is VendorRetryable
    assert type(codes.http_error("a", 400, b"<html>", ())) is VendorRejected
    assert str(codes.http_error("a", 400, b"x" * 1000, ())).endswith("x" * 10)
    assert len(str(codes.http_error("a", 400, b"x" * 1000, ()))) < 400
