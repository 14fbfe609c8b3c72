"""Watermark audio and a voxq-ws emulator that transcribes it to the index of each chunk.

Every 100 ms chunk of watermark audio carries its own index as a tone code: a pilot tone at
300 Hz plus one tone per set bit of the index at 400 + 200·b Hz (b = 0..15). Tones sit on
exact FFT bins of a 100 ms window, so the code survives the bus untouched and decodes
exactly. The emulator turns chunk i into the word ``w<i>``: a session's complete final
transcript is then exactly ``w0 … wN`` in order, and any lost, repeated or reordered audio
shows up word by word.

With ``dialect="deepgram"`` the same server speaks Deepgram's live-streaming protocol
(``Token`` key, ``sample_rate``/``channels`` query, ``Results`` / ``Metadata`` JSON, ``Finalize``
and ``CloseStream``), so a session can fail over between two vendors and still be checked
word by word.

The emulator is strict in the ways reliability depends on: audio must come in whole 100 ms
windows from the connection's start, no faster than ``max_speed`` × real time, and within
``idle_timeout`` of the last frame; knobs drop connections or answer errors on demand.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from voxq.aio import within
from voxq.embedded_redis import free_port
from voxq.records import Transcript, Word
from workers.vendors.voxqws import protocol

PILOT_HZ = 300
BITS = 16
AMP = 0.03


def bit_hz(b: int) -> int:
    """Frequency of bit ``b`` of the code."""
    return 400 + 200 * b


def watermark_chunk(index: int, rate: int = 16000, chunk_ms: int = 100) -> np.ndarray:
    """The float samples of chunk ``index``."""
    t = np.arange(rate * chunk_ms // 1000) / rate
    x = AMP * np.sin(2 * np.pi * PILOT_HZ * t)
    for b in range(BITS):
        if index >> b & 1:
            x += AMP * np.sin(2 * np.pi * bit_hz(b) * t)
    return x


def watermark_pcm(n: int, rate: int = 16000, chunk_ms: int = 100, start: int = 0) -> bytes:
    """``n`` chunks of mono s16le watermark audio, indices ``start`` … ``start+n-1``."""
    x = np.concatenate([watermark_chunk(i, rate, chunk_ms) for i in range(start, start + n)])
    return np.rint(x * 32767).astype("<i2").tobytes()


def decode_window(samples: np.ndarray, rate: int) -> int | None:
    """Index coded in one 100 ms window of mono samples; None for silence (no pilot)."""
    spec = np.abs(np.fft.rfft(samples.astype(np.float64)))
    hz = rate / len(samples)
    pilot = spec[round(PILOT_HZ / hz)]
    if pilot < len(samples) * AMP * 32767 / 4:
        return None
    return sum(1 << b for b in range(BITS) if spec[round(bit_hz(b) / hz)] > pilot / 2)


def expected_words(n: int) -> list[str]:
    """The exact transcript of ``n`` watermark chunks."""
    return [f"w{i}" for i in range(n)]


@dataclass
class Connection:
    """What one client connection did."""

    session: str
    rate: int
    channels: int
    started: float = field(default_factory=time.monotonic)
    frames: int = 0
    audio_seconds: float = 0.0
    words: list[int] = field(default_factory=list)
    closed_by_fault: bool = False


@dataclass
class Faults:
    """Knobs for one test: each is consulted per new connection."""

    #: close abruptly after this many audio frames; a callable gets the connection number
    drop_after_frames: Callable[[int], int | None] = lambda n: None
    #: answer this error (code, message, retryable) at connect; callable of connection number
    error_at_connect: Callable[[int], tuple[str, str, bool] | None] = lambda n: None
    #: close abruptly right after sending a final; callable of the connection number
    drop_after_final: Callable[[int], bool] = lambda n: False
    #: stop reading and answering (a stalled server) after this many audio frames
    stall_after_frames: Callable[[int], int | None] = lambda n: None
    #: refuse the handshake with this HTTP status; callable of the handshake number
    refuse_status: Callable[[int], int | None] = lambda n: None


class WatermarkEmulator:
    """A voxq-ws server on loopback, run on its own thread so worker processes can reach it."""

    def __init__(self, *, words_per_final: int = 5, max_speed: float = 50.0,
                 idle_timeout: float = 15.0, key: str | None = None, chunk_ms: int = 100,
                 max_connection_seconds: float | None = None, dialect: str = "voxq-ws"):
        if dialect not in ("voxq-ws", "deepgram"):
            raise ValueError(f"unknown dialect {dialect!r}")
        self.dialect = dialect
        self.words_per_final = words_per_final
        #: audio one connection may carry before it is refused (a session limit in seconds)
        self.max_connection_seconds = max_connection_seconds
        self.max_speed = max_speed
        self.idle_timeout = idle_timeout
        self.key = key
        self.chunk_ms = chunk_ms
        self.faults = Faults()
        #: a vendor outage: open connections are cut at their next frame, handshakes get 503
        self.down = False
        self.connections: list[Connection] = []
        self.handshakes = 0
        self.port = free_port()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """ws:// URL for VOXQ_WS_URL."""
        return f"ws://127.0.0.1:{self.port}/v1/listen"

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> WatermarkEmulator:
        """Serve on a background thread."""
        self._thread = threading.Thread(target=self._run, daemon=True, name="watermark-emu")
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("emulator did not start")
        return self

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        async with serve(self._handle, "127.0.0.1", self.port, compression=None,
                         process_request=self._check_request, max_size=2**20,
                         ping_interval=None) as server:
            self._server = server
            self._started.set()
            await server.serve_forever()

    def stop(self) -> None:
        """Stop serving."""
        if self._loop and self._server:
            self._loop.call_soon_threadsafe(self._server.close)
        if self._thread:
            self._thread.join(10)

    def __enter__(self) -> WatermarkEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- protocol -----------------------------------------------------------------------

    def _check_request(self, conn: ServerConnection, request: Request) -> Response | None:
        with self._lock:
            n = self.handshakes
            self.handshakes += 1
        status = 503 if self.down else self.faults.refuse_status(n)
        if status is not None:
            return conn.respond(status, "refused by test\n")
        scheme = "Token" if self.dialect == "deepgram" else "Bearer"
        if self.key is not None and request.headers.get("Authorization") != f"{scheme} {self.key}":
            return conn.respond(401, "invalid or missing bearer key\n")
        q = parse_qs(urlsplit(request.path).query)
        try:
            if self.dialect == "deepgram":
                rate = int(q["sample_rate"][0])
                int(q["channels"][0])
            else:
                rate = int(q["rate"][0])
                int(q["channels"][0])
                q["session"][0]
        except (KeyError, ValueError, IndexError):
            return conn.respond(400, "rate, channels and session are required\n")
        if not 8000 <= rate <= 48000:
            return conn.respond(400, f"unsupported rate {rate}\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        q = parse_qs(urlsplit(ws.request.path).query)
        dg = self.dialect == "deepgram"
        c = Connection(session="" if dg else q["session"][0],
                       rate=int(q["sample_rate" if dg else "rate"][0]),
                       channels=int(q["channels"][0]))
        with self._lock:
            n = len(self.connections)
            self.connections.append(c)
        err = self.faults.error_at_connect(n)
        if err is not None:
            await self._error(ws, *err)
            await ws.close()
            return
        if not dg:
            await ws.send(protocol.READY)
        drop_after = self.faults.drop_after_frames(n)
        stall_after = self.faults.stall_after_frames(n)
        window = c.rate * self.chunk_ms // 1000
        frame_bytes = 2 * c.channels
        buf = bytearray()
        pending: list[tuple[int, int]] = []  # (index, position) words not yet final
        pos = 0  # windows decoded on this connection
        try:
            while True:
                try:
                    msg = await within(ws.recv(), self.idle_timeout)
                except TimeoutError:
                    await self._error(ws, "idle", f"no audio for {self.idle_timeout}s", False)
                    return
                if isinstance(msg, str):
                    if dg:
                        kind = json.loads(msg).get("type")
                        if kind in ("Finalize", "CloseStream") and pending:
                            await ws.send(self._result(pending, True))
                            pending = []
                        if kind == "CloseStream":
                            await ws.send(json.dumps({"type": "Metadata", "request_id": "wm",
                                                      "duration": c.audio_seconds}))
                            await ws.close(1000)
                            return
                    elif protocol.decode_client_text(msg) == "finish":
                        if pending:
                            await ws.send(self._result(pending, True))
                        await ws.send(protocol.DONE)
                        return
                    continue
                if len(msg) % frame_bytes:
                    await self._error(ws, "bad-audio", "partial frame", False)
                    return
                c.frames += 1
                c.audio_seconds += len(msg) / frame_bytes / c.rate
                elapsed = time.monotonic() - c.started
                limit = self.max_connection_seconds
                if limit is not None and c.audio_seconds > limit + 1e-9:
                    await self._error(ws, "too-long",
                                      f"more than {limit:g} s of audio on one connection", True)
                    return
                if c.audio_seconds > elapsed * self.max_speed + 2.0:
                    await self._error(ws, "too-fast",
                                      f"audio arrives faster than {self.max_speed}x real time",
                                      False)
                    return
                if stall_after is not None and c.frames >= stall_after:
                    c.closed_by_fault = True
                    await ws.wait_closed()  # reads nothing more, so pings go unanswered too
                if self.down or (drop_after is not None and c.frames >= drop_after):
                    c.closed_by_fault = True
                    ws.transport.abort()
                    return
                buf += msg
                while len(buf) >= window * frame_bytes:
                    a = np.frombuffer(bytes(buf[:window * frame_bytes]), "<i2")
                    del buf[:window * frame_bytes]
                    idx = decode_window(a.reshape(-1, c.channels)[:, 0], c.rate)
                    if idx is not None:
                        c.words.append(idx)
                        pending.append((idx, pos))
                    pos += 1
                    if pending and idx is not None:
                        final = len(pending) >= self.words_per_final
                        await ws.send(self._result(pending, final))
                        if final:
                            pending = []
                            if self.faults.drop_after_final(n):
                                c.closed_by_fault = True
                                ws.transport.abort()
                                return
        except ConnectionClosed:
            return
        finally:
            with contextlib.suppress(Exception):
                await ws.close()

    async def _error(self, ws: ServerConnection, code: str, message: str,
                     retryable: bool) -> None:
        """Answer an error the dialect's way: voxq-ws's error message, or Deepgram's close
        (1011 is retried by clients, 1008 is not)."""
        if self.dialect == "deepgram":
            await ws.close(1011 if retryable else 1008, f"{code}: {message}"[:120])
            return
        await ws.send(protocol.encode_error(code, message, retryable))

    def _result(self, pending: list[tuple[int, int]], final: bool) -> str:
        w = self.chunk_ms / 1000
        if self.dialect == "deepgram":
            start, end = pending[0][1] * w, (pending[-1][1] + 1) * w
            return json.dumps({
                "type": "Results", "channel_index": [0, 1], "start": start,
                "duration": end - start, "is_final": final, "speech_final": final,
                "channel": {"alternatives": [{
                    "transcript": " ".join(f"w{i}" for i, _ in pending),
                    "words": [{"word": f"w{i}", "start": p * w, "end": (p + 1) * w,
                               "confidence": 1.0} for i, p in pending]}]}})
        words = tuple(Word(f"w{i}", p * w, (p + 1) * w, 1.0) for i, p in pending)
        return protocol.encode_result(Transcript(
            text=" ".join(x.text for x in words), is_final=final, start=words[0].start,
            end=words[-1].end, words=words))


def random_drops(rng: random.Random, every: tuple[int, int], times: int
                 ) -> Callable[[int], int | None]:
    """A drop_after_frames knob: the first ``times`` connections drop after a random count."""
    plan = [rng.randint(*every) for _ in range(times)]
    return lambda n: plan[n] if n < len(plan) else None
