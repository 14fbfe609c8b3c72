"""Publish one session's audio to its Redis stream: validate, create, chunk, buffer, pipeline.

`Publisher` is the asyncio implementation; `SyncPublisher` drives one from a private
event-loop thread for recorders that are not asyncio.

Delivery contract (DESIGN.md invariant 1, "nothing acknowledged is lost"):

* ``send`` cuts PCM into ``chunk_ms`` chunks and queues them in a bounded buffer
  (``producer_buffer_chunks``); when the buffer is full ``send`` waits (backpressure).
* One background flush task writes whatever is queued as one pipeline of XADDs (no MULTI,
  so it stays cluster-safe; every key of a session shares one slot anyway).
* A chunk leaves the buffer, and ``acked_seq`` moves past it, only once its XADD returned an
  entry id, or once it was found in the stream after a failure.
* On a Redis failure the chunks stay buffered and the batch is retried with exponential
  backoff. A failure may be *uncertain* (the XADDs may have been applied before the reply was
  lost), so before resending the task reads the last ``seq`` in the stream (XREVRANGE COUNT 1)
  and drops what is already there: a resend never duplicates a chunk.
* The Redis client is built with redis-py's own retries turned off: redis-py replays a whole
  pipeline after a connection error, which would duplicate chunks the server had applied.

Replicas (``wait_replicas``, ``VOXQ_WAIT_REPLICAS``): Redis replicates asynchronously, so a
primary that dies right after answering an XADD can take the chunk with it when a replica is
promoted (Redis Cluster failover, Sentinel). With ``wait_replicas = N`` every pipeline ends
with ``WAIT N timeout`` on the same connection, and its chunks count as delivered only when
N replicas have them. A WAIT that falls short leaves them buffered and is treated like an
uncertain failure: the resync reads the stream, and the chunks found there are acknowledged
only after a replication barrier (a write that changes nothing, then WAIT, on one connection)
confirms they reached the replicas; those a promoted replica lacks are sent again. A primary
with fewer live replicas than N (one died and has not come back) is held to the replicas it
has: there is then no replica to fail over to, and its own AOF is what keeps the data.
Session creation (meta, index, control entry) is confirmed the same way.

Redis Cluster: every key of the session shares one hash slot, so the audio writes go through a
plain connection to the primary serving that slot (WAIT must follow the writes on their own
connection, which a cluster client does not promise); MOVED, READONLY, CLUSTERDOWN or a
connection error refresh the slot map and the next attempt goes to whichever node serves the
slot then.

The resync is exact when the failed connection's commands can no longer run after it: Redis
restarted, the connection was reset, or the server processed them before the resync's read
(Redis serves the older connection first). A pipeline delayed in the network for longer than
``socket_timeout`` plus the backoff could still land after the resync; a conditional XADD
(a script that checks the last seq) would close that window at some Redis CPU per chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

import redis.asyncio as aioredis
import redis.exceptions as rexc
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from voxq.access import DEFAULT_TENANT, validate_tenant
from voxq.audio import Chunker, chunk_bytes_for
from voxq.backoff import Backoff
from voxq.errors import (
    InvalidAudio,
    InvalidInput,
    RedisUnavailable,
    SessionExists,
    SessionFailed,
    UnknownSession,
    VoxqError,
)
from voxq.keys import Keys
from voxq.lifecycle import announce
from voxq.records import SessionMeta, Status, decode_chunk, encode_chunk, encode_eos
from voxq.redis_conn import check_reachable, connect, connect_node, is_cluster_url, redact_url
from voxq.sessions import CREATE_META, create_session, ensure_group, stamped
from voxq.settings import Settings, get_settings
from voxq.stt_offers import validate_session
from voxq.vendor_names import parse_fallback

log = logging.getLogger("voxq.producer")

T = TypeVar("T")

#: error replies that say "not now" (the command was not applied): retry them
_TRANSIENT_REPLIES = ("OOM", "READONLY", "LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN",
                      "NOREPLICAS", "BUSY", "MOVED", "ASK")
#: the same replies as redis-py parses them (the code is not part of the message then)
_TRANSIENT_ERRORS = (rexc.OutOfMemoryError, rexc.ReadOnlyError, rexc.BusyLoadingError,
                     rexc.MasterDownError, rexc.TryAgainError, rexc.ClusterDownError,
                     rexc.AskError)  # MovedError is an AskError

# A write that changes nothing but replicates (it sets a field to the value it has), so that a
# WAIT after it on the same connection covers every write the primary made before it (from
# Redis 7 a connection's WAIT offset moves only with its own replicated commands).
_BARRIER = """
local v = redis.call('HGET', KEYS[1], 'created')
if v then redis.call('HSET', KEYS[1], 'created', v) end
return v and 1 or 0
"""


class ReplicasBehind(rexc.RedisError):
    """WAIT timed out with fewer replicas than asked: the primary has the writes, the replicas
    may not (treated as uncertain: resync, confirm, resend what is missing)."""


def session_meta(session_id: str, vendor: str = "local", language: str = "en-US",
                 rate: int = 16000, channels: int = 1, chunk_ms: int = 100,
                 options: Mapping[str, Any] | None = None, webhook: str = "", *,
                 webhook_finals: bool = False, fallback: str | Sequence[str] = (),
                 tenant: str = "") -> SessionMeta:
    """Validate a new session's format, vendor and options without touching Redis; ``webhook``
    is a URL the API posts this session's end event to (signed with VOXQ_WEBHOOK_SECRET), and
    each final too with ``webhook_finals``; ``fallback``: vendors to switch to, in order,
    when ``vendor`` fails (``"aws,local"`` or a list; each runs with its default options);
    ``tenant`` owns it ("" or "default": the default tenant)."""
    meta = SessionMeta(session_id=session_id, vendor=vendor, language=language, rate=rate,
                       channels=channels, chunk_ms=chunk_ms, options=dict(options or {}),
                       webhook=webhook, webhook_finals=webhook_finals,
                       fallback=parse_fallback(fallback, vendor),
                       tenant="" if tenant == "default" else tenant)
    validate_vendor(meta)
    return meta


def validate_vendor(meta: SessionMeta) -> None:
    """Check vendor name and options against what each recognizer accepts (the core's
    ``voxq.stt_offers``), so mistakes fail at the producer; each fallback vendor is checked
    with its default options."""
    validate_session(meta.vendor, meta.language, meta.rate, meta.channels, meta.options)
    for name in meta.fallback:
        validate_session(name, meta.language, meta.rate, meta.channels, {})


def _text(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v or "")


def _outcome(status: Any, error: Any) -> SessionOutcome | None:
    """The outcome a meta hash's status and error fields say, None while the session runs."""
    try:
        st = Status(_text(status))
    except ValueError:
        return None
    return SessionOutcome(st, _text(error)) if st.terminal else None


