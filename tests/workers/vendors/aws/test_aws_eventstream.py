"""AWS event-stream codec: known answers from the protocol notes, every defect, fuzzing."""

from __future__ import annotations

import json
import struct
import uuid
import zlib
from datetime import UTC, datetime, timedelta, timezone

import pytest
from botocore.eventstream import EventStreamBuffer
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from workers.vendors.aws import eventstream as es
from workers.vendors.aws.eventstream import (
    Byte,
    Decoder,
    DecoderFailedError,
    DuplicateHeaderError,
    EncodeError,
    EventStreamError,
    HeaderNameError,
    IncompleteMessageError,
    Integer,
    InvalidHeaderError,
    InvalidHeaderValueError,
    InvalidLengthError,
    Long,
    Message,
    MessageCRCError,
    PreludeCRCError,
    ServiceException,
    Short,
    Timestamp,
    TrailingDataError,
    TruncatedHeaderError,
    UnknownHeaderTypeError,
    audio_event,
    decode_message,
    encode_headers,
    encode_message,
    encode_raw,
    exception_message,
    parse_exception,
    transcript_event,
)

# helpers ------------------------------------------------------------------------------------------


def prelude(total: int, headers_length: int) -> bytes:
    """A 12-byte prelude with a correct CRC, for lengths the encoder would never produce."""
    head = struct.pack(">II", total, headers_length)
    return head + struct.pack(">I", zlib.crc32(head))


def with_message_crc(body: bytes) -> bytes:
    """Append the message CRC to prelude + headers + payload."""
    return body + struct.pack(">I", zlib.crc32(body))


def str_header(name: str, value: str) -> bytes:
    """Hand-encode a string header, independently of the module under test."""
    n, v = name.encode(), value.encode()
    return bytes([len(n)]) + n + b"\x07" + struct.pack(">H", len(v)) + v


def decode_stream(data: bytes, cuts: list[int]) -> list[Message]:
    """Feed ``data`` to a fresh decoder cut at the given offsets; require nothing left over."""
    decoder = Decoder()
    out: list[Message] = []
    start = 0
    for cut in [*sorted(cuts), len(data)]:
        out += decoder.feed(data[start:cut])
        start = cut
    decoder.close()
    return out


# known answers ------------------------------------------------------------------------------------

EMPTY = bytes.fromhex("000000100000000005c248eb7d98c8ff")

AUDIO_112 = bytes.fromhex(
    "0000007000000058f940e6600d3a6d6573736167652d747970650700056576656e740b3a6576656e742d74797065"
    "07000a417564696f4576656e740d3a636f6e74656e742d747970650700186170706c69636174696f6e2f6f637465"
    "742d73747265616d0000e80318fc00005e705a49"
)
END_OF_STREAM_104 = bytes.fromhex(
    "0000006800000058a9d03a230d3a6d6573736167652d747970650700056576656e740b3a6576656e742d74797065"
    "07000a417564696f4576656e740d3a636f6e74656e742d747970650700186170706c69636174696f6e2f6f637465"
    "742d73747265616d74aaddd7"
)
END_OF_STREAM_63 = bytes.fromhex(
    "0000003f0000002fed82cd670d3a6d6573736167652d747970650700056576656e740b3a6576656e742d74797065"
    "07000a417564696f4576656e74b2c1d135"
)
AUDIO_HEADERS: dict[str, es.HeaderValue] = {
    ":message-type": "event",
    ":event-type": "AudioEvent",
    ":content-type": "application/octet-stream",
}
PCM4 = bytes.fromhex("0000e80318fc0000")  # samples 0, 1000, -1000, 0


def captured_exception_frame() -> bytes:
    """The real server frame of §6.4, rebuilt byte by byte from the notes' dump."""
    headers = (
        b"\x0f:exception-type\x07\x00\x13BadRequestException"
        b"\x0d:content-type\x07\x00\x10application/json"
        b"\x0d:message-type\x07\x00\x09exception"
    )
    body = b'{"Message":"Unexpected WebSocket frame received."}'
    frame = bytes.fromhex("000000a30000006168106be1") + headers + body + bytes.fromhex("bdce4b8a")
    assert len(headers) == 97 and len(body) == 50 and len(frame) == 163
    return frame


def test_empty_message_known_answer() -> None:
    assert encode_message({}, b"") == EMPTY
    assert decode_message(EMPTY) == Message({}, b"")


