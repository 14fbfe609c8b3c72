"""`voxq --version` answers without loading the subcommands (the API, the worker, the
producer and their dependencies), so it is instant."""

from __future__ import annotations

import subprocess
import sys

from voxq import __version__

HEAVY = ("api", "workers", "producer", "fastapi", "uvicorn", "numpy", "redis", "httpx", "rich",
         "pydantic", "importlib.metadata")


def test_version_imports_nothing_heavy() -> None:
    code = ("import sys\n"
            "from voxq.cli import main\n"
            "assert main(['--version']) == 0\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r} "
            f"or m in {HEAVY!r}))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out[0] == f"voxq {__version__}"
    assert out[1] == "[]", out[1]


def test_version_through_the_command() -> None:
    proc = subprocess.run([sys.executable, "-m", "voxq", "--version"], capture_output=True,
                          text=True, timeout=60)
    assert (proc.returncode, proc.stdout.strip()) == (0, f"voxq {__version__}"), proc.stderr
