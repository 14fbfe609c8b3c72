"""Slow clients against a real `voxq api` process: hundreds of sockets that send one header line
and stop do not stop /healthz, are closed after the head timeout, and past the connection cap
the longest-waiting one is closed so the process's descriptors stay bounded. Repeated log
records are bounded too."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from voxq.embedded_redis import free_port
from voxq.logs import RepeatFilter

SLOW_HEAD = b"GET /healthz HTTP/1.1\r\nHost: api\r\n"  # the blank line never comes


@dataclass
class ApiProcess:
    url: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def fds(self) -> int:
        """Descriptors the API process holds now."""
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))


@pytest.fixture(autouse=True)
def room_for_sockets() -> Iterator[None]:
    """This test process opens hundreds of client sockets: raise its soft open-file limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@contextlib.contextmanager
def start_api(env: dict[str, str], tmp_path: Path, **limits: str) -> Iterator[ApiProcess]:
    port = free_port()
    log = tmp_path / "api.log"
    proc = subprocess.Popen([sys.executable, "-m", "voxq", "api", "--port", str(port)],
                            env={**env, **limits}, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while b"listening on" not in log.read_bytes():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "voxq api did not start"
            time.sleep(0.1)
        yield ApiProcess(f"http://127.0.0.1:{port}", port, proc, log)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def open_slow(port: int, n: int) -> list[socket.socket]:
    """n connections that each send one header line of a request and then nothing."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(SLOW_HEAD)
        socks.append(s)
    return socks


def wait_closed(socks: list[socket.socket], timeout: float) -> int:
    """Read every socket until the server closes it or ``timeout``; how many were closed."""
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    closed = 0
    deadline = time.monotonic() + timeout
    while closed < len(socks) and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(4096)
            except ConnectionResetError:
                data = b""
            if not data:
                sel.unregister(sock)
                closed += 1
    sel.close()
    return closed


def wait_for(ok: Callable[[], bool], timeout: float, show: Callable[[], object]) -> object:
    """Poll until ``ok()``; fails with ``show()`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, show()
        time.sleep(0.1)
    return show()


def healthz_latencies(url: str, n: int) -> list[float]:
    """n sequential GET /healthz, each must be a 200; their latencies in ms."""
    out = []
    with httpx.Client(base_url=url, timeout=15.0) as c:
        for _ in range(n):
            t0 = time.perf_counter()
            resp = c.get("/healthz", headers={"connection": "close"})
            out.append((time.perf_counter() - t0) * 1000)
            assert resp.status_code == 200 and resp.json() == {"status": "ok"}
    return out


def test_many_slow_sockets_leave_healthz_answering_and_get_closed(
        env: dict[str, str], tmp_path: Path) -> None:
    n, timeout = 500, 15.0
    with start_api(env, tmp_path, VOXQ_API_HEADER_TIMEOUT_SECONDS=str(timeout)) as api:
        baseline = api.fds()
        socks = open_slow(api.port, n)
        try:
            # The slow ones are accepted and held (until the head timeout)...
            held = wait_for(lambda: api.fds() >= baseline + n, 10, api.fds)
            latencies = healthz_latencies(api.url, 20)  # ...while whole requests are served
            assert wait_closed(socks, timeout + 60) == n  # ...and then closed
            deadline = time.monotonic() + 30
            while api.fds() > baseline + 10 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert api.fds() <= baseline + 10
        finally:
            for s in socks:
                s.close()
        log = api.log.read_text()
        assert "Traceback" not in log
        # One INFO line per closed connection would be 500 lines: repeats are bounded.
        assert log.count("sent no complete request head") <= 5
        print(json.dumps({"slow_sockets": n, "held_fds": held, "baseline_fds": baseline,
                          "healthz_ms_max": round(max(latencies), 1),
                          "healthz_ms_median": round(sorted(latencies)[len(latencies) // 2], 1)}))


def test_past_the_cap_the_longest_waiting_connection_is_closed(
        env: dict[str, str], tmp_path: Path) -> None:
    cap, n = 100, 400
    with start_api(env, tmp_path, VOXQ_API_MAX_CONNECTIONS=str(cap),
                         VOXQ_API_HEADER_TIMEOUT_SECONDS="300") as api:
        baseline = api.fds()
        socks = open_slow(api.port, n)
        try:
            # Accepting runs ahead of closing for a moment; then the count settles at the cap.
            wait_for(lambda: api.fds() <= baseline + cap + 5, 20, api.fds)
            healthz_latencies(api.url, 10)  # whole requests still get through
            # The evicted ones (all but the newest `cap`) were closed long before the timeout.
            assert wait_closed(socks[: n - cap], 60) == n - cap
        finally:
            for s in socks:
                s.close()
        log = api.log.read_text()
        assert "Traceback" not in log
        assert 1 <= log.count("has waited longest for a request head") <= 5


def test_a_body_that_stops_coming_is_cut_off(env: dict[str, str], tmp_path: Path) -> None:
    with start_api(env, tmp_path, VOXQ_API_BODY_TIMEOUT_SECONDS="2") as api:
        s = socket.create_connection(("127.0.0.1", api.port), timeout=30)
        s.sendall(b"POST /v1/tts HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n{\"text\": \"")
        assert wait_closed([s], 30) == 1
        s.close()
        healthz_latencies(api.url, 1)
        assert "Traceback" not in api.log.read_text()


def test_idle_keep_alive_is_not_cut_by_the_head_deadline(env: dict[str, str],
                                                          tmp_path: Path) -> None:
    with start_api(env, tmp_path, VOXQ_API_HEADER_TIMEOUT_SECONDS="1",
                         VOXQ_API_KEEPALIVE_TIMEOUT_SECONDS="30") as api:
        with httpx.Client(base_url=api.url, timeout=15.0) as c:
            first = c.get("/healthz")
            time.sleep(2.5)  # idle between requests: the keep-alive timeout (30 s) applies
            second = c.get("/healthz")
        assert first.status_code == second.status_code == 200
        # The same connection served both (a closed one would have been reopened, and counted).
        assert second.extensions["network_stream"] is first.extensions["network_stream"]


def test_repeat_filter_bounds_records_alike() -> None:
    now = [0.0]
    f = RepeatFilter(burst=3, window=10.0, clock=lambda: now[0])

    def rec(msg: str, *args: object, name: str = "x") -> logging.LogRecord:
        return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, None)

    passed = [f.filter(rec("accept failed: %s", i)) for i in range(1000)]
    assert passed.count(True) == 3
    assert f.filter(rec("another message"))  # other templates are counted apart
    assert f.filter(rec("accept failed: %s", 1, name="other"))
    now[0] = 10.0
    first = rec("accept failed: %s", 5)
    assert f.filter(first)
    assert "997 more like this held back" in first.getMessage()


def test_api_refuses_a_cap_the_descriptor_limit_cannot_hold(env: dict[str, str]) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY or hard > 999_000:
        pytest.skip("the hard open-file limit is above any cap the settings allow")
    done = subprocess.run([sys.executable, "-m", "voxq", "api", "--port", "0"],
                          env={**env, "VOXQ_API_MAX_CONNECTIONS": str(hard)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "VOXQ_API_MAX_CONNECTIONS" in done.stderr and "Traceback" not in done.stderr
