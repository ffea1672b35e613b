"""Time limits for what a recipe runs: Python callables (python_block, callable guards) and the
hard stop (`Kill`) the agent fires when --stop-timeout runs out.

Python threads cannot be killed. A callable runs in a thread of its own while the worker waits
for it; at its limit an exception is raised inside it (PyThreadState_SetAsyncExc), which stops
pure-Python code at its next bytecode. A C call (time.sleep, a blocking read) only sees it when
it returns: the caller then goes on anyway and says that the callable did not stop.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from flock_node.engine.errors import ResourceFailure

STOP_GRACE = 1.0  # how long a callable gets to unwind after the exception was raised in it


class Interrupted(ResourceFailure):
    """The action was killed by the agent's stop timeout; the message starts "interrupted:"."""


class TimeLimit(BaseException):
    """Raised inside a callable that ran out of time. A BaseException, so that a recipe's
    `except Exception` around its loop does not swallow it."""


class Kill:
    """The hard stop of whatever the run is doing (the stop timeout ran out).

    `fire` is called from another thread (the agent's loop); what is running at that moment
    registered a callback that kills it (a process group, an exception in a thread), and what
    starts afterwards refuses at once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._event = threading.Event()
        self.message = ""
        self._callbacks: dict[int, Callable[[], None]] = {}
        self._next = 0

    def is_set(self) -> bool:
        return self._event.is_set()

    def fire(self, message: str) -> None:
        """Kill what runs now and refuse what comes later; `message` becomes its error."""
        with self._lock:
            if self._event.is_set():
                return
            self.message = message
            self._event.set()
            callbacks = list(self._callbacks.values())
        for cb in callbacks:
            cb()

    @contextmanager
    def watch(self, on_fire: Callable[[], None]) -> Iterator[None]:
        """Call `on_fire` if the kill fires while the block runs (at once if it already did)."""
        with self._lock:
            key = self._next
            self._next += 1
            self._callbacks[key] = on_fire
            fired = self._event.is_set()
        try:
            if fired:
                on_fire()
            yield
        finally:
            with self._lock:
                self._callbacks.pop(key, None)

    def check(self) -> None:
        """Raise Interrupted if the kill has fired: nothing new starts after it."""
        if self._event.is_set():
            raise Interrupted(self.message)


_current: contextvars.ContextVar[Kill | None] = contextvars.ContextVar("flock_kill", default=None)


def current_kill() -> Kill | None:
    """The Kill of the run in progress on this thread (None outside a run)."""
    return _current.get()


@contextmanager
def killable(kill: Kill) -> Iterator[None]:
    """Make `kill` the current one for the actions run on this thread inside the block."""
    token = _current.set(kill)
    try:
        yield
    finally:
        _current.reset(token)


class CallTimedOut(Exception):
    """A callable passed its time limit; `stopped` tells whether its thread ended."""

    def __init__(self, limit: float, stopped: bool):
        super().__init__(f"timed out after {limit:g} s")
        self.limit = limit
        self.stopped = stopped


def _raise_in(thread: threading.Thread) -> None:
    ident = thread.ident
    if ident is not None and thread.is_alive():
        ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(ident), ctypes.py_object(TimeLimit)
        )


def _stop(thread: threading.Thread, grace: float) -> bool:
    """Raise TimeLimit in `thread` (again every 0.1 s: it may be caught) until it ends."""
    deadline = time.monotonic() + grace
    while thread.is_alive():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        _raise_in(thread)
        thread.join(min(0.1, remaining))
    return True


def call_with_limit(fn: Callable[[], Any], limit: float, name: str = "block",
                    grace: float = STOP_GRACE) -> Any:
    """Run `fn()` in its own thread for at most `limit` seconds.

    Returns its result or raises its exception; CallTimedOut after the limit; Interrupted if the
    current Kill fires meanwhile (its message says if the callable did not stop).
    """
    kill = current_kill()
    if kill is not None:
        kill.check()
    box: dict[str, Any] = {}
    finished = threading.Event()
    wake = threading.Event()  # the callable ended, or the kill fired
    killed = threading.Event()
    ctx = contextvars.copy_context()

    def target() -> None:
        try:
            try:
                box["value"] = ctx.run(fn)
            except TimeLimit:
                box["limit"] = True
            except BaseException as e:  # handed to the waiting worker, which reports it
                box["error"] = e
        except TimeLimit:  # arrived just as the callable returned
            pass
        finally:
            finished.set()
            wake.set()

    def on_kill() -> None:
        killed.set()
        wake.set()

    # A daemon thread: one that ignores the exception must not keep the agent from exiting.
    thread = threading.Thread(target=target, name=f"flock-{name}", daemon=True)
    with contextlib.nullcontext() if kill is None else kill.watch(on_kill):
        thread.start()
        wake.wait(limit)
    if not finished.is_set():
        stopped = _stop(thread, grace)
        if killed.is_set() and kill is not None:
            raise Interrupted(kill.message + ("" if stopped else " (the Python code did not stop)"))
        raise CallTimedOut(limit, stopped)
    if "error" in box:
        raise box["error"]
    if "limit" in box:  # a TimeLimit left over from a stop that came just too late
        raise CallTimedOut(limit, True)
    return box.get("value")