def _failure_text(sid: str, outcome: SessionOutcome) -> str:
    why = f": {outcome.error}" if outcome.error else ""
    return f"session {sid!r} {outcome.status.value}{why}"


def _is_uncertain(e: BaseException) -> bool:
    """True if a failure may have happened after Redis applied the commands."""
    return isinstance(e, rexc.ConnectionError | rexc.TimeoutError | OSError | TimeoutError
                      | ReplicasBehind | rexc.RedisClusterException)


def _is_transient(e: BaseException) -> bool:
    """True if retrying the same write later can succeed."""
    if _is_uncertain(e) or isinstance(e, _TRANSIENT_ERRORS):
        return True
    return isinstance(e, rexc.ResponseError) and str(e).upper().startswith(_TRANSIENT_REPLIES)


@dataclass(slots=True)
class PublisherStats:
    """Counters of one publisher; everything but ``queued`` counts acknowledged writes only."""

    chunks: int = 0            # audio chunks acknowledged (eos not counted)
    bytes: int = 0             # PCM bytes in acknowledged chunks
    acked_seq: int = -1        # highest acknowledged seq (the eos seq once closed)
    queued: int = 0            # chunks handed to the buffer (eos included)
    pipelines: int = 0         # pipelines that Redis answered
    failures: int = 0          # failed write attempts
    resyncs: int = 0           # XREVRANGE checks after an uncertain failure
    skipped: int = 0           # chunks found already written on resync (not resent)
    send_waits: int = 0        # times send() had to wait for buffer space
    lost: int = 0              # acknowledged chunks a resync found missing (Redis lost them)
    lost_seqs: list[tuple[int, int]] = field(default_factory=list)  # their seq ranges
    waits: int = 0             # WAITs that confirmed writes (wait_replicas > 0)
    wait_shortfalls: int = 0   # WAITs that timed out short of wait_replicas
    degraded_waits: int = 0    # WAITs accepted short of wait_replicas: fewer replicas were live
    unacked_chunks: int = 0    # audio chunks abort() dropped before Redis acknowledged them
    unacked_bytes: int = 0     # their PCM bytes, plus a partial chunk not yet cut


