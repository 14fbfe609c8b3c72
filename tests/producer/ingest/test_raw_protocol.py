"""The raw dialect's pure parts: query and first-frame configuration, end markers, conversion."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from producer.ingest.core import Rejected
from producer.ingest.raw_protocol import (
    RawConfig,
    SampleFormat,
    TextKind,
    apply_config,
    config_from_query,
    parse_text,
    to_bus_pcm,
)


def test_defaults_are_the_seed_clients() -> None:
    cfg = config_from_query({})
    assert (cfg.fmt, cfg.rate, cfg.channels, cfg.vendor, cfg.results, cfg.resume) == \
        (SampleFormat.F32, 16000, 1, "local", False, False)


def test_query_fields() -> None:
    cfg = config_from_query({"session": ["a"], "format": ["s16le"], "rate": ["8000"],
                             "channels": ["2"], "results": ["1"], "resume": ["true"],
                             "option": ["k=1", "s=x"], "language": ["de-DE"]})
    assert cfg == RawConfig("a", SampleFormat.S16, 8000, 2, "local", "de-DE",
                            {"k": 1, "s": "x"}, True, True)


@pytest.mark.parametrize("q", [{"rate": ["x"]}, {"rate": ["100000"]}, {"channels": ["0"]},
                               {"format": ["mp3"]}, {"results": ["maybe"]}, {"option": ["k"]}])
def test_bad_query_is_rejected(q: dict[str, list[str]]) -> None:
    with pytest.raises(Rejected):
        config_from_query(q)


@pytest.mark.parametrize("text", ["Done", " Done\n", '{"eof" : 1}', '{"eof": true}'])
def test_end_markers(text: str) -> None:
    assert parse_text(text)[0] is TextKind.END


def test_vosk_and_voxq_configs() -> None:
    kind, d = parse_text('{"config": {"sample_rate": 8000, "words": true}}')
    assert kind is TextKind.CONFIG
    cfg = apply_config(RawConfig(), d)
    assert (cfg.fmt, cfg.rate) == (SampleFormat.S16, 8000)  # vosk clients send int16
    cfg = apply_config(cfg, {"format": "f32", "rate": 48000, "channels": 2, "session": "s",
                             "options": {"a": 1}})
    assert (cfg.fmt, cfg.rate, cfg.channels, cfg.session, cfg.options) == \
        (SampleFormat.F32, 48000, 2, "s", {"a": 1})


@pytest.mark.parametrize("d", [{"rate": "fast"}, {"channels": 5}, {"options": []},
                               {"session": 3}, {"format": "opus"}])
def test_bad_config_frames(d: dict[str, object]) -> None:
    with pytest.raises(Rejected):
        apply_config(RawConfig(), d)


def test_f32_conversion_clips_and_rounds() -> None:
    x = np.array([0.0, 1.0, -1.0, 2.0, -2.0, 0.25], "<f4")
    got = np.frombuffer(to_bus_pcm(x.tobytes(), RawConfig()), "<i2")
    assert list(got) == [0, 32767, -32768, 32767, -32768, 8192]


@given(st.binary(max_size=4096), st.sampled_from(list(SampleFormat)), st.sampled_from([1, 2]))
def test_any_frame_converts_or_is_rejected(data: bytes, fmt: SampleFormat, channels: int) -> None:
    cfg = RawConfig(fmt=fmt, channels=channels)
    try:
        out = to_bus_pcm(data, cfg)
    except Rejected as e:
        assert e.code in (1007,)
        return
    assert len(out) == len(data) // fmt.width * 2
    assert len(out) % (2 * channels) == 0


@given(st.text(max_size=300))
def test_any_text_is_end_config_or_rejected(text: str) -> None:
    try:
        kind, d = parse_text(text)
    except Rejected:
        return
    if kind is TextKind.CONFIG:
        try:
            apply_config(RawConfig(), d)
        except Rejected:
            pass