def test_sdk_json_message_known_answer() -> None:
    data = encode_message({"content-type": "application/json"}, b"{'foo':'bar'}")
    total, headers_length, prelude_crc = struct.unpack_from(">III", data)
    assert (total, headers_length, prelude_crc) == (0x3D, 0x20, 0x07FD8396)
    assert data[-4:] == bytes.fromhex("8d9c08b1")
    assert len(data) == 0x3D
    message = decode_message(data)
    assert message.headers == {"content-type": "application/json"}
    assert message.payload == b"{'foo':'bar'}"


def test_audio_event_known_answer() -> None:
    assert audio_event(PCM4) == AUDIO_112
    assert encode_message(AUDIO_HEADERS, PCM4) == AUDIO_112
    message = decode_message(AUDIO_112)
    assert list(message.headers.items()) == list(AUDIO_HEADERS.items())
    assert message.payload == PCM4


def test_end_of_stream_known_answers() -> None:
    assert audio_event(b"") == END_OF_STREAM_104
    two = [(":message-type", "event"), (":event-type", "AudioEvent")]
    assert encode_message(two, b"") == END_OF_STREAM_63
    assert decode_message(END_OF_STREAM_63) == Message(dict(two), b"")
    assert decode_message(END_OF_STREAM_104).payload == b""


def test_captured_exception_frame_decodes() -> None:
    message = decode_message(captured_exception_frame())
    assert list(message.headers) == [":exception-type", ":content-type", ":message-type"]
    assert message.message_type == "exception"
    assert message.exception_type == "BadRequestException"
    assert message.content_type == "application/json"
    assert message.event_type is None
    assert parse_exception(message) == ServiceException(
        "BadRequestException", "Unexpected WebSocket frame received."
    )


def test_exception_message_reproduces_captured_frame() -> None:
    frame = exception_message("BadRequestException", "Unexpected WebSocket frame received.")
    assert frame == captured_exception_frame()


def test_signed_envelope_known_answer() -> None:
    """§5.3: timestamp and byte-array headers, byte-exact against the notes' envelope."""
    date = Timestamp(1705307401000)
    assert encode_headers([(":date", date)]) == bytes.fromhex("053a64617465080000018d0c3deb28")
    sig = bytes.fromhex("8abb7d4d04dbf10967f5be92aa870cbc5b237f9a5707c9102615aa099e7779a7")
    envelope = encode_message([(":date", date), (":chunk-signature", sig)], AUDIO_112)
    expected = (
        bytes.fromhex(
            "000000c30000004324425d48053a64617465080000018d0c3deb28103a6368756e6b2d7369676e6174757265"
            "0600208abb7d4d04dbf10967f5be92aa870cbc5b237f9a5707c9102615aa099e7779a7"
        )
        + AUDIO_112
        + bytes.fromhex("93f0d6bd")
    )
    assert len(expected) == 195
    assert envelope == expected
    decoded = decode_message(envelope)
    assert decoded.headers == {":date": date, ":chunk-signature": sig}
    assert decode_message(decoded.payload).payload == PCM4
    assert date.to_datetime() == datetime(2024, 1, 15, 8, 30, 1, tzinfo=UTC)


def test_final_empty_envelope_known_answer() -> None:
    sig = bytes.fromhex("2fd43fd6308b7a5d9500b4857efe68e790d4e7bceb108c910537e2db544cb48c")
    when = datetime(2024, 1, 15, 8, 30, 2, tzinfo=UTC)
    frame = encode_message([(":date", when), (":chunk-signature", sig)], b"")
    assert frame == bytes.fromhex(
        "0000005300000043f5447a58053a64617465080000018d0c3def10103a6368756e6b2d7369676e617475726506"
        "00202fd43fd6308b7a5d9500b4857efe68e790d4e7bceb108c910537e2db544cb48c51478279"
    )


UID = uuid.UUID("0123456789abcdef0123456789abcdef")


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (True, "00"),
        (False, "01"),
        (Byte(-1), "02ff"),
        (Byte(127), "027f"),
        (Short(-2), "03fffe"),
        (Integer(0x01020304), "0401020304"),
        (Long(-(2**63)), "058000000000000000"),
        (b"\x00\xff", "06000200ff"),
        (bytearray(b"\x01"), "06000101"),
        ("é", "070002c3a9"),
        (Timestamp(1), "080000000000000001"),
        (UID, "090123456789abcdef0123456789abcdef"),
    ],
)
def test_each_header_type_wire_form(value: es.HeaderInput, wire: str) -> None:
    block = encode_headers({"h": value})
    assert block == b"\x01h" + bytes.fromhex(wire)
    decoded = decode_message(encode_raw(block)).headers["h"]
    assert decoded == (bytes(value) if isinstance(value, bytearray) else value)
    assert type(decoded) is (bytes if isinstance(value, bytearray) else type(value))


