"""Volcengine binary frames: the notes' worked bytes, round trips, split input, every defect's
named error, and fuzzing (garbage only ever raises the codec's own error)."""

from __future__ import annotations

import gzip
import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.vendors.volcengine import frames as f
from workers.vendors.volcengine.frames import (
    Compression,
    CompressionError,
    Decoder,
    DecoderFailedError,
    EncodeError,
    Event,
    Frame,
    FrameError,
    IdTooLongError,
    InvalidFlagsError,
    InvalidHeaderSizeError,
    InvalidIdError,
    InvalidJSONError,
    MessageType,
    PayloadTooLargeError,
    Serialization,
    TrailingDataError,
    TruncatedFrameError,
    UnknownCompressionError,
    UnknownMessageTypeError,
    UnknownSerializationError,
    UnsupportedVersionError,
)

# §2.3 of the notes: the v1 TTS request used in the §2.7 worked example
TTS_REQUEST = {
    "app": {"appid": "123456", "token": "access_token", "cluster": "volcano_tts"},
    "user": {"uid": "uid-1"},
    "audio": {"voice_type": "BV001_streaming", "encoding": "pcm", "rate": 24000,
              "speed_ratio": 1.0},
    "request": {"reqid": "0c7e5b8a-4f1e-4b8e-9d2a-3f5c6b7a8d90", "text": "你好",
                "operation": "submit"},
}


# --- the notes' worked bytes ----------------------------------------------------------------------


def test_full_client_request_matches_the_worked_example() -> None:
    """§2.7: 281 bytes of compact JSON; uncompressed `11 10 10 00 | 00 00 01 19`, gzip 227."""
    body = json.dumps(TTS_REQUEST, separators=(",", ":"), ensure_ascii=False).encode()
    plain = f.full_client_request(TTS_REQUEST, compress=False)
    assert plain[:8] == bytes.fromhex("11101000 00000119") and plain[8:] == body
    assert plain[8:12] == b'{"ap'
    zipped = f.full_client_request(TTS_REQUEST)
    assert zipped[:8] == bytes.fromhex("11101100 000000e3")
    assert zipped[8:11] == bytes.fromhex("1f8b08") and len(zipped) == 8 + 227
    assert f.decode(zipped).json() == TTS_REQUEST


def test_last_audio_packet_matches_the_worked_example() -> None:
    """§4.7: 200 ms of silence, last packet, gzip 41 bytes, with and without sequence −5."""
    silence = bytes(6400)
    assert f.audio_only_request(silence, last=True)[:8] == bytes.fromhex("11220100 00000029")
    assert f.audio_only_request(silence, last=True, sequence=-5)[:12] == \
        bytes.fromhex("11230100 fffffffb 00000029")
    assert f.audio_only_request(silence, last=True, compress=False) == \
        bytes.fromhex("11220000 00001900") + silence


def test_audio_header_variants_of_the_sauc_table() -> None:
    """§4.3's header table (gzip, raw serialization)."""
    assert f.audio_only_request(b"x")[:4] == bytes.fromhex("11200100")
    assert f.audio_only_request(b"x", sequence=2)[:8] == bytes.fromhex("11210100 00000002")
    assert f.audio_only_request(b"x", last=True)[:4] == bytes.fromhex("11220100")
    assert f.audio_only_request(b"x", sequence=-3, last=True)[:8] == \
        bytes.fromhex("11230100 fffffffd")
    assert f.full_client_request({}, sequence=1)[:8] == bytes.fromhex("11111100 00000001")


def test_v3_tts_event_frames_match_the_worked_bytes() -> None:
    """§3.6: StartConnection (14 bytes) and FinishSession with a 12-byte session id."""
    start = f.encode(Frame(MessageType.FULL_CLIENT_REQUEST, b"{}", Serialization.JSON,
                           event=Event.START_CONNECTION))
    assert start == bytes.fromhex("11141000 00000001 00000002 7b7d")
    finish = f.encode(Frame(MessageType.FULL_CLIENT_REQUEST, b"{}", Serialization.JSON,
                            event=Event.FINISH_SESSION, session_id="nxckjoejnkeg"))
    assert finish == bytes.fromhex("11141000 00000066 0000000c") + b"nxckjoejnkeg" + \
        bytes.fromhex("00000002 7b7d")
    decoded = f.decode(finish)
    assert (decoded.event, decoded.session_id, decoded.connection_id) == (102, "nxckjoejnkeg", None)


