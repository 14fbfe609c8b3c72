"""A strict Genesys AudioHook Monitor client: it opens a session on an ingest endpoint the way
Genesys Cloud does (docs/protocols/ingest.md).

Handshake headers `Audiohook-Organization-Id`, `Audiohook-Correlation-Id`, `Audiohook-Session-Id`,
`X-API-KEY`, the Genesys user agent, and with a client secret an RFC 9421 message signature
(HMAC-SHA256 keyed by the base64-decoded secret, keyid = API key, a fresh nonce, created and
expires). Every text message carries version "2", the session id, `seq` from 1 rising by one,
`serverseq` (the last server seq seen) and `position` (samples sent / rate, ISO-8601). It sends
no audio before `opened`, none after `close`, and checks every server message: version, id, its
own `seq` rising from 1, `clientseq` never above what it sent, an `opened` that picked one of its
offers, `pong` for `ping`, `closed` for `close`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect

STEREO_PCMU = {"type": "audio", "format": "PCMU", "rate": 8000, "channels": ["external", "internal"]}
MONO_PCMU = {"type": "audio", "format": "PCMU", "rate": 8000, "channels": ["external"]}
PROBE_CONVERSATION = "00000000-0000-0000-0000-000000000000"
COMPONENTS = ("@request-target", "@authority", "audiohook-organization-id",
              "audiohook-session-id", "audiohook-correlation-id", "x-api-key")


def duration(seconds: float) -> str:
    """ISO-8601 duration as Genesys writes positions."""
    return f"PT{seconds:.3f}".rstrip("0").rstrip(".") + "S"


def sign(headers: dict[str, str], target: str, authority: str, api_key: str, secret_b64: str,
         nonce: str | None = None, created: int | None = None) -> dict[str, str]:
    """The Signature-Input and Signature headers for a handshake."""
    created = int(time.time()) if created is None else created
    comps = " ".join(f'"{c}"' for c in COMPONENTS)
    params = (f'({comps});keyid="{api_key}";nonce="{nonce or secrets.token_urlsafe(16)}";'
              f'alg="hmac-sha256";created={created};expires={created + 60}')
    values = {"@request-target": target, "@authority": authority.lower(),
              **{k.lower(): v for k, v in headers.items()}}
    base = "\n".join([*(f'"{c}": {values[c]}' for c in COMPONENTS), f'"@signature-params": {params}'])
    mac = hmac.new(base64.b64decode(secret_b64), base.encode(), hashlib.sha256).digest()
    return {"Signature-Input": f"sig1={params}", "Signature": f"sig1=:{base64.b64encode(mac).decode()}:"}


@dataclass
class AudioHookClient:
    """One AudioHook session against ``url``."""

    url: str
    api_key: str
    client_secret: str | None = None
    session_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    conversation_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    organization_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    correlation_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    offers: list[dict[str, Any]] = field(default_factory=lambda: [STEREO_PCMU, MONO_PCMU])
    language: str = "en-US"
    signature_override: dict[str, str] | None = None
    ws: ClientConnection | None = None
    seq: int = 0
    server_seq: int = 0
    samples: int = 0
    opened: dict[str, Any] | None = None
    closing: bool = False
    received: list[dict[str, Any]] = field(default_factory=list)

    def headers(self) -> dict[str, str]:
        """Handshake headers, signed when a client secret is set."""
        h = {"Audiohook-Organization-Id": self.organization_id,
             "Audiohook-Correlation-Id": self.correlation_id,
             "Audiohook-Session-Id": self.session_id, "X-API-KEY": self.api_key}
        if self.signature_override is not None:
            h.update(self.signature_override)
        elif self.client_secret is not None:
            u = urlsplit(self.url)
            target = u.path + (f"?{u.query}" if u.query else "")
            h.update(sign(h, target, u.netloc, self.api_key, self.client_secret))
        return h

    async def connect(self) -> AudioHookClient:
        """Open the WebSocket (raises websockets' InvalidStatus when the server refuses)."""
        self.ws = await connect(self.url, additional_headers=self.headers(), compression=None,
                                user_agent_header="GenesysCloud-AudioHook-Client")
        return self

    async def send(self, type_: str, parameters: dict[str, Any] | None = None) -> None:
        """A client message with the next seq, the last serverseq and the position."""
        assert self.ws is not None
        self.seq += 1
        await self.ws.send(json.dumps({
            "version": "2", "id": self.session_id, "type": type_, "seq": self.seq,
            "serverseq": self.server_seq, "position": duration(self.samples / 8000),
            "parameters": parameters or {}}))

    async def receive(self) -> dict[str, Any]:
        """The next server message, checked."""
        assert self.ws is not None
        raw = await self.ws.recv()
        assert isinstance(raw, str), "the server sends text messages only"
        d = json.loads(raw)
        assert d["version"] == "2" and d["id"] == self.session_id, d
        assert d["seq"] == self.server_seq + 1, f"server seq {d['seq']} after {self.server_seq}"
        assert 0 <= d["clientseq"] <= self.seq, d
        self.server_seq = d["seq"]
        self.received.append(d)
        return d

    async def open(self) -> dict[str, Any]:
        """Send ``open``; the answer (``opened`` or ``disconnect``)."""
        await self.send("open", {
            "organizationId": self.organization_id, "conversationId": self.conversation_id,
            "participant": {"id": str(uuid.uuid4()), "ani": "tel:+15551230000", "aniName": "Caller",
                            "dnis": "tel:+15559870000"},
            "media": self.offers, "language": self.language})
        d = await self.receive()
        if d["type"] == "opened":
            chosen = d["parameters"]["media"]
            assert len(chosen) == 1 and chosen[0] in self.offers, chosen
            self.opened = chosen[0]
        return d

    async def audio(self, frame: bytes) -> None:
        """One binary frame of the chosen format (whole samples)."""
        assert self.ws is not None and self.opened is not None and not self.closing
        width = len(self.opened["channels"])
        assert len(frame) % width == 0
        await self.ws.send(frame)
        self.samples += len(frame) // width

    async def ping(self) -> dict[str, Any]:
        """``ping`` → the server's answer (``pong``)."""
        await self.send("ping", {"rtt": "PT0.01S"})
        return await self.receive()

    async def pause(self, seconds: float) -> None:
        """A secure pause of ``seconds``: ``paused``, no audio, ``resumed`` saying what was discarded."""
        start = duration(self.samples / 8000)
        await self.send("paused")
        await self.send("resumed", {"start": start, "discarded": duration(seconds)})

    async def discarded(self, seconds: float) -> None:
        """The client dropped ``seconds`` of audio."""
        await self.send("discarded", {"start": duration(self.samples / 8000),
                                      "discarded": duration(seconds)})

    async def close(self) -> dict[str, Any]:
        """``close`` → ``closed``, then Genesys closes the socket."""
        assert self.ws is not None
        await self.send("close", {"reason": "end"})
        self.closing = True
        d = await self.receive()
        await self.ws.close()
        return d