def test_header_order_is_preserved() -> None:
    pairs = [("z", "1"), ("a", "2"), ("m", "3")]
    assert list(decode_message(encode_message(pairs)).headers) == ["z", "a", "m"]


# typed values and encode errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "low", "high"),
    [
        (Byte, -128, 127),
        (Short, -(2**15), 2**15 - 1),
        (Integer, -(2**31), 2**31 - 1),
        (Long, -(2**63), 2**63 - 1),
        (Timestamp, -(2**63), 2**63 - 1),
    ],
)
def test_fixed_width_bounds(kind: type[es._FixedInt], low: int, high: int) -> None:
    assert kind(low).value == low and kind(high).value == high
    for bad in (low - 1, high + 1):
        with pytest.raises(ValueError):
            kind(bad)
    with pytest.raises(TypeError):
        kind(True)


def test_typed_values_of_different_kinds_differ() -> None:
    assert Byte(1) != Short(1) and Long(5) != Timestamp(5)


def test_plain_int_and_unknown_types_refused() -> None:
    with pytest.raises(TypeError):
        encode_headers({"n": 5})  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        encode_headers({"f": 1.5})  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        encode_headers({7: "x"})  # type: ignore[arg-type]


def test_datetime_headers() -> None:
    aware = datetime(2024, 1, 15, 9, 30, 1, 999999, tzinfo=timezone(timedelta(hours=1)))
    block = encode_headers({"d": aware})
    assert decode_message(encode_raw(block)).headers["d"] == Timestamp(1705307401999)
    with pytest.raises(EncodeError):
        encode_headers({"d": datetime(2024, 1, 1)})
    with pytest.raises(ValueError):
        Timestamp.from_datetime(datetime(2024, 1, 1))


def test_encode_limits() -> None:
    assert encode_headers({"n" * 255: "v" * es.MAX_HEADER_VALUE_LENGTH})
    with pytest.raises(EncodeError):
        encode_headers({"": "v"})
    with pytest.raises(EncodeError):
        encode_headers({"n" * 256: "v"})
    with pytest.raises(EncodeError):
        encode_headers({"é" * 128: "v"})  # 256 UTF-8 bytes
    with pytest.raises(EncodeError):
        encode_headers({"n": "v" * (es.MAX_HEADER_VALUE_LENGTH + 1)})
    with pytest.raises(EncodeError):
        encode_headers({"n": b"v" * (es.MAX_HEADER_VALUE_LENGTH + 1)})
    with pytest.raises(EncodeError):
        encode_headers({"n": "\ud800"})
    with pytest.raises(EncodeError):
        encode_headers({"\ud800": "x"})
    with pytest.raises(EncodeError):
        encode_headers([("a", "1"), ("a", "2")])
    with pytest.raises(EncodeError):
        encode_headers({f"h{i}": "v" * es.MAX_HEADER_VALUE_LENGTH for i in range(5)})
    big = memoryview(bytes(es.MAX_PAYLOAD_LENGTH + 1))
    with pytest.raises(EncodeError):
        encode_message({}, big)
    with pytest.raises(EncodeError):
        audio_event(big)
    assert len(audio_event(big[:-1])) == es.MAX_PAYLOAD_LENGTH + 104


def test_encode_errors_are_event_stream_and_value_errors() -> None:
    with pytest.raises(ValueError):
        encode_headers({"": "v"})
    assert issubclass(EncodeError, EventStreamError)


# each defect raises its named error ---------------------------------------------------------------

PAYLOAD_AT = 12 + 88  # in AUDIO_112


def flipped(data: bytes, index: int, mask: int = 0x01) -> bytes:
    """Copy of ``data`` with one byte xor-ed."""
    out = bytearray(data)
    out[index] ^= mask
    return bytes(out)


@pytest.mark.parametrize("index", range(12))
def test_prelude_crc_error(index: int) -> None:
    with pytest.raises(PreludeCRCError):
        decode_message(flipped(AUDIO_112, index))


