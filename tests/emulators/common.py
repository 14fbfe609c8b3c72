"""Plumbing every vendor emulator shares: loopback WebSocket servers on free ports, test
signals (tones, silence) and polling helpers. Emulators are real servers, never mocks."""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

LOOPBACK = "127.0.0.1"

Handler = Callable[[ServerConnection], Awaitable[None]]
ProcessRequest = Callable[[ServerConnection, Request], Awaitable[Response | None] | Response | None]


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port free right now (for servers that cannot bind port 0 themselves)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def bound_port(server: Server) -> int:
    """The port a server started on port 0 actually listens on."""
    for sock in server.sockets:
        return int(sock.getsockname()[1])
    raise RuntimeError("server has no listening socket")


@contextlib.asynccontextmanager
async def serve_loopback(handler: Handler, process_request: ProcessRequest | None = None,
                         **kwargs: Any) -> AsyncIterator[tuple[Server, int]]:
    """A WebSocket server on a free loopback port (compression off, no pings unless asked)."""
    options: dict[str, Any] = {"compression": None, "ping_interval": None}
    options.update(kwargs)
    async with serve(handler, LOOPBACK, 0, process_request=process_request, **options) as server:
        yield server, bound_port(server)


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0,
                   what: str = "condition") -> None:
    """Poll ``predicate`` until it holds; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.01)


def tone(freq: float, seconds: float, rate: int = 16000, amplitude: int = 16384) -> bytes:
    """A sine of ``freq`` Hz as mono s16le PCM (whole samples, starts at phase 0)."""
    n = round(seconds * rate)
    t = np.arange(n) / rate
    return (np.sin(2 * math.pi * freq * t) * amplitude).round().astype("<i2").tobytes()


def silence(seconds: float, rate: int = 16000, channels: int = 1) -> bytes:
    """Digital silence as s16le PCM."""
    return bytes(round(seconds * rate) * channels * 2)


def interleave(left: bytes, right: bytes) -> bytes:
    """Two mono s16le signals as one interleaved stereo signal (the shorter padded with zeros)."""
    a = np.frombuffer(left, "<i2")
    b = np.frombuffer(right, "<i2")
    out = np.zeros((max(len(a), len(b)), 2), "<i2")
    out[: len(a), 0] = a
    out[: len(b), 1] = b
    return out.tobytes()
