"""Who may stream into the gateway: a gateway key (bearer header or ``?key=``), Twilio's request
signature, AudioHook's API key and HTTP message signature (docs/protocols/ingest.md).

Pure functions over header and query values, no sockets. A key check goes through the
`KeyChecker` protocol so that per-tenant scoped keys can replace the single gateway key without
touching the dialects.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis

from voxq.access import KeyStore, Scope
from voxq.errors import VoxqError
from voxq.keys import Keys


class AuthFailed(VoxqError):
    """A credential is missing or wrong; the message names which, never its value."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a connection streams as: its sessions belong to ``tenant``."""

    name: str
    tenant: str = "default"
    key_id: str = ""


class KeyChecker(Protocol):
    """Turns a presented key into a principal, or None when it is not valid."""

    def check(self, key: str) -> Principal | None: ...


class ScopedKeys:
    """The API's scoped keys (voxq.access) for ingest: a key that holds sessions:write (or
    admin) and has not expired streams as its tenant; the static gateway key, if any, as the
    default tenant."""

    def __init__(self, static: StaticKey | None, r: aioredis.Redis, keys: Keys) -> None:
        self.static = static
        self.store = KeyStore(r, keys)

    async def check(self, key: str) -> Principal:
        """The principal of ``key``; AuthFailed (naming the reason, never the key) otherwise."""
        if self.static is not None:
            p = self.static.check(key)
            if p is not None:
                return p
        rec = await self.store.verify(key)
        if rec is None:
            raise AuthFailed("the key is not valid")
        if rec.expired():
            raise AuthFailed("the key has expired")
        if Scope.SESSIONS_WRITE not in rec.scopes and Scope.ADMIN not in rec.scopes:
            raise AuthFailed("the key lacks the scope sessions:write")
        return Principal(rec.name or rec.key_id, rec.tenant, rec.key_id)

    async def any(self) -> bool:
        """Whether any scoped key exists."""
        return await self.store.any()


class StaticKey:
    """One configured gateway key, compared in constant time."""

    def __init__(self, key: str) -> None:
        self._key = key.encode()

    def check(self, key: str) -> Principal | None:
        """The gateway principal if ``key`` is the configured key."""
        return Principal("gateway-key") if hmac.compare_digest(key.encode(), self._key) else None


def presented_key(headers: Mapping[str, str], query: Mapping[str, list[str]]) -> str | None:
    """The key a client presents: ``Authorization: Bearer KEY``, else ``?key=KEY``."""
    auth = headers.get("Authorization") or ""
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    keys = query.get("key")
    return keys[0] if keys else None