@pytest.mark.parametrize("index", range(12, 112))
def test_message_crc_error(index: int) -> None:
    with pytest.raises(MessageCRCError):
        decode_message(flipped(AUDIO_112, index, 0x80))


def test_stream_prelude_error_detected_at_twelve_bytes() -> None:
    decoder = Decoder()
    assert decoder.feed(flipped(AUDIO_112, 3)[:11]) == []
    with pytest.raises(PreludeCRCError):
        decoder.feed(b"\x00")


@pytest.mark.parametrize(
    ("total", "headers_length"),
    [(0, 0), (15, 0), (16, 1), (20, 5), (0xFFFFFFFF, 0xFFFFFFF0)],
)
def test_invalid_lengths(total: int, headers_length: int) -> None:
    data = prelude(total, headers_length) + bytes(max(0, min(total, 64) - 12))
    with pytest.raises(InvalidLengthError):
        decode_message(data)
    with pytest.raises(InvalidLengthError):
        Decoder().feed(data[:12])


def test_oversize_message_refused_from_prelude_alone() -> None:
    """A huge declared payload is refused before buffering anything past the prelude."""
    huge = prelude(16 + es.MAX_PAYLOAD_LENGTH + 1, 0)
    with pytest.raises(InvalidLengthError):
        Decoder().feed(huge)
    assert Decoder().feed(prelude(16 + es.MAX_PAYLOAD_LENGTH, 0)) == []
    big_headers = prelude(16 + es.MAX_HEADERS_LENGTH + 1, es.MAX_HEADERS_LENGTH + 1)
    with pytest.raises(InvalidLengthError):
        Decoder().feed(big_headers)


def test_configurable_limits() -> None:
    small = Decoder(max_payload_length=7)
    with pytest.raises(InvalidLengthError):
        small.feed(AUDIO_112)
    assert Decoder(max_payload_length=8).feed(AUDIO_112)[0].payload == PCM4
    with pytest.raises(InvalidLengthError):
        decode_message(AUDIO_112, max_headers_length=87)
    assert decode_message(AUDIO_112, max_headers_length=88).payload == PCM4


@pytest.mark.parametrize(
    ("block", "error"),
    [
        (b"\x00\x07\x00\x00", HeaderNameError),  # empty name
        (b"\x02\xff\xfe\x00", HeaderNameError),  # name not UTF-8
        (b"\x05abc", TruncatedHeaderError),  # name runs past the block
        (b"\x03abc", TruncatedHeaderError),  # no type byte
        (b"\x01a\x0a", UnknownHeaderTypeError),
        (b"\x01a\xff", UnknownHeaderTypeError),
        (b"\x01a\x02", TruncatedHeaderError),
        (b"\x01a\x03\x00", TruncatedHeaderError),
        (b"\x01a\x04\x00\x00\x00", TruncatedHeaderError),
        (b"\x01a\x05" + bytes(7), TruncatedHeaderError),
        (b"\x01a\x08" + bytes(7), TruncatedHeaderError),
        (b"\x01a\x09" + bytes(15), TruncatedHeaderError),
        (b"\x01a\x07\x00", TruncatedHeaderError),  # half a length
        (b"\x01a\x07\x00\x05abcd", TruncatedHeaderError),
        (b"\x01a\x06\x00\x02\x00", TruncatedHeaderError),
        (b"\x01a\x07\x00\x01\xff", InvalidHeaderValueError),
        (b"\x01a\x07\x00\x02\xc0\xaf", InvalidHeaderValueError),  # overlong '/'
        (b"\x01a\x07\x00\x03\xed\xa0\x80", InvalidHeaderValueError),  # UTF-8 surrogate
        (b"\x01a\x07\x80\x00" + b"x" * 0x8000, InvalidHeaderValueError),  # over 32767
        (b"\x01a\x06\x80\x00" + b"x" * 0x8000, InvalidHeaderValueError),
        (b"\x01a\x00\x01a\x01", DuplicateHeaderError),
        (str_header("x", "1") + str_header("x", "1"), DuplicateHeaderError),
    ],
)
def test_header_defects(block: bytes, error: type[InvalidHeaderError]) -> None:
    frame = encode_raw(block, b"payload")
    with pytest.raises(error):
        decode_message(frame)
    with pytest.raises(error):
        Decoder().feed(frame)
    assert issubclass(error, InvalidHeaderError)


