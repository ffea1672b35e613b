"""Outbox delivery: the pure rules (retry backoff, which refusals are final, the hop limit)
and the `Deliverer` loop that sends the outbox to the other nodes."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

import msgspec

from flock_node import trace
from flock_node.fastpath import Claims, FastPath, Launched
from flock_node.store import Outgoing, Store
from flock_node.transport import AsyncRpc, RpcError

log = logging.getLogger("flock.delivery")

MAX_HOPS = 16
BACKOFF_BASE = 0.25  # seconds before the first retry
BACKOFF_CAP = 30.0

# Codes that mean "the receiver looked at it and said no, for good": retrying will not help.
# Everything else is the receiver's own trouble or the network's (not_ready, disk_full, busy,
# store_error, unreachable, timeout, internal...) and is retried until the TTL ends.
FINAL_CODES = frozenset(
    {"unknown_resource", "unknown_action", "hop_limit", "bad_request", "unauthorized",
     "too_large"}
)


def backoff(attempts: int, rng: random.Random | None = None) -> float:
    """Delay before attempt number `attempts + 1`: exponential, capped, with full jitter
    on the upper half so many senders retrying one node do not stampede together."""
    base = min(BACKOFF_CAP, BACKOFF_BASE * (2 ** max(0, attempts)))
    r = (rng or random).random()
    return float(base / 2 + r * base / 2)


def is_final(code: str) -> bool:
    return code in FINAL_CODES


def hop_refusal(hops: int) -> str | None:
    """Why a notification with this hop count is refused, or None if it may run."""
    if hops > MAX_HOPS:
        return f"hop limit: this notification made {hops} hops (at most {MAX_HOPS}); a chain of notifications loops"
    return None


# --- the outbox deliverer ---------------------------------------------------------------------

DELIVERY_BATCH = 128  # notifications per notify_batch call
BATCH_BYTES = 256 * 1024  # ...and at most this much of them, well inside a frame
CLOCK_JUMP = 5.0  # seconds of wall clock vs monotonic drift taken as a clock jump
# The most the worker steps aside, after a reaction committed outbox rows, for an idle delivery
# loop to hand them to nng: the two threads share the GIL, and a worker racing on with its
# bookkeeping makes each of the loop's nng calls wait for the GIL (up to a switch interval).
HANDOFF_WAIT = 0.002
QUERY_SENT_KEEP = 4096  # ids sent from a query remembered, so the fast path does not resend


class Target(NamedTuple):
    """Where a notification's target node is, as this node knows it."""

    addr: str | None  # its RPC address, None when the node is not known at all
    state: str | None  # membership state (alive, suspect, down, left), None if not a member