def test_server_frames_of_the_notes_decode() -> None:
    """§2.7's TTS audio chunks, §3.2's TTSResponse and ConnectionStarted, §4.5's error header."""
    chunk = f.decode(bytes.fromhex("11b10000 00000001 00000fa0") + bytes(4000))
    assert (chunk.type, chunk.sequence, chunk.last, len(chunk.payload)) == \
        (MessageType.AUDIO_ONLY_RESPONSE, 1, False, 4000)
    last = f.decode(bytes.fromhex("11b30000 fffffffe 00000000"))
    assert last.sequence == -2 and last.last and last.is_last and last.payload == b""
    tts = f.decode(bytes.fromhex("11b40000 00000160 00000003") + b"sid" +
                   bytes.fromhex("00000002") + b"\x01\x02")
    assert (tts.event, tts.session_id, tts.payload) == (Event.TTS_RESPONSE, "sid", b"\x01\x02")
    started = f.decode(bytes.fromhex("11941000 00000032 00000004") + b"conn" +
                       bytes.fromhex("00000002") + b"{}")
    assert (started.event, started.connection_id, started.session_id) == (50, "conn", None)
    body = b'{"error":"invalid request"}'
    err = f.decode(bytes.fromhex("11f01000") + struct.pack(">II", 45000001, len(body)) + body)
    assert (err.type, err.error_code, err.error_message) == \
        (MessageType.ERROR, 45000001, "invalid request")
    assert f.error_frame(45000001, "invalid request", json_body=True) == \
        bytes.fromhex("11f01000") + struct.pack(">II", 45000001, len(body)) + body


def test_error_message_text_forms() -> None:
    def message(payload: bytes) -> str:
        return Frame(MessageType.ERROR, payload, error_code=1).error_message

    assert message(b"quota exceeded for types: concurrency") == \
        "quota exceeded for types: concurrency"
    assert message(b'{"reqid":"x","code":3003,"message":"quota exceeded"}') == "quota exceeded"
    assert message(b"\xff\xfe bad\n\nbytes") == "\ufffd\ufffd bad bytes"
    assert len(message(b"x" * 5000)) == 500


def test_v1_tts_reading_of_negative_sequences() -> None:
    """The v1 TTS demo decides "done" by sequence < 0, even with flags 0b0001."""
    frame = f.decode(bytes.fromhex("11b10000 ffffffff 00000000"))
    assert not frame.last and frame.is_last


V1 = f.Dialect.TTS_V1


@pytest.mark.parametrize("flags", [0b0010, 0b0011])
def test_v1_tts_last_audio_carries_a_sequence_for_any_nonzero_flags(flags: int) -> None:
    """The reference client reads a sequence and a size after every non-zero flag value."""
    raw = bytes((0x11, 0xB0 | flags, 0, 0)) + struct.pack(">iI", -2, 3) + b"mp3"
    frame = f.decode(raw, dialect=V1)
    assert frame.sequence == -2 and frame.payload == b"mp3" and frame.is_last
    if flags == 0b0010:  # read the standard way, the sequence is taken for the size
        with pytest.raises(PayloadTooLargeError):
            f.decode(raw)


def test_v1_tts_sequence_sign_decides_the_end() -> None:
    raw = bytes.fromhex("11b20000") + struct.pack(">iI", 5, 2) + b"ab"
    frame = f.decode(raw, dialect=V1)
    assert frame.sequence == 5 and not frame.is_last and frame.payload == b"ab"


def test_v1_tts_bare_ack_and_frontend_and_gzipped_error() -> None:
    ack = f.decode(bytes.fromhex("11b00000"), dialect=V1)
    assert ack.type is MessageType.AUDIO_ONLY_RESPONSE and ack.payload == b""
    assert ack.sequence is None and not ack.is_last
    with pytest.raises(TruncatedFrameError):
        f.decode(bytes.fromhex("11b00000"))  # the standard reading wants a size
    doc = gzip.compress(b'{"phonemes":[]}')
    front = f.decode(bytes.fromhex("11c11100") + struct.pack(">I", len(doc)) + doc, dialect=V1)
    assert front.type is MessageType.FRONTEND_RESPONSE and front.json() == {"phonemes": []}
    msg = gzip.compress(b"voice does not exist")
    err = f.decode(bytes.fromhex("11f01100") + struct.pack(">II", 3050, len(msg)) + msg,
                   dialect=V1)
    assert err.error_code == 3050 and err.error_message == "voice does not exist"


