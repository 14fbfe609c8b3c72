"""`/v1/ingest/audiohook`: one Genesys AudioHook Monitor session becomes one voxq session
(stereo: internal = agent = channel 0, external = customer = channel 1). ``opened`` goes out as
soon as the session exists; ``closed`` only once Redis acknowledged everything received."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from producer.ingest.audiohook_protocol import Conversation, parse_duration, to_bus
from producer.ingest.core import (
    CloseCode,
    Dialect,
    Gateway,
    IngestSession,
    RateGate,
    Rejected,
    SessionSpec,
)
from producer.ingest.session_guard import guarded
from voxq.keys import SESSION_ID_RE

log = logging.getLogger("voxq.ingest")

SILENCE_STEP_S = 10  # silence for a pause or discarded audio is published in pieces this long


def _spec(conv: Conversation, headers: Mapping[str, str]) -> SessionSpec:
    p = conv.open_params
    media = conv.media
    assert media is not None
    lang = p.get("language")
    participant = p.get("participant")
    participant = participant if isinstance(participant, dict) else {}
    metadata = {"conversationId": str(p.get("conversationId", "")),
                "organizationId": str(p.get("organizationId", "")),
                "participantId": str(participant.get("id", "")),
                "correlationId": headers.get("Audiohook-Correlation-Id", "")}
    return SessionSpec(conv.session_id, media.rate, len(media.channels), "local",
                       lang if isinstance(lang, str) and lang else "en-US", {},
                       {k: v for k, v in metadata.items() if v})


async def _silence(sess: IngestSession, seconds: float, channels: int) -> None:
    """Keep the timeline: ``seconds`` of silence where the client sent no audio."""
    frames = round(seconds * 8000)
    while frames > 0:
        n = min(frames, SILENCE_STEP_S * 8000)
        await sess.send(bytes(2 * channels * n), time.monotonic())
        frames -= n


async def handle_audiohook(ws: ServerConnection, gw: Gateway,
                           query: Mapping[str, list[str]]) -> None:
    """Serve one AudioHook connection."""
    assert ws.request is not None
    headers = ws.request.headers
    sess: IngestSession | None = None
    async with guarded(ws, Dialect.AUDIOHOOK, lambda: sess):
        sid = headers.get("Audiohook-Session-Id", "")
        if not SESSION_ID_RE.fullmatch(sid):
            raise Rejected("Audiohook-Session-Id is missing or not a session id", CloseCode.POLICY)
        conv = Conversation(sid)
        gate = RateGate(gw.settings.ingest_max_bytes_per_second)
        try:
            while True:
                msg = await ws.recv()
                now = time.monotonic()
                if wait := gate.delay(len(msg), now):
                    await asyncio.sleep(wait)  # over the per-connection rate: stop reading a while
                if isinstance(msg, bytes):
                    x = conv.audio(msg)
                    if sess is not None:
                        assert conv.media is not None
                        await sess.send(to_bus(x, conv.media.channels), now)
                    continue
                m = conv.parse(msg)
                if m.type == "open":
                    media = conv.open(m.parameters)
                    if not conv.probe:  # a connection probe creates nothing
                        sess = IngestSession(gw, Dialect.AUDIOHOOK)
                        await sess.open(_spec(conv, headers))
                    await ws.send(conv.message("opened", {"media": [media.as_offer()],
                                                          "startPaused": False}))
                elif m.type == "ping":
                    await ws.send(conv.message("pong"))
                elif m.type in ("resumed", "discarded"):
                    d = m.parameters.get("discarded")
                    if d is None:
                        raise Rejected(f"{m.type} has no discarded duration", CloseCode.INVALID)
                    seconds = parse_duration(d)
                    if sess is not None and seconds > 0:
                        assert conv.media is not None
                        await _silence(sess, seconds, len(conv.media.channels))
                elif m.type == "close":
                    conv.closing = True
                    if sess is not None:
                        await sess.close()  # eos written and acknowledged: all of it is durable
                    await ws.send(conv.message("closed"))
                    with contextlib.suppress(TimeoutError, ConnectionClosed):
                        async with asyncio.timeout(10):  # Genesys closes the socket itself
                            await ws.wait_closed()
                    return
                elif m.type == "error":
                    log.warning("audiohook session %s: client error %s: %s", sid,
                                m.parameters.get("code"), str(m.parameters.get("message"))[:200])
                # paused (nothing arrives until resumed), update, dtmf, event: nothing to publish
        except Rejected as e:
            with contextlib.suppress(Exception):
                await ws.send(conv.message("disconnect", {"reason": "error", "info": e.reason}))
            raise
