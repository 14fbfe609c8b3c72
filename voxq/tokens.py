"""Short-lived signed browser tokens: ``vxt_<payload>.<signature>``, both base64url.

The payload names the key it was minted from (checked on every use: a revoked or expired key
ends its tokens at once), the tenant, the scopes and optionally the sessions it is limited to,
and its expiry (at most 15 minutes away). The signature is HMAC-SHA-256 with the token secret:
``VOXQ_TOKEN_SECRET``, else one derived from ``VOXQ_API_KEY``. The secret is never kept in
Redis: whoever reads Redis could otherwise mint admin tokens; every API replica gets it from the
same configuration instead.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass

from voxq.access import Scope, parse_scopes, validate_tenant
from voxq.errors import InvalidInput
from voxq.keys import validate_session_id
from voxq.settings import Settings

MAX_TTL_SECONDS = 900
PREFIX = "vxt_"
MAX_SESSIONS = 100


def token_secret(settings: Settings) -> bytes | None:
    """The signing secret: VOXQ_TOKEN_SECRET, else derived from VOXQ_API_KEY, else None
    (tokens are off)."""
    if settings.token_secret is not None and settings.token_secret.get_secret_value():
        return settings.token_secret.get_secret_value().encode()
    if settings.api_key is not None and settings.api_key.get_secret_value():
        return hmac.new(settings.api_key.get_secret_value().encode(), b"voxq token signing",
                        hashlib.sha256).digest()
    return None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """What a token says."""

    key_id: str
    tenant: str
    scopes: frozenset[Scope]
    sessions: frozenset[str] | None
    expires_at: float
    name: str = ""

    def to_json(self) -> dict[str, object]:
        """The answer of POST /v1/tokens (without the token itself)."""
        return {"expires_at": self.expires_at, "tenant": self.tenant,
                "scopes": sorted(s.value for s in self.scopes),
                "sessions": sorted(self.sessions) if self.sessions is not None else None}


def check_sessions(sessions: Iterable[object] | None) -> frozenset[str] | None:
    """A token's session list, validated (InvalidInput for a bad id or too many)."""
    if sessions is None:
        return None
    out = frozenset(validate_session_id(s) for s in sessions)
    if len(out) > MAX_SESSIONS:
        raise InvalidInput(f"a token names at most {MAX_SESSIONS} sessions")
    return out


def sign(claims: TokenClaims, secret: bytes) -> str:
    """The token carrying ``claims``."""
    payload = json.dumps({"k": claims.key_id, "t": claims.tenant,
                          "s": sorted(s.value for s in claims.scopes),
                          "ss": sorted(claims.sessions) if claims.sessions is not None else None,
                          "e": round(claims.expires_at, 3), "n": claims.name},
                         separators=(",", ":")).encode()
    body = _b64(payload)
    mac = hmac.new(secret, body.encode(), hashlib.sha256).digest()
    return f"{PREFIX}{body}.{_b64(mac)}"


def is_token(text: str) -> bool:
    """Whether a presented credential has the shape of a token (not a key)."""
    return text.startswith(PREFIX)


def verify(token: str, secret: bytes, now: float | None = None) -> TokenClaims | None:
    """The claims of a well-signed, unexpired token; None otherwise (the reason is not told:
    a caller learns nothing from guessing)."""
    if not token.startswith(PREFIX) or len(token) > 8192:
        return None
    body, dot, mac = token[len(PREFIX):].partition(".")
    if not dot:
        return None
    want = hmac.new(secret, body.encode(), hashlib.sha256).digest()
    try:
        if not hmac.compare_digest(want, _unb64(mac)):
            return None
        d = json.loads(_unb64(body))
        claims = TokenClaims(key_id=str(d["k"]), tenant=validate_tenant(d["t"]),
                             scopes=parse_scopes(d["s"]),
                             sessions=check_sessions(d["ss"]) if d["ss"] is not None else None,
                             expires_at=float(d["e"]), name=str(d.get("n") or ""))
    except (ValueError, KeyError, TypeError):
        return None
    if claims.expires_at <= (now or time.time()):
        return None
    return claims
