"""Credential checks: the gateway key (constant time), Twilio's URL signature, AudioHook's
HTTP message signature (the emulator signs, the gateway verifies) with expiry and nonces."""

from __future__ import annotations

import time

import pytest

from producer.ingest.auth import (
    AuthFailed,
    NonceCache,
    StaticKey,
    check_audiohook,
    check_twilio,
    presented_key,
    twilio_signature,
)
from producer.ingest.core import RateGate
from tests.emulators.audiohook_client import sign
from tests.emulators.twilio_media import sign_url

SECRET = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0IQ=="


def test_presented_key_and_static_key() -> None:
    assert presented_key({"Authorization": "Bearer abc"}, {"key": ["zzz"]}) == "abc"
    assert presented_key({}, {"key": ["zzz"]}) == "zzz"
    assert presented_key({"Authorization": "Basic abc"}, {}) is None
    k = StaticKey("abc")
    assert k.check("abc") is not None and k.check("abd") is None and k.check("") is None


def test_twilio_signature_matches_an_independent_signer() -> None:
    url = "wss://voice.example.com/v1/ingest/twilio"
    assert twilio_signature("tok", url) == sign_url("tok", url)
    check_twilio("tok", url, sign_url("tok", url))
    for bad in (None, "", sign_url("other", url), sign_url("tok", url + "x")):
        with pytest.raises(AuthFailed):
            check_twilio("tok", url, bad)


def headers(created: int | None = None, nonce: str = "n1", key: str = "k") -> dict[str, str]:
    h = {"Audiohook-Organization-Id": "o", "Audiohook-Correlation-Id": "c",
         "Audiohook-Session-Id": "s", "X-API-KEY": key, "Host": "gw.example.com"}
    h.update(sign(h, "/v1/ingest/audiohook", "gw.example.com", key, SECRET, nonce=nonce,
                  created=created))
    return h


def test_audiohook_signature_verifies_once() -> None:
    nonces = NonceCache()
    check_audiohook(headers(), "/v1/ingest/audiohook", "k", SECRET, nonces)
    with pytest.raises(AuthFailed, match="nonce"):
        check_audiohook(headers(), "/v1/ingest/audiohook", "k", SECRET, nonces)


@pytest.mark.parametrize("tamper", ["target", "header", "expired", "future", "key", "secret"])
def test_audiohook_signature_rejects(tamper: str) -> None:
    now = int(time.time())
    h = headers(created=now - 3600 if tamper == "expired" else now + 3600 if tamper == "future"
                else None)
    target = "/v1/ingest/audiohook"
    if tamper == "target":
        target = "/v1/ingest/other"
    if tamper == "header":
        h["Audiohook-Session-Id"] = "s2"
    with pytest.raises(AuthFailed):
        check_audiohook(h, target, "other" if tamper == "key" else "k",
                        "b3RoZXI=" if tamper == "secret" else SECRET, NonceCache())


def test_nonce_cache_is_bounded() -> None:
    c = NonceCache(size=3)
    for i in range(10):
        assert c.add(f"n{i}", time.time() + 60)
    assert len(c._seen) <= 3


def test_rate_gate() -> None:
    g = RateGate(1000, burst_seconds=1.0)
    assert g.delay(1000, 0.0) == 0.0
    assert g.delay(500, 0.0) == pytest.approx(0.5)
    assert g.delay(0, 10.0) == 0.0  # refilled
