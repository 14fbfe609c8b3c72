"""Helpers shared by the producer tests: read a session's audio stream back from Redis."""

from __future__ import annotations

from typing import Any

import numpy as np
import redis.asyncio as aioredis

from voxq.keys import Keys
from voxq.records import Chunk, decode_chunk


async def read_audio(r: aioredis.Redis, keys: Keys, sid: str) -> list[tuple[str, Chunk]]:
    """Every entry of a session's audio stream as (stream id, Chunk), in stream order."""
    out: list[tuple[str, Chunk]] = []
    for eid, fields in await r.xrange(keys.audio(sid)):
        out.append((eid.decode(), decode_chunk(fields)))
    return out


def check_stream(entries: list[tuple[str, Chunk]]) -> bytes:
    """Assert seq 0..n in order, each once, eos last and only last; return the joined PCM."""
    seqs = [c.seq for _, c in entries]
    assert seqs == list(range(len(entries))), f"seqs out of order or duplicated: {seqs}"
    assert entries and entries[-1][1].eos, "last entry is not eos"
    assert not any(c.eos for _, c in entries[:-1]), "eos before the end"
    return b"".join(c.pcm for _, c in entries[:-1])


def tone(seconds: float, rate: int = 16000, freq: float = 440.0, channels: int = 1,
         amp: float = 0.5) -> bytes:
    """A sine as s16le PCM (same signal on every channel)."""
    t = np.arange(int(seconds * rate)) / rate
    x = (amp * 32767 * np.sin(2 * np.pi * freq * t)).astype("<i2")
    return np.repeat(x[:, None], channels, axis=1).tobytes()


def numbered_chunk(i: int, frames: int = 320) -> bytes:
    """A chunk whose content identifies it: every sample is ``i``."""
    return np.full(frames, i, dtype="<i2").tobytes()


def stream_ms(entry_id: str) -> int:
    """The millisecond timestamp of a stream entry id."""
    return int(entry_id.split("-")[0])


def fields_str(h: dict[Any, Any]) -> dict[str, str]:
    """A Redis hash with bytes keys and values as str."""
    return {k.decode(): v.decode() for k, v in h.items()}
