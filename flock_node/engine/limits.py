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
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from flock_node import trace
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


class _Runner:
    """A daemon thread that runs the callables handed to it, one at a time.

    Starting a thread per call cost 0.2-0.35 ms here (a python_block per notification makes
    that visible), so a runner is reused, but only after calls that ended on their own: one
    that had an exception raised in it may still receive it late, so it is let go.
    """

    _idle: list[_Runner] = []
    _lock = threading.Lock()

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name="flock-python", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        try:
            while (job := self.jobs.get()) is not None:
                job()
        except TimeLimit:  # a late one, after its call had ended: this runner was let go
            pass

    @classmethod
    def take(cls) -> _Runner:
        with cls._lock:
            if cls._idle:
                return cls._idle.pop()
        return cls()

    def give_back(self) -> None:
        with self._lock:
            if len(self._idle) < 4:
                self._idle.append(self)
                return
        self.jobs.put(None)

    def let_go(self) -> None:
        self.jobs.put(None)


def _stop(runner: _Runner, finished: threading.Event, grace: float) -> bool:
    """Raise TimeLimit in the runner (again every 0.1 s: it may be caught) until the call
    ends; False if it is still running after `grace` seconds."""
    deadline = time.monotonic() + grace
    while not finished.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        _raise_in(runner.thread)
        finished.wait(min(0.1, remaining))
    return True


def call_with_limit(fn: Callable[[], Any], limit: float, grace: float = STOP_GRACE) -> Any:
    """Run `fn()` in a thread of its own for at most `limit` seconds.

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

    def job() -> None:
        try:
            try:
                trace.stamp("block_started")
                box["value"] = ctx.run(fn)
                trace.stamp("block_ended")
            except TimeLimit:
                box["limit"] = True
            except BaseException as e:  # handed to the waiting worker, which reports it
                box["error"] = e
        except TimeLimit:  # arrived just as the callable returned
            box["limit"] = True
        finally:
            finished.set()
            wake.set()

    def on_kill() -> None:
        killed.set()
        wake.set()

    runner = _Runner.take()
    with contextlib.nullcontext() if kill is None else kill.watch(on_kill):
        runner.jobs.put(job)
        wake.wait(limit)
    trace.stamp("worker_back")
    if not finished.is_set():
        stopped = _stop(runner, finished, grace)
        runner.let_go()
        if killed.is_set() and kill is not None:
            raise Interrupted(kill.message + ("" if stopped else " (the Python code did not stop)"))
        raise CallTimedOut(limit, stopped)
    if "limit" in box:  # a TimeLimit left over from a stop that came just too late
        runner.let_go()
        raise CallTimedOut(limit, True)
    runner.give_back()
    if "error" in box:
        raise box["error"]
    return box.get("value")
