"""Stand-ins for two worker fixes that are pending (docs/redis-cluster.md, "Worker changes"):

1. ``workers.audio_reader.AudioReader`` reads the cluster's slot map from its client's
   ``nodes_manager`` without ever initializing the client, and the Transcriber's reader client
   runs no other command first: on a cluster the first read raises KeyError and the reader task
   dies, so no session gets audio. The shim initializes the client before the reader starts.
2. ``workers.batcher.Batcher`` refreshes the slot map only on MOVED/ASK/TRYAGAIN/CLUSTERDOWN
   replies. When a primary dies, its sessions' fenced writes fail with connection errors and
   go on targeting the dead node; the worker recovers only if some other command on the same
   client happens to hit CLUSTERDOWN and re-initialize it (with
   ``cluster-require-full-coverage no`` nothing does, and the sessions stall forever). The shim
   refreshes the slot map after a round that failed on a connection error.

``apply()`` patches this process; ``python -m tests.cluster.worker_shim ARGS`` runs ``voxq ARGS``
with the patches (for worker processes). Once the worker has each fix, the matching strict
xfail test in test_cluster_takeover.py passes and so fails the run: delete that patch here, and
this module with the last one.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

_applied = False


def apply() -> None:
    """Make AudioReader.run initialize a cluster client before its first read (idempotent)."""
    global _applied
    if _applied:
        return
    from redis.asyncio.cluster import RedisCluster

    from workers.audio_reader import AudioReader

    original = AudioReader.run

    @functools.wraps(original)
    async def run(self: Any) -> None:
        if isinstance(self.r, RedisCluster):
            await self.r.initialize()
        await original(self)

    AudioReader.run = run  # type: ignore[method-assign]

    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from workers.batcher import Batcher

    round_ = Batcher._round

    @functools.wraps(round_)
    async def round_then_refresh(self: Any, name: str, items: list[Any]) -> None:
        await round_(self, name, items)
        if self.cluster and any(
                it.future.done() and not it.future.cancelled() and isinstance(
                    it.future.exception(), RedisConnectionError | RedisTimeoutError | OSError)
                for it in items):
            await self._refresh()

    Batcher._round = round_then_refresh  # type: ignore[method-assign]
    _applied = True


if __name__ == "__main__":
    apply()
    from voxq.cli import main

    sys.exit(main(sys.argv[1:]))
