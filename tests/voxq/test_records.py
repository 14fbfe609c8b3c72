"""Record codecs: meta, chunks and transcripts survive the bus; malformed ones are refused."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voxq.errors import InvalidInput, MalformedRecord
from voxq.records import (
    Chunk,
    SessionMeta,
    Status,
    Transcript,
    Word,
    decode_chunk,
    decode_transcript,
    encode_chunk,
    encode_eos,
    encode_transcript,
)


def _as_redis(fields: dict) -> dict[bytes, bytes]:  # type: ignore[type-arg]
    return {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in fields.items()}


def test_meta_round_trip() -> None:
    m = SessionMeta(session_id="c-1", vendor="aws", language="es-US", rate=8000, channels=2,
                    chunk_ms=40, created=12.5, status=Status.ACTIVE,
                    options={"vocabulary_name": "v", "show_speaker_label": True})
    assert SessionMeta.from_hash(_as_redis(m.to_hash())) == m


@pytest.mark.parametrize("kw", [dict(rate=7999), dict(rate=48001), dict(channels=3),
                                dict(chunk_ms=10), dict(chunk_ms=250), dict(vendor=""),
                                dict(session_id="bad id")])
def test_meta_refuses_bad_format(kw: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(InvalidInput):
        SessionMeta(**{"session_id": "ok", **kw})


def test_meta_from_malformed_hash() -> None:
    with pytest.raises(MalformedRecord):
        SessionMeta.from_hash({b"id": b"x", b"rate": b"fast"})
    with pytest.raises(MalformedRecord):
        SessionMeta.from_hash({})
    with pytest.raises(MalformedRecord):
        SessionMeta.from_hash({b"rate": b"16000"})


@given(st.dictionaries(st.sampled_from(["id", "rate", "channels", "chunk_ms", "created", "status",
                                        "options", "epoch", "checkpoint", "finals",
                                        "bad_chunks", "vendor", "language"]),
                       st.binary(max_size=20)))
def test_garbage_meta_raises_only_malformed_record(fields: dict) -> None:  # type: ignore[type-arg]
    try:
        SessionMeta.from_hash({k.encode(): v for k, v in fields.items()})
    except MalformedRecord:
        pass


@pytest.mark.parametrize(("field", "value", "said"), [
    ("options", b"{not json", "options"), ("options", b"[1]", "options"),
    ("checkpoint", b"zz", "checkpoint"), ("finals", b"many", "finals"),
    ("status", b"weird", "status"), ("rate", b"fast", "rate")])
def test_malformed_meta_field_is_named(field: str, value: bytes, said: str) -> None:
    h = _as_redis(SessionMeta(session_id="m").to_hash())
    h[field.encode()] = value
    with pytest.raises(MalformedRecord, match=said):
        SessionMeta.from_hash(h)


def test_chunk_larger_than_200ms_of_the_session_is_refused() -> None:
    m = SessionMeta(session_id="c", rate=8000, channels=2)
    assert m.max_chunk_bytes == 6400
    assert encode_chunk(0, b"\0" * 6400, m.max_chunk_bytes)["pcm"] == b"\0" * 6400
    with pytest.raises(InvalidInput, match="6401 bytes"):
        encode_chunk(1, b"\0" * 6401, m.max_chunk_bytes)


def test_chunk_and_eos() -> None:
    assert decode_chunk(_as_redis(encode_chunk(7, b"\x01\x02"))) == Chunk(7, b"\x01\x02")
    assert decode_chunk(_as_redis(encode_eos(9))) == Chunk(9, eos=True)
    for bad in ({b"seq": b"x", b"pcm": b""}, {b"pcm": b"\0\0"}, {b"seq": b"1"}):
        with pytest.raises(MalformedRecord):
            decode_chunk(bad)


words = st.builds(Word, text=st.text(min_size=1, max_size=10),
                  start=st.floats(0, 1e5).map(lambda x: round(x, 3)),
                  end=st.floats(0, 1e5).map(lambda x: round(x, 3)),
                  confidence=st.none() | st.floats(0, 1).map(lambda x: round(x, 3)),
                  speaker=st.none() | st.sampled_from(["spk_0", "spk_1"]))


@given(st.builds(Transcript, text=st.text(max_size=50), is_final=st.booleans(),
                 start=st.floats(0, 1e5).map(lambda x: round(x, 3)),
                 end=st.floats(0, 1e5).map(lambda x: round(x, 3)),
                 channel=st.integers(0, 1), speaker=st.none() | st.text(max_size=5),
                 words=st.lists(words, max_size=5).map(tuple),
                 result_id=st.none() | st.text(max_size=8),
                 seq=st.none() | st.integers(0, 10**6)))
def test_transcript_round_trip(t: Transcript) -> None:
    assert decode_transcript(_as_redis(encode_transcript(t))) == t


@given(st.dictionaries(st.sampled_from(["text", "start", "end", "ch", "final", "words", "seq"]),
                       st.binary(max_size=20)))
def test_garbage_transcript_entries_raise_only_malformed_record(fields: dict) -> None:  # type: ignore[type-arg]
    try:
        decode_transcript({k.encode(): v for k, v in fields.items()})
    except MalformedRecord:
        pass


def test_shift_moves_every_time() -> None:
    t = Transcript("a b", True, 1.0, 2.0, words=(Word("a", 1.0, 1.5), Word("b", 1.5, 2.0)))
    s = t.shifted(10)
    assert (s.start, s.end, s.words[1].end) == (11.0, 12.0, 12.0)


def test_webhook_finals_round_trip_and_need_a_webhook() -> None:
    meta = SessionMeta(session_id="w1", webhook="https://crm.example/hook", webhook_finals=True)
    back = SessionMeta.from_hash({k.encode(): v.encode() for k, v in meta.to_hash().items()})
    assert back.webhook_finals and back.webhook == "https://crm.example/hook"
    assert "webhook_finals" not in SessionMeta(session_id="w2").to_hash()
    with pytest.raises(InvalidInput, match="webhook finals need a webhook URL"):
        SessionMeta(session_id="w3", webhook_finals=True)


def test_a_stored_record_is_never_the_callers_mistake() -> None:
    """MalformedRecord and InvalidInput are siblings: code that answers a caller's mistake
    (4xx) never catches a stored record nobody can read, and the reverse."""
    assert not issubclass(MalformedRecord, InvalidInput)
    assert not issubclass(InvalidInput, MalformedRecord)
    with pytest.raises(MalformedRecord) as e:
        SessionMeta.from_hash({b"id": b"m", b"channels": b"7"})
    assert not isinstance(e.value, InvalidInput) and "channels" in str(e.value)