@settings(max_examples=300)
@given(st.binary(max_size=64))
def test_fuzz_v1_dialect_garbage_raises_only_frame_errors(data: bytes) -> None:
    try:
        f.decode(data, dialect=V1)
    except FrameError:
        pass


# --- round trips ----------------------------------------------------------------------------------


@pytest.mark.parametrize("frame", [
    Frame(MessageType.FULL_CLIENT_REQUEST, b'{"a":1}', Serialization.JSON, Compression.GZIP,
          sequence=1),
    Frame(MessageType.AUDIO_ONLY_REQUEST, bytes(range(256)), sequence=-7, last=True),
    Frame(MessageType.AUDIO_ONLY_REQUEST, b"", last=True, compression=Compression.GZIP),
    Frame(MessageType.FULL_SERVER_RESPONSE, "结果".encode(), Serialization.JSON, sequence=3),
    Frame(MessageType.FRONTEND_RESPONSE, b"{}", Serialization.JSON, Compression.GZIP),
    Frame(MessageType.ERROR, b"busy", Serialization.JSON, error_code=55000031),
    Frame(MessageType.ERROR, b"{}", Serialization.JSON, event=153, session_id="s", error_code=1),
    Frame(MessageType.FULL_SERVER_RESPONSE, b"{}", Serialization.JSON, event=52,
          connection_id="c-1"),
    Frame(MessageType.FULL_CLIENT_REQUEST, b"{}", Serialization.JSON, event=2),
    Frame(MessageType.AUDIO_ONLY_RESPONSE, b"\x00" * 9, event=352, session_id="会话"),
    Frame(MessageType.FULL_CLIENT_REQUEST, b"x", Serialization.CUSTOM, extension=b"\x01" * 8),
])
def test_round_trips(frame: Frame) -> None:
    data = f.encode(frame)
    assert f.decode(data) == frame
    assert f.frame_length(data) == len(data)
    assert f.encode(f.decode(data)) == data


def test_frame_repr_is_bounded() -> None:
    text = repr(Frame(MessageType.AUDIO_ONLY_REQUEST, bytes(100_000), sequence=2))
    assert "AUDIO_ONLY_REQUEST" in text and "100000 bytes" in text and len(text) < 300


# --- split input ----------------------------------------------------------------------------------


def _stream() -> tuple[bytes, list[Frame]]:
    frames = [Frame(MessageType.FULL_CLIENT_REQUEST, b'{"x":2}', Serialization.JSON,
                    Compression.GZIP, sequence=1),
              Frame(MessageType.AUDIO_ONLY_REQUEST, bytes(3000), sequence=2),
              Frame(MessageType.AUDIO_ONLY_RESPONSE, b"ab", event=352, session_id="s1"),
              Frame(MessageType.AUDIO_ONLY_REQUEST, b"", sequence=-3, last=True)]
    return b"".join(f.encode(x) for x in frames), frames


@pytest.mark.parametrize("step", [1, 3, 4, 7, 100, 5000])
def test_decoder_reassembles_input_split_anywhere(step: int) -> None:
    data, frames = _stream()
    decoder = Decoder()
    out: list[Frame] = []
    for i in range(0, len(data), step):
        out += decoder.feed(data[i:i + step])
    decoder.close()
    assert out == frames and decoder.pending == 0


def test_partial_input_is_truncated_everywhere() -> None:
    data = f.encode(Frame(MessageType.FULL_SERVER_RESPONSE, b"{}", Serialization.JSON,
                          event=150, session_id="abc"))
    for n in range(len(data)):
        with pytest.raises(TruncatedFrameError):
            f.decode(data[:n])
        assert f.frame_length(data[:n]) in (None, len(data))
    decoder = Decoder()
    assert decoder.feed(data[:-1]) == [] and decoder.pending == len(data) - 1
    with pytest.raises(TruncatedFrameError):
        decoder.close()
    with pytest.raises(DecoderFailedError):
        decoder.feed(b"")


def test_decoder_failure_keeps_earlier_frames_and_refuses_more() -> None:
    good = f.audio_only_request(b"abcd", compress=False)
    decoder = Decoder()
    with pytest.raises(UnsupportedVersionError) as info:
        decoder.feed(good + b"\x21" + good[1:])
    assert [x.payload for x in info.value.decoded] == [b"abcd"]
    with pytest.raises(DecoderFailedError):
        decoder.feed(good)


