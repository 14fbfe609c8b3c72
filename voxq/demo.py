"""`voxq demo [FILE]`: the whole pipeline on one machine with no configuration.

Starts (or reuses, with REDIS_URL) Redis, runs `voxq worker` and `voxq api` as child
processes, streams FILE through `voxq produce` at real-time pace, and prints the live
transcript by following the API's Server-Sent Events, as a person watching a call would.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.live import Live
from rich.text import Text

from voxq.embedded_redis import free_port
from voxq.errors import InvalidInput, VoxqError
from voxq.redis_conn import redis_url
from voxq.settings import get_settings

SPEAKERS = {0: "agent", 1: "customer"}


def sample_path() -> Path:
    """The English speech sample shipped with voxq (its reference text sits beside it)."""
    return Path(str(files("voxq") / "samples" / "support-call.flac"))


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    return subprocess.Popen([sys.executable, "-m", "voxq", *args], env=env, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()


def _wait_ready(api: str, procs: list[subprocess.Popen[bytes]], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise VoxqError(f"a demo process exited with {p.returncode}: {p.args!r}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{api}/readyz", timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise VoxqError("the API did not become ready in time")


def _events(api: str, sid: str, headers: dict[str, str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event, data) pairs of the session's SSE stream; waits for the session to exist."""
    url = f"{api}/v1/sessions/{sid}/events"
    last_id: str | None = None
    while True:
        h = dict(headers)
        if last_id:
            h["Last-Event-ID"] = last_id
        try:
            with httpx.stream("GET", url, headers=h, timeout=httpx.Timeout(5, read=60)) as resp:
                if resp.status_code == 404:
                    time.sleep(0.2)
                    continue
                resp.raise_for_status()
                event, data = "message", ""
                for line in resp.iter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data += line[5:].strip()
                    elif line.startswith("id:"):
                        last_id = line[3:].strip()
                    elif line == "":
                        if data:
                            yield event, json.loads(data)
                            if event == "status":
                                return
                        event, data = "message", ""
        except (httpx.TransportError, httpx.RemoteProtocolError):
            time.sleep(0.5)  # the stream resumes from Last-Event-ID


def _stamp(seconds: float) -> str:
    m, s = divmod(max(0.0, seconds), 60)
    return f"{int(m):02d}:{s:04.1f}"


def run(args: argparse.Namespace) -> int:
    """Run the demo end to end."""
    settings = get_settings()
    path = Path(args.file) if args.file else sample_path()
    if str(path) != "-" and not path.exists():
        raise InvalidInput(f"no such audio file: {path}")
    console = Console(stderr=False)
    logdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"voxq-demo-{os.getpid()}"
    logdir.mkdir(parents=True, exist_ok=True)
    with redis_url(settings, announce=False) as url:
        port = args.port or free_port()
        api = f"http://127.0.0.1:{port}"
        env = {**os.environ, "REDIS_URL": url, "PYTHONUNBUFFERED": "1"}
        headers = ({"Authorization": f"Bearer {settings.api_key.get_secret_value()}"}
                   if settings.api_key else {})
        procs = [
            _spawn(["worker"], env, logdir / "worker.log"),
            _spawn(["api", "--host", "127.0.0.1", "--port", str(port)], env,
                   logdir / "api.log"),
        ]
        try:
            console.print(f"[bold]voxq demo[/] Redis {url}  API {api}  (logs in {logdir})")
            _wait_ready(api, procs)
            sid = f"demo-{int(time.time())}-{os.getpid()}"
            produce = ["produce", str(path), "--session", sid,
                       "--fast" if args.fast else "--realtime"]
            procs.append(_spawn(produce, env, logdir / "produce.log"))
            console.print(f"streaming [cyan]{path.name}[/] as session [cyan]{sid}[/]; "
                          f"live at {api}/v1/sessions/{sid}/events\n")
            status = _follow(console, api, sid, headers)
            console.print(f"\nsession {sid}: [bold]{status}[/]")
            console.print(f"transcript: {api}/v1/sessions/{sid}/transcript?format=txt")
            console.print(f"API docs:   {api}/docs")
            if args.keep_running:
                console.print("serving; Ctrl-C to stop")
                while all(p.poll() is None for p in procs[:2]):
                    time.sleep(0.5)
            return 0 if status == "finished" else 1
        except KeyboardInterrupt:
            console.print("\nstopping")
            return 130
        finally:
            _stop(procs)


def _follow(console: Console, api: str, sid: str, headers: dict[str, str]) -> str:
    """Print partials on one live line and finals as they become durable; return the status."""
    partial = Text("")
    status = "unknown"
    channels: int | None = None
    with Live(partial, console=console, refresh_per_second=12, transient=True) as live:
        for event, data in _events(api, sid, headers):
            if channels is None:
                info = httpx.get(f"{api}/v1/sessions/{sid}", headers=headers, timeout=5)
                channels = int(info.json().get("channels", 1)) if info.is_success else 1
            who = SPEAKERS.get(int(data.get("channel", 0)), "") if channels == 2 else ""
            if event == "partial":
                live.update(Text(f"  … {data.get('text', '')}", style="dim"))
            elif event == "final":
                label = f"{who}: " if who else ""
                live.console.print(f"[green]{_stamp(float(data.get('start', 0)))}[/] "
                                   f"{label}{data.get('text', '')}")
                live.update(Text(""))
            elif event == "status":
                status = str(data.get("status", "unknown"))
                if data.get("error"):
                    live.console.print(f"[red]error:[/] {data['error']}")
    return status


def register(sub: argparse._SubParsersAction) -> None:
    """Add `voxq demo`."""
    p = sub.add_parser("demo", help="run Redis, a worker and the API, and transcribe a file live")
    p.add_argument("file", nargs="?", help="audio file (default: the bundled speech sample)")
    p.add_argument("--keep-running", action="store_true", help="keep serving after the file")
    p.add_argument("--fast", action="store_true", help="publish as fast as possible")
    p.add_argument("--port", type=int, default=0, help="API port (default: a free one)")
    p.set_defaults(func=run)
