"""What every dialect shares: the gateway's state and limits, and `IngestSession`, one bus session
published through `Publisher` (so audio counts as received only once Redis acknowledged it).

Dialects parse their wire format and hand s16le PCM to `IngestSession.send`; they end it with
`close` (end of stream), `drop` (socket gone: keep what is durable, no eos, so the client can
resume or the idle timeout ends it) or `fail` (bad input: the session is `failed` with a reason).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any

import redis.asyncio as aioredis

from producer.ingest.auth import KeyChecker, NonceCache, ScopedKeys, StaticKey
from producer.publisher import Publisher
from voxq.errors import InvalidInput, VoxqError
from voxq.keys import Keys, validate_session_id
from voxq.lifecycle import STATUS_MAXLEN, announce
from voxq.metrics import INGEST_ACK_LATENCY, INGEST_BYTES, INGEST_FRAMES
from voxq.records import SessionMeta, Status
from voxq.redaction import redact
from voxq.redis_conn import connect
from voxq.settings import Settings

log = logging.getLogger("voxq.ingest")


class Dialect(StrEnum):
    """The wire protocols the gateway speaks, one endpoint each."""

    RAW = "raw"
    FILE = "file"
    TWILIO = "twilio"
    AUDIOHOOK = "audiohook"
    JAMBONZ = "jambonz"


class CloseCode(IntEnum):
    """WebSocket close codes the gateway uses (RFC 6455 §7.4.1)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    UNSUPPORTED = 1003      # a message type or format the endpoint does not take
    INVALID = 1007          # a message that is not what the protocol allows
    POLICY = 1008           # a limit or a protocol-order violation
    TOO_BIG = 1009
    INTERNAL = 1011
    RESTART = 1012          # draining: reconnect (resume) elsewhere
    TRY_AGAIN = 1013


class Rejected(VoxqError):
    """Bad input on a connection: close with ``code`` and ``reason`` (``kind`` labels the metric)."""

    def __init__(self, reason: str, code: CloseCode = CloseCode.INVALID, kind: str = "protocol"):
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.kind = kind


# Fails a session from the producer side: bumping the epoch fences out any worker that owns it,
# so the status sticks (KEYS: meta, status stream, then every other key of the session.
# ARGV: reason, now, ttl, status stream maxlen). Like the worker's status writes, the change
# also goes to the session's status stream, where the API's event hub reads it.
_FAIL = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -2 end
local st = redis.call('HGET', KEYS[1], 'status')
if st == 'finished' or st == 'failed' or st == 'abandoned' then return 0 end
redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'status', 'failed', 'error', ARGV[1], 'updated', ARGV[2])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'status', 'failed', 'error', ARGV[1])
for i = 1, #KEYS do redis.call('EXPIRE', KEYS[i], tonumber(ARGV[3])) end
return 1
"""


#: the tenant of the connection being handled (set by the server from the presented key)
CONNECTION_TENANT: contextvars.ContextVar[str] = contextvars.ContextVar("voxq_ingest_tenant",
                                                                       default="default")


@dataclass
class Gateway:
    """Process-wide state: settings, Redis URL, credentials, limits, sessions being written."""

    settings: Settings
    url: str
    insecure: bool = False
    keys: Keys = field(init=False)
    key_checker: KeyChecker | None = field(init=False)
    nonces: NonceCache = field(default_factory=NonceCache)
    draining: asyncio.Event = field(default_factory=asyncio.Event)
    sessions: dict[str, asyncio.Event] = field(default_factory=dict)  # sid → set when released
    connections: dict[Dialect, set[Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.keys = Keys(self.settings.prefix)
        key = self.settings.ingest_key or self.settings.api_key
        self.key_checker = StaticKey(key.get_secret_value()) if key is not None else None
        self.connections = {d: set() for d in Dialect}
        self._auth_r: aioredis.Redis | None = None

    def scoped_keys(self) -> ScopedKeys:
        """The API's scoped keys plus the static gateway key (one Redis client, made on first
        use and kept for the process's life)."""
        if self._auth_r is None:
            self._auth_r = connect(self.url)
        static = self.key_checker if isinstance(self.key_checker, StaticKey) else None
        return ScopedKeys(static, self._auth_r, self.keys)

    async def close(self) -> None:
        """Close the key-checking Redis client, if one was made."""
        if self._auth_r is not None:
            client, self._auth_r = self._auth_r, None
            await client.aclose()

    async def has_scoped_keys(self) -> bool:
        """Whether the API's scoped keys exist in Redis (they authenticate ingest too)."""
        return await self.scoped_keys().any()

    def has_credentials(self) -> bool:
        """True when at least one way of authenticating is configured."""
        s = self.settings
        return any(x is not None for x in (self.key_checker, s.twilio_auth_token,
                                           s.audiohook_api_key))

    def at_capacity(self) -> bool:
        """True when the process holds as many sessions as it may."""
        return len(self.sessions) >= self.settings.ingest_max_sessions

    async def acquire(self, sid: str, wait: float = 5.0) -> None:
        """Reserve ``sid`` for one writer in this process (a resumed client waits for its old
        connection to let go); Rejected when it does not within ``wait`` seconds."""
        deadline = time.monotonic() + wait
        while sid in self.sessions:
            released = self.sessions[sid]
            left = deadline - time.monotonic()
            if left <= 0:
                raise Rejected(f"session {sid!r} is still being written by another connection",
                               CloseCode.TRY_AGAIN, "busy")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await released.wait()
        if self.at_capacity():
            raise Rejected("the gateway holds as many sessions as it may; try another",
                           CloseCode.TRY_AGAIN, "limit")
        self.sessions[sid] = asyncio.Event()

    def release(self, sid: str) -> None:
        """Let another connection write ``sid``."""
        ev = self.sessions.pop(sid, None)
        if ev is not None:
            ev.set()