def test_longest_legal_values_decode() -> None:
    block = b"\x01a\x07\x7f\xff" + b"x" * 0x7FFF + b"\xff" + b"n" * 255 + b"\x00"
    headers = decode_message(encode_raw(block)).headers
    assert headers == {"a": "x" * 0x7FFF, "n" * 255: True}


def test_incomplete_and_trailing() -> None:
    for cut in (0, 5, 11, 12, 50, 111):
        with pytest.raises(IncompleteMessageError):
            decode_message(AUDIO_112[:cut])
    with pytest.raises(TrailingDataError):
        decode_message(AUDIO_112 + b"\x00")
    with pytest.raises(TrailingDataError):
        decode_message(AUDIO_112 + AUDIO_112)


def test_every_error_is_an_event_stream_error() -> None:
    names = [name for name in es.__all__ if name.endswith("Error")]
    assert len(names) >= 13
    for name in names:
        assert issubclass(getattr(es, name), EventStreamError)
    assert issubclass(EventStreamError, ValueError)


# streaming decoder --------------------------------------------------------------------------------


def sample_stream() -> tuple[bytes, list[Message]]:
    """Three different messages back to back, with their expected decodings."""
    parts: list[tuple[dict[str, es.HeaderValue], bytes]] = [
        (AUDIO_HEADERS, PCM4),
        ({":message-type": "event", ":event-type": "TranscriptEvent"}, b'{"Transcript":{}}'),
        ({"t": Timestamp(-5), "u": UID, "b": False, "l": Long(7)}, b""),
    ]
    data = b"".join(encode_message(h, p) for h, p in parts)
    return data, [Message(dict(h), p) for h, p in parts]


def test_one_byte_at_a_time() -> None:
    data, expected = sample_stream()
    decoder = Decoder()
    out: list[Message] = []
    for i in range(len(data)):
        out += decoder.feed(data[i : i + 1])
        assert decoder.pending == (i + 1) - sum(len(m.encode()) for m in out)
    assert out == expected
    decoder.close()


def test_byte_at_a_time_does_not_reparse_the_prelude(monkeypatch: pytest.MonkeyPatch) -> None:
    """Byte-by-byte feeding stays linear: the prelude is parsed once, not once per byte."""
    calls = 0
    real = es._check_prelude

    def counting(*args: object) -> tuple[int, int, int]:
        nonlocal calls
        calls += 1
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(es, "_check_prelude", counting)
    frame = audio_event(bytes(5000))
    decoder = Decoder()
    out: list[Message] = []
    for i in range(len(frame)):
        out += decoder.feed(frame[i : i + 1])
    assert [m.payload for m in out] == [bytes(5000)]
    assert calls <= 2


def test_split_at_every_position() -> None:
    data, expected = sample_stream()
    for cut in range(len(data) + 1):
        assert decode_stream(data, [cut]) == expected, cut


def test_split_at_every_pair_of_positions() -> None:
    data = audio_event(PCM4) + EMPTY
    expected = [Message(AUDIO_HEADERS, PCM4), Message({}, b"")]
    for first in range(len(data) + 1):
        for second in range(first, len(data) + 1):
            assert decode_stream(data, [first, second]) == expected


def test_many_messages_concatenated() -> None:
    frames = [audio_event(bytes([i % 256]) * (i % 50)) for i in range(2000)]
    decoder = Decoder()
    out = decoder.feed(b"".join(frames))
    assert [m.payload for m in out] == [bytes([i % 256]) * (i % 50) for i in range(2000)]
    assert decoder.pending == 0


def test_accepts_bytearray_and_memoryview() -> None:
    decoder = Decoder()
    assert decoder.feed(bytearray(AUDIO_112[:20])) == []
    assert decoder.feed(memoryview(AUDIO_112)[20:])[0].payload == PCM4
    assert Decoder().feed(memoryview(AUDIO_112 + EMPTY[:3]))[0].payload == PCM4
    assert decode_message(memoryview(AUDIO_112)).payload == PCM4
    assert decode_message(bytearray(AUDIO_112)).payload == PCM4


def test_payload_is_independent_of_caller_buffer() -> None:
    buffer = bytearray(AUDIO_112)
    message = Decoder().feed(buffer)[0]
    buffer[PAYLOAD_AT] ^= 0xFF
    assert message.payload == PCM4 and type(message.payload) is bytes


