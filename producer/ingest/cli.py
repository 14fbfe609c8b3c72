"""`voxq ingest`: run the WebSocket ingest gateway (embedded Redis when REDIS_URL is unset)."""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import TYPE_CHECKING, Any

from voxq.errors import VoxqError
from voxq.redis_conn import redis_url
from voxq.settings import get_settings

if TYPE_CHECKING:
    from producer.ingest.core import Gateway

log = logging.getLogger("voxq.ingest")


class NoCredentials(VoxqError):
    """No way to authenticate clients is configured and --insecure was not given."""


async def _main(gw: Gateway, host: str, port: int) -> None:
    from producer.ingest.server import run_gateway

    await run_gateway(gw, host, port)


async def _keys_exist(gw: Any) -> bool:
    try:
        return bool(await gw.has_scoped_keys())
    finally:
        await gw.close()


def run(args: argparse.Namespace) -> int:
    """Check the credentials, then serve until SIGTERM."""
    # imported here: every `voxq` command registers this one, and the gateway's modules are heavy
    from producer.ingest.core import Gateway

    settings = get_settings()
    host = args.host or settings.ingest_host
    port = settings.ingest_port if args.port is None else args.port
    with redis_url(settings) as url:
        gw = Gateway(settings, url, insecure=args.insecure)
        if not gw.has_credentials() and not args.insecure and not asyncio.run(_keys_exist(gw)):
            raise NoCredentials(
                "no credential is configured: create a key with sessions:write (voxq keys "
                "create), set VOXQ_INGEST_KEY (or VOXQ_API_KEY), "
                "VOXQ_TWILIO_AUTH_TOKEN or VOXQ_AUDIOHOOK_API_KEY, or pass --insecure to accept "
                "every client")
        if args.insecure:
            log.warning("voxq ingest runs with --insecure: every client is accepted")
        asyncio.run(_main(gw, host, port))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `voxq ingest`."""
    p = sub.add_parser(
        "ingest", help="run the WebSocket ingest gateway (raw PCM, Twilio, AudioHook)",
        description="Accept audio over WebSocket (/v1/ingest/raw, /v1/ingest/twilio, "
                    "/v1/ingest/audiohook) and publish each connection as a session.")
    p.add_argument("--host", default=None, help="address to bind (default: VOXQ_INGEST_HOST)")
    p.add_argument("--port", type=int, default=None,
                   help="port to bind (default: VOXQ_INGEST_PORT, 8100)")
    p.add_argument("--insecure", action="store_true",
                   help="accept clients without any credential (local use only)")
    p.set_defaults(func=run)
