"""The core's list of recognition vendors is the worker registry's, and fallback lists are
checked against it."""

from __future__ import annotations

import pytest

from voxq.errors import InvalidInput, MalformedRecord
from voxq.records import SessionMeta
from voxq.vendor_names import MAX_FALLBACKS, RECOGNITION_VENDORS, parse_fallback
from workers.vendors.registry import RECOGNIZERS


def test_core_names_equal_the_registry() -> None:
    assert set(RECOGNIZERS) == RECOGNITION_VENDORS


def test_fallback_parses_in_order() -> None:
    assert parse_fallback("aws, local", "deepgram") == ("aws", "local")
    assert parse_fallback(["voxq-ws"], "deepgram") == ("voxq-ws",)
    assert parse_fallback("", "deepgram") == ()


@pytest.mark.parametrize("raw, why", [
    ("aws,nope", "unknown fallback vendor 'nope'"),
    ("aws,aws", "repeat"),
    ("deepgram", "own vendor"),
    (",".join(sorted(RECOGNITION_VENDORS - {"deepgram"})[:MAX_FALLBACKS + 1]), "at most 4"),
])
def test_bad_fallback_is_refused_with_a_reason(raw: str, why: str) -> None:
    with pytest.raises(InvalidInput, match=why):
        SessionMeta("s", vendor="deepgram", fallback=raw)


def test_meta_round_trips_fallback_and_switch_state() -> None:
    m = SessionMeta("s", vendor="deepgram", fallback="aws,local", active_vendor="aws",
                    vendor_switches=1)
    back = SessionMeta.from_hash(m.to_hash())
    assert back.fallback == ("aws", "local") and back.active_vendor == "aws"
    assert back.vendor_switches == 1 and back.current_vendor == "aws"
    assert back.vendors == ("deepgram", "aws", "local")
    assert "fallback" not in SessionMeta("s").to_hash()  # old records stay as they were


def test_stored_unknown_fallback_is_a_malformed_record() -> None:
    h = {**SessionMeta("s", vendor="deepgram").to_hash(), "fallback": "aws,bogus"}
    with pytest.raises(MalformedRecord, match="bogus"):
        SessionMeta.from_hash(h)
    h = {**SessionMeta("s", vendor="deepgram").to_hash(), "active_vendor": "aws"}
    with pytest.raises(MalformedRecord, match="active vendor"):
        SessionMeta.from_hash(h)