def twilio_signature(auth_token: str, url: str) -> str:
    """Twilio's request signature of a WebSocket URL: base64 HMAC-SHA1 of the URL (no params)."""
    digest = hmac.new(auth_token.encode(), url.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def check_twilio(auth_token: str, url: str, signature: str | None) -> None:
    """AuthFailed unless ``signature`` is Twilio's signature of ``url``."""
    if not signature:
        raise AuthFailed("X-Twilio-Signature is missing")
    if not hmac.compare_digest(twilio_signature(auth_token, url).encode(), signature.encode()):
        raise AuthFailed("X-Twilio-Signature does not match (check VOXQ_INGEST_PUBLIC_URL)")


# --- AudioHook HTTP message signatures (RFC 9421 subset the AudioHook client uses) ----------

AUDIOHOOK_COMPONENTS = ("@request-target", "@authority", "audiohook-organization-id",
                        "audiohook-session-id", "audiohook-correlation-id", "x-api-key")
_SIG_INPUT = re.compile(r'^\s*(?P<label>[A-Za-z0-9_-]+)=(?P<value>\((?P<items>[^)]*)\)(?P<params>.*))$')
_SIG = re.compile(r'^\s*(?P<label>[A-Za-z0-9_-]+)=:(?P<b64>[A-Za-z0-9+/=]*):\s*$')
_PARAM = re.compile(r';\s*([a-z]+)=("([^"]*)"|(-?\d+))')


@dataclass(frozen=True, slots=True)
class SignatureInput:
    """A parsed ``Signature-Input`` member."""

    label: str
    components: tuple[str, ...]
    params: dict[str, str | int]
    raw_value: str  # the member's value as sent: it is signed verbatim as @signature-params


def parse_signature_input(value: str) -> SignatureInput:
    """Parse ``sig1=("a" "b");k="v";n=1``; AuthFailed if malformed."""
    m = _SIG_INPUT.match(value)
    if not m:
        raise AuthFailed("Signature-Input is malformed")
    items = tuple(re.findall(r'"([^"]+)"', m.group("items")))
    params: dict[str, str | int] = {}
    for name, _, text, num in _PARAM.findall(m.group("params")):
        params[name] = text if num == "" else int(num)
    return SignatureInput(m.group("label"), items, params, m.group("value").strip())


def signature_base(sig: SignatureInput, target: str, authority: str,
                   headers: Mapping[str, str]) -> bytes:
    """RFC 9421 signature base: one ``"name": value`` line per component, then the params."""
    lines = []
    for c in sig.components:
        if c == "@request-target":
            v = target
        elif c == "@authority":
            v = authority.lower()
        elif c.startswith("@"):
            raise AuthFailed(f"signature component {c} is not supported")
        else:
            got = headers.get(c)
            if got is None:
                raise AuthFailed(f"signed header {c} is missing")
            v = got.strip()
        lines.append(f'"{c}": {v}')
    lines.append(f'"@signature-params": {sig.raw_value}')
    return "\n".join(lines).encode()


def audiohook_signature(secret_b64: str, base: bytes) -> str:
    """Base64 HMAC-SHA256 of a signature base with the base64-decoded client secret."""
    key = base64.b64decode(secret_b64)
    return base64.b64encode(hmac.new(key, base, hashlib.sha256).digest()).decode()


class NonceCache:
    """Nonces seen recently (bounded), so a captured handshake cannot be replayed."""

    def __init__(self, size: int = 100_000) -> None:
        self.size = size
        self._seen: OrderedDict[str, float] = OrderedDict()

    def add(self, nonce: str, expires: float) -> bool:
        """Remember ``nonce``; False if it was already seen and has not expired."""
        now = time.time()
        while self._seen and (len(self._seen) >= self.size
                              or next(iter(self._seen.values())) < now):
            self._seen.popitem(last=False)
        if nonce in self._seen:
            return False
        self._seen[nonce] = expires
        return True


def check_audiohook(headers: Mapping[str, str], target: str, api_key: str | None,
                    secret_b64: str | None, nonces: NonceCache, now: float | None = None) -> None:
    """AuthFailed unless the X-API-KEY matches and (with a secret) the signature verifies."""
    headers = {k.lower(): v for k, v in headers.items()}  # field names are case-insensitive
    got = headers.get("x-api-key")
    if api_key is not None:
        if not got or not hmac.compare_digest(got.encode(), api_key.encode()):
            raise AuthFailed("X-API-KEY is missing or wrong")
    if secret_b64 is None:
        return
    sig_input, sig_header = headers.get("signature-input"), headers.get("signature")
    if not sig_input or not sig_header:
        raise AuthFailed("the request is not signed (Signature-Input, Signature)")
    sig = parse_signature_input(sig_input)
    m = _SIG.match(sig_header)
    if not m or m.group("label") != sig.label:
        raise AuthFailed("Signature is malformed or does not match Signature-Input")
    if set(AUDIOHOOK_COMPONENTS) - set(sig.components):
        raise AuthFailed("the signature does not cover every required component")
    if sig.params.get("alg") != "hmac-sha256" or sig.params.get("keyid") != got:
        raise AuthFailed("signature alg must be hmac-sha256 and keyid the API key")
    now = time.time() if now is None else now
    created, expires = sig.params.get("created"), sig.params.get("expires")
    if not isinstance(created, int) or created > now + 60:
        raise AuthFailed("signature 'created' is missing or in the future")
    if isinstance(expires, int) and expires < now:
        raise AuthFailed("the signature has expired")
    base = signature_base(sig, target, headers.get("host", ""), headers)
    if not hmac.compare_digest(audiohook_signature(secret_b64, base).encode(),
                               m.group("b64").encode()):
        raise AuthFailed("the signature does not verify")
    nonce = sig.params.get("nonce")
    if not isinstance(nonce, str) or not nonce:
        raise AuthFailed("the signature has no nonce")
    if not nonces.add(nonce, float(expires) if isinstance(expires, int) else now + 600):
        raise AuthFailed("the signature's nonce was used before")
