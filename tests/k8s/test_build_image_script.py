"""scripts/build-image without building anything: its options, its errors, and that it leaves no
temp dir behind when it stops early (CI runs the real build; see .ci/run)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.k8s.k8s_support import REPO

SCRIPT = REPO / "scripts" / "build-image"


def build_image(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TMPDIR": str(tmp)}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60, env=env)


def test_script_is_valid_bash_and_executable() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], timeout=30).returncode == 0
    assert os.access(SCRIPT, os.X_OK)


def test_help_lists_the_options(tmp_path: Path) -> None:
    proc = build_image("--help", tmp=tmp_path)
    assert proc.returncode == 0
    for option in ("--engine", "--local-base", "--temp-storage", "--storage-driver", "--cache-dir", "--no-smoke"):
        assert option in proc.stdout


def test_unknown_option_is_a_clear_error(tmp_path: Path) -> None:
    proc = build_image("--fast", tmp=tmp_path)
    assert proc.returncode == 2 and "unknown option --fast" in proc.stderr


def test_a_failed_start_leaves_no_temp_dir(tmp_path: Path) -> None:
    proc = build_image("--engine", "no-such-engine", tmp=tmp_path)
    assert proc.returncode == 1 and "unknown engine no-such-engine" in proc.stderr
    assert list(tmp_path.iterdir()) == []
