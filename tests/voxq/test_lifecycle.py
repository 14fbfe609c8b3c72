"""Lifecycle and status stream entries: encode/decode, hostile entries rejected cleanly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voxq.errors import InvalidInput, MalformedRecord
from voxq.keys import Keys
from voxq.lifecycle import decode_lifecycle, decode_status, lifecycle_xadd
from voxq.records import SessionMeta, Status


def test_an_event_round_trips_through_its_xadd_fields() -> None:
    cmd = lifecycle_xadd(Keys("px"), "s-1", Status.FAILED, "bad key", "aws")
    assert cmd[:6] == ("XADD", "px:lifecycle", "MAXLEN", "~", cmd[4], "*")
    ev = decode_lifecycle([str(x).encode() for x in cmd[6:]])
    assert (ev.session_id, ev.status, ev.error, ev.vendor) == ("s-1", Status.FAILED, "bad key",
                                                                "aws")
    assert ev.time > 0


@pytest.mark.parametrize("fields", [{}, {"sid": "a{b}", "status": "finished"},
                                    {"sid": "a", "status": "done"},
                                    {"sid": "a", "status": "finished", "time": "soon"}])
def test_malformed_events_are_malformed_records(fields: dict[str, str]) -> None:
    with pytest.raises(MalformedRecord):
        decode_lifecycle(fields)


@given(st.dictionaries(st.binary(max_size=8), st.binary(max_size=16), max_size=6))
def test_decoders_raise_only_malformed_record(fields: dict[bytes, bytes]) -> None:
    for decode in (decode_lifecycle, decode_status):
        try:
            decode(fields)
        except MalformedRecord:
            pass


def test_a_session_webhook_is_kept_in_meta_and_checked() -> None:
    meta = SessionMeta(session_id="w", webhook="https://crm.example/hook?t=1")
    assert SessionMeta.from_hash(meta.to_hash()).webhook == "https://crm.example/hook?t=1"
    assert "webhook" not in SessionMeta(session_id="w").to_hash()
    for bad in ("ftp://x", "javascript:alert(1)", "https://" + "a" * 2000):
        with pytest.raises(InvalidInput):
            SessionMeta(session_id="w", webhook=bad)
