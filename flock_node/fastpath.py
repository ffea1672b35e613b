"""The worker's fast path for a reaction's remote notifications: the worker thread sends them
itself with a blocking nng call on a socket of its own, instead of waking the delivery loop
and waiting for the loop to send them (issue 9: each hop between threads cost 0.1-0.4 ms
here, the loop's asyncio send more). A worker with nothing
else queued waits for the answer itself; one with jobs waiting leaves the answer to the loop
and goes on at once.

A reaction's rows, whose ids derive from the notification that caused it, go out *before*
their commit (`launch`), so they travel while the commit syncs to disk: a crash before the
commit runs the reaction again, which sends the same ids, and the receiver's inbox keeps one;
a commit that fails (a full disk) has its launched rows `abandon`ed. A converge's rows (fresh
ids) are sent only once committed. Every row is settled after its answer; whatever the fast
path does not finish (no connection yet, a timeout, the receiver not ready) goes to the
delivery loop as before, which stays the retry path. `Claims` makes sure the worker and the
loop never both send one row: whoever holds a target sends to it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, NamedTuple, Protocol

from flock_node import trace
from flock_node.store import Outgoing
from flock_node.transport import RpcError
from flock_node.transport.rpc import NOT_SENT

log = logging.getLogger("flock.delivery")

# How long the receiver's answer is waited for before the row is left to the delivery loop's
# retries. A live receiver answers in milliseconds; a frozen one (SIGSTOP) still looks alive
# for up to 3 heartbeats, and a worker that waits for it holds its next job this long.
FAST_TIMEOUT = 1.0


class Claims:
    """The targets being sent to right now, by the worker's fast path (until its answer is
    in) or by a pass of the delivery loop: a target held by one is skipped by the other, so
    no row is sent by both and a target's rows go one call after the other, in order.
    Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: set[str] = set()
        self.skipped = False  # the loop skipped a target the worker held: wake it after

    def take(self, targets: Iterable[str], loop: bool = False) -> set[str]:
        """Hold the targets nobody holds; return those. `loop`: note when one is held."""
        wanted = set(targets)
        with self._lock:
            got = wanted - self._held
            self._held |= got
            if loop and got != wanted:
                self.skipped = True
            return got

    def release(self, targets: Iterable[str]) -> bool:
        """Let the targets go; True if the loop skipped one meanwhile (it should look again)."""
        with self._lock:
            self._held.difference_update(targets)
            skipped, self.skipped = self.skipped, False
            return skipped

    def __contains__(self, target: object) -> bool:
        with self._lock:
            return target in self._held


class Where(Protocol):
    @property
    def addr(self) -> str | None: ...  # the target's RPC address, None when unknown
    @property
    def state(self) -> str | None: ...  # its membership state


class NowRpc(Protocol):
    def send_now(self, addr: str, actor: str, method: str, args: dict[str, Any],
                 timeout: float, to: str | None = None) -> Any: ...

    def answer_now(self, sent: Any, expect: str | None = None) -> Any: ...

    async def answer(self, sent: Any, expect: str | None = None) -> Any: ...


class DeliveryLoop(Protocol):
    """What the fast path needs of the delivery loop (the `Deliverer`)."""

    def wire(self, row: Outgoing) -> dict[str, Any]:
        """The notify call's arguments for a row."""

    def settle(self, target: str, delivered: list[Outgoing],
               failed: list[tuple[Outgoing, RpcError]]) -> None:
        """Record answers as the loop does."""

    def is_final(self, code: str) -> bool:
        """Whether a refusal is for good (no retry)."""

    def changed(self) -> None:
        """What did not go through is the loop's: it reads the outbox again."""

    def wake(self) -> None: ...

    def has_loop(self) -> bool:
        """Whether a loop runs to await answers."""


_NOT_LAUNCHED = object()


class Launched(NamedTuple):
    """Rows handed to nng by `FastPath.launch` (each with its call), and those after the
    first that could not go, left to the loop."""

    sent: list[tuple[Outgoing, Any]]
    rest: list[Outgoing]


