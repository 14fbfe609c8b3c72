"""Webhook signatures: the Standard Webhooks specification's published example, and secrets."""

from __future__ import annotations

import pytest

from voxq import webhook_sign
from voxq.errors import InvalidInput

# The example the specification's reference libraries test against.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID, SPEC_TS, SPEC_BODY = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_specification_example_signs_as_published() -> None:
    assert webhook_sign.sign(SPEC_SECRET, SPEC_ID, SPEC_TS, SPEC_BODY) == SPEC_SIGNATURE
    h = webhook_sign.headers(SPEC_SECRET, SPEC_ID, SPEC_TS, SPEC_BODY)
    assert h == {"webhook-id": SPEC_ID, "webhook-timestamp": str(SPEC_TS),
                 "webhook-signature": SPEC_SIGNATURE, "content-type": "application/json"}


def test_every_part_of_the_message_is_signed() -> None:
    for args in ((SPEC_ID + "x", SPEC_TS, SPEC_BODY), (SPEC_ID, SPEC_TS + 1, SPEC_BODY),
                 (SPEC_ID, SPEC_TS, SPEC_BODY + b" ")):
        assert webhook_sign.sign(SPEC_SECRET, *args) != SPEC_SIGNATURE


@pytest.mark.parametrize("bad", ["", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_***",
                                 "whsec_c2hvcnQ="])
def test_malformed_secrets_are_refused(bad: str) -> None:
    with pytest.raises(InvalidInput):
        webhook_sign.secret_key(bad)


def test_derived_secrets_are_distinct_valid_and_stable() -> None:
    a = webhook_sign.derived_secret(SPEC_SECRET, "sub:1")
    assert a == webhook_sign.derived_secret(SPEC_SECRET, "sub:1")
    assert a != webhook_sign.derived_secret(SPEC_SECRET, "sub:2") != SPEC_SECRET
    assert len(webhook_sign.secret_key(a)) == 32
    assert webhook_sign.new_secret() != webhook_sign.new_secret()
    assert len(webhook_sign.secret_key(webhook_sign.new_secret())) == 24
