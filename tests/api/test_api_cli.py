"""`voxq api`: argument parsing, and a real server process (external and embedded Redis)."""

from __future__ import annotations

import argparse
import os
import resource
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest

from api import cli

# Runs just the `api` subcommand, so this test does not depend on the other packages' commands.
RUNNER = """
import argparse, sys
from api.cli import register
parser = argparse.ArgumentParser(prog="voxq")
register(parser.add_subparsers(dest="command", required=True))
args = parser.parse_args(sys.argv[1:])
sys.exit(args.func(args))
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="voxq", exit_on_error=False)
    cli.register(p.add_subparsers(dest="command", required=True))
    return p


def test_register_adds_api_with_host_and_port() -> None:
    args = parser().parse_args(["api", "--host", "0.0.0.0", "--port", "9001"])
    assert (args.host, args.port, args.func) == ("0.0.0.0", 9001, cli.run)
    defaults = parser().parse_args(["api"])
    assert (defaults.host, defaults.port) == (None, None)


@pytest.mark.parametrize("bad", ["70000", "-1", "http"])
def test_bad_port_is_refused(bad: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        cli.port_number(bad)


def test_url_of_bound_socket() -> None:
    sock = cli.bind("127.0.0.1", 0)
    try:
        assert cli.url_of(sock) == f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


@contextmanager
def serving(env: dict[str, str], files: int | None = None) -> Iterator[str]:
    """Start `voxq api --port 0` and yield the URL it printed; SIGINT it afterwards. With
    ``files``, the whole `voxq` command runs under that open-file hard limit."""
    cmd = ([sys.executable, "-m", "voxq"] if files else [sys.executable, "-c", RUNNER])
    proc = subprocess.Popen([*cmd, "api", "--port", "0"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=file_limit(files))
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline() if ready else ""
        assert line.startswith("voxq api: listening on http://127.0.0.1:"), (
            line, proc.poll(), proc.stderr.read() if proc.poll() is not None and proc.stderr
            else "")
        yield line.split()[4]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            assert proc.wait(15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def file_limit(files: int | None) -> Callable[[], None] | None:
    """A preexec_fn that sets RLIMIT_NOFILE (soft and hard) to ``files`` in the child."""
    if files is None:
        return None
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))


def get(url: str) -> httpx.Response:
    """GET with retries while the server finishes starting."""
    for _ in range(100):
        try:
            return httpx.get(url, timeout=5)
        except httpx.ConnectError:
            select.select([], [], [], 0.1)
    return httpx.get(url, timeout=5)


def test_serves_on_the_printed_url(env: dict[str, str]) -> None:
    with serving(env) as url:
        assert get(f"{url}/healthz").json() == {"status": "ok"}
        assert get(f"{url}/readyz").status_code == 200
        assert get(f"{url}/v1/sessions").json()["total"] == 0


def test_embedded_redis_when_redis_url_is_unset(env: dict[str, str]) -> None:
    bare = {k: v for k, v in env.items() if k not in ("REDIS_URL", "VOXQ_REDIS_URL")}
    assert "REDIS_URL" not in bare and os.environ.get("VOXQ_REDIS_URL") is None
    with serving(bare) as url:
        assert get(f"{url}/readyz").json() == {"status": "ready"}


def test_api_key_from_the_environment(env: dict[str, str]) -> None:
    with serving({**env, "VOXQ_API_KEY": "from-env"}) as url:
        assert get(f"{url}/v1/sessions").status_code == 401
        ok = httpx.get(f"{url}/v1/sessions", headers={"Authorization": "Bearer from-env"})
        assert ok.status_code == 200


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_and_the_embedded_redis_with_it(env: dict[str, str],
                                                             sig: signal.Signals) -> None:
    bare = {k: v for k, v in env.items() if k != "REDIS_URL"}
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, "api", "--port", "0"], env=bare,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        select.select([proc.stdout], [], [], 30)
        url = proc.stdout.readline().split()[4]
        assert get(f"{url}/readyz").status_code == 200
        proc.send_signal(sig)
        assert proc.wait(15) == 0
        announced = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    redis_at = next(w for w in announced.split() if w.startswith("redis://"))
    host_port = redis_at.removeprefix("redis://").split("/")[0]
    host, port = host_port.rsplit(":", 1)
    with pytest.raises(OSError), socket.create_connection((host, int(port)), timeout=2):
        pass  # the embedded redis-server is gone


def test_default_connection_cap_fits_a_low_open_file_limit(env: dict[str, str]) -> None:
    """With `ulimit -Hn 1024` (a build sandbox, a small VM) the default cap of 2000 connections
    cannot fit: the API starts with what fits and says so, instead of refusing to start."""
    with serving(env, files=1024) as url:
        assert get(f"{url}/healthz").json() == {"status": "ok"}


def test_configured_connection_cap_past_the_hard_limit_is_a_clear_error(
        env: dict[str, str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "voxq", "api", "--port", "0"],
                          env={**env, "VOXQ_API_MAX_CONNECTIONS": "2000"}, capture_output=True,
                          text=True, timeout=60, preexec_fn=file_limit(1024))
    assert proc.returncode == 2, proc.stderr
    assert "VOXQ_API_MAX_CONNECTIONS=2000 needs 2256 open files" in proc.stderr
    assert "hard limit is 1024" in proc.stderr and "Traceback" not in proc.stderr
