"""A rolling run driven from the console, on the console's loop: the rules and the driver are
the CLI's (`flock_node.cli.rolling`: name order, at most N converging, stop after K failed),
the calls go through AsyncFlock, and every change of a node's outcome is reported. No Textual
here: the rolling screen gives `report` and `stopped`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from flock_node.cli.rolling import Driver, Outcome, Roll
from flock_node.client import AsyncFlock


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


STOPPED = "not started: the roll was stopped from the console"


def stop_the_rest(roll: Roll) -> list[str]:
    """The operator stopped the roll: nodes not yet started are skipped (those converging
    finish)."""
    return roll.skip_the_rest(STOPPED)


class RollDriver(Driver):
    """The roll's core (`flock_node.cli.rolling.Driver`, the CLI's rules) over AsyncFlock: a
    step's calls go together; `stopped` is the operator's stop."""

    def __init__(self, flock: AsyncFlock, roll: Roll, report: Callable[[Outcome], None],
                 stopped: Callable[[], bool] = lambda: False):
        async def call(n: str, method: str, args: dict[str, Any], timeout: float) -> Any:
            return await flock.call(n, "flock_api", method, args, timeout=timeout)

        super().__init__(call, roll, report, pause=asyncio.sleep, at_once=True,
                         stopped=lambda: STOPPED if stopped() else None)