class FastPath:
    """Sends a reaction's fresh rows from the worker thread; their answers are awaited there
    or on the loop (`start_answers`, at each of its passes), which also retries what did not
    go through."""

    def __init__(self, rpc: NowRpc, claims: Claims, locate: Callable[[str], Where],
                 loop: DeliveryLoop):
        self.rpc = rpc
        self.claims = claims
        self.locate = locate
        self.loop = loop
        # Answers for the loop to await, not started yet: the loop is not woken for them
        # (it starts them at its next pass, at the latest when the worker's job ends: the
        # agent wakes it then). Waking it at the send made it fight the worker and the
        # receiver for the CPU just when the receiver needs it.
        self._due: deque[Coroutine[Any, Any, None]] = deque()
        self._answers: set[asyncio.Task[None]] = set()

    def start_answers(self) -> None:
        """(On the loop) await the answers the worker left to it."""
        while self._due:
            task = asyncio.ensure_future(self._due.popleft())
            self._answers.add(task)
            task.add_done_callback(self._answers.discard)

    def send(self, rows: list[Outgoing], wait: bool) -> list[Outgoing]:
        """Send what can go now, one row per target; return the rows left to the loop (all
        of them when a target has several: they go as one batch, the loop's job). `wait`:
        the worker has nothing else to do, so it waits for the answers itself (at most
        FAST_TIMEOUT each): the receiver has the machine to itself meanwhile, where a worker
        going on with its bookkeeping (commits, events to the receiver's loop) slowed the
        receiver by 0.3-0.4 ms when both ran on one machine."""
        launched = self.launch(rows)
        return rows if launched is None else self.finish(launched, wait)

    def launch(self, rows: list[Outgoing]) -> Launched | None:
        """Hand the rows to nng in order, one per target, until one cannot go (the loop
        sends it and those after it); None when none went."""
        targets = [r.target for r in rows]
        if len(set(targets)) != len(targets):
            return None
        sent: list[tuple[Outgoing, Any]] = []
        for i, row in enumerate(rows):
            handle = self._launch(row)
            if handle is _NOT_LAUNCHED:
                return Launched(sent, rows[i:]) if sent else None
            sent.append((row, handle))
        return Launched(sent, []) if sent else None

    def finish(self, launched: Launched, wait: bool) -> list[Outgoing]:
        """Settle the launched rows by their answers (here when `wait`, else on the loop);
        return the rows that were not launched."""
        for row, handle in launched.sent:
            self._finish(row, handle, wait)
        return launched.rest

    def abandon(self, launched: Launched) -> None:
        """The rows were sent before a commit that failed: there is no row to settle. The
        answers are read and dropped; the reaction runs again and sends the same ids."""
        for row, handle in launched.sent:
            try:
                self.rpc.answer_now(handle, expect=row.target)
            except RpcError as e:
                log.debug("notification %s to %s (its commit failed): %s", row.id,
                          row.target, e)
            finally:
                self._release(row.target)

    def _launch(self, row: Outgoing) -> Any:
        """The row handed to nng (its call, to await), or _NOT_LAUNCHED when it cannot go
        now."""
        target = row.target
        where = self.locate(target)
        if where.addr is None or where.state != "alive":
            return _NOT_LAUNCHED
        if not self.claims.take([target]):
            return _NOT_LAUNCHED  # a call to it is in flight: the loop sends this one after it
        try:
            trace.stamp("delivery_started")
            return self.rpc.send_now(where.addr, "resource_manager", "notify",
                                     self.loop.wire(row), timeout=FAST_TIMEOUT, to=target)
        except RpcError as e:
            if e.code != NOT_SENT:
                log.debug("notification %s to %s: %s", row.id, target, e)
            self._release(target)
            return _NOT_LAUNCHED
        except BaseException:
            self._release(target)
            raise

    def _finish(self, row: Outgoing, sent: Any, wait: bool) -> None:
        target = row.target
        if wait:
            try:
                self.rpc.answer_now(sent, expect=target)
            except RpcError as e:
                self._failed(row, e)
            else:
                self._delivered(row)
            finally:
                self._release(target)
        elif self.loop.has_loop():
            self._due.append(self._answered(row, sent))
        else:
            # No loop to take the answer (stopping): the row stays pending, sent again
            # after the restart and de-duplicated by the receiver.
            self._release(target)

    async def _answered(self, row: Outgoing, sent: Any) -> None:
        """On the loop: settle the row by its answer, or leave it to the loop's retries."""
        try:
            await self.rpc.answer(sent, expect=row.target)
        except RpcError as e:
            self._failed(row, e)
        else:
            self._delivered(row)
        finally:
            self._release(row.target)

    def _delivered(self, row: Outgoing) -> None:
        self.loop.settle(row.target, [row], [])
        trace.stamp("settled")

    def _failed(self, row: Outgoing, e: RpcError) -> None:
        if self.loop.is_final(e.code):
            self.loop.settle(row.target, [], [(row, e)])
            return
        log.debug("notification %s to %s: %s; the delivery loop retries", row.id,
                  row.target, e)
        self.loop.changed()

    def _release(self, target: str) -> None:
        if self.claims.release([target]):
            self.loop.wake()
