"""Cancellation always wins: the bounded-wait helpers, and a lint over the source tree that
fails when ``asyncio.wait_for`` or a handler that swallows a cancellation comes back."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import pytest

from voxq.aio import cancel_and_wait, raise_if_cancelled, within

REPO = Path(__file__).resolve().parents[2]
#: every tree whose coroutines run in the worker, producer, API or the test suite itself
TREES = ("voxq", "producer", "workers", "api", "tests", "bench")
#: handlers that may end a cancellation on purpose; each says why in the code
ALLOWED_SWALLOWS = {
    # a second Ctrl-C/SIGTERM cancels the producer's main task: it exits with a status
    ("producer/cli.py", "produce"),
    # below: stand-ins for a flawed library
    ("tests/voxq/test_aio.py", "loop_that_loses_a_cancel"),
    ("tests/voxq/test_aio.py", "stubborn"),
}


def _sources() -> list[Path]:
    return sorted(p for tree in TREES for p in (REPO / tree).rglob("*.py")
                  if ".venv" not in p.parts)


def _names(node: ast.expr | None) -> set[str]:
    """The exception names an ``except`` clause catches (``asyncio.CancelledError`` ->
    ``CancelledError``); ``{"*"}`` for a bare ``except:``."""
    if node is None:
        return {"*"}
    elts = node.elts if isinstance(node, ast.Tuple) else [node]
    return {e.attr if isinstance(e, ast.Attribute) else getattr(e, "id", "") for e in elts}


def _raises(body: list[ast.stmt]) -> bool:
    return any(isinstance(n, ast.Raise) for stmt in body for n in ast.walk(stmt))


class _Lint(ast.NodeVisitor):
    """One pass over a module: what can swallow a cancellation, and where."""

    def __init__(self, rel: str):
        self.rel = rel
        self.out: list[str] = []
        self.func: ast.FunctionDef | ast.AsyncFunctionDef | None = None  # the innermost

    def _in(self, fn: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        outer, self.func = self.func, fn
        self.generic_visit(fn)
        self.func = outer

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._in(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._in(node)

    def _say(self, node: ast.AST, what: str) -> None:
        self.out.append(f"{self.rel}:{getattr(node, 'lineno', 0)}: {what}")

    def visit_Attribute(self, n: ast.Attribute) -> None:
        if n.attr == "wait_for" and isinstance(n.value, ast.Name) and n.value.id == "asyncio":
            self._say(n, "asyncio.wait_for (use voxq.aio.within or asyncio.timeout)")
        self.generic_visit(n)

    def visit_ImportFrom(self, n: ast.ImportFrom) -> None:
        if n.module == "asyncio" and any(a.name == "wait_for" for a in n.names):
            self._say(n, "imports asyncio.wait_for")

    def visit_Call(self, n: ast.Call) -> None:
        name = getattr(n.func, "attr", getattr(n.func, "id", ""))
        if name == "suppress" and any(_names(a) & {"CancelledError", "BaseException"} for a in n.args):
            self._say(n, "suppresses a cancellation")
        self.generic_visit(n)

    def visit_ExceptHandler(self, n: ast.ExceptHandler) -> None:
        if isinstance(self.func, ast.AsyncFunctionDef) and \
                _names(n.type) & {"*", "BaseException", "CancelledError"} and not _raises(n.body) \
                and (self.rel, self.func.name) not in ALLOWED_SWALLOWS:
            self._say(n, "an except clause that can end a cancellation without raising")
        self.generic_visit(n)


def _findings(path: Path, root: Path = REPO) -> list[str]:
    """Where ``path`` can swallow a cancellation."""
    lint = _Lint(path.relative_to(root).as_posix())
    lint.visit(ast.parse(path.read_text(), str(path)))
    return lint.out


def test_no_source_can_swallow_a_cancellation() -> None:
    """``asyncio.wait_for`` on Python 3.11 can return a result instead of raising the caller's
    cancellation; ``suppress(CancelledError)`` and ``except BaseException`` without a raise
    end it outright. A task that does either can never be stopped."""
    found = [f for p in _sources() for f in _findings(p)]
    assert not found, "\n".join(found)


def test_the_lint_sees_each_pattern(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import asyncio, contextlib\n"
        "from asyncio import wait_for\n"
        "async def f(aw):\n"
        "    await asyncio.wait_for(aw, 1)\n"
        "    with contextlib.suppress(asyncio.CancelledError):\n"
        "        await aw\n"
        "    try:\n"
        "        await aw\n"
        "    except BaseException:\n"
        "        pass\n"
        "    try:\n"
        "        await aw\n"
        "    except:\n"
        "        raise\n"
        "def in_a_thread():\n"
        "    try:\n"
        "        pass\n"
        "    except BaseException:\n"
        "        pass\n")
    found = _findings(bad, tmp_path)
    assert sorted(f.split(": ", 1)[0] for f in found) == ["bad.py:2", "bad.py:4", "bad.py:5", "bad.py:9"]


async def test_within_returns_the_result_or_times_out() -> None:
    assert await within(asyncio.sleep(0, "x"), 5) == "x"
    assert await within(asyncio.sleep(0, "y"), None) == "y"
    with pytest.raises(TimeoutError):
        await within(asyncio.Event().wait(), 0.01)


async def test_within_never_swallows_a_cancel_that_races_completion() -> None:
    """The 3.11 ``wait_for`` flaw: the awaited future completes in the same loop turn as the
    caller is cancelled. ``within`` must still raise CancelledError, every time."""
    for _ in range(200):
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(within(fut, 10))
        await asyncio.sleep(0)
        fut.set_result(1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_raise_if_cancelled_notices_a_swallowed_cancellation() -> None:
    seen: list[int] = []

    async def loop_that_loses_a_cancel() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:  # what a flawed library does
            seen.append(1)
        while True:
            raise_if_cancelled()
            await asyncio.sleep(0)

    task = asyncio.create_task(loop_that_loses_a_cancel())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == [1]
    raise_if_cancelled()  # not cancelled: nothing happens


async def test_cancel_and_wait_ends_a_task_that_ignores_one_cancel() -> None:
    async def stubborn() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:  # swallowed once
            pass
        await asyncio.Event().wait()

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    async with asyncio.timeout(10):
        await cancel_and_wait([task], grace=0.05)
    assert task.cancelled()
