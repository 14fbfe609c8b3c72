"""`voxq demo` on embedded defaults: no REDIS_URL, no keys; it prints the live transcript."""

import os
import subprocess
import sys

EXPECTED_WORDS = ("please", "account", "status", "order")


def test_demo_prints_the_transcript_of_the_sample() -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VOXQ_", "AWS_")) and k != "REDIS_URL"}
    proc = subprocess.run([sys.executable, "-m", "voxq", "demo", "--fast"], env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "finished" in out and "/transcript?format=txt" in out
    assert all(w in out for w in EXPECTED_WORDS), out


def test_demo_missing_file_is_a_clear_error() -> None:
    proc = subprocess.run([sys.executable, "-m", "voxq", "demo", "/nonexistent.wav"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "no such audio file" in proc.stderr
