"""AudioHook's pure parts: durations, offer choice, seq/serverseq/id checks (fuzzed), frames."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from producer.ingest.audiohook_protocol import (
    Conversation,
    MediaFormat,
    choose_media,
    parse_duration,
    to_bus,
)
from producer.ingest.core import Rejected


@pytest.mark.parametrize(("text", "seconds"), [("PT0S", 0.0), ("PT12.34S", 12.34),
                                               ("PT1M2S", 62.0), ("PT1H", 3600.0)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["PT", "12S", "PT-1S", "P1D", None, 5])
def test_bad_durations(text: object) -> None:
    with pytest.raises(Rejected):
        parse_duration(text)


def test_offer_choice() -> None:
    mono = {"type": "audio", "format": "PCMU", "rate": 8000, "channels": ["external"]}
    l16 = {"type": "audio", "format": "L16", "rate": 8000, "channels": ["external", "internal"]}
    pcmu = {"type": "audio", "format": "PCMU", "rate": 8000, "channels": ["external", "internal"]}
    assert choose_media([mono, l16, pcmu]).as_offer() == pcmu
    assert choose_media([mono]).channels == ("external",)
    with pytest.raises(Rejected):
        choose_media([{"type": "audio", "format": "opus", "rate": 48000, "channels": ["external"]}])


def msg(conv: Conversation, type_: str, **over: object) -> str:
    d = {"version": "2", "id": conv.session_id, "type": type_, "seq": conv.client_seq + 1,
         "serverseq": conv.server_seq, "position": "PT0S", "parameters": {}}
    d.update(over)
    return json.dumps(d)


def test_sequence_checks() -> None:
    c = Conversation("s")
    with pytest.raises(Rejected, match="before open"):
        c.parse(msg(c, "ping"))
    c = Conversation("s")
    c.parse(msg(c, "open"))
    c.open({"conversationId": "x", "media": [{"type": "audio", "format": "PCMU", "rate": 8000,
                                               "channels": ["external", "internal"]}]})
    out = json.loads(c.message("opened"))
    assert (out["seq"], out["clientseq"]) == (1, 1)
    c.parse(msg(c, "ping", serverseq=1))
    with pytest.raises(Rejected, match="serverseq"):
        c.parse(msg(c, "ping", serverseq=2))
    with pytest.raises(Rejected, match="seq"):
        c.parse(msg(c, "ping", seq=9))
    with pytest.raises(Rejected, match="id"):
        c.parse(msg(c, "ping", id="other"))
    with pytest.raises(Rejected, match="64 KiB"):
        c.parse(msg(c, "ping", parameters={"x": "y" * 70000}))


def test_frames_and_channel_order() -> None:
    c = Conversation("s")
    c.parse(msg(c, "open"))
    c.open({"conversationId": "x", "media": [{"type": "audio", "format": "L16", "rate": 8000,
                                               "channels": ["external", "internal"]}]})
    frames = c.audio(np.array([1, 2, 3, 4], "<i2").tobytes())
    assert np.frombuffer(to_bus(frames, ("external", "internal")), "<i2").tolist() == [2, 1, 4, 3]
    with pytest.raises(Rejected):
        c.audio(b"\0" * 6)  # not whole stereo L16 frames
    assert MediaFormat("PCMU", 8000, ("external", "internal")).frame_bytes == 2


@given(st.text(max_size=300))
def test_any_text_parses_or_is_rejected(text: str) -> None:
    c = Conversation("s")
    try:
        c.parse(text)
    except Rejected:
        pass
