"""`voxq demo [FILE]`: the whole pipeline on one machine with no configuration.

Starts (or reuses, with REDIS_URL) Redis, runs `voxq worker` and `voxq api` as child
processes, streams FILE through `voxq produce` at real-time pace, and prints the live
transcript by following the API's Server-Sent Events, as a person watching a call would.
A two-channel file stays two channels: channel 0 is printed as the agent, 1 as the customer.
Any child failing ends the demo with that child's own message; Ctrl-C, SIGTERM and SIGHUP
all stop every child. The children's logs live in a temporary folder that is removed unless
the run failed (then its path is printed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import webbrowser
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import quote

import httpx
from rich.console import Console
from rich.live import Live
from rich.text import Text

from voxq.embedded_redis import free_port
from voxq.errors import InvalidInput, VoxqError
from voxq.redis_conn import redis_url
from voxq.settings import Settings, get_settings

SPEAKERS = {0: "agent", 1: "customer"}


def sample_path() -> Path:
    """The English speech sample shipped with voxq (its reference text sits beside it)."""
    return Path(str(files("voxq") / "samples" / "support-call.flac"))


class ChildFailed(VoxqError):
    """A process the demo started exited when it should not have."""


class Stopped(BaseException):  # like KeyboardInterrupt: no `except Exception` may swallow it
    """SIGTERM or SIGHUP: stop exactly as Ctrl-C does."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Children:
    """The demo's child processes by role; any one of them failing ends the demo."""

    def __init__(self, env: dict[str, str], logdir: Path) -> None:
        self.env, self.logdir = env, logdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, role: str, args: list[str], stdin: int | None = subprocess.DEVNULL) -> None:
        """Start `voxq ARGS` with its output in the role's log file.

        ``-P``: the current directory is not put on the child's sys.path, so running the demo
        from a folder that holds a ``voxq/`` directory (the parent of a clone) cannot make the
        children import that instead of the installed package.
        """
        log = (self.logdir / f"{role}.log").open("ab")
        try:
            self.procs[role] = subprocess.Popen(
                [sys.executable, "-P", "-m", "voxq", *args], env=self.env, stdout=log,
                stderr=subprocess.STDOUT, stdin=stdin, start_new_session=True)
        finally:
            log.close()

    def check(self) -> None:
        """ChildFailed, with the child's own last words, if one ended when it should not:
        the worker or the API at all, the producer with a non-zero status."""
        for role, p in self.procs.items():
            code = p.poll()
            if code is None or (role == "produce" and code == 0):
                continue
            raise ChildFailed(f"`voxq {role}` exited with status {code}"
                              f"{_last_words(self.logdir / f'{role}.log')}")

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM every child, SIGKILL what is still there after ``grace`` seconds."""
        live = [p for p in self.procs.values() if p.poll() is None]
        for p in live:
            p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in live:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _last_words(log: Path, lines: int = 8) -> str:
    """The end of a child's log, indented, for the demo's own error message."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    tail = [ln.rstrip() for ln in text.splitlines() if ln.strip()][-lines:]
    return ":\n" + "\n".join(f"  {ln}" for ln in tail) if tail else " (it printed nothing)"


