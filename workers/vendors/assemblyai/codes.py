"""AssemblyAI close codes and error texts → voxq errors (pure; no sockets).

Both API generations end a failed session with a WebSocket close code; v3 first sends an
``Error`` frame whose text is the full reason (the close reason is cut to 123 bytes, or
replaced by ``See Error message for details``). v3 was renumbered in Feb 2026 (3006-3009
were 3005 / 1008 before), and SDKs still map the v2-era 40xx codes, so every numbering maps
here, by code first and by the message text where one code meant several things.
"""

from __future__ import annotations

import json
import re
from typing import Literal

from workers.vendors.base import VendorAuthError, VendorError, VendorRejected, VendorRetryable
from workers.vendors.redaction import vendor_text

Kind = Literal["auth", "retry", "reject"]

SEE_ERROR_MESSAGE = "See Error message for details"

#: v2 close codes (and the fallback table v3 SDKs keep): default reason and what it means
LEGACY_CODES: dict[int, tuple[str, Kind]] = {
    4000: ("Sample rate must be a positive integer", "reject"),
    4001: ("Not Authorized", "auth"),
    4002: ("Insufficient Funds", "reject"),
    4003: ("This feature is paid-only and requires you to add a credit card", "reject"),
    4004: ("Session not found", "retry"),
    4008: ("Session Expired", "retry"),
    4010: ("Session previously closed", "retry"),
    4029: ("Client sent audio too fast", "retry"),
    4030: ("Session is handled by another WebSocket", "retry"),
    4031: ("Session idle for too long", "retry"),
    4032: ("Audio duration is too short", "reject"),
    4033: ("Audio duration is too long", "reject"),
    4034: ("Audio too small to transcode", "reject"),
    4100: ("Endpoint received invalid JSON", "reject"),
    4101: ("Endpoint received a message with an invalid schema", "reject"),
    4102: ("This account has exceeded the number of allowed streams", "retry"),
    4103: ("This session has been reconnected. This WebSocket is no longer valid", "retry"),
    4104: ("Could not parse word boost parameter", "reject"),
    1013: ("Temporary server condition forced blocking client's request", "retry"),
}

# v3 reasons by their fixed prefix (the same texts were sent under 3005 / 1008 before 2026)
_V3_TEXTS: tuple[tuple[str, Kind], ...] = (
    ("Unauthorized Connection: Too many concurrent sessions", "retry"),
    ("Unauthorized Connection", "auth"),
    ("Invalid Message Type", "reject"),
    ("Invalid JSON", "reject"),
    ("Invalid Message", "reject"),
    ("Input duration violation", "reject"),
    ("Audio Transmission Rate Exceeded", "retry"),
    ("Session Expired", "retry"),
    ("Session Cancelled", "retry"),
    ("Invalid", "reject"),  # any other "Invalid …" parameter or message text
)
_V3_CODES: dict[int, Kind] = {1008: "auth", 3005: "retry", 3006: "reject", 3007: "reject",
                              3008: "retry", 3009: "retry"}
# standard close codes that say the peer broke the protocol or the data (not transient)
_PROTOCOL_CODES = frozenset({1002, 1003, 1007, 1009, 1010})


TOKEN_QUERY = re.compile(r"(token=)[^&\s\"']+")


def clean(text: str, secrets: tuple[str, ...] = ()) -> str:
    """One bounded line of vendor text with any echoed secret replaced by ``***``."""
    return vendor_text(text, secrets, (TOKEN_QUERY,))


def make_error(kind: Kind, message: str, vendor: str, code: int | str | None) -> VendorError:
    """The VendorError class for ``kind``."""
    cls: type[VendorError] = {"auth": VendorAuthError, "retry": VendorRetryable,
                              "reject": VendorRejected}[kind]
    return cls(message, vendor=vendor, code=code)


def _text_kind(text: str) -> Kind | None:
    for prefix, kind in _V3_TEXTS:
        if text.startswith(prefix):
            return kind
    return None


def close_error(vendor: str, code: int | None, reason: str, error_text: str | None,
                secrets: tuple[str, ...] = ()) -> VendorError:
    """The error for a close the client did not ask for (v2 or v3 numbering).

    ``error_text`` is the text of a preceding error frame, if any: it wins over a cut or
    placeholder close reason.
    """
    reason = reason if reason != SEE_ERROR_MESSAGE else ""
    text = clean(error_text or reason, secrets)
    if code is None or code == 1006:
        return VendorRetryable(f"the connection dropped without a close frame{': ' + text if text else ''}",
                               vendor=vendor, code=1006)
    if code == 1000:
        return VendorRetryable(f"the service closed the session before the end of the audio"
                               f"{': ' + text if text else ''}", vendor=vendor, code=code)
    kind = _text_kind(text) if code in _V3_CODES else None
    if kind is None and code in _V3_CODES:
        kind = _V3_CODES[code]
    if kind is None and code in LEGACY_CODES:
        default, kind = LEGACY_CODES[code]
        text = text or default
    if kind is None:
        kind = "reject" if code in _PROTOCOL_CODES or 4000 <= code <= 4999 else "retry"
    return make_error(kind, text or f"closed with code {code}", vendor, code)


def http_error(vendor: str, status: int, body: bytes, secrets: tuple[str, ...] = (),
               what: str = "the WebSocket handshake") -> VendorError:
    """The error for an HTTP answer instead of success (handshake or token request)."""
    raw = body.decode("utf-8", errors="replace")
    text = raw
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        found = doc.get("error", doc.get("message"))
        if isinstance(found, str):
            text = found
    detail = clean(text, secrets)
    message = f"HTTP {status} at {what}" + (f": {detail}" if detail else "")
    if status in (401, 403):
        return VendorAuthError(message, vendor=vendor, code=status)
    if status in (408, 425, 429) or status >= 500:
        return VendorRetryable(message, vendor=vendor, code=status)
    return VendorRejected(message, vendor=vendor, code=status)
