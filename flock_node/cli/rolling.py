"""`run-chef TARGET --max-parallel N [--max-fail K] --wait`: a rolling run. Nodes go in name
order, never more than N converging at once; once K have failed no new node starts (default
K=1: the first failure stops the roll) and the rest are skipped. Each node ends ok, failed,
skipped or unreachable. Progress is a bar on a terminal, plain lines otherwise, JSON with
--json. A node that cannot be reached does not count towards K: it did not fail a converge.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from flock_node.blocking import run_now
from flock_node.cli.args import FAILED, OK, UNREACHABLE, CliError
from flock_node.cli.context import _UNREACHABLE_CODES, Ctx
from flock_node.transport import RpcError

POLL = 0.1  # seconds between looks at the runs in flight
# A node silent this long while converging is given up as unreachable: it frees its slot
# rather than holding the roll until --timeout (a restart within it is waited for).
UNREACHABLE_AFTER = 30.0
# A queued run lives only in the node's memory. A poll that finds it neither recorded nor
# queued nor running (status) this many times in a row means the node restarted before it
# started: twice, because it may have started and ended between the two calls of one poll.
LOST_AFTER = 2


@dataclass
class Outcome:
    """How one node's part of the roll ended (or `pending`/`running` while it goes)."""

    node: str
    outcome: str = "pending"  # pending | running | ok | failed | skipped | unreachable
    run: str | None = None
    error: str | None = None
    updated: int = 0
    duration: float | None = None


class Roll:
    """The rules of a rolling run, without I/O: which node starts next, and when to stop."""

    def __init__(self, names: list[str], max_parallel: int, max_fail: int,
                 timeout: float = 3600.0):
        self.nodes = {n: Outcome(n) for n in sorted(names)}
        self.max_parallel = max_parallel
        self.max_fail = max_fail
        self.timeout = timeout  # a run not finished this long after its start has failed
        self.deadline: dict[str, float] = {}
        self.silent_since: dict[str, float] = {}
        self.missing: dict[str, int] = {}  # polls in a row that found n's run nowhere

    def started(self, n: str, now: float, run_id: str | None = None,
                error: tuple[str, str] | None = None) -> None:
        """`run_chef` on n answered its run id, or failed with (code, message)."""
        o = self.nodes[n]
        if error is not None:
            code, message = error
            o.outcome = "unreachable" if code in _UNREACHABLE_CODES else "failed"
            o.error = f"{code}: {message}"
            return
        o.outcome, o.run = "running", run_id
        self.deadline[n] = now + self.timeout

    def polled(self, n: str, now: float, answer: dict[str, Any] | None = None,
               error: tuple[str, str] | None = None,
               status: dict[str, Any] | None = None) -> bool:
        """A poll of n's run answered `answer` (or failed with (code, message)): True when
        that ended n's part of the roll. When the run is not recorded (answer None), n's
        `status` tells a queued run from one a restart lost."""
        o = self.nodes[n]
        if error is not None:
            code, message = error
            since = self.silent_since.setdefault(n, now)
            if (code not in _UNREACHABLE_CODES or now >= self.deadline[n]
                    or now - since >= UNREACHABLE_AFTER):
                o.outcome, o.error = "unreachable", f"{code}: {message}"
                return True
            return False
        self.silent_since.pop(n, None)
        if answer and answer["status"] in ("ok", "failed"):
            o.outcome, o.error = answer["status"], answer.get("error")
            o.updated, o.duration = answer.get("updated") or 0, answer.get("duration")
            return True
        if answer is None and status is not None and not knows(status, o.run):
            self.missing[n] = self.missing.get(n, 0) + 1
            if self.missing[n] >= LOST_AFTER:
                o.outcome = "failed"
                o.error = (f"run {o.run} is gone: {n} restarted before it started; "
                           "run it again")
                return True
        else:
            self.missing.pop(n, None)
        if now >= self.deadline[n]:
            o.outcome = "failed"
            o.error = f"run {o.run} did not finish within {self.timeout:g}s"
            return True
        return False

    def count(self, outcome: str) -> int:
        return sum(1 for o in self.nodes.values() if o.outcome == outcome)

    @property
    def stopping(self) -> bool:
        """K nodes failed: no new node starts."""
        return self.count("failed") >= self.max_fail

    def next_to_start(self) -> str | None:
        """The next node in name order, if a slot is free and the roll goes on."""
        if self.stopping or self.count("running") >= self.max_parallel:
            return None
        return next((n for n, o in self.nodes.items() if o.outcome == "pending"), None)

    def skip_the_rest(self, why: str | None = None) -> list[str]:
        """Once stopping (or stopped by the operator, `why`): the nodes never started are
        skipped."""
        left = [n for n, o in self.nodes.items() if o.outcome == "pending"]
        for n in left:
            self.nodes[n].outcome = "skipped"
            self.nodes[n].error = why or (f"not started: {self.count('failed')} failed "
                                          f"(--max-fail {self.max_fail})")
        return left

    @property
    def done(self) -> bool:
        return all(o.outcome not in ("pending", "running") for o in self.nodes.values())

    def exit_code(self) -> int:
        """1 if any node failed, else 3 if one could not be reached, else 0."""
        if self.count("failed") or self.count("skipped"):
            return FAILED
        return UNREACHABLE if self.count("unreachable") else OK

    def summary(self) -> dict[str, Any]:
        counts = {k: self.count(k) for k in ("ok", "failed", "skipped", "unreachable")}
        return {"max_parallel": self.max_parallel, "max_fail": self.max_fail, **counts,
                "nodes": [asdict(o) for o in self.nodes.values()]}


