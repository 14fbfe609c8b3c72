"""Webhook signatures the way the Standard Webhooks specification defines them (pure, no I/O).

The HMAC key is the secret's bytes: ``whsec_`` + base64 of them. The signed content is
``<webhook-id>.<webhook-timestamp>.<raw body>``; ``webhook-signature`` carries
``v1,<base64 HMAC-SHA256>`` (several space-separated when a secret rotates). Receivers reject
timestamps more than a few minutes away from their clock (replay protection).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from voxq.errors import InvalidInput

PREFIX = "whsec_"


def new_secret() -> str:
    """A fresh random secret (24 bytes), ``whsec_…``."""
    return PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_…`` secret; InvalidInput if it is not one."""
    if not secret.startswith(PREFIX):
        raise InvalidInput("a webhook secret starts with 'whsec_'")
    try:
        key = base64.b64decode(secret[len(PREFIX):], validate=True)
    except ValueError:
        raise InvalidInput("a webhook secret is 'whsec_' + base64") from None
    if len(key) < 16:
        raise InvalidInput("a webhook secret must hold at least 16 bytes")
    return key


def derived_secret(master: str, name: str) -> str:
    """The secret of one subscription, derived from the deployment's secret, so no secret is
    ever stored in Redis: ``whsec_`` + base64(HMAC-SHA256(master key, name))."""
    key = hmac.new(secret_key(master), f"voxq-webhook:{name}".encode(), hashlib.sha256).digest()
    return PREFIX + base64.b64encode(key).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for one message."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    mac = hmac.new(secret_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers (plus the JSON content type)."""
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, msg_id, timestamp, body),
            "content-type": "application/json"}
