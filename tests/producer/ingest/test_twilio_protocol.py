"""Twilio's pure parts: message parsing and order checks (fuzzed), μ-law decoding, the track
aligner (gaps are silence, audio never shifts, bounded lag)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from producer.ingest.core import Rejected
from producer.ingest.twilio_protocol import (
    Event,
    StreamState,
    TrackAligner,
    mulaw_to_s16,
    parse,
    session_spec_fields,
)
from tests.emulators.twilio_media import ulaw_encode
from voxq.audio import MULAW_TO_FLOAT


def test_mulaw_matches_the_core_table_and_round_trips() -> None:
    assert (mulaw_to_s16(bytes(range(256))) == np.rint(MULAW_TO_FLOAT * 32768).clip(-32768, 32767)).all()
    x = (np.sin(np.arange(800) / 9) * 20000).astype("<i2")
    y = mulaw_to_s16(ulaw_encode(x.tobytes()))
    assert np.max(np.abs(y.astype(int) - x)) <= 700  # μ-law's step at that level


def col(n: int, v: int) -> np.ndarray:
    return np.full(n, v, "<i2")


def test_aligner_interleaves_fills_gaps_and_never_shifts() -> None:
    a = TrackAligner(("inbound", "outbound"), max_lag=8000)
    out = a.add("inbound", 0, col(160, 1))
    assert out == b""  # waits for the other track
    out += a.add("outbound", 0, col(160, 2))
    out += a.add("inbound", 40, col(160, 3))      # inbound skipped 20-40 ms
    out += a.add("outbound", 20, col(160, 4))
    out += a.add("outbound", 40, col(160, 5))
    out += a.flush()
    st = np.frombuffer(out, "<i2").reshape(-1, 2)
    assert list(st[:, 1]) == [1] * 160 + [0] * 160 + [3] * 160     # customer (inbound) = ch 1
    assert list(st[:, 0]) == [2] * 160 + [4] * 160 + [5] * 160     # agent (outbound) = ch 0


def test_aligner_bounds_the_lag_of_a_silent_track() -> None:
    a = TrackAligner(("inbound", "outbound"), max_lag=320)
    out = b"".join(a.add("inbound", i * 20, col(160, 7)) for i in range(5))
    st = np.frombuffer(out, "<i2").reshape(-1, 2)
    assert len(st) == 800 - 320 and not st[:, 0].any()  # outbound taken as silent
    late = a.add("outbound", 0, col(160, 9))  # arrives after its place was emitted
    assert a.late_samples == 160 and late == b""


def test_aligner_overlap_is_counted_not_duplicated() -> None:
    a = TrackAligner(("inbound",), max_lag=8000)
    out = a.add("inbound", 0, col(160, 1)) + a.add("inbound", 10, col(160, 2))
    assert len(out) == (160 + 80) * 2 and a.late_samples == 80


START = {"event": "start", "sequenceNumber": "1", "streamSid": "MZ", "start": {
    "streamSid": "MZ", "callSid": "CA1", "accountSid": "AC", "tracks": ["inbound", "outbound"],
    "customParameters": {"session": "s1", "vendor": "local", "team": "b"},
    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}


def test_start_and_session_fields() -> None:
    m = parse(json.dumps(START))
    assert m.event is Event.START and m.start is not None
    assert session_spec_fields(m.start) == ("s1", {"vendor": "local"},
                                            {"callSid": "CA1", "streamSid": "MZ", "team": "b"})


def test_order_checks() -> None:
    s = StreamState()
    media = {"event": "media", "sequenceNumber": "2", "streamSid": "MZ",
             "media": {"track": "inbound", "chunk": "1", "timestamp": "0", "payload": "AA=="}}
    with pytest.raises(Rejected, match="before start"):
        s.accept(parse(json.dumps(media)))
    s = StreamState()
    s.accept(parse(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})))
    s.accept(parse(json.dumps(START)))
    s.accept(parse(json.dumps(media)))
    with pytest.raises(Rejected, match="sequenceNumber"):
        s.accept(parse(json.dumps(media)))
    s.accept(parse(json.dumps({"event": "stop", "sequenceNumber": "3", "streamSid": "MZ"})))
    with pytest.raises(Rejected, match="after stop"):
        s.accept(parse(json.dumps(media | {"sequenceNumber": "4"})))


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                     max_leaves=12)


@given(st.one_of(st.text(max_size=200), _json.map(json.dumps),
                 st.fixed_dictionaries({"event": st.sampled_from([e.value for e in Event])},
                                       optional={"sequenceNumber": _json, "streamSid": _json,
                                                 "media": _json, "start": _json}).map(json.dumps)))
def test_any_message_parses_or_is_rejected(text: str) -> None:
    s = StreamState()
    try:
        s.accept(parse(json.dumps(START)))
        s.accept(parse(text))
    except Rejected:
        pass
