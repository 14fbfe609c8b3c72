"""jambonz ``listen``, the server side, without sockets: the JSON preamble (call attributes,
``sampleRate``, ``mixType``, ``metadata``) and L16 frames (docs/protocols/ingest.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from producer.ingest.core import CloseCode, Rejected, SessionSpec

SUBPROTOCOL = "audio.jambonz.org"
RATES = (8000, 16000, 24000, 48000)  # 64000 is beyond what the bus carries


@dataclass(frozen=True, slots=True)
class Preamble:
    """What the first text frame declares."""

    session: str
    rate: int
    channels: int
    metadata: dict[str, str] = field(default_factory=dict)
    vendor: str = "local"
    language: str = "en-US"

    def spec(self) -> SessionSpec:
        """The session it asks for."""
        return SessionSpec(self.session, self.rate, self.channels, self.vendor, self.language,
                           {}, self.metadata)


def parse_preamble(text: str) -> Preamble:
    """Parse the first text frame; Rejected if it is not a usable jambonz preamble."""
    try:
        d: Any = json.loads(text)
    except ValueError:
        raise Rejected("the first message is not JSON", CloseCode.INVALID) from None
    if not isinstance(d, dict):
        raise Rejected("the first message is not a JSON object", CloseCode.INVALID)
    rate = d.get("sampleRate", 8000)
    if rate not in RATES:
        raise Rejected(f"sampleRate {str(rate)[:10]} is not one of {RATES}", CloseCode.UNSUPPORTED,
                       "audio")
    mix = d.get("mixType", "mono")
    if mix not in ("mono", "mixed", "stereo"):
        raise Rejected(f"unknown mixType {str(mix)[:20]!r}", CloseCode.UNSUPPORTED, "audio")
    raw_meta = d.get("metadata")
    meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
    sid = str(meta.get("session") or d.get("callSid") or "")
    if not sid:
        raise Rejected("the preamble has neither metadata.session nor callSid", CloseCode.INVALID)
    kept = {k: str(d[k]) for k in ("callSid", "from", "to", "direction") if k in d}
    kept.update({str(k): str(v) for k, v in meta.items()
                 if k not in ("session", "vendor", "language")})
    return Preamble(sid, int(rate), 2 if mix == "stereo" else 1, kept,
                    str(meta.get("vendor", "local")), str(meta.get("language", "en-US")))
