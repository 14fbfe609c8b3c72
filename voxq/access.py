"""Access control's core: scoped API keys (Redis holds only a hash), tenants, and who a request
acts as.

A key's secret is ``vxk_<id>_<random>``: the id (not secret) finds the record
``PREFIX:apikey:{ID}`` in one lookup; the record holds the HMAC-SHA-256 of the whole secret
keyed with the id, never the secret. The secret has 256 random bits, so a fast hash is enough
(no password stretching needed) and a stolen Redis dump gives no usable key.

``VOXQ_API_KEY`` stays a bootstrap admin key of the default tenant. Authentication is on while it
is set or any key exists in Redis, and off (everything allowed, as before keys existed) otherwise.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import redis.asyncio as aioredis

from voxq.errors import InvalidInput, MalformedRecord, VoxqError
from voxq.keys import Keys
from voxq.records import TENANT_RE

log = logging.getLogger("voxq.access")

DEFAULT_TENANT = "default"
KEY_ID_RE = re.compile(r"[0-9a-f]{12}")
SECRET_RE = re.compile(r"vxk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
NAME_MAX = 100
BOOTSTRAP_NAME = "VOXQ_API_KEY"


class Scope(StrEnum):
    """What a key may do; ``admin`` implies every other scope and every tenant."""

    SESSIONS_READ = "sessions:read"
    SESSIONS_WRITE = "sessions:write"
    TTS_READ = "tts:read"
    TTS_WRITE = "tts:write"
    WEBHOOKS_MANAGE = "webhooks:manage"
    METRICS_READ = "metrics:read"
    ADMIN = "admin"


class Denial(StrEnum):
    """Why a request was refused (the audit log's and the metric's ``reason``)."""

    NO_KEY = "no_key"
    BAD_KEY = "bad_key"
    EXPIRED = "expired"
    SCOPE = "scope"
    TENANT = "tenant"
    RATE = "rate_limited"
    QUOTA = "quota"
    NO_SCOPE_DECLARED = "no_scope_declared"


class Kind(StrEnum):
    """How a request authenticated."""

    OFF = "off"  # authentication is off: everything allowed
    KEY = "key"
    BOOTSTRAP = "bootstrap"
    TOKEN = "token"


class AccessDenied(VoxqError):
    """A request (or ingest connection) refused; ``reason`` says why, the message never holds a
    secret. ``status`` is the HTTP answer: 401, 403, 404 (another tenant's object) or 429."""

    def __init__(self, reason: Denial, message: str, status: int,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after


def validate_tenant(tenant: object) -> str:
    """``tenant`` if it is a valid tenant name, else InvalidInput."""
    if not isinstance(tenant, str) or TENANT_RE.fullmatch(tenant) is None:
        raise InvalidInput(f"invalid tenant {str(tenant)[:60]!r}: use 1-64 characters from "
                           "A-Z a-z 0-9 . _ -")
    return tenant


def tenant_of(stored: object) -> str:
    """A record's tenant: what it stores, or the default tenant for records from before
    tenants (so existing data keeps working without a migration)."""
    if isinstance(stored, bytes):
        stored = stored.decode(errors="replace")
    return stored if isinstance(stored, str) and stored else DEFAULT_TENANT


def parse_scopes(text: str | Iterable[str]) -> frozenset[Scope]:
    """Scopes from ``a,b`` or a list; InvalidInput naming an unknown one."""
    items = [s.strip() for s in (text.split(",") if isinstance(text, str) else text)]
    out = set()
    for s in items:
        if not s:
            continue
        try:
            out.add(Scope(s))
        except ValueError:
            raise InvalidInput(f"unknown scope {s[:40]!r}: use "
                               f"{', '.join(x.value for x in Scope)}") from None
    if not out:
        raise InvalidInput("give at least one scope")
    return frozenset(out)


def key_hash(key_id: str, secret: str) -> str:
    """The stored form of a key: HMAC-SHA-256 of the secret, keyed with its id (hex)."""
    return hmac.new(key_id.encode(), secret.encode(), hashlib.sha256).hexdigest()


def new_secret() -> tuple[str, str]:
    """A new key's id and secret ``vxk_<id>_<43 url-safe characters>``."""
    key_id = secrets.token_hex(6)
    return key_id, f"vxk_{key_id}_{secrets.token_urlsafe(32)}"


def bootstrap_id(api_key: str) -> str:
    """The id the bootstrap key acts under: changes when VOXQ_API_KEY is rotated (tokens minted
    from the old one stop working), reveals nothing of it."""
    return "boot-" + hashlib.sha256(b"voxq bootstrap|" + api_key.encode()).hexdigest()[:8]


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A stored key (never its secret)."""

    key_id: str
    tenant: str
    scopes: frozenset[Scope]
    name: str = ""
    created: float = 0.0
    expires: float | None = None
    last_used: float | None = None
    digest: str = ""

    def expired(self, now: float | None = None) -> bool:
        """Whether the key is past its expiry."""
        return self.expires is not None and (now or time.time()) >= self.expires

    def public(self) -> dict[str, Any]:
        """The record as key listings show it (no hash)."""
        return {"id": self.key_id, "tenant": self.tenant, "name": self.name or None,
                "scopes": sorted(s.value for s in self.scopes), "created": self.created,
                "expires": self.expires, "last_used": self.last_used}

    def to_hash(self) -> dict[str, str]:
        """Fields for HSET."""
        return {"tenant": self.tenant, "scopes": ",".join(sorted(s.value for s in self.scopes)),
                "name": self.name, "created": repr(self.created),
                "expires": "" if self.expires is None else repr(self.expires),
                "hash": self.digest}

    @classmethod
    def from_hash(cls, key_id: str, h: Mapping[Any, Any]) -> KeyRecord:
        """Parse HGETALL; MalformedRecord if malformed."""
        d = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes)
                                                           else v) for k, v in h.items()}
        try:
            return cls(key_id=key_id, tenant=validate_tenant(d["tenant"]),
                       scopes=parse_scopes(d["scopes"]), name=d.get("name", ""),
                       created=float(d.get("created") or 0),
                       expires=float(d["expires"]) if d.get("expires") else None,
                       last_used=float(d["last_used"]) if d.get("last_used") else None,
                       digest=d.get("hash", ""))
        except (KeyError, ValueError) as e:
            raise MalformedRecord(f"key record {key_id} is malformed: {e}") from None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts as: its tenant, scopes and (for tokens) the sessions it is limited to."""

    kind: Kind
    tenant: str = DEFAULT_TENANT
    scopes: frozenset[Scope] = field(default_factory=frozenset)
    key_id: str = ""
    name: str = ""
    expires_at: float | None = None
    sessions: frozenset[str] | None = None  # a token narrowed to these sessions

    @property
    def auth(self) -> bool:
        """Whether authentication is on for this request."""
        return self.kind is not Kind.OFF

    @property
    def all_tenants(self) -> bool:
        """Whether the principal sees every tenant (auth off, or an admin)."""
        return self.kind is Kind.OFF or Scope.ADMIN in self.scopes

    def allows(self, scope: Scope) -> bool:
        """Whether the principal holds ``scope`` (admin holds them all)."""
        return self.kind is Kind.OFF or scope in self.scopes or Scope.ADMIN in self.scopes

    def sees(self, tenant: str) -> bool:
        """Whether an object of ``tenant`` is visible to the principal."""
        return self.all_tenants or tenant == self.tenant

    def sees_session(self, sid: str, tenant: str) -> bool:
        """Whether the session (of ``tenant``) is visible: the tenant's, and within a token's
        sessions if it names some."""
        return self.sees(tenant) and (self.sessions is None or sid in self.sessions)

    @property
    def write_tenant(self) -> str:
        """The tenant of objects this principal creates."""
        return self.tenant if self.auth else DEFAULT_TENANT


OFF = Principal(Kind.OFF)


def parse_expiry(text: str | None, now: float | None = None) -> float | None:
    """``--expires``: a duration (``90d``, ``12h``, ``30m``, ``3600s``) or unix seconds;
    None for no expiry; InvalidInput otherwise."""
    if not text:
        return None
    now = now or time.time()
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)\s*", text)
    if m is None:
        raise InvalidInput(f"invalid expiry {text[:40]!r}: use a duration such as 30d, 12h, "
                           "45m, 600s, or unix seconds")
    value, unit = float(m.group(1)), m.group(2)
    if not unit:
        if value <= now:
            raise InvalidInput(f"expiry {text[:40]!r} is in the past")
        return value
    seconds = value * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    if seconds <= 0:
        raise InvalidInput("expiry must be in the future")
    return now + seconds


class KeyStore:
    """API keys in Redis: ``PREFIX:apikey:{ID}`` hashes and the ``PREFIX:apikeys`` id set."""

    def __init__(self, r: aioredis.Redis, keys: Keys) -> None:
        self.r = r
        self.keys = keys

    def record_key(self, key_id: str) -> str:
        """Hash of one key's record."""
        return f"{self.keys.prefix}:apikey:{{{key_id}}}"

    @property
    def ids(self) -> str:
        """Set of every key id (listing, and whether authentication is on)."""
        return f"{self.keys.prefix}:apikeys"

    async def create(self, tenant: str, scopes: Iterable[Scope], name: str = "",
                     expires: float | None = None) -> tuple[KeyRecord, str]:
        """A new key: its record (stored) and its secret (shown once, never stored)."""
        validate_tenant(tenant)
        if len(name) > NAME_MAX:
            raise InvalidInput(f"key name is longer than {NAME_MAX} characters")
        if expires is not None and expires <= time.time():
            raise InvalidInput("expiry is in the past")
        scopes = frozenset(scopes)
        if not scopes:
            raise InvalidInput("give at least one scope")
        key_id, secret = new_secret()
        rec = KeyRecord(key_id, tenant, scopes, name, time.time(), expires,
                        digest=key_hash(key_id, secret))
        fields: dict[Any, Any] = dict(rec.to_hash())
        await self.r.hset(self.record_key(key_id), mapping=fields)
        if expires is not None:
            await self.r.expireat(self.record_key(key_id), int(expires) + 1)
        await self.r.sadd(self.ids, key_id)
        return rec, secret

    async def get(self, key_id: str) -> KeyRecord | None:
        """The record of ``key_id`` (None if unknown, revoked or expired away)."""
        if KEY_ID_RE.fullmatch(key_id) is None:
            return None
        h: Any = await self.r.hgetall(self.record_key(key_id))
        if not h:
            return None
        return KeyRecord.from_hash(key_id, h)

    async def verify(self, secret: str) -> KeyRecord | None:
        """The record whose hash matches ``secret`` (constant-time), else None."""
        m = SECRET_RE.fullmatch(secret)
        if m is None:
            return None
        try:
            rec = await self.get(m.group(1))
        except MalformedRecord as e:
            log.warning("%s; it authenticates nobody until it is revoked", e)
            return None
        if rec is None or not hmac.compare_digest(rec.digest, key_hash(rec.key_id, secret)):
            return None
        return rec

    async def touch(self, key_id: str, now: float) -> None:
        """Record the key's last use (only if the record still exists)."""
        await self.r.eval(_TOUCH, 1, self.record_key(key_id), repr(now))

    async def revoke(self, key_id: str) -> bool:
        """Delete a key; False if there was none."""
        if KEY_ID_RE.fullmatch(key_id) is None:
            return False
        gone = await self.r.delete(self.record_key(key_id))
        await self.r.srem(self.ids, key_id)
        return bool(gone)

    async def all(self, tenant: str | None = None) -> list[KeyRecord]:
        """Every key (or one tenant's), oldest first; ids whose record expired are dropped."""
        raw: Any = await self.r.smembers(self.ids)
        ids = sorted(i.decode() if isinstance(i, bytes) else i for i in raw or ())
        out: list[KeyRecord] = []
        for key_id in ids:
            try:
                rec = await self.get(key_id)
            except MalformedRecord as e:
                log.warning("%s; not listed (revoke it to remove it)", e)
                continue
            if rec is None:
                await self.r.srem(self.ids, key_id)
                continue
            if tenant is None or rec.tenant == tenant:
                out.append(rec)
        return sorted(out, key=lambda k: k.created)

    async def any(self) -> bool:
        """Whether any key exists (then authentication is on)."""
        return bool(await self.r.scard(self.ids))


_TOUCH = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'last_used', ARGV[1]) end
return 0
"""


def scope_names(scopes: Iterable[Scope]) -> list[str]:
    """Scopes as sorted strings (answers, tokens)."""
    return sorted(s.value for s in scopes)
