"""`/v1/ingest/twilio`: one Twilio Media Stream becomes one session (two channels with both
tracks: outbound = agent = channel 0, inbound = customer = channel 1), ended by ``stop``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

from websockets.asyncio.server import ServerConnection

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
from producer.ingest.twilio_protocol import (
    RATE,
    Event,
    StreamState,
    TrackAligner,
    mulaw_to_s16,
    parse,
    session_spec_fields,
)

log = logging.getLogger("voxq.ingest")


async def handle_twilio(ws: ServerConnection, gw: Gateway, query: Mapping[str, list[str]]) -> None:
    """Serve one Twilio Media Streams connection."""
    sess: IngestSession | None = None
    async with guarded(ws, Dialect.TWILIO, lambda: sess):
        state = StreamState()
        gate = RateGate(gw.settings.ingest_max_bytes_per_second)
        aligner: TrackAligner | None = None
        while True:
            msg = await ws.recv()
            now = time.monotonic()
            if not isinstance(msg, str):
                raise Rejected("Twilio sends only text frames", CloseCode.UNSUPPORTED)
            if wait := gate.delay(len(msg), now):
                await asyncio.sleep(wait)  # over the per-connection rate: stop reading a while
            m = parse(msg)
            state.accept(m)
            if m.event is Event.START:
                assert m.start is not None
                sid, chosen, metadata = session_spec_fields(m.start)
                aligner = TrackAligner(m.start.tracks, gw.settings.ingest_track_lag_ms * RATE // 1000)
                spec = SessionSpec(sid, RATE, aligner.channels, chosen.get("vendor", "local"),
                                   chosen.get("language", "en-US"), {}, metadata)
                sess = IngestSession(gw, Dialect.TWILIO)
                await sess.open(spec)
            elif m.event is Event.MEDIA:
                assert m.media is not None and aligner is not None and sess is not None
                pcm = aligner.add(m.media.track, m.media.timestamp, mulaw_to_s16(m.media.payload))
                await sess.send(pcm, now)
            elif m.event is Event.STOP:
                assert aligner is not None and sess is not None
                await sess.send(aligner.flush(), now)
                if aligner.late_samples:
                    log.warning("twilio session %s: %d sample(s) arrived after their place on "
                                "the timeline and were left out", sess.session_id,
                                aligner.late_samples)
                await sess.close()
                await ws.close(CloseCode.NORMAL, "stream stopped")
                return
            # connected, mark (echo of a mark we never send in listen mode) and dtmf: nothing
            # to publish