@dataclass(frozen=True, slots=True)
class SessionSpec:
    """What a dialect asks for: id (None: a new uuid), format, vendor, options, metadata."""

    session_id: str | None = None
    rate: int = 16000
    channels: int = 1
    vendor: str = "local"
    language: str = "en-US"
    options: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=dict)


class IngestSession:
    """One connection's session on the bus, with the gateway's metrics and ack latency."""

    def __init__(self, gw: Gateway, dialect: Dialect) -> None:
        self.gw = gw
        self.dialect = dialect
        self.tenant = CONNECTION_TENANT.get()
        self.pub = Publisher(gw.url, settings=gw.settings, keys=gw.keys, tenant=self.tenant)
        self.pub.on_ack = self._on_ack
        self.meta: SessionMeta | None = None
        self._base_seq = 0
        self._chunk = 0
        self._bytes = 0
        self._inflight: deque[tuple[int, float]] = deque()  # (seq holding a message's end, t)
        self._held = False
        self._frames_metric = INGEST_FRAMES.labels(dialect.value)
        self._bytes_metric = INGEST_BYTES.labels(dialect.value)

    @property
    def session_id(self) -> str:
        """The session's id."""
        assert self.meta is not None
        return self.meta.session_id

    @property
    def acked_frames(self) -> int:
        """Sample frames (per channel) Redis has acknowledged."""
        assert self.meta is not None
        frame = 2 * self.meta.channels
        return min(self._bytes, (self.pub.acked_seq + 1) * self._chunk) // frame

    async def open(self, spec: SessionSpec, resume: bool = False) -> SessionMeta:
        """Create the session (or, with ``resume``, continue it if it exists)."""
        sid = validate_session_id(spec.session_id) if spec.session_id else uuid.uuid4().hex
        await self.gw.acquire(sid)
        self._held = True
        try:
            meta = None
            if resume:
                with contextlib.suppress(InvalidInput):  # nothing to resume: start it
                    meta = await self.pub.attach(sid)
                if meta is not None and (meta.tenant or "default") != self.tenant:
                    raise Rejected(f"session {sid!r} cannot be resumed with this key",
                                   CloseCode.POLICY, "auth")
            if meta is None:
                meta = await self.pub.open(sid, spec.vendor, spec.language, spec.rate,
                                           spec.channels, None, spec.options)
                if spec.metadata:
                    await self._store_metadata(sid, spec.metadata)
        except BaseException:
            self.gw.release(sid)
            self._held = False
            raise
        self.meta = meta
        self._chunk = self.pub.chunk_bytes
        self._base_seq = self.pub.acked_seq + 1
        self._bytes = self._base_seq * self._chunk
        return meta

    async def send(self, pcm: bytes, received: float) -> None:
        """Publish s16le PCM received at ``received`` (monotonic); waits while the buffer is full."""
        if not pcm:
            return
        self._frames_metric.inc()
        self._bytes_metric.inc(len(pcm))
        await self.pub.send(pcm)
        self._bytes += len(pcm)
        self._inflight.append(((self._bytes - 1) // self._chunk, received))

    async def close(self) -> None:
        """End of stream: write the rest and eos, wait until Redis has all of it."""
        try:
            await self.pub.close()
        finally:
            self.release()

    async def flush(self) -> None:
        """Wait until every full chunk sent so far is acknowledged."""
        await self.pub.flush()

    async def drop(self, grace: float = 10.0) -> None:
        """The client went away: give buffered chunks ``grace`` seconds to land, then stop
        without eos (a resumed connection or the idle timeout takes it from there)."""
        try:
            with contextlib.suppress(TimeoutError, VoxqError):
                async with asyncio.timeout(grace):
                    await self.pub.flush()
        finally:
            await self.pub.abort()
            self.release()

    async def fail(self, reason: str) -> None:
        """Bad input: stop publishing and mark the session failed with ``reason``."""
        try:
            await self.pub.abort()
            if self.meta is not None:
                await fail_session(self.gw, self.session_id, reason)
        finally:
            self.release()

    def release(self) -> None:
        if self._held and self.meta is not None:
            self.gw.release(self.meta.session_id)
        self._held = False

    def _on_ack(self, acked_seq: int) -> None:
        now = time.monotonic()
        q = self._inflight
        while q and q[0][0] <= acked_seq:
            INGEST_ACK_LATENCY.observe(now - q.popleft()[1])

    async def _store_metadata(self, sid: str, metadata: Mapping[str, str]) -> None:
        r = connect(self.gw.url)
        try:
            await r.hset(self.gw.keys.meta(sid), "metadata",
                         json.dumps(dict(metadata), separators=(",", ":"), sort_keys=True))
        finally:
            await r.aclose()


async def fail_session(gw: Gateway, sid: str, reason: str) -> None:
    """Mark ``sid`` failed with ``reason`` unless it already ended (best effort: logged)."""
    r: aioredis.Redis = connect(gw.url)
    try:
        keys = gw.keys.session_keys(sid)
        reason = redact(reason)[:500]
        if int(await r.eval(_FAIL, len(keys), *keys, reason, repr(time.time()),
                            str(gw.settings.retention_seconds), STATUS_MAXLEN)) == 1:
            await announce(r, gw.keys, sid, Status.FAILED, reason)
    except Exception as e:
        log.warning("could not mark session %s failed (%s): %s", sid, reason, e)
    finally:
        await r.aclose()


class RateGate:
    """Per-connection byte rate bound: how long to pause reading so a client averages at most
    ``bytes_per_second`` over ``burst_seconds`` (pausing pushes back through TCP)."""

    def __init__(self, bytes_per_second: int, burst_seconds: float = 5.0) -> None:
        self.rate = bytes_per_second
        self.burst = bytes_per_second * burst_seconds
        self.tokens = self.burst
        self.last: float | None = None

    def delay(self, nbytes: int, now: float) -> float:
        """Seconds to wait before reading more after ``nbytes`` arrived at ``now``."""
        if self.last is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        self.tokens -= nbytes
        return -self.tokens / self.rate if self.tokens < 0 else 0.0