@dataclass(frozen=True, slots=True)
class SessionOutcome:
    """How a session ended, as its worker wrote it into the meta hash."""

    status: Status
    error: str = ""

    @property
    def ok(self) -> bool:
        """True if the session finished (every other terminal status is a failure)."""
        return self.status is Status.FINISHED


@dataclass(frozen=True, slots=True)
class _Item:
    seq: int
    fields: Mapping[str, bytes | str]
    nbytes: int


class PublishFailed(RedisUnavailable):
    """The publisher gave up writing to Redis (retry time exhausted or a permanent error)."""


class Publisher:
    """Async publisher of one session: ``open``, ``send`` any amount of PCM, ``close``."""

    def __init__(self, url: str, *, settings: Settings | None = None, keys: Keys | None = None,
                 buffer_chunks: int | None = None, retry_timeout: float | None = 60.0,
                 socket_timeout: float = 10.0, backoff_min: float = 0.05,
                 backoff_max: float = 2.0, wait_replicas: int | None = None,
                 wait_timeout_ms: int | None = None, tenant: str | None = None) -> None:
        self.settings = settings or get_settings()
        # the tenant of the sessions this publisher creates (default VOXQ_TENANT)
        self.tenant = validate_tenant(tenant if tenant is not None else self.settings.tenant)
        self.url = url
        self.wait_replicas = (self.settings.wait_replicas if wait_replicas is None
                              else wait_replicas)
        self.wait_timeout_ms = (self.settings.wait_timeout_ms if wait_timeout_ms is None
                                else wait_timeout_ms)
        if self.wait_replicas < 0 or self.wait_timeout_ms < 1:
            raise InvalidInput("wait_replicas must be >= 0 and wait_timeout_ms >= 1")
        self.cluster = is_cluster_url(url)
        self.keys = keys or Keys(self.settings.prefix)
        self.capacity = buffer_chunks or self.settings.producer_buffer_chunks
        if self.capacity < 1:
            raise InvalidInput("buffer_chunks must be at least 1")
        self.retry_timeout = retry_timeout
        self.socket_timeout = socket_timeout
        self.backoff_min, self.backoff_max = backoff_min, backoff_max
        self._backoff = Backoff(base=backoff_min, cap=max(backoff_min, backoff_max))
        self.stats = PublisherStats()
        self.meta: SessionMeta | None = None
        self._r: aioredis.Redis | None = None
        self._node: aioredis.Redis | None = None  # cluster: the primary of the session's slot
        self._node_stale = False  # cluster: refresh the slot map before the next write
        self._audio_key = ""
        self._meta_key = ""
        self._chunker: Chunker | None = None
        self._frame = 2
        self._max_bytes = 0
        self._sent_bytes = 0
        self._next_seq = 0
        self._pending: deque[_Item] = deque()
        self._cond = asyncio.Condition()
        self._send_lock = asyncio.Lock()  # one send()/close() at a time keeps chunks in order
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._aborted = False
        self._closed = False
        self._error: BaseException | None = None
        #: called with the new ``acked_seq`` after every acknowledgement (ingest ack latency)
        self.on_ack: Callable[[int], None] | None = None

    # --- public API ------------------------------------------------------------------------

    @property
    def session_id(self) -> str:
        """The open session's id."""
        return self._require_open().session_id

    @property
    def acked_seq(self) -> int:
        """Highest seq whose XADD Redis acknowledged (-1 before the first)."""
        return self.stats.acked_seq

    @property
    def buffered(self) -> int:
        """Chunks queued or in flight, not yet acknowledged."""
        return len(self._pending)

    @property
    def chunk_bytes(self) -> int:
        """Bytes of one full chunk of the open session."""
        m = self._require_open()
        return chunk_bytes_for(m.rate, m.channels, m.chunk_ms)

    @property
    def closed(self) -> bool:
        """True after close() or abort()."""
        return self._closed

    async def open(self, session_id: str, vendor: str = "local", language: str = "en-US",
                   rate: int = 16000, channels: int = 1, chunk_ms: int | None = None,
                   options: Mapping[str, Any] | None = None, webhook: str = "", *,
                   webhook_finals: bool = False,
                   fallback: str | Sequence[str] = ()) -> SessionMeta:
        """Validate, then create the session in Redis and start the flush task; ``webhook``:
        a URL the API posts the session's end event to (and each final, with
        ``webhook_finals``); ``fallback``: vendors to switch to when ``vendor`` fails."""
        if self.meta is not None or self._closed:
            raise InvalidInput("this publisher has already been opened")
        meta = session_meta(session_id, vendor, language, rate, channels,
                            chunk_ms or self.settings.default_chunk_ms, options, webhook,
                            webhook_finals=webhook_finals, fallback=fallback,
                            tenant=self.tenant)
        r = connect(self.url, retry=Retry(NoBackoff(), 0), socket_timeout=self._socket_timeout())
        self._r = r
        try:
            await check_reachable(r, self.url)
            if self.wait_replicas:
                meta = await self._create_confirmed(meta)
            else:
                meta = await create_session(r, self.keys, meta)
        except BaseException as e:
            await self._disconnect()
            if isinstance(e, rexc.ConnectionError | rexc.TimeoutError | OSError
                          | rexc.RedisClusterException) and not isinstance(e, RedisUnavailable):
                raise RedisUnavailable(
                    f"cannot reach Redis at {redact_url(self.url)}: {e}") from e
            raise
        self.meta = meta
        self._audio_key = self.keys.audio(meta.session_id)
        self._meta_key = self.keys.meta(meta.session_id)
        self._chunker = Chunker(chunk_bytes_for(meta.rate, meta.channels, meta.chunk_ms))
        self._frame = 2 * meta.channels
        self._max_bytes = self.settings.max_session_seconds * meta.bytes_per_second
        self._task = asyncio.create_task(self._flush_loop(), name=f"voxq-publish-{session_id}")
        return meta

    async def attach(self, session_id: str) -> SessionMeta:
        """Continue an existing session that has not ended (a resumed ingest client): the next
        chunk follows the last one in its stream. SessionExists if it ended or failed.

        Only one publisher may write a session at a time; the caller makes sure of that.
        """
        if self.meta is not None or self._closed:
            raise InvalidInput("this publisher has already been opened")
        r = connect(self.url, retry=Retry(NoBackoff(), 0), socket_timeout=self._socket_timeout())
        self._r = r
        try:
            await check_reachable(r, self.url)
            h = await r.hgetall(self.keys.meta(session_id))
            if not h:
                raise InvalidInput(f"no session {session_id!r} to resume")
            meta = SessionMeta.from_hash(h)
            if meta.status.terminal:
                raise SessionExists(f"session {session_id!r} is {meta.status.value}")
            last: Any = await r.xrevrange(self.keys.audio(session_id), "+", "-", count=1)
        except BaseException:
            await self._disconnect()
            raise
        chunk = decode_chunk(last[0][1]) if last else None
        if chunk is not None and chunk.eos:
            await self._disconnect()
            raise SessionExists(f"session {session_id!r} has already ended")
        self.meta = meta
        self._audio_key = self.keys.audio(session_id)
        self._meta_key = self.keys.meta(session_id)
        self._chunker = Chunker(chunk_bytes_for(meta.rate, meta.channels, meta.chunk_ms))
        self._frame = 2 * meta.channels
        self._max_bytes = self.settings.max_session_seconds * meta.bytes_per_second
        self._next_seq = chunk.seq + 1 if chunk is not None else 0
        self.stats.acked_seq = self._next_seq - 1
        # every chunk before the last one is full size (only close() writes a short one)
        self._sent_bytes = self._next_seq * self._chunker.chunk_size
        self._task = asyncio.create_task(self._flush_loop(), name=f"voxq-publish-{session_id}")
        return meta

    async def send(self, pcm: bytes | bytearray | memoryview) -> None:
        """Queue s16le PCM (whole frames, any length); waits while the buffer is full.

        Returning means queued, not written: ``acked_seq``/``flush()`` tell what Redis has.
        A send cancelled while waiting may have queued part of its data.
        """
        self._check_writable()
        if not isinstance(pcm, bytes | bytearray | memoryview):
            raise InvalidAudio(f"send() takes PCM bytes, not {type(pcm).__name__}")
        view = memoryview(pcm).cast("B")
        if len(view) % self._frame:
            raise InvalidAudio(
                f"{len(view)} bytes is not a whole number of s16le frames of "
                f"{self._frame // 2} channel(s)")
        if self._sent_bytes + len(view) > self._max_bytes:
            raise InvalidInput(
                f"session would exceed the {self.settings.max_session_seconds} s maximum")
        self._sent_bytes += len(view)
        assert self._chunker is not None
        step = self._chunker.chunk_size
        # feed at most one chunk at a time so the chunker never holds more than two chunks;
        # drain feed() completely before awaiting, so a cancelled send leaves it consistent
        async with self._send_lock:
            for off in range(0, len(view), step):
                for chunk in list(self._chunker.feed(view[off:off + step])):  # type: ignore[arg-type]
                    await self._put(chunk)

    async def flush(self) -> None:
        """Wait until every queued chunk is acknowledged; raises if publishing failed."""
        async with self._cond:
            while self._pending and self._error is None:
                await self._cond.wait()
        self._raise_if_failed()

    async def close(self, timeout: float | None = None) -> None:
        """Send the short last chunk and eos, wait for all of it to be acknowledged, disconnect.

        If it cannot finish within ``timeout`` seconds the publisher aborts and raises.
        """
        if self._closed:
            return
        self._require_open()
        if self._stopping:
            raise InvalidInput(f"session {self.session_id!r} is already closing")
        assert self._chunker is not None
        try:
            self._raise_if_failed()
            async with self._send_lock:
                for chunk in list(self._chunker.flush()):
                    await self._put(chunk)
                await self._put(None)
            async with self._cond:
                self._stopping = True
                self._cond.notify_all()
            assert self._task is not None
            # asyncio.wait, not wait_for: on Python 3.11 wait_for can swallow a cancellation
            done, _ = await asyncio.wait({self._task}, timeout=timeout)
        except BaseException:
            await self.abort()
            raise
        if not done:
            unwritten = len(self._pending)
            await self.abort()
            raise PublishFailed(f"could not finish session {self.session_id!r} within "
                                f"{timeout} s; aborted with {unwritten} chunk(s) unwritten")
        self._closed = True
        await self._disconnect()
        self._raise_if_failed()

    async def session_outcome(self, poll: float = 0.25) -> SessionOutcome:
        """Wait until a worker ends the session (finished, failed or abandoned) and return how.

        Polls the meta hash on its own connection (Redis being away only delays the answer);
        works before and after ``close()``. A session that fails while audio is still being
        published also makes the next ``send()``/``close()`` raise SessionFailed, so a
        producer stops instead of streaming into a dead session. UnknownSession if the meta
        disappears (expired or deleted).
        """
        meta = self._require_open()
        key = self.keys.meta(meta.session_id)
        r = connect(self.url, socket_timeout=self._socket_timeout())
        try:
            while True:
                try:
                    raw: Any = await r.hmget(key, "status", "error")
                except (rexc.ConnectionError, rexc.TimeoutError, OSError,
                        rexc.RedisClusterException):
                    raw = None  # Redis away for now: keep watching
                if raw is not None:
                    if raw[0] is None:
                        raise UnknownSession(f"session {meta.session_id!r} no longer exists")
                    outcome = _outcome(raw[0], raw[1])
                    if outcome is not None:
                        if not outcome.ok and not self._closed:
                            await self._fail(SessionFailed(_failure_text(meta.session_id,
                                                                         outcome)))
                        return outcome
                await asyncio.sleep(poll)
        finally:
            with contextlib.suppress(Exception):
                await r.aclose()

    async def abort(self) -> None:
        """Stop without eos: drop unwritten chunks and disconnect (workers time it out).

        What was dropped unacknowledged is counted in ``stats.unacked_chunks``/``unacked_bytes``.
        """
        self._closed = self._aborted = True
        task = self._task
        if task is not None and not task.done():
            async with self._cond:
                self._cond.notify_all()
            # redis-py awaits asyncio.wait_for, which on Python 3.11 can swallow a
            # cancellation (cpython gh-86296): cancel until the task has really ended
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=0.1)
        async with self._cond:
            for item in self._pending:
                if "pcm" in item.fields:
                    self.stats.unacked_chunks += 1
                    self.stats.unacked_bytes += item.nbytes
            if self._chunker is not None:
                self.stats.unacked_bytes += sum(len(c) for c in self._chunker.flush())
            self._pending.clear()
            self._cond.notify_all()
        await self._disconnect()

    async def __aenter__(self) -> Publisher:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self.meta is None or self._closed:
            return
        if et is None:
            await self.close()
        else:
            await self.abort()

    # --- internals -------------------------------------------------------------------------

    def _require_open(self) -> SessionMeta:
        if self.meta is None:
            raise InvalidInput("the publisher is not open: call open() first")
        return self.meta

    def _check_writable(self) -> None:
        self._require_open()
        if self._closed or self._stopping:
            raise InvalidInput(f"session {self.session_id!r} is closed: nothing more can be sent")
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            if isinstance(self._error, VoxqError):
                raise self._error
            raise PublishFailed(str(self._error)) from self._error

    async def _put(self, pcm: bytes | None) -> None:
        """Append a chunk (None: the eos entry) to the bounded buffer, waiting for space."""
        async with self._cond:
            if len(self._pending) >= self.capacity and self._error is None:
                self.stats.send_waits += 1
                while (len(self._pending) >= self.capacity and self._error is None
                       and not self._aborted):
                    await self._cond.wait()
            if self._aborted:
                raise InvalidInput(f"session {self.session_id!r} was aborted")
            self._raise_if_failed()
            seq = self._next_seq
            if pcm is None:
                self._pending.append(_Item(seq, encode_eos(seq), 0))
            else:
                max_bytes = self.meta.max_chunk_bytes if self.meta is not None else None
                self._pending.append(_Item(seq, encode_chunk(seq, pcm, max_bytes), len(pcm)))
            self._next_seq += 1
            self.stats.queued += 1
            self._cond.notify_all()

    async def _ack(self, n: int) -> None:
        """Drop the first ``n`` buffered items: Redis has them."""
        if n <= 0:
            return
        async with self._cond:
            for _ in range(n):
                item = self._pending.popleft()
                self.stats.acked_seq = item.seq
                if "pcm" in item.fields:
                    self.stats.chunks += 1
                    self.stats.bytes += item.nbytes
            self._cond.notify_all()
        if self.on_ack is not None:
            self.on_ack(self.stats.acked_seq)

    async def _fail(self, e: BaseException) -> None:
        async with self._cond:
            self._error = e
            self._cond.notify_all()

    async def _flush_loop(self) -> None:
        """Write everything queued as one pipeline; retry with backoff, resync when uncertain."""
        delays = self._backoff.delays()
        failing_since: float | None = None
        uncertain = False
        while not self._aborted:
            async with self._cond:
                while not self._pending and not self._stopping and not self._aborted:
                    await self._cond.wait()
                if not self._pending or self._aborted:
                    return
            try:
                if uncertain:
                    await self._resync()
                    uncertain = False
                    if not self._pending:
                        continue
                await self._write(list(self._pending))
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.stats.failures += 1
                if not isinstance(e, ReplicasBehind):  # the node is fine, its replicas slow
                    await self._drop_node()
                now = time.monotonic()
                failing_since = failing_since or now
                if not _is_transient(e):
                    await self._fail(PublishFailed(f"Redis refused audio for session "
                                                   f"{self.session_id!r}: {e}"))
                    return
                if self.retry_timeout is not None and now - failing_since > self.retry_timeout:
                    await self._fail(PublishFailed(
                        f"cannot write to Redis at {redact_url(self.url)} for "
                        f"{now - failing_since:.0f} s ({e}); {len(self._pending)} chunk(s) "
                        f"of session {self.session_id!r} unwritten"))
                    return
                uncertain = True
                delay = next(delays)
                log.warning("publish to %s failed (%s); retrying in %.2f s",
                            redact_url(self.url), e, delay)
                await asyncio.sleep(delay)
                continue
            failing_since, delays = None, self._backoff.delays()

    def _socket_timeout(self) -> float:
        """Socket timeout that leaves room for a WAIT to time out by itself first."""
        return max(self.socket_timeout, self.wait_timeout_ms / 1000 + 5 if self.wait_replicas
                   else 0.0)

    async def _writer(self) -> aioredis.Redis:
        """The client the audio goes through: the main one, or on a cluster a plain client on
        the primary serving the session's slot (found again after a failure)."""
        assert self._r is not None
        if not self.cluster:
            return self._r
        if self._node is None:
            self._node = await self._node_client(self._meta_key or self._audio_key,
                                                 refresh=self._node_stale)
            self._node_stale = False
        return self._node

    async def _node_client(self, key: str, refresh: bool) -> aioredis.Redis:
        """A plain client on the cluster node serving ``key`` now."""
        rc: Any = self._r
        assert isinstance(rc, RedisCluster)
        try:
            if refresh:
                await rc.nodes_manager.initialize()
            node = rc.get_node_from_key(key)
        except rexc.RedisError:
            raise
        except Exception as e:  # the slot map cannot be read right now
            raise rexc.ConnectionError(f"cluster slot map unavailable: {e}") from e
        if node is None:
            raise rexc.ConnectionError(f"no cluster node serves {key}")
        return connect_node(self.url, node.host, int(node.port), retry=Retry(NoBackoff(), 0),
                            socket_timeout=self._socket_timeout())

    async def _drop_node(self) -> None:
        """Forget the cluster node (after a failure): the next write finds the slot again."""
        if not self.cluster:
            return
        self._node_stale = True
        node, self._node = self._node, None
        if node is not None:
            with contextlib.suppress(Exception):
                await node.aclose()

    async def _confirm(self, r: aioredis.Redis, acked: Any) -> None:
        """Check a WAIT's answer against ``wait_replicas``; ReplicasBehind if it fell short
        while the primary had that many live replicas (see the module docstring)."""
        if isinstance(acked, BaseException):
            raise acked
        got = int(acked)
        if got >= self.wait_replicas:
            self.stats.waits += 1
            return
        role: Any = await r.execute_command("ROLE")
        live = len(role[2]) if role and role[0] in (b"master", "master") else 0
        if got >= min(self.wait_replicas, live):
            self.stats.waits += 1
            self.stats.degraded_waits += 1
            if self.stats.degraded_waits == 1 or self.stats.degraded_waits % 100 == 0:
                log.warning("%d replica(s) confirmed session %s's audio, fewer than the %d "
                            "asked: its primary has only %d live replica(s) now", got,
                            self.meta.session_id if self.meta else "(new)",
                            self.wait_replicas, live)
            return
        self.stats.wait_shortfalls += 1
        raise ReplicasBehind(f"{got} of {self.wait_replicas} replica(s) confirmed the writes "
                             f"within {self.wait_timeout_ms} ms ({live} live)")

    async def _create_confirmed(self, meta: SessionMeta) -> SessionMeta:
        """create_session's writes, each confirmed by WAIT on its own connection."""
        assert self._r is not None
        meta, flat = stamped(meta)
        sid = meta.session_id
        mkey = self.keys.meta(sid)
        created = await self._confirmed(mkey, lambda p: p.eval(CREATE_META, 1, mkey, *flat))
        if not created:
            raise SessionExists(f"session {sid!r} already exists")
        await ensure_group(self._r, self.keys)
        await self._confirmed(self.keys.index,
                              lambda p: p.zadd(self.keys.index, {sid: meta.created}))
        tenant_index = self.keys.tenant_index(meta.tenant or DEFAULT_TENANT)
        await self._confirmed(tenant_index,
                              lambda p: p.zadd(tenant_index, {sid: meta.created}))
        await self._confirmed(self.keys.sessions, lambda p: p.xadd(self.keys.sessions,
                                                                   {"sid": sid}))
        await announce(self._r, self.keys, sid, Status.CREATED, vendor=meta.vendor)
        return meta

    async def _confirmed(self, key: str, command: Any) -> Any:
        """One write and WAIT in one pipeline on the node serving ``key``; its reply."""
        assert self._r is not None
        r = await self._node_client(key, refresh=False) if self.cluster else self._r
        try:
            async with r.pipeline(transaction=False) as p:
                command(p)
                p.wait(self.wait_replicas, self.wait_timeout_ms)
                reply, acked = await p.execute()
            try:
                await self._confirm(r, acked)
            except ReplicasBehind as e:
                raise PublishFailed(f"Redis stored session data at {key} but {e}; not starting "
                                    "a session its primary's failure could lose") from e
            return reply
        finally:
            if r is not self._r:
                await r.aclose()

    async def _write(self, batch: list[_Item]) -> None:
        """One pipeline of XADDs (then WAIT when replicas must confirm); acknowledge the
        answered prefix, raise the first error."""
        r = await self._writer()
        async with r.pipeline(transaction=False) as p:
            for item in batch:
                p.xadd(self._audio_key, dict(item.fields))  # type: ignore[arg-type]
            if self.wait_replicas:
                p.wait(self.wait_replicas, self.wait_timeout_ms)
            results = await p.execute(raise_on_error=False)
        self.stats.pipelines += 1
        if self.wait_replicas:
            acked = results.pop()
            if isinstance(acked, BaseException):  # e.g. a replica answering: nothing counts
                raise next((x for x in results if isinstance(x, BaseException)), acked)
            await self._confirm(r, acked)  # ReplicasBehind: nothing counts as delivered yet
        ok = 0
        while ok < len(results) and not isinstance(results[ok], BaseException):
            ok += 1
        await self._ack(ok)
        if ok < len(results):
            later = [x for x in results[ok:] if not isinstance(x, BaseException)]
            if later:
                # cannot happen with the error replies Redis gives XADD (they reject every
                # write alike), but if it did the stream would be out of order: stop loudly
                raise rexc.ResponseError(
                    f"chunk {batch[ok].seq} was refused while later chunks were written; "
                    f"the stream is out of order: {results[ok]}")
            raise results[ok]

    async def _resync(self) -> None:
        """After an uncertain failure, drop buffered chunks the stream already holds (once
        replicas confirm them, when they must)."""
        r = await self._writer()
        self.stats.resyncs += 1
        async with r.pipeline(transaction=False) as p:
            p.xrevrange(self._audio_key, "+", "-", count=1)
            if self.wait_replicas:
                p.eval(_BARRIER, 1, self._meta_key)
                p.wait(self.wait_replicas, self.wait_timeout_ms)
            replies = await p.execute()
        entries = replies[0]
        if self.wait_replicas:
            await self._confirm(r, replies[-1])
        last = decode_chunk(entries[0][1] or {}).seq if entries else -1
        gap = (last + 1, self.stats.acked_seq)
        if last < self.stats.acked_seq and gap not in self.stats.lost_seqs:  # count it once
            self.stats.lost += self.stats.acked_seq - last
            self.stats.lost_seqs.append(gap)
            log.error("stream %s ends at seq %d but seq %d was acknowledged: Redis lost "
                      "acknowledged writes (persistence off, or a failover to a replica that "
                      "had not received them: see wait_replicas)", self._audio_key, last,
                      self.stats.acked_seq)
        n = 0
        for item in self._pending:
            if item.seq > last:
                break
            n += 1
        if n:
            self.stats.skipped += n
            log.info("resync: %d chunk(s) up to seq %d were already written", n, last)
            await self._ack(n)

    async def _disconnect(self) -> None:
        await self._drop_node()
        if self._r is not None:
            r, self._r = self._r, None
            with contextlib.suppress(Exception):
                await r.aclose()