def test_close_with_partial_message() -> None:
    decoder = Decoder()
    decoder.feed(AUDIO_112[:30])
    assert decoder.pending == 30
    with pytest.raises(IncompleteMessageError):
        decoder.close()


def test_decoder_refuses_input_after_clean_close() -> None:
    decoder = Decoder()
    assert decoder.feed(AUDIO_112)[0].payload == PCM4
    decoder.close()
    with pytest.raises(DecoderFailedError):
        decoder.feed(AUDIO_112)
    with pytest.raises(DecoderFailedError):
        decoder.close()


def test_decoder_refuses_input_after_error() -> None:
    decoder = Decoder()
    with pytest.raises(MessageCRCError) as caught:
        decoder.feed(AUDIO_112 + flipped(AUDIO_112, PAYLOAD_AT))
    assert [m.payload for m in caught.value.decoded] == [PCM4]
    assert decoder.failed
    with pytest.raises(DecoderFailedError) as again:
        decoder.feed(AUDIO_112)
    assert again.value.__cause__ is caught.value
    with pytest.raises(DecoderFailedError):
        decoder.feed(b"")
    with pytest.raises(DecoderFailedError):
        decoder.close()


def test_error_spanning_feeds_is_raised_when_complete() -> None:
    bad = flipped(AUDIO_112, PAYLOAD_AT)
    decoder = Decoder()
    assert decoder.feed(AUDIO_112 + bad[:60]) != []
    with pytest.raises(MessageCRCError) as caught:
        decoder.feed(bad[60:])
    assert caught.value.decoded == []


def test_header_cache_returns_independent_dicts() -> None:
    decoder = Decoder()
    first, second = decoder.feed(AUDIO_112 + AUDIO_112)
    first.headers["x"] = "mutated"
    assert "x" not in second.headers
    assert "x" not in decoder.feed(AUDIO_112)[0].headers


# message helpers ----------------------------------------------------------------------------------


def test_message_accessors_and_repr() -> None:
    message = Message({":message-type": "error", ":error-code": "Boom", ":error-message": "bad"})
    assert (message.message_type, message.error_code, message.error_message) == (
        "error",
        "Boom",
        "bad",
    )
    assert Message({":event-type": Byte(1)}).event_type is None  # non-string header is not a type
    text = repr(Message({}, b"z" * 100000))
    assert len(text) < 200 and "100000 bytes" in text


def test_parse_exception_variants() -> None:
    def exc(body: bytes, kind: str = "LimitExceededException") -> Message:
        return Message({":message-type": "exception", ":exception-type": kind}, body)

    assert parse_exception(exc(b'{"message":"lower"}')) == ServiceException(
        "LimitExceededException", "lower"
    )
    assert parse_exception(exc(b"not json \xff")) == ServiceException(
        "LimitExceededException", "not json \ufffd"
    )
    assert parse_exception(exc(b'["list"]')) == ServiceException(
        "LimitExceededException", '["list"]'
    )
    assert parse_exception(Message({":message-type": "exception"}, b"{}")) == ServiceException(
        "UnknownException", "{}"
    )
    error = Message({":message-type": "error", ":error-code": "E", ":error-message": "m"})
    assert parse_exception(error) == ServiceException("E", "m")
    assert parse_exception(decode_message(AUDIO_112)) is None
    assert parse_exception(Message()) is None


def test_exception_message_round_trip_unicode() -> None:
    message = decode_message(exception_message("ConflictException", 'déjà vu "quoted"'))
    assert parse_exception(message) == ServiceException("ConflictException", 'déjà vu "quoted"')


def test_transcript_event() -> None:
    body: dict[str, object] = {"Transcript": {"Results": []}}
    message = decode_message(transcript_event(body))
    assert list(message.headers.items()) == [
        (":event-type", "TranscriptEvent"),
        (":content-type", "application/json"),
        (":message-type", "event"),
    ]
    assert json.loads(message.payload) == body
    assert decode_message(transcript_event(b"{}")).payload == b"{}"


def test_message_encode_round_trip() -> None:
    message = decode_message(AUDIO_112)
    assert message.encode() == AUDIO_112


# cross-check with botocore ------------------------------------------------------------------------


def botocore_view(value: es.HeaderValue) -> object:
    """How botocore's decoder represents one of our header values."""
    if isinstance(value, es._FixedInt):
        return value.value
    if isinstance(value, uuid.UUID):
        return value.bytes
    return value


