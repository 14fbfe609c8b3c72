"""`voxq worker`: run a transcriber worker process."""

from __future__ import annotations

import argparse
import asyncio

from voxq.redis_conn import redis_url
from voxq.settings import get_settings
from workers.transcriber import Transcriber


def run_worker(args: argparse.Namespace) -> int:
    """Serve sessions until SIGTERM/SIGINT, then drain."""
    settings = get_settings()
    with redis_url(settings) as url:
        worker = Transcriber(settings, url, name=args.name, max_sessions=args.max_sessions,
                             health_port=args.health_port)
        asyncio.run(worker.run())
    return 0


def register_worker(sub: argparse._SubParsersAction) -> None:
    """Add `voxq worker`."""
    p = sub.add_parser("worker", help="run a transcriber worker (claims and drives sessions)")
    p.add_argument("--max-sessions", type=int, default=None,
                   help="sessions this worker drives at once (default VOXQ_MAX_SESSIONS)")
    p.add_argument("--name", default=None, help="consumer name (default host-pid)")
    p.add_argument("--health-port", type=int, default=None,
                   help="serve /healthz, /readyz, /metrics here (default VOXQ_WORKER_HEALTH_PORT)")
    p.set_defaults(func=run_worker)