# --- every defect ---------------------------------------------------------------------------------


def _raw(head: str, rest: bytes = b"") -> bytes:
    return bytes.fromhex(head) + rest


@pytest.mark.parametrize(("data", "error"), [
    (b"\x11\x10", TruncatedFrameError),
    (_raw("11100000 000000"), TruncatedFrameError),
    (_raw("11100000 00000005") + b"abc", TruncatedFrameError),
    (_raw("11110000 0000"), TruncatedFrameError),
    (_raw("12100000 0000"), TruncatedFrameError),  # header extension cut short
    (_raw("11100000 00000001") + b"ab", TrailingDataError),
    (_raw("21100000 00000000"), UnsupportedVersionError),
    (_raw("01100000 00000000"), UnsupportedVersionError),
    (_raw("10100000 00000000"), InvalidHeaderSizeError),
    (_raw("1f100000 00000000"), InvalidHeaderSizeError),
    (_raw("11300000 00000000"), UnknownMessageTypeError),
    (_raw("11000000 00000000"), UnknownMessageTypeError),
    (_raw("11180000 00000000"), InvalidFlagsError),
    (_raw("11f11000 00000001 00000001 00000000"), InvalidFlagsError),
    (_raw("11102000 00000000"), UnknownSerializationError),
    (_raw("11100200 00000000"), UnknownCompressionError),
    (_raw("11101100 00000003") + b"abc", CompressionError),
    (_raw("11101100 00000012") + gzip.compress(b"{}", mtime=0)[:-4], CompressionError),
    (_raw("11141000 00000064") + struct.pack(">I", 2000), IdTooLongError),
    (_raw("11141000 00000064 00000002") + b"\xff\xfe" + _raw("00000000"), InvalidIdError),
    (_raw("11941000 00000033 00000001") + b"\x80" + _raw("00000000"), InvalidIdError),
])
def test_each_defect_has_its_named_error(data: bytes, error: type[FrameError]) -> None:
    with pytest.raises(error):
        f.decode(data)


def test_reserved_byte_is_not_checked() -> None:
    """§5 #5: real servers are not known to check it; encoding always writes 0."""
    assert f.decode(_raw("1110100f 00000000")) == Frame(MessageType.FULL_CLIENT_REQUEST,
                                                        serialization=Serialization.JSON)


def test_gzip_with_trailing_junk_and_bombs() -> None:
    body = gzip.compress(b"{}", mtime=0) + b"junk"
    with pytest.raises(CompressionError, match="follow the gzip stream"):
        f.decode(_raw("11101100") + struct.pack(">I", len(body)) + body)
    bomb = gzip.compress(bytes(2_000_000), mtime=0)
    with pytest.raises(PayloadTooLargeError, match="inflates"):
        f.decode(_raw("11201100") + struct.pack(">I", len(bomb)) + bomb, max_payload=1_000_000)
    with pytest.raises(PayloadTooLargeError, match="exceeds"):
        f.decode(_raw("11200000") + struct.pack(">I", 2_000_000), max_payload=1_000_000)
    with pytest.raises(PayloadTooLargeError):
        Decoder(max_payload=10).feed(_raw("11200000") + struct.pack(">I", 11))


def test_json_is_parsed_on_demand() -> None:
    frame = f.decode(f.audio_only_request(b"\x00\x01", compress=False))
    with pytest.raises(InvalidJSONError):
        frame.json()
    assert f.decode(f.full_client_request({"k": "值"})).json() == {"k": "值"}


@pytest.mark.parametrize("frame", [
    Frame(MessageType.AUDIO_ONLY_REQUEST, sequence=3, last=True),
    Frame(MessageType.AUDIO_ONLY_REQUEST, sequence=0),
    Frame(MessageType.AUDIO_ONLY_REQUEST, sequence=-1),
    Frame(MessageType.ERROR, b"", error_code=None),
    Frame(MessageType.FULL_SERVER_RESPONSE, error_code=4),
    Frame(MessageType.ERROR, sequence=1, error_code=1),
    Frame(MessageType.FULL_CLIENT_REQUEST, session_id="s"),
    Frame(MessageType.FULL_CLIENT_REQUEST, event=1, session_id="s"),
    Frame(MessageType.FULL_SERVER_RESPONSE, event=50, session_id="s"),
    Frame(MessageType.FULL_CLIENT_REQUEST, event=100, connection_id="c"),
    Frame(MessageType.FULL_CLIENT_REQUEST, event=100, session_id="x" * 1025),
    Frame(MessageType.FULL_CLIENT_REQUEST, event=100, session_id="\ud800"),
    Frame(MessageType.AUDIO_ONLY_REQUEST, sequence=2 ** 31),
    Frame(MessageType.FULL_CLIENT_REQUEST, event=2 ** 40),
    Frame(MessageType.FULL_CLIENT_REQUEST, extension=b"\x00\x00"),
])
def test_encoder_refuses_inconsistent_frames(frame: Frame) -> None:
    with pytest.raises(EncodeError):
        f.encode(frame)


