"""Fixtures that start real processes: a redis-server per test session (restartable for
fault tests), and async clients bound to it. No Redis is ever mocked.

Nothing may hang the run: pytest-timeout fails a test (fixtures included) after its timeout;
a task a test leaves behind is cancelled, and one that ignores cancellation fails the test
instead of stalling the event loop's teardown; and if a test's teardown still outlives its
timeout by ``WATCHDOG_GRACE_S``, the run stops with every thread's traceback."""

from __future__ import annotations

import asyncio
import faulthandler
import os
import subprocess
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path
from types import ModuleType

import hypothesis
import pytest
import redis.asyncio as aioredis

from tests import support
from voxq.embedded_redis import RedisServer
from voxq.keys import Keys
from voxq.redis_conn import connect
from voxq.settings import Settings

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "voxq" / "samples" / "support-call.flac"
SAMPLE_TEXT = REPO / "voxq" / "samples" / "support-call.txt"
LEFTOVER_GRACE_S = 10.0  # how long tasks a test left behind get to end once cancelled
WATCHDOG_GRACE_S = 120.0  # past its pytest-timeout, a test still running stops the run
DEFAULT_TIMEOUT_S = 300.0
_STDERR = pytest.StashKey[int]()  # a copy of the real stderr, for the watchdog
#: helpers whose use means a test starts a child process
_SPAWNING = (support.run_voxq, support.start_worker, support.stop_process, support.cpu_load)

# Examples are judged by their result, never by how long the (shared, loaded) machine took.
hypothesis.settings.register_profile(
    "voxq", deadline=None, suppress_health_check=[hypothesis.HealthCheck.too_slow])
hypothesis.settings.load_profile("voxq")


def pytest_configure(config: pytest.Config) -> None:
    """Keep a handle on the real stderr (output capture is suspended while hooks configure)
    for the watchdog's tracebacks."""
    config.stash[_STDERR] = os.dup(2)


def pytest_unconfigure(config: pytest.Config) -> None:
    fd = config.stash.get(_STDERR, None)
    if fd is not None:
        os.close(fd)


#: a test that takes one of these starts processes (``env`` and ``cenv`` are child environments),
#: a Redis Cluster or a whole worker: it belongs to the slow tier (``-m slow``) beside the
#: modules that say so themselves
SLOW_FIXTURES = frozenset({"env", "cenv", "cluster", "redis_cluster", "csettings", "worker",
                           "workers", "busy_cpu", "redis_server", "redis_cluster_server"})
#: modules whose tests run whole workers (in process or not) or the demo end to end
SLOW_MODULES = frozenset({
    "voxq/test_demo.py", "workers/test_transcriber.py", "workers/test_worker_probes.py",
    "workers/test_housekeeping.py", "workers/test_pod_cost.py", "workers/test_replica_confirm.py",
    "workers/test_vendor_faults.py", "workers/test_fault_processes.py",
    "workers/test_cancellation.py", "workers/vendors/local/test_local_recognizer.py",
})


def _needs_servers(module: ModuleType | None) -> bool:
    """Whether a test module talks to a server: a vendor emulator (its own, or one imported
    from ``tests.emulators``), a Redis server of its own or a child process (``subprocess``,
    ``run_voxq``)."""
    if module is None:
        return False
    if module.__name__.startswith(("tests.emulators.", "emulators.")):
        return True
    for value in vars(module).values():
        if value is subprocess or value is RedisServer:
            return True
        owner = getattr(value, "__module__", None) or ""
        if owner.startswith(("tests.emulators.", "emulators.")) or any(value is f for f in _SPAWNING):
            return True
    return False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark as slow every test that needs more than the Python process: a Redis server, a
    vendor emulator, another process, a cluster or a worker. What is left (``-m 'not slow'``)
    is the fast tier of pure unit tests: codecs, protocol decoders, the session runner's
    decisions, settings, manifests."""
    here = Path(__file__).parent
    seen: dict[str, bool] = {}
    for item in items:
        module = item.path.relative_to(here).as_posix() if item.path.is_relative_to(here) else ""
        if module not in seen:
            seen[module] = _needs_servers(getattr(item, "module", None))
        fixtures = set(getattr(item, "fixturenames", ()))
        if module in SLOW_MODULES or seen[module] or SLOW_FIXTURES & fixtures:
            item.add_marker(pytest.mark.slow)


def _timeout_of(item: pytest.Item) -> float:
    """The item's pytest-timeout: its marker, else ``--timeout``, else the ini's (0: none)."""
    marker = item.get_closest_marker("timeout")
    if marker is not None and marker.args:
        return float(marker.args[0] or 0)
    option = item.config.getoption("timeout", None)
    if option is not None:
        return float(option)
    value = item.config.getini("timeout")
    return float(value) if value else DEFAULT_TIMEOUT_S


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, None, None]:
    """A last resort that cannot be caught: setup, test and teardown of one item that outlive
    its timeout by ``WATCHDOG_GRACE_S`` dump all tracebacks and exit (a stuck run is worse)."""
    timeout = _timeout_of(item)
    if timeout <= 0:  # timeouts switched off (a debugging session): no watchdog either
        yield
        return
    faulthandler.dump_traceback_later(timeout + WATCHDOG_GRACE_S, exit=True,
                                      file=item.config.stash[_STDERR])
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


@pytest.fixture(autouse=True)
async def no_task_outlives_the_test() -> AsyncIterator[None]:
    """After the test and its other fixtures: cancel the tasks they left running; a task still
    alive ``LEFTOVER_GRACE_S`` later ignores cancellation, so it fails the test (and is dropped
    from the loop's books, whose teardown would otherwise wait for it forever)."""
    before = asyncio.all_tasks()
    yield
    me = asyncio.current_task()
    left = {t for t in asyncio.all_tasks() - before if t is not me and not t.done()}
    if not left:
        return
    for t in left:
        t.cancel()
    _, stuck = await asyncio.wait(left, timeout=LEFTOVER_GRACE_S)
    if stuck:
        for t in stuck:
            asyncio.tasks._unregister_task(t)
        pytest.fail(f"{len(stuck)} task(s) ignored cancellation for {LEFTOVER_GRACE_S:g} s: "
                    + "; ".join(f"{t.get_name()} at {t.get_stack(limit=3)}" for t in stuck))


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the whole run; tests isolate themselves by key prefix."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix unique to the test, so tests sharing a server never see each other."""
    name = "".join(c if c.isalnum() else "-" for c in request.node.name)[-24:]
    return f"t{os.getpid()}-{id(request) % 100000}-{name}"


@pytest.fixture
def keys(prefix: str) -> Keys:
    """The key schema under the test's prefix."""
    return Keys(prefix)


@pytest.fixture
def settings(redis_server: RedisServer, prefix: str) -> Settings:
    """Settings pointing at the test Redis with the test's prefix."""
    return Settings(redis_url=redis_server.url, prefix=prefix)


@pytest.fixture
def env(redis_server: RedisServer, prefix: str) -> dict[str, str]:
    """Environment for child processes (workers, API, producers) of this test."""
    e = {k: v for k, v in os.environ.items() if not k.startswith(("VOXQ_", "AWS_"))}
    e.update({"REDIS_URL": redis_server.url, "VOXQ_PREFIX": prefix,
              "PYTHONUNBUFFERED": "1"})
    return e


@pytest.fixture
async def r(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """An asyncio client on the test Redis (patient: on a loaded machine the server may not
    answer within redis-py's default 5 s, and a test's own writes must not fail for that)."""
    client = connect(redis_server.url, socket_timeout=60)
    yield client
    await client.aclose()
