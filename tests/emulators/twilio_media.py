"""A strict Twilio Media Streams client: it dials an ingest endpoint the way Twilio does.

What it does as Twilio does (docs/protocols/ingest.md): a wss URL without a query string (Twilio
refuses those), the `x-twilio-signature` header (base64 HMAC-SHA1 of the URL with the auth
token), every message a JSON text frame with numeric fields as strings, `connected` first,
`start` once (tracks, customParameters, mediaFormat audio/x-mulaw 8000 mono), then `media`
every 20 ms per track (160 bytes of μ-law; with both tracks one message per track, interleaved,
each with its own chunk counter and the shared `timestamp` in ms since the stream started),
`sequenceNumber` from 1 rising by one, `stop` last, then it closes the socket.

Modes: ``listen`` (<Start><Stream>: inbound, outbound or both tracks; the server must send
nothing back) and ``connect`` (<Connect><Stream>: inbound only, bidirectional: server `media`
is "played", server `mark` echoed once what precedes it played, `clear` drops what is queued and
echoes pending marks). Gaps: chunks listed in ``drop`` are never sent (a track's gap).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

FRAME_MS = 20
FRAME_BYTES = 160  # 20 ms of 8 kHz μ-law


def ulaw_encode(pcm: bytes) -> bytes:
    """s16le → G.711 μ-law (the classic biased-magnitude encoder)."""
    x = np.frombuffer(pcm, "<i2").astype(np.int32)
    sign = (x < 0).astype(np.int32)
    mag = np.minimum(np.abs(x), 32635) + 0x84
    exponent = np.clip(np.floor(np.log2(mag)).astype(np.int32) - 7, 0, 7)
    mantissa = (mag >> (exponent + 3)) & 0x0F
    return (~((sign << 7) | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()


def sign_url(auth_token: str, url: str) -> str:
    """Twilio's signature of a WebSocket URL."""
    return base64.b64encode(hmac.new(auth_token.encode(), url.encode(), hashlib.sha1).digest()).decode()


@dataclass
class TwilioCall:
    """One call's stream. ``inbound``/``outbound`` are 8 kHz s16le PCM of each party."""

    url: str
    inbound: bytes = b""
    outbound: bytes = b""
    mode: Literal["listen", "connect"] = "listen"
    tracks: tuple[str, ...] = ("inbound", "outbound")
    custom: dict[str, str] = field(default_factory=dict)
    auth_token: str | None = None
    signature: str | None = None      # send this signature instead of the right one
    public_url: str | None = None     # the URL as configured in Twilio (behind a proxy); signed
    call_sid: str = "CA" + "0" * 30 + "1"
    account_sid: str = "AC" + "0" * 30 + "2"
    stream_sid: str = "MZ" + "0" * 30 + "3"
    speed: float = 1.0                # 1.0: real time (20 ms per message pair)
    drop: dict[str, set[int]] = field(default_factory=dict)  # track -> chunk numbers not sent
    received: list[dict[str, Any]] = field(default_factory=list)
    played: bytearray = field(default_factory=bytearray)
    echoed_marks: list[str] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""
    _seq: int = 0

    def __post_init__(self) -> None:
        if "?" in self.url:
            raise ValueError("Twilio does not support query strings in a stream URL (31920)")
        if self.mode == "connect" and self.tracks != ("inbound",):
            raise ValueError("<Connect><Stream> supports only inbound_track (31941)")

    def _msg(self, event: str, **body: Any) -> str:
        self._seq += 1
        d: dict[str, Any] = {"event": event, "sequenceNumber": str(self._seq)}
        if event != "connected":
            d["streamSid"] = self.stream_sid
        d.update(body)
        return json.dumps(d)

    async def run(self) -> None:
        """Dial, stream every frame at the cadence, stop, close; keep what the server sent."""
        headers = {}
        if self.auth_token is not None or self.signature is not None:
            headers["x-twilio-signature"] = self.signature or sign_url(
                self.auth_token or "", self.public_url or self.url)
        async with connect(self.url, additional_headers=headers, compression=None,
                           user_agent_header="Twilio.TmeWs/1.0") as ws:
            reader = asyncio.create_task(self._read(ws))
            try:
                await self._stream(ws)
                async with asyncio.timeout(30):
                    await ws.wait_closed()
            except ConnectionClosed:
                pass
            finally:
                await asyncio.wait({reader}, timeout=5)
                reader.cancel()
            self.close_code = ws.close_code
            self.close_reason = ws.close_reason or ""

    async def _stream(self, ws: ClientConnection) -> None:
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await ws.send(self._msg("start", start={
            "accountSid": self.account_sid, "streamSid": self.stream_sid,
            "callSid": self.call_sid, "tracks": list(self.tracks),
            "customParameters": self.custom,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}))
        audio = {"inbound": ulaw_encode(self.inbound), "outbound": ulaw_encode(self.outbound)}
        n = max(len(audio[t]) for t in self.tracks) // FRAME_BYTES
        t0 = time.monotonic()
        for i in range(n):
            for track in self.tracks:
                chunk = i + 1
                payload = audio[track][i * FRAME_BYTES:(i + 1) * FRAME_BYTES]
                if len(payload) < FRAME_BYTES or chunk in self.drop.get(track, set()):
                    continue
                await ws.send(self._msg("media", media={
                    "track": track, "chunk": str(chunk), "timestamp": str(i * FRAME_MS),
                    "payload": base64.b64encode(payload).decode()}))
            ahead = t0 + (i + 1) * FRAME_MS / 1000 / self.speed - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
        await ws.send(self._msg("stop", stop={"accountSid": self.account_sid,
                                              "callSid": self.call_sid}))

    async def _read(self, ws: ClientConnection) -> None:
        """Server → Twilio messages: only in bidirectional mode, only these three."""
        pending_marks: list[str] = []
        async for raw in ws:
            assert isinstance(raw, str), "Twilio accepts only text frames"
            d = json.loads(raw)
            self.received.append(d)
            assert self.mode == "connect", f"the server sent {d.get('event')} to a listen-only stream"
            assert d.get("streamSid") == self.stream_sid
            if d["event"] == "media":
                self.played += base64.b64decode(d["media"]["payload"])
            elif d["event"] == "mark":
                pending_marks.append(d["mark"]["name"])
                # everything before it has "played" in this emulator: echo it
                self.echoed_marks.append(pending_marks.pop(0))
                await ws.send(self._msg("mark", mark={"name": self.echoed_marks[-1]}))
            elif d["event"] == "clear":
                for name in pending_marks:
                    await ws.send(self._msg("mark", mark={"name": name}))
                pending_marks.clear()
            else:
                raise AssertionError(f"Twilio does not understand {d['event']!r}")
