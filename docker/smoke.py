"""The image's smoke test, run by the Dockerfile's `smoke` stage inside the runtime image as its
user: every role's command, the demo on the bundled sample, TTS to MP3, the health check against a
running API, no compiler, and a package the runtime user cannot change. Exits non-zero on failure."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

# The commands every image must have; any other registered command (a newer role) is run too.
REQUIRED_COMMANDS = {"api", "worker", "tts-worker", "produce", "tts", "redis", "demo"}
# The words tests/voxq/test_demo.py expects the local engine to find in the bundled sample.
EXPECTED_WORDS = ("please", "account", "status", "order")
COMPILERS = ("gcc", "cc", "c++", "g++", "clang", "tcc", "x86_64-linux-gnu-gcc", "aarch64-linux-gnu-gcc")
PREFIX = Path("/opt/voxq")


class SmokeFailure(Exception):
    """A check the image did not pass."""


def say(message: str) -> None:
    """One line of the report; `smoke: ` starts each so scripts/build-image can pick them out."""
    for line in message.splitlines():
        print(f"smoke: {line}", flush=True)


def check(ok: bool, what: str) -> None:
    if not ok:
        raise SmokeFailure(what)


def clean_env() -> dict[str, str]:
    """The environment without voxq settings or a Redis URL: the image's defaults only."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("VOXQ_", "AWS_")) and k != "REDIS_URL"}


def run(args: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    say(f"  {' '.join(args)}: exit {proc.returncode} in {time.monotonic() - started:.1f}s")
    return proc


def commands() -> list[str]:
    """Every subcommand `voxq` registers (built-in and from the voxq.commands entry points)."""
    from voxq.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    assert isinstance(sub.choices, dict)
    return sorted(sub.choices)


def check_user() -> None:
    uid = os.getuid()
    check(uid != 0 and os.getgid() != 0, f"runs as uid {uid} gid {os.getgid()}, not a non-root user")
    say(f"user: uid {uid} gid {os.getgid()}")


def check_no_compiler() -> None:
    found = [c for c in COMPILERS if shutil.which(c)]
    found += glob.glob("/usr/bin/*-gcc*") + glob.glob("/usr/lib/gcc/*/*/cc1")
    check(not found, f"a compiler in the runtime image: {found}")
    say("no compiler on PATH or in /usr/lib/gcc")


def check_read_only_package() -> None:
    # Symlinks are skipped: their own mode means nothing; their directory's and target's do.
    writable = [str(p) for p in [PREFIX, *PREFIX.rglob("*")] if not p.is_symlink() and os.access(p, os.W_OK)]
    check(not writable, f"{len(writable)} paths under {PREFIX} writable by uid {os.getuid()}: {writable[:5]}")
    import voxq

    package = Path(voxq.__file__).parent
    check(str(package).startswith(str(PREFIX)), f"voxq imported from {package}, not from {PREFIX}")
    with contextlib.suppress(PermissionError):
        (package / "smoke-write-test").write_text("x")
        raise SmokeFailure(f"uid {os.getuid()} could write into {package}")
    say(f"{PREFIX} ({sum(1 for _ in PREFIX.rglob('*'))} paths) is read-only for uid {os.getuid()}")


def check_commands() -> None:
    names = commands()
    missing = REQUIRED_COMMANDS - set(names)
    check(not missing, f"commands missing from `voxq`: {sorted(missing)}")
    top = run(["voxq", "--help"], 120)
    check(top.returncode == 0 and "unavailable" not in top.stdout, f"voxq --help:\n{top.stdout}{top.stderr}")
    for name in names:
        proc = run(["voxq", name, "--help"], 120)
        check(proc.returncode == 0 and proc.stdout.startswith("usage:"),
              f"voxq {name} --help: exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
    say(f"every command answers --help: {', '.join(names)}")


def check_demo() -> None:
    proc = run(["voxq", "demo", "--fast"], 600, clean_env())
    out = proc.stdout
    check(proc.returncode == 0 and "finished" in out, f"voxq demo --fast: exit {proc.returncode}\n{out}{proc.stderr}")
    missing = [w for w in EXPECTED_WORDS if w not in out.lower()]
    check(not missing, f"the demo's transcript lacks {missing}:\n{out}")
    say(f"demo transcript has {', '.join(EXPECTED_WORDS)}")


def check_tts(workdir: Path) -> None:
    import soundfile

    mp3 = workdir / "smoke.mp3"
    proc = run(["voxq", "tts", "Please check the status of my order.", "-o", str(mp3)], 300, clean_env())
    check(proc.returncode == 0 and mp3.exists(), f"voxq tts: exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
    info = soundfile.info(str(mp3))
    check(info.format == "MP3" and info.duration > 0.5, f"voxq tts wrote {info.format}, {info.duration:.2f}s")
    say(f"tts: {mp3.stat().st_size} bytes of MP3, {info.duration:.1f}s at {info.samplerate} Hz")


@contextlib.contextmanager
def api_process(port: int) -> Iterator[subprocess.Popen[bytes]]:
    """`voxq api` (with its embedded Redis) as the image runs it; stopped within a bounded time."""
    log = tempfile.TemporaryFile()  # its stderr, shown when it fails
    proc = subprocess.Popen(["voxq", "api", "--host", "127.0.0.1", "--port", str(port)], env=clean_env(),
                            stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    try:
        yield proc
    except SmokeFailure as e:
        log.seek(0)
        tail = log.read()[-4000:].decode(errors="replace")
        raise SmokeFailure(f"{e}\nvoxq api's stderr:\n{tail}") from None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()


def check_console(port: int) -> None:
    """The web console's files are in the installed package and served with their CSP."""
    import urllib.request

    for path, marker in (("/", b"<html"), ("/ui/console.js", b"function"), ("/ui/console.css", b"{")):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            body = resp.read()
            check(resp.status == 200 and marker in body and "default-src 'none'" in resp.headers.get(
                "content-security-policy", ""), f"GET {path}: {resp.status}, {len(body)} bytes")
    say("web console: page, script and style served from the installed package, with their CSP")


def check_healthcheck() -> None:
    from voxq.embedded_redis import free_port

    idle = run(["voxq-healthcheck"], 30, clean_env())
    check(idle.returncode != 0, "voxq-healthcheck passed with no voxq process running")
    port = free_port()
    env = {**clean_env(), "VOXQ_API_PORT": str(port)}
    with api_process(port) as api:
        deadline = time.monotonic() + 180
        while True:
            check(api.poll() is None, f"voxq api exited with {api.returncode}")
            probe = subprocess.run(["voxq-healthcheck"], capture_output=True, text=True, timeout=30, env=env)
            if probe.returncode == 0:
                break
            check(time.monotonic() < deadline, f"voxq-healthcheck never passed: {probe.stderr.strip()}")
            time.sleep(1)
        check_console(port)
    say(f"voxq-healthcheck: fails with no voxq process, passes against a running API on :{port}")


def main() -> int:
    started = time.monotonic()
    try:
        check_user()
        check_no_compiler()
        check_read_only_package()
        check_commands()
        with tempfile.TemporaryDirectory(prefix="voxq-smoke-") as tmp:
            check_tts(Path(tmp))
        check_healthcheck()
        check_demo()
    except (SmokeFailure, subprocess.TimeoutExpired) as e:
        say(f"FAILED: {e}")
        return 1
    say(f"smoke test passed in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
