"""Helpers of the cluster tests: session ids on a chosen node, exact-transcript checks."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import redis.asyncio as aioredis

from tests.emulators.watermark import expected_words
from tests.support import wait_status
from voxq.keys import Keys
from voxq.records import Status
from voxq.redis_cluster import ClusterNode, RedisClusterServer, slot_of
from voxq.sessions import read_finals

REPO = Path(__file__).resolve().parents[2]


def sid_on(cluster: RedisClusterServer, node: ClusterNode, base: str, keys: Keys) -> str:
    """A session id whose keys live on ``node`` (a primary)."""
    for i in range(10000):
        sid = f"{base}-{i}"
        if cluster.primary_of_slot(slot_of(keys.meta(sid))) is node:
            return sid
    raise AssertionError(f"no id {base}-N lands on {node}")


def sids_on_every_primary(cluster: RedisClusterServer, base: str, keys: Keys) -> list[str]:
    """One session id per primary, so a test touches every node."""
    return [sid_on(cluster, p, f"{base}{i}", keys)
            for i, p in enumerate(cluster.nodes[:cluster.n_primaries])]


async def words(r: aioredis.Redis, keys: Keys, sid: str) -> list[str]:
    """The words of a session's final transcript, in order."""
    return [w for _, t in await read_finals(r, keys, sid) for w in t.text.split()]


async def assert_exact(r: aioredis.Redis, keys: Keys, sid: str, n: int,
                       timeout: float = 120, logs: Callable[[], str] | None = None) -> None:
    """The session finished with exactly the watermark words w0..w(n-1), finals numbered."""
    try:
        meta = await wait_status(r, keys, sid, timeout=timeout)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{logs() if logs else ''}") from None
    assert meta.status is Status.FINISHED, meta.error
    finals = await read_finals(r, keys, sid)
    got = [w for _, t in finals for w in t.text.split()]
    assert got == expected_words(n), missing_and_repeated(got, n)
    assert [t.seq for _, t in finals] == list(range(len(finals)))


def missing_and_repeated(got: list[str], n: int) -> str:
    """What a transcript lacks and repeats, for assertion messages."""
    want = expected_words(n)
    missing = [w for w in want if w not in got]
    repeated = sorted({w for w in got if got.count(w) > 1})
    return f"missing {missing[:40]}, repeated {repeated[:40]}, {len(got)} words"


async def wait_finals(r: aioredis.Redis, keys: Keys, sid: str, n: int,
                      timeout: float = 60) -> None:
    """Until the session has at least ``n`` finals."""
    deadline = time.monotonic() + timeout
    while int(await r.hget(keys.meta(sid), "finals") or 0) < n:
        assert time.monotonic() < deadline, f"{sid}: fewer than {n} finals after {timeout}s"
        await asyncio.sleep(0.02)


class WorkerProcs:
    """Named `voxq worker` processes on the cluster , with
    their logs."""

    def __init__(self, env: dict[str, str], logdir: Path):
        self.env, self.logdir = env, logdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, *names: str) -> None:
        for n in names:
            out = (self.logdir / f"{n}.log").open("ab")
            self.procs[n] = subprocess.Popen(
                [sys.executable, "-m", "voxq", "worker", "--name", n],
                env=self.env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
                         for p in sorted(self.logdir.glob("*.log")))

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
                p.wait()


async def owner_of(r: aioredis.Redis, keys: Keys, sid: str) -> str:
    """The session's owner now."""
    return (await r.hget(keys.meta(sid), "owner") or b"").decode()


async def owner_changes(r: aioredis.Redis, keys: Keys, sid: str, old: str,
                        timeout: float = 120) -> float:
    """Seconds until another worker owns the session."""
    t0 = time.monotonic()
    while await owner_of(r, keys, sid) == old:
        assert time.monotonic() - t0 < timeout, f"{sid} never left {old}"
        await asyncio.sleep(0.02)
    return time.monotonic() - t0
