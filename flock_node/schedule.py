"""Scheduled converges (`--interval S [--splay S]`), chef-client's daemon mode: converge at
start, then every interval plus a fresh random splay."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable
from typing import Any


def next_due(due: float, now: float, interval: float, splay: float) -> float:
    """The converge after the one due at `due`: the times are fixed in advance, so a run_chef
    in between does not shift them; after a freeze or a long run, no burst of catch-ups."""
    due += interval + splay
    if due < now:
        due = now + interval
    return due


class Schedule:
    """Asks for a converge at each scheduled time, until the node stops."""

    def __init__(self, interval: float, splay: float,
                 run_chef: Callable[..., Any], stopping: threading.Event):
        self.interval = interval
        self.splay = splay
        self.run_chef = run_chef
        self.stopping = stopping
        self.next_run: float | None = None  # wall clock of the next scheduled converge

    async def run(self) -> None:
        """The schedule's loop (a converge still running at the next time is joined, not
        doubled: run_chef's join semantics)."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            wait = due - loop.time()
            self.next_run = time.time() + max(0.0, wait)
            if wait > 0:
                await asyncio.sleep(wait)
            if self.stopping.is_set():
                return
            self.run_chef(cause={"scheduled": True})
            due = next_due(due, loop.time(), self.interval, random.uniform(0.0, self.splay))