# hypothesis ---------------------------------------------------------------------------------------

INT64 = st.integers(-(2**63), 2**63 - 1)
header_values = st.one_of(
    st.booleans(),
    st.integers(-128, 127).map(Byte),
    st.integers(-(2**15), 2**15 - 1).map(Short),
    st.integers(-(2**31), 2**31 - 1).map(Integer),
    INT64.map(Long),
    st.binary(max_size=200),
    st.text(max_size=60),
    INT64.map(Timestamp),
    st.uuids(),
)
header_names = st.text(min_size=1, max_size=30).filter(lambda s: len(s.encode()) <= 255)
header_maps = st.dictionaries(header_names, header_values, max_size=8)
payloads = st.binary(max_size=2000)


@given(header_maps, payloads)
def test_round_trip(headers: dict[str, es.HeaderValue], payload: bytes) -> None:
    data = encode_message(headers, payload)
    message = decode_message(data)
    assert message == Message(headers, payload)
    assert list(message.headers) == list(headers)
    assert message.encode() == data


@given(header_maps, payloads)
def test_botocore_decodes_our_encoding(headers: dict[str, es.HeaderValue], payload: bytes) -> None:
    buffer = EventStreamBuffer()
    buffer.add_data(encode_message(headers, payload))
    (theirs,) = list(buffer)
    assert theirs.payload == payload
    assert theirs.headers == {name: botocore_view(value) for name, value in headers.items()}


@given(st.lists(st.tuples(header_maps, payloads), min_size=1, max_size=6), st.data())
def test_round_trip_through_arbitrary_splits(
    parts: list[tuple[dict[str, es.HeaderValue], bytes]], data: st.DataObject
) -> None:
    stream = b"".join(encode_message(h, p) for h, p in parts)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    assert decode_stream(stream, cuts) == [Message(h, p) for h, p in parts]


def feed_all(chunks: list[bytes]) -> None:
    """Feed chunks; an EventStreamError ends the stream and must poison the decoder."""
    decoder = Decoder()
    try:
        for chunk in chunks:
            decoder.feed(chunk)
        decoder.close()
    except EventStreamError:
        with pytest.raises(EventStreamError):
            decoder.feed(b"x")


@given(st.lists(st.binary(max_size=64), max_size=20))
def test_garbage_raises_only_event_stream_errors(chunks: list[bytes]) -> None:
    feed_all(chunks)


framed_garbage = st.builds(encode_raw, st.binary(max_size=80), st.binary(max_size=40))


@given(framed_garbage)
def test_garbage_with_valid_crcs_decodes_canonically_or_raises(frame: bytes) -> None:
    """Random header blocks behind correct CRCs reach the header parser: decode or named error."""
    try:
        message = decode_message(frame)
    except EventStreamError:
        return
    assert message.encode() == frame  # every accepted encoding is the canonical one


@given(st.lists(framed_garbage, min_size=1, max_size=5), st.data())
def test_framed_garbage_in_arbitrary_splits(frames: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    feed_all([stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)])


@given(header_maps, payloads, st.data())
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_bit_flips_are_always_detected(
    headers: dict[str, es.HeaderValue], payload: bytes, data: st.DataObject
) -> None:
    """CRC-32 catches every 1-3 bit error in frames this small, in whole and streamed decoding."""
    frame = bytearray(encode_message(headers, payload))
    bits = data.draw(st.sets(st.integers(0, len(frame) * 8 - 1), min_size=1, max_size=3))
    for bit in bits:
        frame[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(EventStreamError):
        decode_message(bytes(frame))
    decoder = Decoder()
    with pytest.raises(EventStreamError):
        decoder.feed(bytes(frame))
        decoder.close()


@given(header_maps, payloads, st.data())
def test_byte_mutations_raise_or_decode_consistently(
    headers: dict[str, es.HeaderValue], payload: bytes, data: st.DataObject
) -> None:
    frame = bytearray(encode_message(headers, payload))
    edits = data.draw(
        st.lists(
            st.tuples(st.integers(0, len(frame) - 1), st.integers(0, 255)), min_size=1, max_size=8
        )
    )
    for index, value in edits:
        frame[index] = value
    assume(bytes(frame) != encode_message(headers, payload))
    try:
        message = decode_message(bytes(frame))
    except EventStreamError:
        return
    assert message.encode() == bytes(frame)
