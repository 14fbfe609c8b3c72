"""Exact output of every transcript format, and the SSE wire helpers (pure, no Redis)."""

from __future__ import annotations

import math

import pytest

from api import sse
from api import transcript_formats as tf
from voxq.errors import InvalidInput
from voxq.records import Transcript, Word


def seg(text: str, start: float, end: float, channel: int = 0, seq: int | None = None,
        speaker: str | None = None, words: tuple[Word, ...] = ()) -> Transcript:
    return Transcript(text=text, is_final=True, start=start, end=end, channel=channel,
                      speaker=speaker, seq=seq, words=words)


CALL = [
    seg("Thanks for calling, how can I help?", 0.0, 1.234, channel=0, seq=0),
    seg("My  internet\nis down.", 1.5, 3.0, channel=1, seq=1),
    seg("   ", 3.0, 3.1, channel=0, seq=2),  # nothing said: no line, no cue
    seg("Let me check <that> & see --> ok", 3723.456, 3725.0, channel=0, seq=3),
]


@pytest.mark.parametrize(("seconds", "sep", "expected"), [
    (0.0, ",", "00:00:00,000"),
    (1.234, ",", "00:00:01,234"),
    (1.234, ".", "00:00:01.234"),
    (59.9996, ".", "00:01:00.000"),
    (3723.456, ",", "01:02:03,456"),
    (360001.5, ".", "100:00:01.500"),
    (-2.0, ",", "00:00:00,000"),
    (math.nan, ",", "00:00:00,000"),
    (math.inf, ".", "00:00:00.000"),
])
def test_timestamp(seconds: float, sep: str, expected: str) -> None:
    assert tf.timestamp(seconds, sep) == expected


def test_txt_two_channels_labels_agent_and_customer() -> None:
    assert tf.to_txt(CALL, channels=2) == (
        "[agent] Thanks for calling, how can I help?\n"
        "[customer] My internet is down.\n"
        "[agent] Let me check <that> & see --> ok\n"
    )


def test_txt_mono_has_no_channel_labels_but_speaker_labels() -> None:
    mono = [seg("hello there", 0, 1), seg("hi", 1, 2, speaker="spk_1")]
    assert tf.to_txt(mono, channels=1) == "hello there\n[spk_1] hi\n"


def test_txt_empty() -> None:
    assert tf.to_txt([], channels=2) == ""


def test_srt_exact() -> None:
    assert tf.to_srt(CALL, channels=2) == (
        "1\n"
        "00:00:00,000 --> 00:00:01,234\n"
        "[agent] Thanks for calling, how can I help?\n"
        "\n"
        "2\n"
        "00:00:01,500 --> 00:00:03,000\n"
        "[customer] My internet is down.\n"
        "\n"
        "3\n"
        "01:02:03,456 --> 01:02:05,000\n"
        "[agent] Let me check <that> & see -> ok\n"
        "\n"
    )


def test_vtt_exact() -> None:
    assert tf.to_vtt(CALL, channels=2) == (
        "WEBVTT\n"
        "\n"
        "1\n"
        "00:00:00.000 --> 00:00:01.234\n"
        "<v agent>Thanks for calling, how can I help?\n"
        "\n"
        "2\n"
        "00:00:01.500 --> 00:00:03.000\n"
        "<v customer>My internet is down.\n"
        "\n"
        "3\n"
        "01:02:03.456 --> 01:02:05.000\n"
        "<v agent>Let me check &lt;that&gt; &amp; see --&gt; ok\n"
        "\n"
    )


def test_vtt_mono_without_labels_and_empty() -> None:
    assert tf.to_vtt([seg("a", 0.25, 0.5)], channels=1) == (
        "WEBVTT\n\n1\n00:00:00.250 --> 00:00:00.500\na\n\n")
    assert tf.to_vtt([], channels=1) == "WEBVTT\n\n"


def test_cue_end_never_before_start() -> None:
    assert "00:00:02,000 --> 00:00:02,000" in tf.to_srt([seg("x", 2.0, 1.0)], channels=1)


def test_unknown_channel_gets_a_generic_label() -> None:
    assert tf.to_txt([seg("x", 0, 1, channel=3)], channels=2) == "[ch3] x\n"


def test_segment_dict_shape_and_seq_fallback() -> None:
    w = Word(text="hi", start=0.1, end=0.4, confidence=0.9)
    assert tf.segment_dict(seg("hi", 0.1, 0.4, channel=1, speaker="s", words=(w,), seq=7), 0) == {
        "seq": 7, "text": "hi", "start": 0.1, "end": 0.4, "channel": 1, "speaker": "s",
        "words": [{"text": "hi", "start": 0.1, "end": 0.4, "confidence": 0.9, "speaker": None}],
    }
    assert tf.segment_dict(seg("hi", 0, 1), 5)["seq"] == 5


def test_render_text_dispatch() -> None:
    assert tf.render_text(tf.Format.TXT, CALL[:1], 1) == "Thanks for calling, how can I help?\n"
    assert tf.render_text(tf.Format.SRT, CALL[:1], 1).startswith("1\n00:00:00,000 --> ")
    assert tf.render_text(tf.Format.VTT, CALL[:1], 1).startswith("WEBVTT\n\n1\n")
    with pytest.raises(ValueError):
        tf.render_text(tf.Format.JSON, CALL, 1)


# --- SSE helpers ----------------------------------------------------------------------------

def test_sse_message_and_comment() -> None:
    assert sse.message("final", '{"a":1}', "1-0;2-0") == (
        'id: 1-0;2-0\nevent: final\ndata: {"a":1}\n\n')
    assert sse.message("x", "l1\nl2") == "event: x\ndata: l1\ndata: l2\n\n"
    assert sse.comment() == ": keep-alive\n\n"


def test_cursor_round_trip_and_advance() -> None:
    c = sse.Cursor.parse("1712000000000-3;1712000000001-0")
    assert (c.final, c.partial) == ("1712000000000-3", "1712000000001-0")
    assert c.event_id == "1712000000000-3;1712000000001-0"
    assert c.advanced("final", "9-9").event_id == "9-9;1712000000001-0"
    assert c.advanced("partial", "9-9").event_id == "1712000000000-3;9-9"


@pytest.mark.parametrize("raw", ["", "1-0", "1-0;", "a-0;1-0", "1-0;1-0;1-0", "1-0;1-0\nx",
                                 "$;$", "+;-", "1" * 30 + "-0;1-0"])
def test_cursor_rejects_malformed_ids(raw: str) -> None:
    with pytest.raises(InvalidInput):
        sse.Cursor.parse(raw)


def test_stream_id_key_orders_numerically() -> None:
    ids = ["10-0", "9-5", "9-10", "100-0"]
    assert sorted(ids, key=sse.stream_id_key) == ["9-5", "9-10", "10-0", "100-0"]
