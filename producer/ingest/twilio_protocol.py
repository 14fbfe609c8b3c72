"""Twilio Media Streams, the server side, without sockets: message parsing and ordering checks,
μ-law decoding, and the aligner that turns one or two tracks into bus PCM on ``media.timestamp``
(docs/protocols/ingest.md, "Twilio Media Streams")."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from producer.ingest.core import CloseCode, Rejected
from voxq.audio import MULAW_TO_FLOAT

RATE = 8000
#: μ-law byte → s16 sample
MULAW_TO_S16 = np.rint(MULAW_TO_FLOAT.astype(np.float64) * 32768).clip(-32768, 32767).astype("<i2")


def mulaw_to_s16(payload: bytes) -> np.ndarray:
    """G.711 μ-law bytes → int16 samples."""
    return MULAW_TO_S16[np.frombuffer(payload, dtype=np.uint8)]


class Event(StrEnum):
    """Message types Twilio sends."""

    CONNECTED = "connected"
    START = "start"
    MEDIA = "media"
    MARK = "mark"
    DTMF = "dtmf"
    STOP = "stop"


#: bus channel of each Twilio track in a two-track session (channel 0 agent, 1 customer)
TRACK_CHANNEL = {"outbound": 0, "inbound": 1}


@dataclass(frozen=True, slots=True)
class Start:
    """The ``start`` message: who, which tracks, custom parameters."""

    stream_sid: str
    call_sid: str
    account_sid: str
    tracks: tuple[str, ...]
    custom: dict[str, str]


@dataclass(frozen=True, slots=True)
class Media:
    """One ``media`` message: one track's audio at ``timestamp`` ms from the stream's start."""

    track: str
    chunk: int
    timestamp: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Message:
    """A parsed Twilio message."""

    event: Event
    seq: int | None
    stream_sid: str | None
    start: Start | None = None
    media: Media | None = None
    name: str | None = None  # mark name or dtmf digit


def _bad(reason: str) -> Rejected:
    return Rejected(reason, CloseCode.INVALID, "protocol")


def _int(v: Any, what: str) -> int:
    try:
        if isinstance(v, bool):
            raise ValueError
        return int(v)
    except (TypeError, ValueError):
        raise _bad(f"{what} is not a number: {v!r}") from None


def parse(text: str) -> Message:
    """Parse one text frame; Rejected if it is not a Twilio message."""
    try:
        d = json.loads(text)
    except ValueError:
        raise _bad("message is not JSON") from None
    if not isinstance(d, dict):
        raise _bad("message is not a JSON object")
    try:
        event = Event(str(d.get("event")))
    except ValueError:
        raise Rejected(f"unknown event {str(d.get('event'))[:40]!r}", CloseCode.UNSUPPORTED,
                       "protocol") from None
    seq = _int(d["sequenceNumber"], "sequenceNumber") if "sequenceNumber" in d else None
    sid = d.get("streamSid")
    if sid is not None and not isinstance(sid, str):
        raise _bad("streamSid is not a string")
    body = d.get(event.value)
    if event is Event.START:
        if not isinstance(body, dict):
            raise _bad("start has no start object")
        fmt = body.get("mediaFormat") or {}
        if fmt.get("encoding") != "audio/x-mulaw" or _int(fmt.get("sampleRate"), "sampleRate") != RATE:
            raise Rejected(f"unsupported media format {fmt!r}", CloseCode.UNSUPPORTED, "audio")
        tracks = body.get("tracks") or ["inbound"]
        if not isinstance(tracks, list) or not tracks or any(t not in TRACK_CHANNEL for t in tracks):
            raise _bad(f"tracks must be inbound and/or outbound, not {tracks!r}")
        custom = body.get("customParameters") or {}
        if not isinstance(custom, dict):
            raise _bad("customParameters is not an object")
        return Message(event, seq, sid, start=Start(
            stream_sid=str(body.get("streamSid") or sid or ""), call_sid=str(body.get("callSid") or ""),
            account_sid=str(body.get("accountSid") or ""), tracks=tuple(dict.fromkeys(tracks)),
            custom={str(k): str(v) for k, v in custom.items()}))
    if event is Event.MEDIA:
        if not isinstance(body, dict):
            raise _bad("media has no media object")
        track = body.get("track", "inbound")
        if track not in TRACK_CHANNEL:
            raise _bad(f"unknown track {str(track)[:20]!r}")
        try:
            payload = base64.b64decode(body.get("payload", ""), validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise _bad("media payload is not base64") from None
        return Message(event, seq, sid, media=Media(
            track=track, chunk=_int(body.get("chunk", 0), "chunk"),
            timestamp=_int(body.get("timestamp"), "timestamp"), payload=payload))
    if event is Event.MARK:
        name = body.get("name") if isinstance(body, dict) else None
        return Message(event, seq, sid, name=str(name) if name is not None else None)
    if event is Event.DTMF:
        digit = body.get("digit") if isinstance(body, dict) else None
        return Message(event, seq, sid, name=str(digit) if digit is not None else None)
    return Message(event, seq, sid)


@dataclass
class StreamState:
    """Order checks of one stream: connected → start → media/mark/dtmf → stop."""

    started: Start | None = None
    stopped: bool = False
    last_seq: int = 0
    chunks: dict[str, int] = field(default_factory=dict)

    def accept(self, m: Message) -> None:
        """Rejected if ``m`` breaks the order the protocol promises."""
        if self.stopped:
            raise Rejected(f"{m.event} after stop", CloseCode.POLICY)
        if m.seq is not None:
            if m.seq <= self.last_seq:
                raise _bad(f"sequenceNumber {m.seq} after {self.last_seq}")
            self.last_seq = m.seq
        if m.event is Event.CONNECTED:
            if self.started is not None:
                raise Rejected("connected after start", CloseCode.POLICY)
            return
        if m.event is Event.START:
            if self.started is not None:
                raise Rejected("a second start", CloseCode.POLICY)
            self.started = m.start
            return
        if self.started is None:
            raise Rejected(f"{m.event} before start", CloseCode.POLICY)
        if m.stream_sid is not None and m.stream_sid != self.started.stream_sid:
            raise _bad("streamSid differs from the one in start")
        if m.event is Event.MEDIA:
            assert m.media is not None
            if m.media.track not in self.started.tracks:
                raise _bad(f"media of track {m.media.track} that start did not announce")
            if len(m.media.payload) == 0:
                raise _bad("empty media payload")
        elif m.event is Event.STOP:
            self.stopped = True


class TrackAligner:
    """Place each track's samples at ``timestamp`` (ms) on a shared timeline: a gap is filled
    with silence, audio is never shifted; emits interleaved s16le for every frame all tracks
    have reached, or that the leading track is ``max_lag`` samples past (the other is silent)."""

    def __init__(self, tracks: tuple[str, ...], max_lag: int) -> None:
        self.order = sorted(tracks, key=lambda t: TRACK_CHANNEL[t]) if len(tracks) > 1 else list(tracks)
        self.max_lag = max_lag
        self.emitted = 0                                # timeline position emitted so far
        self.bufs: dict[str, list[np.ndarray]] = {t: [] for t in self.order}
        self.ends: dict[str, int] = dict.fromkeys(self.order, 0)
        self.late_samples = 0                           # samples that came after their place

    @property
    def channels(self) -> int:
        """Channels of the output."""
        return len(self.order)

    def add(self, track: str, timestamp_ms: int, samples: np.ndarray) -> bytes:
        """Add one media message; returns the PCM now ready (maybe empty)."""
        pos = timestamp_ms * RATE // 1000
        end = self.ends[track]
        if pos < end:  # overlaps what is already placed: the overlapping part is late
            cut = min(end - pos, len(samples))
            self.late_samples += cut
            samples, pos = samples[cut:], end
        elif pos > end:
            self.bufs[track].append(np.zeros(pos - end, dtype="<i2"))
        if len(samples):
            self.bufs[track].append(samples)
        self.ends[track] = pos + len(samples)
        return self._emit(last=False)

    def flush(self) -> bytes:
        """Everything left, the shorter track padded with silence."""
        return self._emit(last=True)

    def _emit(self, last: bool) -> bytes:
        ends = self.ends.values()
        upto = max(ends) if last else max(min(ends), max(ends) - self.max_lag)
        if upto <= self.emitted:
            return b""
        cols = [self._take(t, upto) for t in self.order]
        self.emitted = upto
        if len(cols) == 1:
            return cols[0].tobytes()
        return np.column_stack(cols).astype("<i2").tobytes()

    def _take(self, track: str, upto: int) -> np.ndarray:
        """Samples ``emitted``..``upto`` of a track, silence where it has none yet."""
        n = upto - self.emitted
        have = np.concatenate(self.bufs[track]) if self.bufs[track] else np.zeros(0, "<i2")
        out = have[:n]
        rest = have[n:]
        self.bufs[track] = [rest] if len(rest) else []
        if len(out) < n:  # the track is behind: it was silent there
            out = np.concatenate([out, np.zeros(n - len(out), "<i2")])
            self.ends[track] = max(self.ends[track], upto)
        return out


def session_spec_fields(start: Start) -> tuple[str, dict[str, str], dict[str, str]]:
    """Session id (``session`` parameter, else the callSid), session settings taken from
    parameters (``vendor``, ``language``), and the rest kept as metadata."""
    custom = dict(start.custom)
    sid = custom.pop("session", "") or start.call_sid
    if not sid:
        raise _bad("start has neither a session parameter nor a callSid")
    settings: dict[str, str] = {k: custom.pop(k) for k in ("vendor", "language") if k in custom}
    meta = {"callSid": start.call_sid, "streamSid": start.stream_sid, **custom}
    return sid, settings, meta
