"""Key schema: hash tags, validation of hostile ids."""

import pytest

from voxq.errors import InvalidSessionId
from voxq.keys import Keys, validate_session_id


def test_every_session_key_shares_the_hash_tag() -> None:
    k = Keys("px")
    assert k.session_keys("abc-1.2_3") == (
        "px:{abc-1.2_3}:meta", "px:{abc-1.2_3}:status", "px:{abc-1.2_3}:audio",
        "px:{abc-1.2_3}:final", "px:{abc-1.2_3}:partial")
    assert (k.sessions, k.index, k.live, k.lifecycle) == (
        "px:sessions", "px:index", "px:live", "px:lifecycle")


@pytest.mark.parametrize("bad", ["", "a" * 129, "a{b}", "a b", "../x", "x:y", "é", "a\n", None, 5])
def test_hostile_ids_never_reach_a_key(bad: object) -> None:
    with pytest.raises(InvalidSessionId):
        validate_session_id(bad)
    with pytest.raises(InvalidSessionId):
        Keys().audio(bad)  # type: ignore[arg-type]


def test_longest_valid_id() -> None:
    assert validate_session_id("a" * 128) == "a" * 128
