"""asyncio helpers that let a cancellation always win.

On Python 3.11 ``asyncio.wait_for`` returns the awaited result instead of raising when the
cancellation of its caller arrives just as the awaited thing completes: the caller keeps
running, and a loop around it never stops. ``asyncio.timeout`` counts cancellations and does
not have that flaw, so every bounded wait in voxq goes through :func:`within`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


async def within(aw: Awaitable[T], timeout: float | None) -> T:
    """Await ``aw`` for at most ``timeout`` seconds (None: no bound), else TimeoutError;
    a drop-in for ``asyncio.wait_for`` that never swallows the caller's cancellation."""
    async with asyncio.timeout(timeout):
        return await aw


def raise_if_cancelled() -> None:
    """Raise CancelledError if the current task was asked to stop and has not honoured it:
    a long-running loop calls this so a cancellation swallowed inside a library (redis-py
    and others still use ``asyncio.wait_for``) cannot keep it alive."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]], grace: float = 1.0) -> None:
    """Cancel ``tasks`` and return once all are done, cancelling again every ``grace`` seconds
    while any is still alive (one cancellation may be swallowed, never all of them)."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=grace)
