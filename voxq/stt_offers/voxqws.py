"""`voxq-ws` (``docs/protocols/README.md``, "voxq-ws"): no per-session options; the server
behind it decides what it recognises."""

from __future__ import annotations

from voxq.stt_offers.contract import NoOptions, RecognitionOffer

__all__ = ["OFFER"]

OFFER = RecognitionOffer("voxq-ws", NoOptions)
