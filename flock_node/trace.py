"""Latency trace: `perf_counter` stamps at the steps a remote notification goes through, for
`benchmarks/bench_notify.py`, which shows them as the stages of the path.

Off unless the agent starts with FLOCK_TRACE naming a file: then each `stamp(step)` appends
(nanoseconds, step) to a list in memory (no I/O on the measured path), written to that file
as `ns step` lines when the agent exits (or when the list is full). `perf_counter` is
CLOCK_MONOTONIC on Linux, one clock for every process of the machine, so the stamps of two
agents can be subtracted.
"""

from __future__ import annotations

import atexit
import os
import threading
import time

_PATH = os.environ.get("FLOCK_TRACE") or None
ON = _PATH is not None
LIMIT = 1_000_000  # stamps kept in memory before they are written out

_stamps: list[tuple[int, str]] = []
_lock = threading.Lock()


def stamp(step: str) -> None:
    """Note that `step` happens now (nothing when tracing is off)."""
    if ON:
        _stamps.append((time.perf_counter_ns(), step))
        if len(_stamps) >= LIMIT:
            flush()


def flush() -> None:
    """Append the stamps taken so far to the trace file."""
    if _PATH is None:
        return
    with _lock:
        taken = _stamps[:]
        del _stamps[: len(taken)]
        with open(_PATH, "a") as fh:
            fh.writelines(f"{ns} {step}\n" for ns, step in taken)


if ON:
    atexit.register(flush)