def knows(status: dict[str, Any], run: str | None) -> bool:
    """Whether a node's status has `run` waiting or running (a run it has not recorded)."""
    current = status.get("current_run") or {}
    return run in (status.get("queued") or []) or current.get("id") == run


def _line(o: Outcome) -> str:
    if o.outcome in ("ok", "failed"):
        text = f"{o.node}: {o.outcome} in {o.duration or 0:.1f}s, {o.updated} updated"
        return text + (f" - {o.error}" if o.error else "")
    return f"{o.node}: {o.outcome}" + (f" ({o.error})" if o.error else "")


# A call of `flock_api` on a node: (node, method, args, timeout) → its answer.
Call = Callable[[str, str, dict[str, Any], float], Awaitable[Any]]


class Driver:
    """Runs a Roll against the flock: starts runs as it allows, polls them, reports each
    change, ends when all are done. One core for the CLI (blocking calls one after another,
    run by `run_now`) and the console (AsyncFlock on its loop: a step's calls `at_once`).
    `stopped` says why the operator stopped the roll (None: it goes on)."""

    def __init__(self, call: Call, roll: Roll, report: Callable[[Outcome], None], *,
                 pause: Callable[[float], Awaitable[None]], at_once: bool = False,
                 stopped: Callable[[], str | None] = lambda: None):
        self.call, self.roll, self.report = call, roll, report
        self.pause, self.at_once, self.stopped = pause, at_once, stopped

    async def start(self, n: str) -> None:
        try:
            r = await self.call(n, "run_chef", {}, 5.0)
        except RpcError as e:
            self.roll.started(n, time.monotonic(), error=(e.code, e.message))
        else:
            self.roll.started(n, time.monotonic(), r["run_id"])
        self.report(self.roll.nodes[n])

    async def poll(self, n: str) -> None:
        try:
            r = await self.call(n, "run", {"id": self.roll.nodes[n].run}, 2.0)
        except RpcError as e:
            ended = self.roll.polled(n, time.monotonic(), error=(e.code, e.message))
        else:
            st = None
            if r is None:  # not recorded: queued, or lost to a restart (the Roll decides)
                with contextlib.suppress(RpcError):  # the next poll asks again
                    st = await self.call(n, "status", {}, 2.0)
            ended = self.roll.polled(n, time.monotonic(), r, status=st)
        if ended:
            self.report(self.roll.nodes[n])

    async def _each(self, names: list[str], step: Callable[[str], Awaitable[None]]) -> None:
        if self.at_once and len(names) > 1:
            await asyncio.gather(*(step(n) for n in names))
        else:
            for n in names:
                await step(n)

    async def _start_what_may(self) -> None:
        roll = self.roll
        while self.stopped() is None:
            starting: list[str] = []
            while (n := roll.next_to_start()) is not None:
                roll.nodes[n].outcome = "running"  # holds the slot while the call is in flight
                starting.append(n)
                if not self.at_once:
                    break  # one by one: a start that fails frees its slot, or stops the roll
            if not starting:
                return
            await self._each(starting, self.start)

    async def drive(self) -> Roll:
        """Roll to the end; returns the roll with every node's outcome."""
        roll = self.roll
        while not roll.done:
            await self._start_what_may()
            why = self.stopped()
            if roll.stopping or why is not None:
                for n in roll.skip_the_rest(None if roll.stopping else why):
                    self.report(roll.nodes[n])
            await self._each([n for n, o in roll.nodes.items()
                              if o.outcome == "running" and o.run is not None], self.poll)
            if not roll.done:
                await self.pause(POLL)
        return roll


