"""`voxq demo` as a newcomer meets it: a stereo call keeps its two speakers, a file that is not
audio ends the demo at once with the producer's own message, SIGTERM and SIGHUP leave no
process behind, and a `voxq/` folder in the current directory does not confuse it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "voxq" / "samples" / "support-call.flac"
# the sample's fourth sentence ("I would like to check the status of my order.") lies
# between these seconds, with silence on both sides
CUSTOMER = (10.45, 13.75)
VOXQ = Path(sys.executable).with_name("voxq")  # the console script, as a user runs it


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("VOXQ_", "AWS_")) and k != "REDIS_URL"}


def _call_wav(path: Path) -> Path:
    """A 44.1 kHz stereo call: the agent (channel 0) says every sentence but one, the customer
    (channel 1) says that one."""
    x, rate = sf.read(str(SAMPLE), dtype="float32")
    a, b = (int(t * rate) for t in CUSTOMER)
    agent, customer = x.copy(), np.zeros_like(x)
    customer[a:b], agent[a:b] = x[a:b], 0.0
    stereo = soxr.resample(np.stack([agent, customer], axis=1), rate, 44100)
    sf.write(path, stereo, 44100, subtype="PCM_16")
    return path


def _decoy(folder: Path) -> Path:
    """A folder holding a `voxq/` package that breaks whoever imports it."""
    pkg = folder / "voxq"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('imported the decoy voxq package')\n")
    (pkg / "__main__.py").write_text("raise SystemExit('ran the decoy voxq package')\n")
    return folder


def test_stereo_call_is_labelled_from_a_folder_holding_voxq(tmp_path: Path) -> None:
    wav = _call_wav(tmp_path / "call.wav")
    cwd = _decoy(tmp_path / "parent-of-a-clone")
    proc = subprocess.run([str(VOXQ), "demo", str(wav), "--fast"], env=_env(), cwd=cwd,
                          capture_output=True, text=True, timeout=280)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "decoy" not in out + proc.stderr
    finals = [ln for ln in out.splitlines() if re.match(r"\d\d:\d\d\.\d ", ln)]
    agent = [ln for ln in finals if " agent: " in ln]
    customer = [ln for ln in finals if " customer: " in ln]
    assert agent and customer, out
    assert len(agent) + len(customer) == len(finals)  # every line says who speaks
    # the customer's lines fall inside the customer's sentence
    for ln in customer:
        m, s = ln[:7].split(":")
        assert CUSTOMER[0] - 1 <= int(m) * 60 + float(s) <= CUSTOMER[1], ln
    # piped output is not wrapped at 80 columns, and no partial line is left behind
    assert any("streaming call.wav as session" in ln and ln.endswith("/events")
               for ln in out.splitlines()), out
    assert "…" not in out


def test_a_file_that_is_not_audio_ends_the_demo_with_the_producers_error(
        tmp_path: Path) -> None:
    bad = tmp_path / "notaudio.wav"
    bad.write_text("this is not audio\n")
    proc = subprocess.run([str(VOXQ), "demo", str(bad)], env=_env(), capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode != 0
    assert "voxq demo: error: `voxq produce` exited with status 2" in proc.stderr, proc.stderr
    assert "voxq produce: error: cannot read audio file" in proc.stderr  # its own words
    kept = re.search(r"logs kept in (\S+)", proc.stderr)
    assert kept and (Path(kept.group(1)) / "produce.log").exists(), proc.stderr


def _children(pid: int) -> set[int]:
    """Pids whose parent is ``pid`` (from /proc)."""
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.add(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_signal_stops_every_child(sig: signal.Signals) -> None:
    proc = subprocess.Popen([str(VOXQ), "demo"], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        logdir = None
        for line in proc.stdout:
            if found := re.search(r" logs (\S+) \(removed", line):
                logdir = Path(found.group(1))  # the producer starts once Redis, worker and API are up
            if line.startswith("streaming "):
                break
        else:
            pytest.fail(f"the demo ended early: {proc.communicate()}")
        children = _children(proc.pid)
        names = {Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ") for p in children}
        assert len(children) == 4, names  # redis-server, worker, api, produce
        assert logdir is not None and (logdir / "worker.log").exists()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + sig, err
    deadline = time.monotonic() + 30  # the demo reaped them; only pid reuse could delay this
    while any(_alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in children if _alive(p)], names
    assert "stopping" in out and "Traceback" not in err, err
    assert not logdir.exists() and "logs kept" not in err  # a clean stop keeps no logs
