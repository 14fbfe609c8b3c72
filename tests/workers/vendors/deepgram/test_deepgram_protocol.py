"""Deepgram's pure protocol module: options validated at session creation, query encoding
(lowercase booleans, repeated list keys), Results decoding (fuzzed: garbage only raises
ProtocolError), the mapping to voxq Transcripts, and closes / HTTP answers to voxq errors."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voxq.records import Word
from workers.vendors.base import (
    VendorAuthError,
    VendorError,
    VendorOptionError,
    VendorRejected,
    VendorRetryable,
)
from workers.vendors.deepgram import protocol as dg
from workers.vendors.registry import validate_session

# the SDK test fixture quoted in the notes (§4.1)
FIXTURE = {"channel": {"alternatives": [{
    "transcript": "For the United States of America.", "confidence": 0.9990865,
    "words": [{"word": "for", "start": 17.56, "end": 17.72, "confidence": 0.9873626,
               "punctuated_word": "For"},
              {"word": "america", "start": 18.2, "end": 18.66, "confidence": 0.96024,
               "punctuated_word": "America."}]}]},
    "metadata": {"model_info": {"name": "2-general-nova", "version": "2024-01-18.26916",
                                "arch": "nova-3"},
                 "request_id": "e1985d01-b8bc-42ab-a16a-e7a8419c07f2",
                 "model_uuid": "c0d1a568-ce81-4fea-97e7-bd45cb1fdf3c"},
    "type": "Results", "channel_index": [0, 1], "duration": 1.6599998, "start": 17.0,
    "is_final": True, "from_finalize": False, "speech_final": True}


def test_options_are_validated_at_session_creation() -> None:
    mono = validate_session("deepgram", "en-US", 8000, 1, {"endpointing": "false"})
    assert isinstance(mono, dg.DeepgramOptions) and mono.endpointing is False
    assert mono.multichannel is False
    stereo = validate_session("deepgram", "multi", 48000, 2, {
        "model": "nova-2-phonecall", "endpointing": 0, "utterance_end_ms": 1000,
        "diarize": True, "diarize_model": "v1", "keywords": ["a:1.5", "b"],
        "replace": "foo:bar", "redact": ["pci", "numbers"], "tag": "x"})
    assert isinstance(stereo, dg.DeepgramOptions) and stereo.multichannel is True
    bad: list[tuple[str, int, dict[str, Any]]] = [
        ("en-US", 1, {"endpointing": True}), ("en-US", 1, {"endpointing": -1}),
        ("en-US", 1, {"endpointing": "soon"}), ("en-US", 1, {"interim_results": "maybe"}),
        ("en-US", 1, {"utterance_end_ms": 1000, "interim_results": False}),
        ("en-US", 1, {"diarize_model": "latest"}), ("en-US", 1, {"diarize": True,
                                                                "diarize_model": "v2"}),
        ("en-US", 1, {"keyterm": "x", "model": "nova-2"}), ("en-US", 1, {"keywords": "a:b"}),
        ("en-US", 1, {"replace": "nocolon"}), ("en-US", 1, {"redact": "everything"}),
        ("en-US", 1, {"model": "nova 3"}), ("en-US", 1, {"multichannel": True}),
        ("en-US", 2, {"multichannel": False}), ("english", 1, {}), ("en_US", 1, {}),
        ("en-US", 1, {"encoding": "mulaw"}), ("en-US", 1, {"sample_rate": 8000}),
        ("en-US", 3, {}), ("en-US", 1, {"search": []}),
    ]
    for language, channels, options in bad:
        with pytest.raises(VendorOptionError, match=r"^deepgram: "):
            validate_session("deepgram", language, 16000, channels, options)


def test_query_encoding() -> None:
    parsed = validate_session("deepgram", "en-GB", 8000, 2, {
        "endpointing": 250, "keyterm": ["a", "b c"], "numerals": False, "punctuate": False})
    assert isinstance(parsed, dg.DeepgramOptions)
    params = dg.query_params("en-GB", 8000, 2, parsed)
    assert params == [
        ("model", "nova-3"), ("language", "en-GB"), ("encoding", "linear16"),
        ("sample_rate", "8000"), ("channels", "2"), ("multichannel", "true"),
        ("interim_results", "true"), ("punctuate", "false"), ("endpointing", "250"),
        ("numerals", "false"), ("keyterm", "a"), ("keyterm", "b c")]
    assert dg.build_url("wss://api.deepgram.com/v1/listen", params[-2:]) == \
        "wss://api.deepgram.com/v1/listen?keyterm=a&keyterm=b+c"
    off = validate_session("deepgram", "en", 16000, 1, {"endpointing": False})
    assert isinstance(off, dg.DeepgramOptions)
    assert ("endpointing", "false") in dg.query_params("en", 16000, 1, off)


def test_results_decode_and_map() -> None:
    r = dg.decode_server(json.dumps(FIXTURE))
    assert isinstance(r, dg.Results) and r.is_final and r.speech_final and r.channel == 0
    t = dg.to_transcript(r, 1)
    assert t is not None
    assert (t.text, t.is_final, t.start, t.end, t.channel, t.speaker) == \
        ("For the United States of America.", True, 17.56, 18.66, 0, None)
    assert t.words == (Word("For", 17.56, 17.72, 0.9873626), Word("America.", 18.2, 18.66, 0.96024))
    shifted = dg.to_transcript(r, 1, lead_in=0.1)
    assert shifted is not None and (shifted.start, shifted.end) == (17.46, 18.56)
    diarized = dict(FIXTURE, channel_index=[1, 2], is_final=False, channel={"alternatives": [{
        "transcript": "a b", "words": [{"word": "a", "start": 1, "end": 2, "speaker": 1},
                                       {"word": "b", "start": 2, "end": 3, "speaker": 1}]}]})
    t = dg.to_transcript(dg.decode_server(json.dumps(diarized)), 2)  # type: ignore[arg-type]
    assert t is not None and (t.speaker, t.channel, t.is_final) == ("1", 1, False)
    empty = dict(FIXTURE, channel={"alternatives": [{"transcript": "", "confidence": 0.0,
                                                     "words": []}]})
    assert dg.to_transcript(dg.decode_server(json.dumps(empty)), 1) is None  # type: ignore[arg-type]
    window = dict(FIXTURE, channel={"alternatives": [{"transcript": "hm"}]})
    t = dg.to_transcript(dg.decode_server(json.dumps(window)), 1)  # type: ignore[arg-type]
    assert t is not None and (t.start, t.end) == (17.0, 18.66)  # µs-rounded window


def test_other_messages() -> None:
    meta = dg.decode_server('{"type":"Metadata","transaction_key":"deprecated","request_id":"r",'
                            '"sha256":"incomplete","duration":4.0799375,"channels":1}')
    assert meta == dg.Metadata("r", 4.0799375)
    assert dg.decode_server('{"type":"UtteranceEnd","channel":[0,1],"last_word_end":2.395}') == \
        dg.Ignored("UtteranceEnd")
    assert dg.decode_server('{"type":"Error","description":"d","message":"m","variant":"v"}') == \
        dg.ErrorMessage("v: d: m")
    for bad in (b"\x00", "{", "[]", "{}", '{"type":"Results"}',
                '{"type":"Results","channel":{"alternatives":{}}}',
                '{"type":"Results","channel_index":[true],"channel":{"alternatives":[]}}',
                '{"type":"Results","channel":{"alternatives":[{"words":[{"word":"a"}]}]}}',
                '{"type":"Results","channel":{"alternatives":[{"words":[{"word":"a","start":0,'
                '"end":1,"speaker":"x"}]}]}}', '{"type":"Metadata","duration":"long"}'):
        with pytest.raises(dg.ProtocolError):
            dg.decode_server(bad)


@pytest.mark.parametrize(("code", "reason", "cls", "text"), [
    (1011, "Deepgram did not receive audio data or a text message within the timeout window. "
           "See https://dpgr.am/net0001", VendorRetryable, "1011: Deepgram did not receive"),
    (1011, "NET-0000", VendorRetryable, "1011: NET-0000"),
    (1008, "DATA-0000", VendorRejected, "1008: DATA-0000"),
    (1000, "", VendorRetryable, "1000: the service closed the stream before the end"),
    (None, "", VendorRetryable, "1006: the connection dropped"),
    (4000, "", VendorRejected, "4000: closed with code 4000"),
    (1001, "going away", VendorRetryable, "1001: going away"),
])
def test_closes(code: int | None, reason: str, cls: type[VendorError], text: str) -> None:
    error = dg.close_error(code, reason)
    assert type(error) is cls and str(error).startswith(f"deepgram: {text}")
    assert str(dg.close_error(1008, "DATA-0000", "bad audio")) == \
        "deepgram: 1008: DATA-0000 (bad audio)"


def test_handshake_errors() -> None:
    body = json.dumps({"err_code": "INVALID_AUTH", "err_msg": "Invalid credentials.",
                       "request_id": "r1"}).encode()
    err = dg.handshake_error(401, {"dg-request-id": "r1", "dg-error": "Invalid credentials."}, body)
    assert type(err) is VendorAuthError
    assert str(err) == ("deepgram: 401: HTTP 401 at the WebSocket handshake: INVALID_AUTH: "
                        "Invalid credentials. (dg-request-id r1)")
    assert type(dg.handshake_error(403, {}, b"")) is VendorAuthError
    assert type(dg.handshake_error(429, {}, b"")) is VendorRetryable
    assert type(dg.handshake_error(503, {}, b"")) is VendorRetryable
    bad = dg.handshake_error(400, {"dg-error": "Failed to deserialize query parameters: x"}, b"",
                             ("k3y",))
    assert type(bad) is VendorRejected and "Failed to deserialize" in str(bad)
    assert "k3y" not in str(dg.handshake_error(400, {}, b"your key k3y is", ("k3y",)))
    category = json.dumps({"category": "INVALID_QUERY", "message": "m", "request_id": "x"})
    assert str(dg.handshake_error(400, {}, category.encode())).endswith("INVALID_QUERY: m")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20)
WORD = st.fixed_dictionaries({"word": JSON, "start": JSON | st.floats(), "end": JSON},
                             optional={"punctuated_word": JSON, "speaker": JSON,
                                       "confidence": JSON})


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=50), JSON.map(json.dumps),
                 st.fixed_dictionaries({"type": st.sampled_from(["Results", "Metadata", "Error",
                                                                 "x", None])}, optional={
                     "channel_index": JSON | st.lists(st.integers(-1, 3), max_size=2),
                     "channel": JSON | st.fixed_dictionaries({"alternatives": st.lists(
                         JSON | st.fixed_dictionaries({"transcript": JSON},
                                                      optional={"words": st.lists(WORD | JSON,
                                                                                  max_size=3)}),
                         max_size=2)}),
                     "start": JSON, "duration": JSON, "is_final": JSON,
                     "duration_x": JSON}).map(json.dumps)))
def test_decoder_never_crashes(frame: str | bytes) -> None:
    try:
        msg = dg.decode_server(frame)
    except dg.ProtocolError:
        return
    if isinstance(msg, dg.Results):
        t = dg.to_transcript(msg, 2, lead_in=0.1)
        assert t is None or (t.text and 0 <= t.channel < 2)