def test_unchecked_encoding_forges_what_the_checks_refuse() -> None:
    bad = f.encode(Frame(MessageType.AUDIO_ONLY_REQUEST, sequence=4, last=True), check=False)
    assert bad[:8] == bytes.fromhex("11230000 00000004")
    assert f.decode(bad).sequence == 4  # the decoder reports it; the protocol layer judges it


# --- fuzzing --------------------------------------------------------------------------------------

ids = st.text(max_size=12)
valid_frames = st.one_of(
    st.builds(lambda t, p, s, c, seq: Frame(t, p, s, c, sequence=seq),
              st.sampled_from([MessageType.FULL_CLIENT_REQUEST, MessageType.AUDIO_ONLY_REQUEST,
                               MessageType.FULL_SERVER_RESPONSE, MessageType.AUDIO_ONLY_RESPONSE,
                               MessageType.FRONTEND_RESPONSE]),
              st.binary(max_size=300), st.sampled_from(list(Serialization)),
              st.sampled_from(list(Compression)),
              st.one_of(st.none(), st.integers(1, 2 ** 31 - 1))),
    st.builds(lambda p, seq, c: Frame(MessageType.AUDIO_ONLY_REQUEST, p, compression=c,
                                      sequence=seq, last=True),
              st.binary(max_size=300), st.one_of(st.none(), st.integers(-2 ** 31, -1)),
              st.sampled_from(list(Compression))),
    st.builds(lambda code, p: Frame(MessageType.ERROR, p, Serialization.JSON, error_code=code),
              st.integers(0, 2 ** 32 - 1), st.binary(max_size=100)),
    st.builds(lambda ev, sid, p: Frame(MessageType.FULL_CLIENT_REQUEST, p, Serialization.JSON,
                                       event=ev, session_id=sid),
              st.sampled_from([100, 101, 102, 200, 350, 9999]), ids, st.binary(max_size=50)),
    st.builds(lambda ev, cid: Frame(MessageType.FULL_SERVER_RESPONSE, b"{}", Serialization.JSON,
                                    event=ev, connection_id=cid),
              st.sampled_from([50, 51, 52]), ids),
)


@given(valid_frames)
def test_fuzz_round_trip(frame: Frame) -> None:
    data = f.encode(frame)
    assert f.decode(data) == frame
    assert f.frame_length(data) == len(data)


@given(st.lists(valid_frames, min_size=1, max_size=5), st.data())
def test_fuzz_split_stream(frames_: list[Frame], data: st.DataObject) -> None:
    blob = b"".join(f.encode(x) for x in frames_)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(blob)), max_size=6)))
    decoder = Decoder()
    out: list[Frame] = []
    prev = 0
    for cut in [*cuts, len(blob)]:
        out += decoder.feed(blob[prev:cut])
        prev = cut
    decoder.close()
    assert out == frames_


@settings(max_examples=300)
@given(st.binary(max_size=64))
def test_fuzz_garbage_raises_only_frame_errors(data: bytes) -> None:
    try:
        f.decode(data)
    except FrameError:
        pass
    try:
        Decoder().feed(data)
    except FrameError:
        pass


@given(valid_frames, st.data())
def test_fuzz_mutated_frames_raise_only_frame_errors(frame: Frame, data: st.DataObject) -> None:
    raw = bytearray(f.encode(frame))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    for blob in (bytes(raw), bytes(raw[:cut]), bytes(raw) + bytes(raw[:cut])):
        try:
            f.decode(blob)
        except FrameError:
            pass
        decoder = Decoder()
        try:
            decoder.feed(blob)
            decoder.close()
        except FrameError:
            pass