def _blocking_driver(c: Ctx, roll: Roll, report: Callable[[Outcome], None]) -> None:
    """The CLI's roll: the core over the blocking client."""

    async def call(n: str, method: str, args: dict[str, Any], timeout: float) -> Any:
        return c.flock.call(n, "flock_api", method, args, timeout=timeout)

    async def pause(seconds: float) -> None:
        time.sleep(seconds)

    run_now(Driver(call, roll, report, pause=pause).drive())


def cmd_rolling(c: Ctx) -> int:
    """A rolling run over TARGET; the summary names every node's outcome."""
    max_fail = c.args.max_fail or 1
    roll = Roll(c.targets(c.args.target), c.args.max_parallel, max_fail, c.args.timeout)
    tty = c.out.isatty() and not c.args.json
    if tty:
        _with_bar(c, roll)
    else:
        def report(o: Outcome) -> None:
            if not c.args.json:
                c.print(_line(o) if o.outcome != "running" else f"{o.node}: started {o.run}")

        _blocking_driver(c, roll, report)
    if c.args.json:
        c.emit_json(roll.summary())
    else:
        s = roll.summary()
        c.print(f"rolling run: {s['ok']} ok, {s['failed']} failed, {s['skipped']} skipped, "
                f"{s['unreachable']} unreachable ({len(roll.nodes)} nodes, at most "
                f"{roll.max_parallel} at once, stop after {max_fail} failed)")
        if tty:
            for o in roll.nodes.values():
                c.print("  " + _line(o))
    return roll.exit_code()


def _with_bar(c: Ctx, roll: Roll) -> None:
    """A progress bar on a terminal (rich, which comes with the console's textual); plain lines
    above it for each node that ends."""
    try:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    except ImportError as e:  # an agent-only install: no bar, still lines
        raise CliError(f"no progress bar without rich ({e}); use --json or a pipe", FAILED) \
            from None
    console = Console(file=c.out)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   console=console, transient=True)
    task = bar.add_task("rolling", total=len(roll.nodes))

    def report(o: Outcome) -> None:
        if o.outcome != "running":
            bar.console.print(_line(o), markup=False, highlight=False)
        running = [n for n, x in roll.nodes.items() if x.outcome == "running"]
        ended = len(roll.nodes) - roll.count("pending") - len(running)
        bar.update(task, completed=ended,
                   description=("converging " + ", ".join(running)) if running else "rolling")

    with bar:
        _blocking_driver(c, roll, report)
