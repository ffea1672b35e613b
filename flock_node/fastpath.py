"""The worker's fast path for a reaction's remote notifications: once the outbox row is
committed, the worker thread sends it itself with a blocking nng call on a socket of its own,
instead of waking the delivery loop and waiting for the loop to send it (issue 9: each hop
between threads cost 0.1-0.4 ms here, the loop's asyncio send more). A worker with nothing
else queued waits for the answer itself; one with jobs waiting leaves the answer to the loop
and goes on at once.

Exactly once is unchanged: the row is committed before the send and settled after the answer;
whatever the fast path does not finish (no connection yet, a timeout, the receiver not ready)
goes to the delivery loop as before, which stays the retry path. `Claims` makes sure the
worker and the loop never both send one row: whoever holds a target sends to it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Protocol

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
                 timeout: float) -> Any: ...

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
        targets = [r.target for r in rows]
        if len(set(targets)) != len(targets):
            return rows
        for i, row in enumerate(rows):
            if not self._one(row, wait):
                return rows[i:]  # in order: the loop sends this one and those after it
        return []

    def _one(self, row: Outgoing, wait: bool) -> bool:
        """True when the row is on the wire (settled, or its answer awaited on the loop)."""
        target = row.target
        where = self.locate(target)
        if where.addr is None or where.state != "alive":
            return False
        if not self.claims.take([target]):
            return False  # a call to it is in flight: the loop sends this one after it
        try:
            trace.stamp("delivery_started")
            sent = self.rpc.send_now(where.addr, "resource_manager", "notify",
                                     self.loop.wire(row), timeout=FAST_TIMEOUT)
        except RpcError as e:
            if e.code != NOT_SENT:
                log.debug("notification %s to %s: %s", row.id, target, e)
            self._release(target)
            return False
        except BaseException:
            self._release(target)
            raise
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
        return True

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