class Deliverer:
    """Drains the outbox: batches per target, in order, retried with backoff until the target
    acknowledges or the TTL ends (then dead-lettered), with the receiver's inbox making every
    notification take effect once.

    Rows committed by the converge worker are handed over in memory (`added`) so an idle node
    sends them without reading the outbox back; anything else (retries, delayed notifications
    released, a restart) goes through a query of the store.
    """

    def __init__(self, store: Store, rpc: AsyncRpc, sender: str,
                 locate: Callable[[str], Target], emit: Callable[..., None]):
        self.store = store
        self.rpc = rpc
        self.sender = sender
        self.locate = locate
        self.emit = emit
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._no_batch: set[str] = set()  # targets that do not know notify_batch
        # Outbox rows committed by the worker, in commit order (None: query the store).
        self._fresh: deque[list[Outgoing] | None] = deque()
        # True when every pending outbox row is in _fresh: send from memory. Any retry or
        # unknown change makes it False until a query finds none pending.
        self._clean = False
        # Ids last sent from a query, oldest first: a dict, so the fast path asks about each
        # fresh row instead of copying all of them (4,096 of them cost ~0.5 ms a pass here).
        self._query_sent: dict[str, None] = {}
        self._idle = False  # the loop waits for work: rows added now are sent at once
        self._handoffs: deque[threading.Event] = deque()  # workers waiting for a send
        self._anchor = (time.time(), time.monotonic())
        self.claims = Claims()  # targets being sent to, by the loop or the worker's fast path
        self.fast = FastPath(rpc, self.claims, locate, self)

    # -- called from any thread ----------------------------------------------------------------
    def added(self, rows: list[Outgoing], hand_off: bool = False,
              alone: bool = False, early: Launched | None = None) -> None:
        """Rows the worker just committed, pending now. `hand_off` (from another thread, a
        reaction's rows): when nothing else is pending, the worker hands them to nng itself
        (the fast path; `alone`, no other job waits for the worker: it waits for their
        answers too, else the loop does); what it does not take goes to the loop, which it
        waits (at most HANDOFF_WAIT) to see handed to nng when the loop is idle. `early`: rows
        `fast.launch` sent before their commit, settled the same way (`rows` are then those
        it did not launch)."""
        if early is not None:
            rows = self.fast.finish(early, wait=alone)
        elif rows and hand_off and self.fast_ok():
            rows = self.fast.send(rows, wait=alone)
        if not rows:
            return
        handoff = (threading.Event() if hand_off and self._idle and not self._on_loop()
                   else None)
        if handoff is not None:
            self._handoffs.append(handoff)
        self._fresh.append(rows)
        self.wake()
        if handoff is not None:
            handoff.wait(HANDOFF_WAIT)

    is_final = staticmethod(is_final)

    def has_loop(self) -> bool:
        return self._loop is not None and not self._loop.is_closed()

    def fast_ok(self) -> bool:
        """The worker may send itself: nothing pending, the loop idle, not on the loop."""
        return self._clean and self._idle and not self._fresh and not self._on_loop()

    def _on_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _handed_off(self) -> None:
        """The rows taken so far are sent (or will not be sent now): their workers go on."""
        while self._handoffs:
            self._handoffs.popleft().set()

    def changed(self) -> None:
        """The outbox changed in a way only a query sees (delayed ones released, retries)."""
        self._fresh.append(None)
        self.wake()

    def wake(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake.set()
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._wake.set)

    def target_back(self, target: str) -> None:
        """`target` came (back): what waits for it is due now, not at its backoff time."""
        self.store.outbox.due_now(target)
        self._clean = False
        self.wake()

    # -- the loop --------------------------------------------------------------------------------
    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._clean = False  # (re)started: the store is the truth
        while True:
            self.fast.start_answers()
            self._check_clock()
            if self._clean and self._fresh:
                fresh = self._take_fresh()
                if fresh is not None:
                    # Fast path: nothing else is pending, so these are the whole queue.
                    sent = self._query_sent
                    await self._deliver_all(self._claim([it for it in fresh
                                                         if it.id not in sent]))
                    continue
                self._clean = False
            self._fresh.clear()  # committed before the query below: it finds them
            due = self.store.outbox.due(time.time())
            mine = self._claim(due)
            if mine:
                self._sent_from_query([it.id for it in mine])
                await self._deliver_all(mine)
                continue
            if due:
                # All of them on the worker's fast path: it wakes us when it lets them go.
                self._clean, wait = False, 0.1
            else:
                nxt = self.store.outbox.next_due()
                self._clean = nxt is None
                wait = 5.0 if nxt is None else max(0.0, min(5.0, nxt - time.time()))
            self._wake.clear()
            self._handed_off()
            self._idle = True
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
            finally:
                self._idle = False

    def _sent_from_query(self, ids: list[str]) -> None:
        sent = self._query_sent
        sent.update(dict.fromkeys(ids))
        for old in list(itertools.islice(sent, max(0, len(sent) - QUERY_SENT_KEEP))):
            del sent[old]

    def _check_clock(self) -> None:
        """TTLs and retry times are stored as wall-clock times (they must survive a restart);
        while we run, a jump of the wall clock moves them with it, so a TTL measures elapsed
        time and a clock set a day ahead does not dead-letter everything pending at once."""
        wall, mono = time.time(), time.monotonic()
        jump = clock_jump(self._anchor, (wall, mono))
        self._anchor = (wall, mono)
        if jump is not None:
            n = self.store.outbox.shift_times(jump)
            log.warning("the wall clock jumped %+.1fs; moved %d pending notification(s)' "
                        "deadlines and retry times with it", jump, n)

    def _take_fresh(self) -> list[Outgoing] | None:
        out: list[Outgoing] = []
        while self._fresh:
            rows = self._fresh.popleft()
            if rows is None:
                return None
            out.extend(rows)
        return out

    def _claim(self, items: list[Outgoing]) -> list[Outgoing]:
        """The items this pass may send: those whose target the fast path does not hold
        (the others are read back from the store once it lets go)."""
        got = self.claims.take((it.target for it in items), loop=True)
        mine = [it for it in items if it.target in got]
        if len(mine) < len(items):
            self._clean = False
        return mine

    async def _deliver_all(self, items: list[Outgoing]) -> None:
        """Send claimed items, then let their claims go."""
        if not items:
            self._handed_off()
            return
        trace.stamp("delivery_started")
        try:
            await self._deliver_targets(items)
        finally:
            self.claims.release({it.target for it in items})
            self._handed_off()

    async def _deliver_targets(self, items: list[Outgoing]) -> None:
        by_target: dict[str, list[Outgoing]] = {}
        for item in items:
            by_target.setdefault(item.target, []).append(item)
        if len(by_target) == 1:
            [(target, rows)] = by_target.items()
            await self._deliver_to(target, rows)
        elif by_target:
            await asyncio.gather(*(self._deliver_to(t, rows) for t, rows in by_target.items()))

    def wire(self, it: Outgoing) -> dict[str, Any]:
        """A notification as `notify` takes it (the RPC edge: a map)."""
        return {"id": it.id, "sender": self.sender, "resource": it.resource,
                "action": it.action, "hops": it.hops, "cause": it.cause}

    async def _deliver_to(self, target: str, items: list[Outgoing]) -> None:
        where = self.locate(target)
        gone = where.state in ("down", "left")
        # A backlog goes in batches: one call and one commit on each side per batch, in order.
        while (len(items) > 1 and where.addr is not None and target not in self._no_batch
               and not (gone and items[0].attempts > 0)):
            chunk = batch(items, self.wire)
            try:
                answers = await self.rpc.call(where.addr, "resource_manager", "notify_batch",
                                              {"items": [self.wire(it) for it in chunk]},
                                              timeout=5.0, expect=target, sent=self._handed_off)
            except RpcError as e:
                if e.code == "unknown_method":
                    self._no_batch.add(target)  # an older node: one by one
                    break
                if e.code == "too_large":
                    break  # one by one: the one that cannot fit fails alone
                self._reschedule(target, items, e)
                return
            if not isinstance(answers, list) or len(answers) != len(chunk):
                self._no_batch.add(target)
                break
            delivered: list[Outgoing] = []
            failed: list[tuple[Outgoing, RpcError]] = []
            retry_from: tuple[int, RpcError] | None = None
            for i, (it, ans) in enumerate(zip(chunk, answers, strict=True)):
                err = ans.get("error") if isinstance(ans, dict) else None
                if not err:
                    delivered.append(it)
                    continue
                refusal = RpcError(str(err.get("code", "bad_request")),
                                   str(err.get("message", "")))
                if not is_final(refusal.code):
                    retry_from = (i, refusal)  # the receiver cannot take it now: keep order
                    break
                failed.append((it, refusal))
            self.settle(target, delivered, failed)
            if retry_from is not None:
                self._reschedule(target, items[retry_from[0]:], retry_from[1])
                return
            items = items[len(chunk):]
        for i, item in enumerate(items):
            if where.addr is None:
                err = RpcError("unknown_node", f"node {target!r} is not known in the flock (yet)")
            elif gone and item.attempts > 0:
                err = RpcError("unreachable", f"node {target!r} is {where.state}")
            else:
                try:
                    await self.rpc.call(where.addr, "resource_manager", "notify",
                                        self.wire(item), timeout=2.0, expect=target,
                                        sent=self._handed_off)
                except RpcError as e:
                    err = e
                else:
                    self.settle(target, [item], [])
                    trace.stamp("settled")
                    continue
            if is_final(err.code):
                self.settle(target, [], [(item, err)])
                continue
            if gone and where.state and where.state not in err.message:
                err = RpcError(err.code, f"node {target!r} is {where.state}: {err.message}")
            # Unreachable or not ready: reschedule this one and everything after it for the node.
            self._reschedule(target, items[i:], err)
            return

    def settle(self, target: str, delivered: list[Outgoing],
               failed: list[tuple[Outgoing, RpcError]]) -> None:
        """Record a target's answers: delivered, or refused for good."""
        self.store.outbox.settle([it.id for it in delivered],
                                 [(it.id, f"{x.code}: {x.message}") for it, x in failed])
        for it in delivered:
            self.emit("notification_delivered", id=it.id, target=target,
                      resource=it.resource, action=it.action)
        for it, err in failed:
            log.error("notification %s to %s refused: %s", it.id, target, err)
            self.emit("notification_failed", id=it.id, target=target,
                      resource=it.resource, action=it.action, error=str(err))

    def _reschedule(self, target: str, items: list[Outgoing], err: RpcError) -> None:
        self._clean = False  # these stay pending: the next pass reads the store
        # One retry time for the whole queue of this target: per-item jitter would scramble
        # the order in which its notifications arrive.
        when = time.time() + backoff(items[0].attempts) if items else 0.0
        dead = self.store.outbox.retry_many([it.id for it in items],
                                            f"{err.code}: {err.message}", when)
        for it in items:
            if it.id in dead:
                log.error("notification %s to %s dead-lettered: %s", it.id, target, err)
                self.emit("notification_dead", id=it.id, target=target,
                          resource=it.resource, action=it.action, error=str(err))


def clock_jump(before: tuple[float, float], now: tuple[float, float]) -> float | None:
    """How far the wall clock jumped between two (wall, monotonic) readings, or None when it
    kept pace with the monotonic clock (within CLOCK_JUMP)."""
    drift = (now[0] - before[0]) - (now[1] - before[1])
    return drift if abs(drift) > CLOCK_JUMP else None


def batch(items: list[Outgoing], wire: Callable[[Outgoing], Any]) -> list[Outgoing]:
    """The first items of a target's queue that go in one notify_batch call: at most
    DELIVERY_BATCH of them and BATCH_BYTES of their encoding (at least one)."""
    out: list[Outgoing] = []
    size = 0
    for it in items[:DELIVERY_BATCH]:
        n = len(_enc.encode(wire(it)))
        if out and size + n > BATCH_BYTES:
            break
        out.append(it)
        size += n
    return out


_enc = msgspec.msgpack.Encoder()