class SyncPublisher:
    """Blocking publisher for recorders that are not asyncio.

    Design: a thin wrapper that runs an async `Publisher` on a private event loop in a daemon
    thread and waits for each call's result. There is one implementation of buffering, retry
    and resync, so both flavours keep the same delivery guarantees; ``send`` blocks the calling
    thread exactly while the async one would wait for buffer space.
    """

    def __init__(self, url: str, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="voxq-sync-publisher")
        self._thread.start()
        try:
            self._pub: Publisher = self._call(self._make(url, kwargs))
        except BaseException:
            self._shutdown()
            raise

    @staticmethod
    async def _make(url: str, kwargs: dict[str, Any]) -> Publisher:
        return Publisher(url, **kwargs)

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        if self._loop.is_closed():
            coro.close()
            raise InvalidInput("this publisher is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    @property
    def stats(self) -> PublisherStats:
        """Counters of the underlying publisher."""
        return self._pub.stats

    @property
    def acked_seq(self) -> int:
        """Highest seq whose XADD Redis acknowledged."""
        return self._pub.acked_seq

    @property
    def meta(self) -> SessionMeta | None:
        """The open session's meta."""
        return self._pub.meta

    def open(self, session_id: str, vendor: str = "local", language: str = "en-US",
             rate: int = 16000, channels: int = 1, chunk_ms: int | None = None,
             options: Mapping[str, Any] | None = None, *,
             fallback: str | Sequence[str] = ()) -> SessionMeta:
        """Validate and create the session (see Publisher.open)."""
        try:
            return self._call(self._pub.open(session_id, vendor, language, rate, channels,
                                             chunk_ms, options, fallback=fallback))
        except BaseException:
            self._shutdown()
            raise

    def send(self, pcm: bytes | bytearray | memoryview) -> None:
        """Queue PCM; blocks while the buffer is full."""
        self._call(self._pub.send(pcm))

    def flush(self) -> None:
        """Block until every queued chunk is acknowledged."""
        self._call(self._pub.flush())

    def session_outcome(self, timeout: float | None = None) -> SessionOutcome:
        """Block until the session ends and say how (see Publisher.session_outcome)."""
        return self._call(self._pub.session_outcome(), timeout)

    def close(self, timeout: float | None = None) -> None:
        """Write the remainder and eos, wait for acknowledgement, stop the loop thread."""
        try:
            if not self._loop.is_closed():
                self._call(self._pub.close(timeout))
        finally:
            self._shutdown()

    def abort(self) -> None:
        """Stop without eos and stop the loop thread."""
        try:
            if not self._loop.is_closed():
                self._call(self._pub.abort())
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> SyncPublisher:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._loop.is_closed():
            return
        if et is None and self._pub.meta is not None:
            self.close()
        else:
            self.abort()
