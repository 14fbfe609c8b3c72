"""The voxq streaming protocol (`voxq-ws`): a small open WebSocket protocol for self-hosted
recognizers (and voxq's own test and benchmark emulators). Pure encode/decode, no sockets.

Client → server: binary frames of interleaved s16le PCM at the rate named in the URL
(`?rate=&channels=&language=`), and text frames `{"type": "finish"}` (no more audio) or
`{"type": "keepalive"}`. Server → client, text frames only: `{"type": "ready"}` once,
`{"type": "result", "final": bool, "text", "start", "end", "channel", "speaker"?,
"words"?: [[text, start, end, confidence]]}`, `{"type": "error", "code", "message",
"retryable": bool}`, and `{"type": "done"}` after the last final.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets without its C extension
    from websockets.utils import apply_mask

from voxq.records import Transcript, Word

FINISH = '{"type":"finish"}'
KEEPALIVE = '{"type":"keepalive"}'
READY = '{"type":"ready"}'
DONE = '{"type":"done"}'


class ProtocolError(ValueError):
    """A server message that is not valid voxq-ws."""


@dataclass(frozen=True, slots=True)
class ServerError:
    """An error the server reported."""

    code: str
    message: str
    retryable: bool


ServerMessage = Transcript | ServerError | str  # str: "ready" or "done"


def _num(d: dict[str, Any], key: str) -> float:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ProtocolError(f"{key!r} must be a finite number")
    return float(v)


def decode_server(text: str | bytes) -> ServerMessage:
    """Parse one server text frame."""
    if isinstance(text, bytes):
        raise ProtocolError("server sent a binary frame")
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ProtocolError(f"server sent invalid JSON: {e}") from e
    if not isinstance(d, dict):
        raise ProtocolError("server message is not an object")
    kind = d.get("type")
    if kind in ("ready", "done"):
        return str(kind)
    if kind == "error":
        return ServerError(str(d.get("code", "")), str(d.get("message", "")),
                           bool(d.get("retryable", False)))
    if kind != "result":
        raise ProtocolError(f"unknown message type {kind!r}")
    words_raw = d.get("words") or []
    if not isinstance(words_raw, list):
        raise ProtocolError("'words' must be a list")
    try:
        words = tuple(Word(str(w[0]), float(w[1]), float(w[2]),
                           None if len(w) < 4 or w[3] is None else float(w[3]))
                      for w in words_raw)
    except (TypeError, ValueError, IndexError) as e:
        raise ProtocolError(f"malformed word: {e}") from e
    channel = d.get("channel", 0)
    if not isinstance(channel, int) or channel < 0:
        raise ProtocolError("'channel' must be a non-negative integer")
    spk = d.get("speaker")
    return Transcript(text=str(d.get("text", "")), is_final=bool(d.get("final")),
                      start=_num(d, "start"), end=_num(d, "end"), channel=channel,
                      speaker=None if spk is None else str(spk), words=words)


def encode_result(t: Transcript) -> str:
    """A result frame (server side)."""
    d: dict[str, Any] = {"type": "result", "final": t.is_final, "text": t.text,
                         "start": round(t.start, 3), "end": round(t.end, 3),
                         "channel": t.channel}
    if t.speaker is not None:
        d["speaker"] = t.speaker
    if t.words:
        d["words"] = [[w.text, round(w.start, 3), round(w.end, 3), w.confidence]
                      for w in t.words]
    return json.dumps(d, separators=(",", ":"))


class MaskSource:
    """Client frame masks from the OS's strong random source, 4 KiB at a time: one
    getrandom call per 1024 frames instead of one per frame (RFC 6455 5.3)."""

    __slots__ = ("_buf", "_pos")

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0

    def next(self) -> bytes:
        """Four fresh random bytes."""
        pos = self._pos
        if pos + 4 > len(self._buf):
            self._buf, pos = os.urandom(4096), 0
        self._pos = pos + 4
        return self._buf[pos:pos + 4]


def client_binary_frame(payload: bytes, mask: bytes) -> bytes:
    """One unfragmented, masked binary frame (client → server), without extensions."""
    n = len(payload)
    if n < 126:
        head = bytes((0x82, 0x80 | n))
    elif n < 65536:
        head = b"\x82\xfe" + n.to_bytes(2, "big")
    else:
        head = b"\x82\xff" + n.to_bytes(8, "big")
    return head + mask + apply_mask(payload, mask)


def encode_error(code: str, message: str, retryable: bool) -> str:
    """An error frame (server side)."""
    return json.dumps({"type": "error", "code": code, "message": message,
                       "retryable": retryable}, separators=(",", ":"))


def decode_client_text(text: str) -> str:
    """The type of a client control frame: "finish" or "keepalive"."""
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ProtocolError(f"client sent invalid JSON: {e}") from e
    kind = d.get("type") if isinstance(d, dict) else None
    if kind not in ("finish", "keepalive"):
        raise ProtocolError(f"unknown client message {kind!r}")
    return str(kind)
