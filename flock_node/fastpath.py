"""The worker's fast path for a reaction's remote notifications: once the outbox row is
committed, the worker thread sends it itself with a blocking nng call on a socket of its own,
instead of waking the delivery loop and waiting for the loop to send it (issue 9: each hop
between threads cost 0.1-0.4 ms here, the loop's asyncio send and receive more).

Exactly once is unchanged: the row is committed before the send and settled after the answer;
whatever the fast path does not finish (no connection yet, a timeout, the receiver not ready)
goes to the delivery loop as before, which stays the retry path. `Claims` makes sure the
worker and the loop never both send one row: whoever claims an id first sends it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from flock_node import trace
from flock_node.transport import RpcError
from flock_node.transport.rpc import NOT_SENT

log = logging.getLogger("flock.delivery")

# How long the worker waits for the receiver's answer before it leaves the row to the loop.
# A live receiver answers in milliseconds; a frozen one (SIGSTOP) still looks alive for up to
# 3 heartbeats, and the worker's next job waits this long for it.
FAST_TIMEOUT = 1.0


class Claims:
    """The outbox ids being sent right now, by the worker's fast path or the delivery loop:
    an id claimed by one is skipped by the other. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: set[str] = set()
        self.skipped = False  # the loop skipped an id claimed by the worker: wake it after

    def take(self, ids: Iterable[str], loop: bool = False) -> list[str]:
        """Claim the ids nobody holds; return those claimed. `loop`: notes when one is held."""
        wanted = list(ids)
        with self._lock:
            got = [i for i in wanted if i not in self._ids]
            self._ids.update(got)
            if loop and len(got) < len(wanted):
                self.skipped = True
            return got

    def release(self, ids: Iterable[str]) -> bool:
        """Let the ids go; True if the loop skipped one meanwhile (it should look again)."""
        with self._lock:
            self._ids.difference_update(ids)
            skipped, self.skipped = self.skipped, False
            return skipped

    def __contains__(self, nid: object) -> bool:
        with self._lock:
            return nid in self._ids


class Where(Protocol):
    @property
    def addr(self) -> str | None: ...  # the target's RPC address, None when unknown
    @property
    def state(self) -> str | None: ...  # its membership state


class NowRpc(Protocol):
    def call_now(self, addr: str, actor: str, method: str, args: dict[str, Any],
                 timeout: float, expect: str | None = None) -> Any: ...


class FastPath:
    """Sends a reaction's fresh rows from the worker thread. `settle(target, delivered,
    failed)` records answers as the loop does; `wire(row)` is the notify call's arguments."""

    def __init__(self, rpc: NowRpc, claims: Claims, locate: Callable[[str], Where],
                 wire: Callable[[dict[str, Any]], dict[str, Any]],
                 settle: Callable[[str, list[dict[str, Any]],
                                   list[tuple[dict[str, Any], RpcError]]], None],
                 is_final: Callable[[str], bool], wake: Callable[[], None]):
        self.rpc = rpc
        self.claims = claims
        self.locate = locate
        self.wire = wire
        self.settle = settle
        self.is_final = is_final
        self.wake = wake

    def send(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send what can go now, one row per target; return the rows left to the loop (all
        of them when a target has several: they go as one batch, the loop's job)."""
        targets = [r["target"] for r in rows]
        if len(set(targets)) != len(targets):
            return rows
        for i, row in enumerate(rows):
            if not self._one(row):
                return rows[i:]  # in order: the loop sends this one and those after it
        return []

    def _one(self, row: dict[str, Any]) -> bool:
        """True when the row is settled (delivered, or refused for good)."""
        target, nid = row["target"], row["id"]
        where = self.locate(target)
        if where.addr is None or where.state != "alive":
            return False
        if not self.claims.take([nid]):
            return False  # the loop is sending it
        try:
            trace.stamp("delivery_started")
            try:
                self.rpc.call_now(where.addr, "resource_manager", "notify", self.wire(row),
                                  timeout=FAST_TIMEOUT, expect=target)
            except RpcError as e:
                if self.is_final(e.code):
                    self.settle(target, [], [(row, e)])
                    return True
                if e.code != NOT_SENT:
                    log.debug("notification %s to %s: %s; the delivery loop retries", nid,
                              target, e)
                return False
            self.settle(target, [row], [])
            trace.stamp("settled")
            return True
        finally:
            if self.claims.release([nid]):
                self.wake()