def _wait_ready(api: str, children: Children, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children.check()
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


def _read_events(api: str, sid: str, headers: dict[str, str],
                 out: queue.Queue[tuple[str, Any]]) -> None:
    """Thread body: forward the SSE events to ``out`` (an error as ("error", exception))."""
    try:
        for item in _events(api, sid, headers):
            out.put(item)
    except Exception as e:  # handed to the main thread, which raises it
        out.put(("error", e))


def console_url(api: str, sid: str) -> str:
    """The web console's page of one call (served by `voxq api` at /)."""
    return f"{api}/#/call/{quote(sid, safe='')}"


def open_browser(url: str) -> None:
    """Open ``url`` in the desktop's browser; say so (and go on) when there is none."""
    if not webbrowser.open(url, new=2):
        print(f"voxq demo: no browser to open; visit {url}", file=sys.stderr)


def _stamp(seconds: float) -> str:
    m, s = divmod(max(0.0, seconds), 60)
    return f"{int(m):02d}:{s:04.1f}"


def _raise_stopped(signum: int, frame: FrameType | None) -> None:
    raise Stopped(signum)


def _make_console() -> Console:
    """stdout; piped output is never wrapped (a transcript line stays one line)."""
    console = Console(stderr=False)
    if not console.is_terminal:
        console.soft_wrap = True
    return console


def run(args: argparse.Namespace) -> int:
    """Run the demo end to end; SIGTERM and SIGHUP stop it exactly as Ctrl-C does."""
    settings = get_settings()
    path = Path(args.file) if args.file else sample_path()
    if str(path) != "-" and not path.exists():
        raise InvalidInput(f"no such audio file: {path}")
    console = _make_console()
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in (signal.SIGTERM, signal.SIGHUP)}
    logdir = Path(tempfile.mkdtemp(prefix="voxq-demo-"))
    code = 1
    try:
        code = _run(args, settings, path.resolve() if str(path) != "-" else path, console,
                    logdir)
        return code
    except KeyboardInterrupt:
        console.print("\nstopping")
        code = 130
        return code
    except Stopped as e:
        console.print(f"\nstopping ({e})")
        code = 128 + e.signum
        return code
    finally:
        # a run that failed keeps its logs for the post-mortem; any other run leaves nothing
        if code in (0, 130, 128 + signal.SIGTERM, 128 + signal.SIGHUP):
            shutil.rmtree(logdir, ignore_errors=True)
        else:
            print(f"voxq demo: logs kept in {logdir}", file=sys.stderr)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(args: argparse.Namespace, settings: Settings, path: Path, console: Console,
         logdir: Path) -> int:
    with redis_url(settings, announce=False) as url:
        port = args.port or free_port()
        api = f"http://127.0.0.1:{port}"
        env = {**os.environ, "REDIS_URL": url, "PYTHONUNBUFFERED": "1"}
        headers = ({"Authorization": f"Bearer {settings.api_key.get_secret_value()}"}
                   if settings.api_key else {})
        children = Children(env, logdir)
        try:
            children.spawn("worker", ["worker"])
            children.spawn("api", ["api", "--host", "127.0.0.1", "--port", str(port)])
            console.print(f"[bold]voxq demo[/] Redis {url}  API {api}  logs {logdir} "
                          "(removed unless the run fails)")
            _wait_ready(api, children)
            sid = f"demo-{int(time.time())}-{os.getpid()}"
            page = console_url(api, sid)
            console.print(f"web console: {page}")
            if args.open:
                open_browser(page)
            produce = ["produce", str(path), "--session", sid, "--no-progress",
                       "--fast" if args.fast else "--realtime"]
            if args.downmix:
                produce.append("--downmix")
            # `voxq demo -` streams raw PCM from the demo's own stdin
            children.spawn("produce", produce, stdin=None if str(path) == "-" else subprocess.DEVNULL)
            console.print(f"streaming [cyan]{path.name}[/] as session [cyan]{sid}[/]; "
                          f"live at {api}/v1/sessions/{sid}/events\n")
            status = _follow(console, api, sid, headers, children)
            console.print(f"\nsession {sid}: [bold]{status}[/]")
            console.print(f"transcript: {api}/v1/sessions/{sid}/transcript?format=txt")
            console.print(f"API docs:   {api}/docs")
            console.print(f"console:    {console_url(api, sid)}")
            if args.keep_running:
                console.print("serving; Ctrl-C to stop")
                while True:
                    children.check()
                    time.sleep(0.5)
            return 0 if status == "finished" else 1
        except ChildFailed as e:
            print(f"voxq demo: error: {e}", file=sys.stderr)
            return 1
        finally:
            # a second signal must not cut the clean-up short
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)
            try:
                children.stop()
            finally:
                signal.signal(signal.SIGINT, signal.default_int_handler)


def _follow(console: Console, api: str, sid: str, headers: dict[str, str],
            children: Children) -> str:
    """Print partials on one live line (on a terminal) and finals as they become durable,
    labelled agent/customer in two-channel sessions; return the status. A failed child
    ends it (ChildFailed)."""
    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    threading.Thread(target=_read_events, args=(api, sid, headers, events), daemon=True,
                     name="voxq-demo-events").start()
    status = "unknown"
    channels: int | None = None
    live = Live(Text(""), console=console, refresh_per_second=12, transient=True,
                auto_refresh=console.is_terminal)
    with live if console.is_terminal else contextlib.nullcontext():
        while True:
            children.check()
            try:
                event, data = events.get(timeout=0.2)
            except queue.Empty:
                continue
            if event == "error":
                raise VoxqError(f"cannot follow the session's events: {data}")
            if channels is None:
                info = httpx.get(f"{api}/v1/sessions/{sid}", headers=headers, timeout=5)
                channels = int(info.json().get("channels", 1)) if info.is_success else 1
            who = SPEAKERS.get(int(data.get("channel", 0)), "") if channels == 2 else ""
            label = f"{who}: " if who else ""
            if event == "partial":
                if console.is_terminal:
                    live.update(Text(f"  … {label}{data.get('text', '')}", style="dim"))
            elif event == "final":
                console.print(f"[green]{_stamp(float(data.get('start', 0)))}[/] "
                              f"{label}{data.get('text', '')}")
                live.update(Text(""))
            elif event == "status":
                live.update(Text(""))  # no partial outlives the session
                status = str(data.get("status", "unknown"))
                if data.get("error"):
                    console.print(f"[red]error:[/] {data['error']}")
                return status


def register(sub: argparse._SubParsersAction) -> None:
    """Add `voxq demo`."""
    p = sub.add_parser("demo", help="run Redis, a worker and the API, and transcribe a file live")
    p.add_argument("file", nargs="?", help="audio file (default: the bundled speech sample)")
    p.add_argument("--keep-running", action="store_true", help="keep serving after the file")
    p.add_argument("--fast", action="store_true", help="publish as fast as possible")
    p.add_argument("--port", type=int, default=0, help="API port (default: a free one)")
    p.add_argument("--open", action="store_true",
                   help="open the web console on the call in a browser")
    p.add_argument("--downmix", action="store_true",
                   help="mix a file with more than two channels into one")
    p.set_defaults(func=run)
