"""The converge schedule without an agent: its times (pure) and its loop (a fake run_chef)."""

from __future__ import annotations

import asyncio
import threading
import time

from flock_node.schedule import Schedule, next_due


def test_times_are_fixed_in_advance_and_never_burst():
    assert next_due(100.0, 101.0, 10.0, 0.0) == 110.0
    assert next_due(100.0, 101.0, 10.0, 2.5) == 112.5  # the splay drawn for this round
    # frozen (or a run that outlasted several intervals): the next one is a whole interval on
    assert next_due(100.0, 150.0, 10.0, 0.0) == 160.0


def test_the_loop_asks_at_start_then_each_interval_and_stops():
    calls: list[tuple[float, dict]] = []
    stopping = threading.Event()

    def run_chef(cause):
        calls.append((time.monotonic(), cause))
        if len(calls) == 3:
            stopping.set()
        return "r", False

    sched = Schedule(0.05, 0.0, run_chef, stopping)
    asyncio.run(asyncio.wait_for(sched.run(), 5.0))
    assert [c for _, c in calls] == [{"scheduled": True}] * 3
    assert calls[2][0] - calls[0][0] >= 0.09
    assert sched.next_run is not None
