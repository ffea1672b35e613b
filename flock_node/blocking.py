"""One async core for blocking and asyncio callers: the blocking caller gives it calls that
block instead of awaiting, so its coroutine never suspends and runs to its end without an
event loop (paging's `collect`, the CLI's rolling run)."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_now(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine whose awaits never suspend to its end, here, and return its value."""
    try:
        coro.send(None)
    except StopIteration as done:
        value: T = done.value
        return value
    coro.close()
    raise RuntimeError("run_now: a blocking call suspended")  # the caller's calls never wait
