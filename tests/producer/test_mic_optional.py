"""sounddevice (the `mic` extra) is needed for --mic only: nothing else imports it, and
without it `voxq produce --mic` says what to install instead of failing with a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Runs the real CLI with sounddevice made unimportable (as if the extra were not installed).
WITHOUT_SOUNDDEVICE = """
import sys
sys.modules["sounddevice"] = None  # `import sounddevice` now raises ImportError
from voxq.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_mic_without_sounddevice_is_a_clear_error(env: dict[str, str]) -> None:
    p = subprocess.run([sys.executable, "-c", WITHOUT_SOUNDDEVICE, "produce", "--mic"],
                       env=env, cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith("voxq produce: error: microphone capture needs the optional "
                               "`mic` extra"), p.stderr
    assert "pip install 'voxq[mic]'" in p.stderr and "Traceback" not in p.stderr


def test_nothing_but_mic_capture_imports_sounddevice() -> None:
    code = ("import sys\n"
            "import producer.cli, producer.sources, workers.cli, api.app\n"
            "import workers.vendors.local.stt\n"
            "print('sounddevice' in sys.modules)\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "False"
