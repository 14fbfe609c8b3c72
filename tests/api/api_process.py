"""`voxq api` as an OS process for the tests: started on a free port, stopped within a
bounded time (SIGINT, then SIGKILL)."""

from __future__ import annotations

import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def api_process(env: dict[str, str], log: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """Start `voxq api --port 0`; yield its URL and process; its stderr goes to ``log``."""
    with log.open("ab") as err:
        proc = subprocess.Popen([sys.executable, "-m", "voxq", "api", "--port", "0"], env=env,
                                stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        line = proc.stdout.readline() if ready else ""
        assert line.startswith("voxq api: listening on http://"), (line, log.read_text()[-2000:])
        yield line.split()[4], proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
