"""The streaming-recognizer life cycle over WebSockets, written once for every vendor.

`WebSocketRecognizer` owns what every vendor session does the same way (as pipecat's
``WebsocketSTTService`` and LiveKit's ``RecognizeStream`` do): connecting, re-cutting and sending
audio, keep-alive through silence, one vendor stream per channel for vendors without
multichannel, the session timeline (`voxq.timeline`), the end-of-stream flush, reading results
through the vendor's pure mapper, turning failures into the `VendorError` tree (secrets
redacted once, here and in `workers.vendors.redaction`) and rolling to a fresh vendor session
before the vendor's limit.

A vendor adapter (``workers/vendors/<vendor>/stt.py``) fills in hooks: `endpoint` (URL, headers,
subprotocols), `greet` (a first message and its answer), `encode_audio`, `keepalive`,
`end_frames`, `decode` (its pure protocol module's mapper) and `closed` / `handshake_error`
(what a close or an HTTP refusal means), and declares `limits` from ``docs/protocols/``.

Rolling: a *generation* is the set of connections opened together (one, or one per channel).
Once the current generation is ``rollover_after`` seconds old (wall clock or audio sent,
whichever is more) the next audio chunk goes to a fresh generation if every stream is between
utterances (no partial open, nothing loud sent after the last final), or regardless at
``rollover_deadline``. The old generation gets its end-of-stream messages and is drained in
full before any result of the new one is yielded; the new one's times start at the session
audio already sent. Audio is never sent twice, so the finals straddling the switch come once,
from the old stream.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import urlsplit

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from voxq import __version__
from voxq.aio import within
from voxq.settings import Settings
from voxq.timeline import Timeline
from workers.vendors.base import (
    Recognizer,
    RecognizerConfig,
    Transcript,
    VendorAuthError,
    VendorError,
    VendorRejected,
    VendorRetryable,
)
from workers.vendors.redaction import vendor_text, websocket_logger

log = logging.getLogger(__name__)

__all__ = ["Endpoint", "Link", "SessionLimits", "WebSocketRecognizer", "last_loud"]

Frame = bytes | str

LOUD_RMS = 328.0
"""A 10 ms block this loud (about -40 dBFS) may be speech: no roll-over right after it."""


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """What one vendor session tolerates (seconds; None: the vendor states no limit)."""

    max_session: float | None = None  # one connection's life, wall clock or audio
    max_silence: float | None = None  # without any frame before the vendor gives up
    max_audio: float | None = None  # seconds of audio one connection accepts

    @property
    def life(self) -> float | None:
        """The tighter of the session-length and audio caps."""
        caps = [x for x in (self.max_session, self.max_audio) if x]
        return min(caps) if caps else None

    def roll_after(self) -> float | None:
        """When to start looking for an utterance boundary: 15 min (or a quarter) before."""
        life = self.life
        return None if life is None else max(life * 0.75, life - 900.0)

    def roll_deadline(self) -> float | None:
        """When to roll even mid-utterance: 3 min (or 5 %) before the limit."""
        life = self.life
        return None if life is None else max(life * 0.95, life - 180.0)


def where_of(url: str) -> str:
    """The URL as messages may show it: scheme, host, port and path, never user info or the
    query (where tokens, keys and signatures travel)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    try:
        port = "" if parts.port is None else f":{parts.port}"
    except ValueError:  # not a number: the URL is refused elsewhere, with this text
        port = ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to connect: ``where`` is the URL without anything secret, for messages."""

    url: str
    where: str
    headers: Mapping[str, str] = field(default_factory=dict)
    subprotocols: tuple[str, ...] = ()


@dataclass(eq=False)
class Link:
    """One vendor connection: one stream of all channels, or of one channel."""

    ws: ClientConnection
    index: int
    channel: int | None  # None: every channel on this connection
    timeline: Timeline
    opened: float = field(default_factory=time.monotonic)
    last_sent: float = field(default_factory=time.monotonic)
    open_channels: set[int] = field(default_factory=set)  # a partial is open on these
    last_final_end: int = 0  # connection frames
    last_loud_end: int = 0  # connection frames
    ended: bool = False  # end-of-stream messages sent
    done: bool = False  # the vendor said its last word (the adapter sets it)
    failure: VendorError | None = None
    reader: asyncio.Task[None] | None = None
    notes: dict[str, Any] = field(default_factory=dict)  # the adapter's per-connection state

    @property
    def age(self) -> float:
        """Seconds this connection has lasted: wall clock or audio sent, whichever is more."""
        return max(time.monotonic() - self.opened, self.timeline.frames / self.timeline.rate)


@dataclass(eq=False)
class _Generation:
    """Links opened together, and their results in arrival order (None: a link finished)."""

    links: list[Link]
    queue: asyncio.Queue[Transcript | VendorError | None] = field(default_factory=asyncio.Queue)


def last_loud(pcm: bytes, channels: int, block: int) -> int | None:
    """Frames from the start of ``pcm`` to the end of its last loud 10 ms block, or None."""
    x = np.frombuffer(pcm, dtype="<i2")
    n = len(x) // channels
    if n == 0:
        return None
    frames = x[: n * channels].reshape(n, channels).astype(np.float32)
    blocks = math.ceil(n / block)
    padded = np.zeros((blocks * block, channels), np.float32)
    padded[:n] = frames
    power = (padded.reshape(blocks, block, channels) ** 2).mean(axis=1).max(axis=1)
    loud = np.nonzero(power >= LOUD_RMS * LOUD_RMS)[0]
    if not len(loud):
        return None
    return min(int(loud[-1] + 1) * block, n)


class WebSocketRecognizer(Recognizer):
    """A streaming recognizer whose vendor speaks over WebSockets; adapters fill in the hooks."""

    #: the vendor's documented limits (docs/protocols/<vendor>.md)
    limits: ClassVar[SessionLimits] = SessionLimits()
    #: False: one connection per channel, each sent its channel's mono audio
    multichannel: ClassVar[bool] = True
    #: handshake headers and query values kept out of the websockets library's debug lines
    redact_headers: ClassVar[tuple[str, ...]] = ("authorization",)
    redact_patterns: ClassVar[tuple[re.Pattern[str], ...]] = ()
    max_server_frame: ClassVar[int] = 1 << 20
    #: result times are rounded to this many decimals after re-basing
    time_digits: ClassVar[int] = 6
    #: the vendor refuses a stream that ends with no audio at all: send a little silence first
    audio_before_end: ClassVar[bool] = False
    #: the shortest audio message the vendor takes; a shorter tail is padded with silence
    min_message_seconds: ClassVar[float] = 0.0

    # Tunables; class attributes so tests (and instances) can shrink them.
    chunk_seconds: float | None = None  # audio per message; None: as the worker sends it
    min_send_seconds: float = 0.0  # a shorter tail waits for more audio (or a keep-alive)
    keepalive_after: float = 4.0  # seconds without a frame before a keep-alive goes out
    keepalive_seconds: float = 0.1  # silence sent when the vendor has no keep-alive message
    open_timeout: float = 10.0
    close_timeout: float = 2.0
    drain_timeout: float = 30.0  # after the end-of-stream messages, wait this long per frame
    report_wait: float = 5.0  # how long send() lets results() report a failure first
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    boundary_slack: float = 0.25  # loud audio this close after a final's end still counts as it
    rollover_after: float | None = None  # default: from ``limits``
    rollover_deadline: float | None = None  # default: from ``limits``

    def __init__(self, config: RecognizerConfig, settings: Settings):
        """Not connected yet: start() opens the first vendor session."""
        super().__init__(config, settings)
        if self.rollover_after is None:
            self.rollover_after = self.limits.roll_after()
        if self.rollover_deadline is None:
            self.rollover_deadline = self.limits.roll_deadline()
        self._frame_bytes = 2 * config.channels
        self._links: list[Link] = []
        self._gen: _Generation | None = None
        self._order: asyncio.Queue[_Generation | None] = asyncio.Queue()
        self._lock = asyncio.Lock()
        self._buf = bytearray()
        self._sent_frames = 0  # session frames handed to vendor streams
        self._keepalive_task: asyncio.Task[None] | None = None
        self._finished = False
        self._closed = False
        self._secrets: tuple[str, ...] = ()
        self._reported = asyncio.Event()  # results() has raised the session's failure
        self._ws_log = websocket_logger(type(self).__module__, self.redact_headers,
                                        self.redact_patterns)

    # --- hooks ---------------------------------------------------------------------------------

    @abc.abstractmethod
    async def endpoint(self, channel: int | None) -> Endpoint:
        """URL, headers and subprotocols of one connection; raise VendorError if unusable."""

    async def greet(self, link: Link) -> None:
        """After the handshake, before audio: send a first message, await its answer."""

    def encode_audio(self, link: Link, pcm: bytes) -> Frame:
        """One message of audio (PCM of the link's channels at ``input_rate``)."""
        return pcm

    def keepalive(self, link: Link) -> Frame | None:
        """The vendor's keep-alive message; None: send ``keepalive_seconds`` of silence."""
        return None

    @abc.abstractmethod
    def end_frames(self, link: Link) -> Sequence[Frame]:
        """Messages that end the audio: the vendor flushes its last finals and closes."""

    @abc.abstractmethod
    def decode(self, link: Link, frame: Frame) -> Iterable[Transcript]:
        """Results of one server message, timed from the connection's first byte; raise
        VendorError for an error message; set ``link.done`` when it is the last word."""

    def idle(self, link: Link) -> bool:
        """Whether the vendor has nothing open on this link beyond what results show (e.g. a
        result id whose final is still due); part of the utterance-boundary test."""
        return True

    def closed(self, link: Link, code: int | None, reason: str) -> VendorError | None:
        """What a close means (None: the clean end after ``end_frames``)."""
        if link.ended and code == 1000:
            return None
        text = self.clean(reason)
        if code is None or code == 1006:
            return VendorRetryable("the connection dropped without a close frame"
                                   + (f": {text}" if text else ""), vendor=self.name, code=1006)
        return VendorRetryable(text or f"the connection closed with code {code}",
                               vendor=self.name, code=code)

    def handshake_error(self, status: int, headers: Mapping[str, str], body: bytes) -> VendorError:
        """The error for an HTTP answer to the upgrade: 401/403 auth, 408/429/5xx retryable."""
        detail = self.clean(body.decode("utf-8", errors="replace"))
        message = f"HTTP {status} at the WebSocket handshake" + (f": {detail}" if detail else "")
        if status in (401, 403):
            return VendorAuthError(message, vendor=self.name, code=status)
        if status in (408, 425, 429) or status >= 500:
            return VendorRetryable(message, vendor=self.name, code=status)
        return VendorRejected(message, vendor=self.name, code=status)

    def clean(self, text: str) -> str:
        """One bounded line of vendor text with this session's secrets shown as ``***``."""
        return vendor_text(text, self._secrets, self.redact_patterns)

    # --- connections ---------------------------------------------------------------------------

    async def _connect(self, channel: int | None, base_frames: int) -> Link:
        """Open one connection and greet the vendor; every failure becomes a VendorError."""
        ep = await self.endpoint(channel)
        try:
            ws = await connect(
                ep.url, additional_headers=dict(ep.headers), compression=None,
                subprotocols=list(ep.subprotocols) or None,  # type: ignore[arg-type]
                open_timeout=self.open_timeout, close_timeout=self.close_timeout,
                ping_interval=self.ping_interval, ping_timeout=self.ping_timeout,
                max_size=self.max_server_frame, logger=self._ws_log,
                user_agent_header=f"voxq/{__version__}")
        except InvalidStatus as e:
            r = e.response
            raise self.handshake_error(r.status_code, r.headers, bytes(r.body or b"")) from None
        except InvalidURI:
            raise VendorRejected(f"invalid URL {ep.where!r}", vendor=self.name) from None
        except InvalidHandshake as e:
            raise VendorRetryable(f"WebSocket handshake with {ep.where} failed: "
                                  f"{self.clean(str(e)) or type(e).__name__}",
                                  vendor=self.name) from None
        except (OSError, TimeoutError) as e:
            raise VendorRetryable(f"cannot connect to {ep.where}: {e or type(e).__name__}",
                                  vendor=self.name) from None
        rate = self.input_rate
        link = Link(ws=ws, index=len(self._links), channel=channel,
                    timeline=Timeline(rate, base_frames=base_frames))
        self._links.append(link)
        try:
            await self.greet(link)
        except BaseException:
            with contextlib.suppress(Exception):
                await within(ws.close(), self.close_timeout)
            raise
        return link

    async def _open(self, base_frames: int) -> _Generation:
        """Open a generation: one connection, or one per channel; all or none."""
        channels: list[int | None] = ([None] if self.multichannel or self.config.channels == 1
                                      else list(range(self.config.channels)))
        links: list[Link] = []
        try:
            for ch in channels:
                links.append(await self._connect(ch, base_frames))
        except BaseException:
            for link in links:
                with contextlib.suppress(Exception):
                    await within(link.ws.close(), self.close_timeout)
            raise
        gen = _Generation(links)
        for link in links:
            link.last_sent = time.monotonic()
            link.reader = asyncio.create_task(self._read(link, gen),
                                              name=f"{self.name}-read-{link.index}")
        return gen

    async def receive(self, link: Link, timeout: float | None = None) -> Frame:
        """One server message during ``greet``; a close becomes the vendor's error."""
        try:
            return await within(link.ws.recv(), timeout if timeout is not None
                                else self.open_timeout)
        except TimeoutError:
            raise VendorRetryable("no answer from the service within "
                                  f"{timeout or self.open_timeout:g} s", vendor=self.name) from None
        except ConnectionClosed as e:
            err = self.closed(link, e.rcvd.code if e.rcvd else None,
                              e.rcvd.reason if e.rcvd else "")
            raise (err or VendorRetryable("the service closed the connection at once",
                                          vendor=self.name)) from None

    def _live(self) -> _Generation:
        """The generation audio goes to; raises its failure if one of its links failed."""
        gen = self._gen
        if gen is None or self._closed:
            raise VendorRetryable("the recognizer is not open", vendor=self.name)
        for link in gen.links:
            if link.failure is not None:
                raise link.failure
        return gen

    async def transmit(self, link: Link, frame: Frame) -> None:
        """Send one message; a closed socket raises the reader's verdict."""
        if link.failure is not None:
            raise link.failure
        try:
            await link.ws.send(frame)
        except ConnectionClosed:
            if link.reader is not None and not link.reader.done():
                await asyncio.wait({link.reader}, timeout=self.close_timeout)
            raise (link.failure or VendorRetryable("the connection closed while sending",
                                                   vendor=self.name)) from None
        link.last_sent = time.monotonic()

    async def transmit_all(self, frame: Frame) -> None:
        """Send one message on every connection of the current generation (under the lock)."""
        async with self._lock, self._failures():
            for link in self._live().links:
                await self.transmit(link, frame)

    @contextlib.asynccontextmanager
    async def _failures(self) -> AsyncIterator[None]:
        """Raise a failure from the audio side only after results() raised it (or a moment
        passed), so every final queued before it reaches the worker first."""
        try:
            yield
        except VendorError:
            with contextlib.suppress(TimeoutError):
                await within(self._reported.wait(), self.report_wait)
            raise

    # --- audio in ------------------------------------------------------------------------------

    def _split(self, link: Link, pcm: bytes) -> bytes:
        """The part of interleaved session PCM that ``link`` carries."""
        if link.channel is None:
            return pcm
        x = np.frombuffer(pcm, dtype="<i2").reshape(-1, self.config.channels)
        return x[:, link.channel].tobytes()

    async def _send_audio(self, gen: _Generation, pcm: bytes, inserted: bool = False,
                          pad_frames: int = 0) -> None:
        """One message of audio (or inserted silence) to each link, padded with ``pad_frames``
        of silence; account the timelines."""
        frames = len(pcm) // self._frame_bytes
        pad = bytes(pad_frames * self._frame_bytes)
        loud = None if inserted or self.rollover_after is None else last_loud(
            pcm, self.config.channels, max(1, self.input_rate // 100))
        for link in gen.links:
            if loud is not None:
                link.last_loud_end = link.timeline.frames + loud
            await self.transmit(link, self.encode_audio(link, self._split(link, pcm + pad)))
            link.timeline.add(frames, inserted)
            if pad_frames:
                link.timeline.add(pad_frames, inserted=True)
        if not inserted:
            self._sent_frames += frames

    def _silence(self) -> bytes:
        """Digital silence of ``keepalive_seconds`` for every channel, interleaved."""
        return bytes(max(1, round(self.keepalive_seconds * self.input_rate)) * self._frame_bytes)

    def _chunk_bytes(self) -> int:
        """Bytes of one audio message (whole frames)."""
        if self.chunk_seconds is None:
            return len(self._buf) // self._frame_bytes * self._frame_bytes
        return max(1, round(self.chunk_seconds * self.input_rate)) * self._frame_bytes

    async def _pump(self, everything: bool) -> None:
        """Send buffered audio in messages of ``chunk_seconds``; hold a short tail unless
        ``everything``."""
        least = max(self._frame_bytes,
                    round(self.min_send_seconds * self.input_rate) * self._frame_bytes)
        while True:
            whole = len(self._buf) // self._frame_bytes * self._frame_bytes
            if whole == 0 or (whole < least and not everything):
                return
            n = min(whole, self._chunk_bytes() or whole)
            piece = bytes(self._buf[:n])
            del self._buf[:n]
            pad = max(0, self._min_message_frames() - n // self._frame_bytes)
            await self._maybe_roll()
            await self._send_audio(self._live(), piece, pad_frames=pad)

    def _min_message_frames(self) -> int:
        """Frames of the shortest audio message the vendor takes."""
        return math.ceil(self.min_message_seconds * self.input_rate)

    async def start(self) -> None:
        """Open the first vendor session and start the keep-alive timer."""
        gen = await self._open(0)
        self._gen = gen
        self._order.put_nowait(gen)
        self._keepalive_task = asyncio.create_task(self._keep_alive(),
                                                   name=f"{self.name}-keepalive")

    async def send(self, pcm: bytes) -> None:
        """Queue interleaved s16le PCM and send it in the vendor's message size."""
        if not pcm:
            return
        async with self._lock, self._failures():
            self._live()
            self._buf += pcm
            await self._pump(everything=False)

    async def _end(self, gen: _Generation) -> None:
        """Send each link its end-of-stream messages (once)."""
        for link in gen.links:
            if not link.ended:
                link.ended = True
                for frame in self.end_frames(link):
                    await self.transmit(link, frame)

    async def finish(self) -> None:
        """Send what is buffered and the end of the stream; results() ends after the last
        finals."""
        async with self._lock, self._failures():
            if self._finished:
                return
            self._finished = True
            self._live()
            await self._pump(everything=True)
            self._buf.clear()  # at most a partial sample frame
            gen = self._live()
            if self.audio_before_end and not any(link.timeline.frames for link in gen.links):
                await self._send_audio(gen, self._silence(), inserted=True)
            try:
                await self._end(self._live())
            finally:
                self._order.put_nowait(None)

    async def _keep_alive(self) -> None:
        """While no audio flows, a keep-alive (message or silence) every ``keepalive_after``."""
        while not (self._finished or self._closed):
            gen = self._gen
            assert gen is not None
            last = min(link.last_sent for link in gen.links)
            wait = last + self.keepalive_after - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            async with self._lock:
                if self._finished or self._closed:
                    return
                gen = self._gen
                assert gen is not None
                try:
                    gen = self._live()
                    due = [link for link in gen.links
                           if time.monotonic() - link.last_sent >= self.keepalive_after]
                    if not due:
                        continue
                    message = self.keepalive(due[0])
                    tail = len(self._buf) // self._frame_bytes
                    if tail and (message is None or tail >= self._min_message_frames()):
                        await self._pump(everything=True)  # the tail, padded if it must be
                        continue
                    await self._maybe_roll()
                    gen = self._live()
                    if message is None:
                        await self._send_audio(gen, self._silence(), inserted=True)
                    else:
                        for link in due:
                            await self.transmit(link, message)
                except VendorError:
                    return  # the reader, send() and results() report it

    # --- rolling -------------------------------------------------------------------------------

    def _at_boundary(self, link: Link) -> bool:
        """True between utterances: no partial open and nothing loud sent after the last
        final."""
        slack = round(self.boundary_slack * self.input_rate)
        return (not link.open_channels and self.idle(link)
                and link.last_loud_end <= link.last_final_end + slack)

    async def _maybe_roll(self) -> None:
        """Replace an ageing generation, at an utterance boundary if one comes in time."""
        old = self._live()
        if self.rollover_after is None or self._finished:
            return
        age = max(link.age for link in old.links)
        if age < self.rollover_after:
            return
        boundary = all(self._at_boundary(link) for link in old.links)
        if not boundary and (self.rollover_deadline is None or age < self.rollover_deadline):
            return
        new = await self._open(self._sent_frames)
        self._gen = new
        self._order.put_nowait(new)
        log.info("session %s: %s stream rolled over after %.0f s (%s)", self.config.session_id,
                 self.name, age, "at an utterance boundary" if boundary
                 else "deadline, mid-utterance")
        with contextlib.suppress(VendorError):  # its reader reports it when results() gets there
            await self._end(old)

    # --- results out ---------------------------------------------------------------------------

    def _rebase(self, link: Link, t: Transcript) -> Transcript:
        """A result in session time, its channel the link's when the link carries one."""
        tl = link.timeline
        if not (tl.base_frames or tl.inserted or link.channel):
            return t  # nothing to shift: the vendor's times are the session's
        return tl.rebase(t, self.time_digits, link.channel)

    def _track(self, link: Link, t: Transcript) -> None:
        """Note open partials and the end of the last final, for utterance boundaries."""
        if t.is_final:
            link.open_channels.discard(t.channel)
            link.last_final_end = max(link.last_final_end, link.timeline.frame_of(t.end))
        else:
            link.open_channels.add(t.channel)

    async def _read(self, link: Link, gen: _Generation) -> None:
        """Decode one connection's messages into its generation's queue until it ends."""
        ws = link.ws
        try:
            while not link.done:
                try:
                    if link.ended:
                        frame = await within(ws.recv(), self.drain_timeout)
                    else:
                        frame = await ws.recv()
                except TimeoutError:
                    raise VendorRetryable(
                        f"the service did not end the stream within {self.drain_timeout:g} s "
                        "of the end of the audio", vendor=self.name) from None
                except ConnectionClosed as e:
                    err = self.closed(link, e.rcvd.code if e.rcvd is not None else None,
                                      e.rcvd.reason if e.rcvd is not None else "")
                    if err is None:
                        return
                    raise err from None
                for t in self.decode(link, frame):
                    self._track(link, t)
                    gen.queue.put_nowait(self._rebase(link, t))
        except VendorError as e:
            link.failure = e
            gen.queue.put_nowait(e)
        finally:
            gen.queue.put_nowait(None)
            if link.failure is not None or link.done:
                with contextlib.suppress(Exception):
                    await within(ws.close(), self.close_timeout)

    async def results(self) -> AsyncIterator[Transcript]:
        """Results generation by generation: an old one is drained before a newer one."""
        while True:
            gen = await self._order.get()
            if gen is None:
                return
            left = len(gen.links)
            while left:
                item = await gen.queue.get()
                if item is None:
                    left -= 1
                elif isinstance(item, VendorError):
                    self._reported.set()
                    raise item
                else:
                    yield item

    async def close(self) -> None:
        """Stop the keep-alive and readers and close every socket; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        tasks = [t for t in (self._keepalive_task,) if t is not None]
        tasks += [link.reader for link in self._links if link.reader is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for link in self._links:
            with contextlib.suppress(Exception):
                await within(link.ws.close(), self.close_timeout)
        self._reported.set()
        self._order.put_nowait(None)
