"""`voxq demo` on embedded defaults: no REDIS_URL, no keys; it prints the live transcript."""

import os
import re
import subprocess
import sys
from pathlib import Path

EXPECTED_WORDS = ("please", "account", "status", "order")


def test_demo_prints_the_transcript_of_the_sample(tmp_path: Path) -> None:
    opened = tmp_path / "opened.txt"
    # webbrowser runs $BROWSER with the URL for %s: here a recorder instead of a browser
    recorder = f"{sys.executable} -c \"import sys; open({str(opened)!r}, 'w').write(sys.argv[1])\" %s"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VOXQ_", "AWS_")) and k != "REDIS_URL"}
    env["BROWSER"] = recorder
    proc = subprocess.run([sys.executable, "-m", "voxq", "demo", "--fast", "--open"], env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "finished" in out and "/transcript?format=txt" in out
    assert all(w in out for w in EXPECTED_WORDS), out
    # the web console's page of the call, next to the API's URL, and opened by --open
    page = re.search(r"web console: (http://127\.0\.0\.1:\d+/#/call/demo-\S+)", out)
    assert page, out
    assert opened.read_text() == page.group(1)


def test_demo_missing_file_is_a_clear_error() -> None:
    proc = subprocess.run([sys.executable, "-m", "voxq", "demo", "/nonexistent.wav"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "no such audio file" in proc.stderr
