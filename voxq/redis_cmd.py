"""`voxq redis`: run the embedded Redis on its own, for producers and workers to share
(``--cluster``: a six-node Redis Cluster on loopback instead)."""

from __future__ import annotations

import argparse
import signal
import threading

from voxq.embedded_redis import RedisServer


def run(args: argparse.Namespace) -> int:
    """Start redis-server, print its URL, serve until interrupted."""
    if args.cluster:
        return run_cluster()
    with RedisServer(port=args.port or None, appendonly=args.appendonly) as server:
        print(f"REDIS_URL={server.url}", flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            while not stop.wait(0.5):
                if server.proc is None or server.proc.poll() is not None:
                    print("voxq redis: redis-server exited")
                    return 1
        except KeyboardInterrupt:
            pass
    return 0


def run_cluster() -> int:
    """Start a local Redis Cluster (3 primaries + 3 replicas, AOF on), print its URL, serve."""
    from voxq.redis_cluster import RedisClusterServer

    with RedisClusterServer() as cluster:
        print(f"REDIS_URL={cluster.url}", flush=True)
        print("voxq redis: RQ (the TTS queue) needs a single Redis: run `voxq redis` too and "
              "export its URL as VOXQ_RQ_REDIS_URL", flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            while not stop.wait(0.5):
                if not all(n.alive for n in cluster.nodes):
                    print("voxq redis: a cluster node exited")
                    return 1
        except KeyboardInterrupt:
            pass
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `voxq redis`."""
    p = sub.add_parser("redis", help="run an embedded redis-server and print its REDIS_URL")
    p.add_argument("--port", type=int, default=0, help="TCP port (default: a free one)")
    p.add_argument("--appendonly", action="store_true", help="turn AOF persistence on")
    p.add_argument("--cluster", action="store_true",
                   help="run a local Redis Cluster instead (6 nodes on free ports, AOF on)")
    p.set_defaults(func=run)
