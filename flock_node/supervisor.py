"""Keeps the agent's long-running loops alive: a loop that crashes is logged once with its
traceback, restarted after a backoff, and its failure stays visible in `status`.

No failure of one loop (delivery, subscription sync, heartbeats) stops the agent: a node that
cannot deliver to one peer must still converge, answer and deliver to the others.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("flock.supervisor")

RESTART_MIN = 0.1  # seconds before the first restart
RESTART_MAX = 30.0
HEALTHY_AFTER = 60.0  # a loop that ran this long since its last restart starts over at MIN


@dataclass
class LoopFailure:
    """What `status` shows about a loop that crashed."""

    loop: str
    crashes: int
    last_error: str
    last_at: float  # wall clock, for people
    restarting_in: float


def restart_delay(crashes: int, ran_for: float) -> float:
    """Backoff before restarting a loop that crashed `crashes` times in a row."""
    if ran_for >= HEALTHY_AFTER:
        return RESTART_MIN
    return float(min(RESTART_MAX, RESTART_MIN * (2 ** max(0, crashes - 1))))


class Supervisor:
    """Runs named coroutine factories as tasks and restarts them when they crash."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.failures: dict[str, LoopFailure] = {}
        self._streak: dict[str, int] = {}

    def spawn(self, name: str, factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `factory()` as task `name` until cancelled, restarting it after a crash."""
        self.tasks[name] = asyncio.create_task(self._keep(name, factory), name=name)

    async def _keep(self, name: str, factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
        while True:
            started = self.clock()
            try:
                await factory()
                return  # a loop that ends by itself is done (its socket closed)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                ran = self.clock() - started
                crashes = 1 if ran >= HEALTHY_AFTER else self._streak.get(name, 0) + 1
                self._streak[name] = crashes
                delay = restart_delay(crashes, ran)
                total = (self.failures[name].crashes + 1) if name in self.failures else 1
                self.failures[name] = LoopFailure(name, total, f"{type(e).__name__}: {e}",
                                                  time.time(), delay)
                if crashes == 1:  # once per streak, with the traceback; then one line each
                    log.error("loop %s crashed; restarting in %.1fs", name, delay, exc_info=e)
                else:
                    log.error("loop %s crashed again (%d in a row): %s; restarting in %.1fs",
                              name, crashes, e, delay)
                await asyncio.sleep(delay)

    def report(self) -> list[dict[str, Any]]:
        """The loops that crashed, for `status`."""
        return [
            {"loop": f.loop, "crashes": f.crashes, "last_error": f.last_error,
             "last_at": f.last_at, "running": not self.tasks[f.loop].done()}
            for f in self.failures.values() if f.loop in self.tasks
        ]

    def all(self) -> list[asyncio.Task[None]]:
        return list(self.tasks.values())
