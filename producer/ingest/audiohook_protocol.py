"""Genesys AudioHook Monitor, the server side, without sockets: message parsing with the
seq/serverseq/id checks, server messages, media offer choice, durations, PCMU frame decoding
(docs/protocols/ingest.md, "Genesys AudioHook Monitor")."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from producer.ingest.core import CloseCode, Rejected
from producer.ingest.twilio_protocol import MULAW_TO_S16

VERSION = "2"
MAX_TEXT = 64 * 1024
PROBE_CONVERSATION = "00000000-0000-0000-0000-000000000000"
CLIENT_TYPES = frozenset({"open", "close", "ping", "paused", "resumed", "discarded", "error",
                          "update", "dtmf", "event"})
_DURATION = re.compile(r"^PT(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?$")


def _bad(reason: str) -> Rejected:
    return Rejected(reason, CloseCode.INVALID, "protocol")


def parse_duration(text: Any) -> float:
    """ISO-8601 duration as AudioHook writes it (``PT12.34S``) → seconds."""
    m = _DURATION.match(text) if isinstance(text, str) else None
    if not m or text == "PT":
        raise _bad(f"not an ISO-8601 duration: {str(text)[:40]!r}")
    h, mi, s = m.groups()
    return int(h or 0) * 3600 + int(mi or 0) * 60 + float(s or 0)


@dataclass(frozen=True, slots=True)
class ClientMessage:
    """One message from the AudioHook client."""

    type: str
    seq: int
    serverseq: int
    position: float
    parameters: dict[str, Any]


@dataclass(frozen=True, slots=True)
class MediaFormat:
    """The offer the server chose: encoding, rate and channel names in wire order."""

    format: str
    rate: int
    channels: tuple[str, ...]

    def as_offer(self) -> dict[str, Any]:
        """The offer as ``opened`` echoes it."""
        return {"type": "audio", "format": self.format, "rate": self.rate,
                "channels": list(self.channels)}

    @property
    def frame_bytes(self) -> int:
        """Bytes of one sample frame on the wire."""
        return (1 if self.format == "PCMU" else 2) * len(self.channels)


@dataclass
class Conversation:
    """Protocol state of one AudioHook session (the server side)."""

    session_id: str
    client_seq: int = 0
    server_seq: int = 0
    opened: bool = False
    closing: bool = False
    media: MediaFormat | None = None
    probe: bool = False
    samples: int = 0  # sample frames received (the client's position × rate)
    open_params: dict[str, Any] = field(default_factory=dict)

    def parse(self, text: str) -> ClientMessage:
        """Parse and check one client text message; Rejected (answer ``disconnect``) if bad."""
        if len(text.encode()) > MAX_TEXT:
            raise _bad("text message over 64 KiB")
        try:
            d = json.loads(text)
        except ValueError:
            raise _bad("message is not JSON") from None
        if not isinstance(d, dict):
            raise _bad("message is not a JSON object")
        if d.get("version") != VERSION:
            raise _bad(f"unsupported protocol version {str(d.get('version'))[:10]!r}")
        if d.get("id") != self.session_id:
            raise _bad("message id is not this session's id")
        t = d.get("type")
        if t not in CLIENT_TYPES:
            raise Rejected(f"unknown message type {str(t)[:30]!r}", CloseCode.UNSUPPORTED)
        seq, serverseq = d.get("seq"), d.get("serverseq", 0)
        if not isinstance(seq, int) or isinstance(seq, bool) or seq != self.client_seq + 1:
            raise _bad(f"seq {seq!r} does not follow {self.client_seq}")
        if not isinstance(serverseq, int) or not 0 <= serverseq <= self.server_seq:
            raise _bad(f"serverseq {serverseq!r} is not one the server sent")
        params = d.get("parameters", {})
        if not isinstance(params, dict):
            raise _bad("parameters is not an object")
        position = parse_duration(d["position"]) if "position" in d else 0.0
        self.client_seq = seq
        if t == "open":
            if self.opened:
                raise _bad("a second open")
        elif not self.opened:
            raise Rejected(f"{t} before open", CloseCode.POLICY)
        if self.closing and t not in ("ping", "error"):
            raise Rejected(f"{t} after close", CloseCode.POLICY)
        return ClientMessage(t, seq, serverseq, position, params)

    def message(self, type_: str, parameters: dict[str, Any] | None = None) -> str:
        """A server message with the next seq and the last client seq seen."""
        self.server_seq += 1
        return json.dumps({"version": VERSION, "type": type_, "seq": self.server_seq,
                           "clientseq": self.client_seq, "id": self.session_id,
                           "parameters": parameters or {}}, separators=(",", ":"))

    def open(self, params: dict[str, Any]) -> MediaFormat:
        """Handle ``open``: pick the media offer, note a probe; Rejected if no offer fits."""
        conv = params.get("conversationId")
        if not isinstance(conv, str) or not conv:
            raise _bad("open has no conversationId")
        self.media = choose_media(params.get("media"))
        self.probe = conv == PROBE_CONVERSATION
        self.opened = True
        self.open_params = params
        return self.media

    def audio(self, frame: bytes) -> np.ndarray:
        """One binary frame → int16 samples of shape (frames, channels) in wire channel order."""
        if not self.opened or self.media is None:
            raise Rejected("audio before opened", CloseCode.POLICY)
        if self.closing:
            raise Rejected("audio after close", CloseCode.POLICY)
        fb = self.media.frame_bytes
        if len(frame) % fb:
            raise _bad(f"a {len(frame)}-byte frame is not whole samples of "
                       f"{len(self.media.channels)} channel(s)")
        if self.media.format == "PCMU":
            x = MULAW_TO_S16[np.frombuffer(frame, dtype=np.uint8)]
        else:
            x = np.frombuffer(frame, dtype="<i2")
        n = len(frame) // fb
        self.samples += n
        return x.reshape(n, len(self.media.channels))


def choose_media(offers: Any) -> MediaFormat:
    """The best offer: stereo before mono, PCMU before L16; Rejected if none is usable."""
    if not isinstance(offers, list):
        raise _bad("open has no media offers")
    usable: list[MediaFormat] = []
    for o in offers:
        if not isinstance(o, dict) or o.get("type") != "audio":
            continue
        ch = o.get("channels")
        if o.get("format") not in ("PCMU", "L16") or o.get("rate") != 8000:
            continue
        if not isinstance(ch, list) or not ch or any(c not in ("external", "internal") for c in ch) \
                or len(set(ch)) != len(ch):
            continue
        usable.append(MediaFormat(o["format"], 8000, tuple(ch)))
    if not usable:
        raise Rejected("no media offer is PCMU or L16 at 8000 Hz with external/internal channels",
                       CloseCode.UNSUPPORTED, "audio")
    return max(usable, key=lambda m: (len(m.channels), m.format == "PCMU"))


def to_bus(samples: np.ndarray, channels: tuple[str, ...]) -> bytes:
    """Wire channel order → bus order (channel 0 agent = internal, 1 customer = external)."""
    if len(channels) == 1:
        return samples.astype("<i2", copy=False).tobytes()
    order = [channels.index("internal"), channels.index("external")]
    return np.ascontiguousarray(samples[:, order]).astype("<i2", copy=False).tobytes()
