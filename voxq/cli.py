"""The `voxq` command: built-in commands plus those the producer, worker and API packages
register through the `voxq.commands` entry-point group (so the core imports none of them)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Sequence

from voxq import __version__
from voxq.errors import ConfigError, VoxqError

Handler = Callable[[argparse.Namespace], int]


def _register_builtin(sub: argparse._SubParsersAction) -> None:
    from voxq import demo, keys_cmd, redis_cmd

    redis_cmd.register(sub)
    keys_cmd.register(sub)
    demo.register(sub)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every registered subcommand."""
    from importlib.metadata import entry_points

    parser = argparse.ArgumentParser(
        prog="voxq", description="Live call audio from Redis streams to speech vendors and back.")
    parser.add_argument("--version", action="version", version=f"voxq {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _register_builtin(sub)
    for ep in sorted(entry_points(group="voxq.commands"), key=lambda e: e.name):
        try:
            register = ep.load()
        except ImportError as e:  # a broken install must not take every other command down
            _unavailable(sub, ep.name, str(e))
            continue
        register(sub)
    return parser


def _unavailable(sub: argparse._SubParsersAction, name: str, why: str) -> None:
    def fail(_: argparse.Namespace) -> int:
        raise VoxqError(f"this command cannot load ({why}); reinstall with `pip install -e .`")

    p = sub.add_parser(name, help=f"(unavailable: {why})")
    p.set_defaults(func=fail)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, run the subcommand, turn voxq errors into a message and exit 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--version" in argv and all(a in ("--version", "-v", "--verbose") for a in argv):
        # answered before the parser loads every subcommand (and with them the API, the worker
        # and their dependencies): `voxq --version` stays instant
        print(f"voxq {__version__}")
        return 0
    from voxq import logs, redaction
    from voxq.settings import get_settings

    if "tts-worker" in argv[:2] and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # RQ runs each job in a forked process: its metrics survive only in prometheus-client's
        # multiprocess mode, which must be chosen before prometheus_client is first imported.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="voxq-metrics-")
    try:
        # Commands read settings while they register, so this is where a bad variable shows.
        args = build_parser().parse_args(argv)
        settings = get_settings()
    except ConfigError as e:
        print(f"voxq: error: {e}", file=sys.stderr)
        return 2
    logs.configure(logging.DEBUG if args.verbose else settings.log_level.upper(),
                   burst=settings.log_repeat_burst, window=settings.log_repeat_window_seconds)
    redaction.install(settings)  # before anything logs: no record leaves unredacted
    handler: Handler = args.func
    try:
        return int(handler(args) or 0)
    except VoxqError as e:
        print(f"voxq {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
