"""A rolling run driven from the console, on the console's loop: the rules are the CLI's
(`flock_node.cli.rolling.Roll`: name order, at most N converging, stop after K failed), the
calls go through AsyncFlock, and every change of a node's outcome is reported. No Textual
here: the rolling screen gives `report` and `stopped`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from flock_node.cli.context import _UNREACHABLE_CODES
from flock_node.cli.rolling import POLL, UNREACHABLE_AFTER, Outcome, Roll
from flock_node.client import AsyncFlock
from flock_node.transport import RpcError

DEFAULT_TIMEOUT = 3600.0  # as `flockctl run-chef --wait` without --timeout


def equivalent_command(target: str | None, max_parallel: int, max_fail: int) -> str:
    """The `flockctl` line that rolls the same way (when one TARGET names the nodes)."""
    if target is None:
        return "(no one flockctl TARGET names these nodes: no tag or glob says them all)"
    return (f"$ flockctl run-chef {target} --max-parallel {max_parallel} --max-fail {max_fail}"
            " --wait")


def parse_limits(parallel: str, fail: str) -> tuple[int, int]:
    """The form's two numbers, checked: ValueError names the field that is wrong."""
    out = []
    for label, text in (("max parallel", parallel), ("max fail", fail)):
        try:
            v = int(text.strip())
        except ValueError:
            raise ValueError(f"{label}: a whole number, at least 1 (got {text!r})") from None
        if v < 1:
            raise ValueError(f"{label}: at least 1 (got {v})")
        out.append(v)
    return out[0], out[1]


def stop_the_rest(roll: Roll) -> list[str]:
    """The operator stopped the roll: nodes not yet started are skipped (those converging
    finish)."""
    left = [n for n, o in roll.nodes.items() if o.outcome == "pending"]
    for n in left:
        roll.nodes[n].outcome = "skipped"
        roll.nodes[n].error = "not started: the roll was stopped from the console"
    return left


class RollDriver:
    """Starts runs as `Roll` allows, polls them, reports each change; ends when all are done."""

    def __init__(self, flock: AsyncFlock, roll: Roll, report: Callable[[Outcome], None],
                 stopped: Callable[[], bool] = lambda: False,
                 timeout: float = DEFAULT_TIMEOUT):
        self.flock, self.roll, self.report, self.stopped = flock, roll, report, stopped
        self.timeout = timeout
        self.deadline: dict[str, float] = {}
        self.silent_since: dict[str, float] = {}

    async def start(self, n: str) -> None:
        o = self.roll.nodes[n]
        o.outcome = "running"  # holds the slot while the call is in flight
        try:
            r = await self.flock.call(n, "flock_api", "run_chef", {}, timeout=5.0)
            o.run = r["run_id"]
        except RpcError as e:
            o.outcome = "unreachable" if e.code in _UNREACHABLE_CODES else "failed"
            o.error = f"{e.code}: {e.message}"
            self.report(o)
            return
        self.deadline[n] = time.monotonic() + self.timeout
        self.report(o)

    async def poll(self, n: str) -> None:
        o = self.roll.nodes[n]
        try:
            r = await self.flock.call(n, "flock_api", "run", {"id": o.run}, timeout=2.0)
        except RpcError as e:
            now = time.monotonic()
            since = self.silent_since.setdefault(n, now)
            if (e.code not in _UNREACHABLE_CODES or now >= self.deadline[n]
                    or now - since >= UNREACHABLE_AFTER):
                o.outcome, o.error = "unreachable", f"{e.code}: {e.message}"
                self.report(o)
            return
        self.silent_since.pop(n, None)
        if r and r["status"] in ("ok", "failed"):
            o.outcome, o.error = r["status"], r.get("error")
            o.updated, o.duration = r.get("updated") or 0, r.get("duration")
            self.report(o)
        elif time.monotonic() >= self.deadline[n]:
            o.outcome = "failed"
            o.error = f"run {o.run} did not finish within {self.timeout:g}s"
            self.report(o)

    async def drive(self) -> Roll:
        """Roll to the end; returns the roll with every node's outcome."""
        roll = self.roll
        while not roll.done:
            starting = []
            while not self.stopped() and (n := roll.next_to_start()) is not None:
                roll.nodes[n].outcome = "running"
                starting.append(n)
            await asyncio.gather(*(self.start(n) for n in starting))
            if roll.stopping or self.stopped():
                skipped = roll.skip_the_rest() if roll.stopping else stop_the_rest(roll)
                for n in skipped:
                    self.report(roll.nodes[n])
            running = [n for n, o in roll.nodes.items()
                       if o.outcome == "running" and o.run is not None]
            await asyncio.gather(*(self.poll(n) for n in running))
            if not roll.done:
                await asyncio.sleep(POLL)
        return roll
