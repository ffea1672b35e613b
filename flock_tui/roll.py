"""A rolling run driven from the console, on the console's loop: the rules are the CLI's
(`flock_node.cli.rolling.Roll`: name order, at most N converging, stop after K failed), the
calls go through AsyncFlock, and every change of a node's outcome is reported. No Textual
here: the rolling screen gives `report` and `stopped`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from flock_node.cli.rolling import POLL, Outcome, Roll
from flock_node.client import AsyncFlock
from flock_node.transport import RpcError


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
    """Starts runs as `Roll` allows, polls them, reports each change; ends when all are done.
    The rules (what a poll's answer or error means) are the CLI's own, in `Roll`."""

    def __init__(self, flock: AsyncFlock, roll: Roll, report: Callable[[Outcome], None],
                 stopped: Callable[[], bool] = lambda: False):
        self.flock, self.roll, self.report, self.stopped = flock, roll, report, stopped

    async def start(self, n: str) -> None:
        self.roll.nodes[n].outcome = "running"  # holds the slot while the call is in flight
        try:
            r = await self.flock.call(n, "flock_api", "run_chef", {}, timeout=5.0)
        except RpcError as e:
            self.roll.started(n, time.monotonic(), error=(e.code, e.message))
        else:
            self.roll.started(n, time.monotonic(), r["run_id"])
        self.report(self.roll.nodes[n])

    async def poll(self, n: str) -> None:
        try:
            r = await self.flock.call(n, "flock_api", "run", {"id": self.roll.nodes[n].run},
                                      timeout=2.0)
        except RpcError as e:
            ended = self.roll.polled(n, time.monotonic(), error=(e.code, e.message))
        else:
            st = None
            if r is None:  # not recorded: queued, or lost to a restart (the Roll decides)
                with contextlib.suppress(RpcError):
                    st = await self.flock.call(n, "flock_api", "status", {}, timeout=2.0)
            ended = self.roll.polled(n, time.monotonic(), r, status=st)
        if ended:
            self.report(self.roll.nodes[n])

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
