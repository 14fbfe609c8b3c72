"""The redaction layer: configured secret values and credential shapes leave no log record,
whatever the logger, the arguments or the exception text, and clean records stay as they are."""

from __future__ import annotations

import logging

import pytest
from pydantic import SecretStr

from voxq import redaction
from voxq.redaction import redact
from voxq.settings import Settings

KEY = "dg-unit-test-key-0001"


@pytest.fixture(autouse=True)
def layer() -> None:
    redaction.install(Settings(deepgram_api_key=SecretStr(KEY),
                               redis_url="redis://:redis-pass-0001@127.0.0.1:1/0"))


@pytest.mark.parametrize(("text", "left"), [
    (f"vendor said: invalid key {KEY}!", "vendor said: invalid key ***!"),
    ("Authorization: Bearer abc.def.ghi", "Authorization: Bearer ***"),
    ("authorization=Token zzz", "authorization=Token ***"),
    ("X-Amz-Security-Token: FQoGZXIvYXdzEJr//////////wEaD", "X-Amz-Security-Token: ***"),
    ("wss://h/v2?sample_rate=16000&token=tmp-123456", "wss://h/v2?sample_rate=16000&token=***"),
    ('{"api_key": "k-9999999"}', '{"api_key": "***"}'),
    ("redis://:redis-pass-0001@127.0.0.1:1/0", "redis://:***@127.0.0.1:1/0"),
    ("the token expired; retry", "the token expired; retry"),  # ordinary words are kept
])
def test_values_and_shapes_are_masked(text: str, left: str) -> None:
    assert redact(text) == left


def test_short_values_are_not_registered() -> None:
    redaction.register_secret("ab")
    assert redact("a tab b") == "a tab b"


def test_every_log_record_is_redacted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    log = logging.getLogger("some.vendor.websocket")
    log.debug("> %s: %s", "Authorization", f"Token {KEY}")
    log.info("closed: %r", ConnectionError(f"1008 {KEY}"))
    log.warning(ValueError(f"echo {KEY}"))
    try:
        raise RuntimeError(f"handshake body: {KEY}")
    except RuntimeError:
        log.exception("failed")
    logging.getLogger("some.access").info('%s - "%s %s HTTP/%s" %d', "1.2.3.4", "GET", "/x",
                                             "1.1", 200)
    assert KEY not in caplog.text and caplog.text.count("***") >= 4
    access = caplog.records[-1]
    assert access.args == ("1.2.3.4", "GET", "/x", "1.1", 200)  # clean arguments untouched
