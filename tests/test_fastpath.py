"""Issue 9: a reaction's remote notification sent by the worker thread itself, right after its
outbox row is committed (flock_node/fastpath.py), without a hop to the delivery loop; the loop
stays the retry path, and the two never send one row both."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec

from flock_node.delivery import Deliverer, Target
from flock_node.fastpath import Claims, FastPath
from flock_node.store import Outgoing
from flock_node.transport import RpcError
from flock_node.transport.rpc import NOT_SENT


def _row(nid: str, target: str = "b") -> Outgoing:
    return Outgoing(nid, target, "r", "run", 1, {})


class _Outbox:
    """Pending rows until settled, as the store's outbox (what a query sees)."""

    def __init__(self) -> None:
        self.rows: dict[str, Outgoing] = {}
        self.delivered: list[str] = []
        self.failed: list[str] = []
        self.queries = 0

    def due(self, now: float) -> list[Outgoing]:
        self.queries += 1
        return list(self.rows.values())

    def next_due(self) -> float | None:
        return time.time() if self.rows else None

    def settle(self, ids: list[str], failed: list[tuple[str, str]]) -> None:
        for nid in ids:
            self.rows.pop(nid)
        self.delivered += ids
        for nid, _ in failed:
            self.rows.pop(nid)
            self.failed.append(nid)

    def retry_many(self, ids: list[str], error: str, when: float) -> set[str]:
        for nid in ids:
            self.rows[nid].attempts += 1
        return set()


class _Store:
    def __init__(self) -> None:
        self.outbox = _Outbox()


class _Rpc:
    """Stands in for AsyncRpc. `now(args)` is what the worker's send does (raise, or return
    the answer to give); `answer` awaits `hold` first. The loop's call takes a while (an
    asyncio hop, nng) and answers."""

    def __init__(self, now: Callable[[dict[str, Any]], Any] = lambda args: None) -> None:
        self.now = now
        self.sent: list[tuple[str, str]] = []  # (by, id)
        self.to: list[str | None] = []  # the node each call names (signed: no replay elsewhere)
        self.threads: set[str] = set()
        self.hold: threading.Event | None = None
        self.answering = threading.Event()

    def send_now(self, addr: str, actor: str, method: str, args: dict[str, Any],
                 timeout: float, to: str | None = None) -> Any:
        self.threads.add(threading.current_thread().name)
        self.to.append(to)
        outcome = self.now(args)  # raises NOT_SENT: nothing sent
        self.sent.append(("worker", args["id"]))
        return outcome

    def answer_now(self, sent: Any, expect: str | None = None) -> Any:
        self.threads.add(threading.current_thread().name)
        if isinstance(sent, RpcError):
            raise sent
        return {"accepted": True}

    async def answer(self, sent: Any, expect: str | None = None) -> Any:
        self.answering.set()
        while self.hold is not None and not self.hold.is_set():
            await asyncio.sleep(0.005)
        if isinstance(sent, RpcError):
            raise sent
        return {"accepted": True}

    async def call(self, addr: str, actor: str, method: str, args: Any = None,
                   timeout: float | None = None, expect: str | None = None,
                   sent: Any = None) -> Any:
        await asyncio.sleep(0.05)
        self.to.append(expect)
        if sent is not None:
            sent()
        items = args["items"] if method == "notify_batch" else [args]
        self.sent += [("loop", it["id"]) for it in items]
        if method == "notify_batch":
            return [{"id": it["id"], "accepted": True, "duplicate": False} for it in items]
        return {"id": args["id"], "accepted": True, "duplicate": False}


def _run(rpc: _Rpc, store: _Store, worker: Callable[[Deliverer], None],
         until: Callable[[], bool]) -> None:
    """Run a deliverer's loop; once it idles, `worker(d)` on a thread of its own; then wait
    until `until()` (5 s at most)."""
    d = Deliverer(store, rpc, "a", lambda t: Target("ipc:///nowhere", "alive"),  # type: ignore[arg-type]
                  lambda *a, **k: None)

    async def main() -> None:
        task = asyncio.create_task(d.run())
        while not d._idle:
            await asyncio.sleep(0.005)
        t = threading.Thread(target=worker, args=(d,), name="converge_0")
        t.start()
        await asyncio.to_thread(t.join, 5)
        for _ in range(500):
            if until():
                break
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(main())


def test_a_reactions_notification_is_sent_and_settled_by_an_idle_worker_itself():
    """No hop to the loop: with no other job waiting, the worker sends the row and waits
    for its answer; when `added` returns, the row is delivered."""
    rpc, store = _Rpc(), _Store()
    settled_on_return: list[list[str]] = []

    def worker(d: Deliverer) -> None:
        store.outbox.rows["n-1"] = _row("n-1")  # committed before it is handed over
        d.added([_row("n-1")], hand_off=True, alone=True)
        settled_on_return.append(list(store.outbox.delivered))

    _run(rpc, store, worker, lambda: bool(store.outbox.delivered))
    assert settled_on_return == [["n-1"]]
    assert rpc.sent == [("worker", "n-1")]
    assert rpc.to == ["b"]
    assert rpc.threads == {"converge_0"}


def test_a_busy_worker_sends_and_leaves_the_answer_to_the_loop():
    """With jobs waiting, the worker goes on once the row is on the wire; the loop settles
    it at its next pass (at the latest when the job ends: the agent wakes it then)."""
    rpc, store = _Rpc(), _Store()
    on_return: list[tuple[list[tuple[str, str]], list[str]]] = []

    def worker(d: Deliverer) -> None:
        store.outbox.rows["n-1"] = _row("n-1")
        d.added([_row("n-1")], hand_off=True, alone=False)
        on_return.append((list(rpc.sent), list(store.outbox.delivered)))
        d.wake()  # the job ends

    _run(rpc, store, worker, lambda: bool(store.outbox.delivered))
    assert on_return == [([("worker", "n-1")], [])]
    assert rpc.threads == {"converge_0"}
    assert store.outbox.delivered == ["n-1"]


def test_the_loop_does_not_send_a_row_the_worker_sent_before_its_answer():
    """A query pass of the loop while the worker's call awaits its answer (a delayed
    notification released, a node back) sees the row pending: it must leave it alone."""
    store = _Store()
    rpc = _Rpc()
    rpc.hold = threading.Event()

    def worker(d: Deliverer) -> None:
        store.outbox.rows["n-1"] = _row("n-1")
        d.added([_row("n-1")], hand_off=True)
        d.wake()  # the job ends
        assert rpc.answering.wait(5)
        queries = store.outbox.queries
        d.changed()  # the loop queries the store now, the row still pending there
        deadline = time.monotonic() + 5
        while store.outbox.queries == queries and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.1)  # the loop's send of it would start here
        assert rpc.hold is not None
        rpc.hold.set()

    _run(rpc, store, worker, lambda: bool(store.outbox.delivered))
    time.sleep(0.1)
    assert store.outbox.queries >= 2  # the loop did look while the answer was awaited
    assert rpc.sent == [("worker", "n-1")]
    assert store.outbox.delivered == ["n-1"]


def test_a_second_row_for_a_target_waits_for_the_first_ones_answer():
    """One call at a time per target: the next reaction's row goes after the first is
    answered (by the loop), never beside it, so a failure cannot reorder them."""
    store = _Store()
    rpc = _Rpc()
    rpc.hold = threading.Event()

    def worker(d: Deliverer) -> None:
        store.outbox.rows["n-1"] = _row("n-1")
        d.added([_row("n-1")], hand_off=True)
        d.wake()  # the job ends
        assert rpc.answering.wait(5)
        store.outbox.rows["n-2"] = _row("n-2")
        d.added([_row("n-2")], hand_off=True)
        time.sleep(0.2)
        assert rpc.sent == [("worker", "n-1")]  # n-2 not sent while n-1 is unanswered
        assert rpc.hold is not None
        rpc.hold.set()

    _run(rpc, store, worker, lambda: len(store.outbox.delivered) == 2)
    assert rpc.sent == [("worker", "n-1"), ("loop", "n-2")]
    assert store.outbox.delivered == ["n-1", "n-2"]


def test_what_the_worker_could_not_send_goes_to_the_loop_once():
    """A timeout on the fast path: the loop, the retry path, sends it (once more)."""
    def timeout(args: dict[str, Any]) -> Any:
        return RpcError("timeout", "no answer within 2s")  # the answer awaited on the loop

    rpc, store = _Rpc(timeout), _Store()

    def worker(d: Deliverer) -> None:
        store.outbox.rows["n-1"] = _row("n-1")
        d.added([_row("n-1")], hand_off=True, alone=True)

    _run(rpc, store, worker, lambda: bool(store.outbox.delivered))
    assert rpc.sent == [("worker", "n-1"), ("loop", "n-1")]
    assert rpc.to == ["b", "b"]
    assert store.outbox.delivered == ["n-1"]


def test_a_final_refusal_on_the_fast_path_is_settled_failed_and_not_sent_again():
    def refuse(args: dict[str, Any]) -> Any:
        return RpcError("unknown_resource", "b has no resource r")

    rpc, store = _Rpc(refuse), _Store()

    def worker(d: Deliverer) -> None:
        store.outbox.rows["n-1"] = _row("n-1")
        d.added([_row("n-1")], hand_off=True, alone=True)

    _run(rpc, store, worker, lambda: bool(store.outbox.failed))
    assert rpc.sent == [("worker", "n-1")]
    assert store.outbox.failed == ["n-1"] and not store.outbox.delivered


def test_not_sent_without_a_connection_goes_to_the_loop():
    def no_pipe(args: dict[str, Any]) -> Any:
        raise RpcError(NOT_SENT, "no connection to ipc:///nowhere yet")

    rpc, store = _Rpc(no_pipe), _Store()

    def worker(d: Deliverer) -> None:
        store.outbox.rows["n-1"] = _row("n-1")
        d.added([_row("n-1")], hand_off=True, alone=True)

    _run(rpc, store, worker, lambda: bool(store.outbox.delivered))
    assert rpc.sent == [("loop", "n-1")]


def _fast(rpc: _Rpc, claims: Claims, where: Callable[[str], Target]) -> FastPath:
    return FastPath(rpc, claims, where, _NoLoop())


class _NoLoop:
    """A delivery loop that is not running: records nothing, refuses nothing for good."""

    def wire(self, row: Outgoing) -> dict[str, Any]:
        return msgspec.to_builtins(row)

    def settle(self, *answers: Any) -> None:
        pass

    def is_final(self, code: str) -> bool:
        return False

    def changed(self) -> None:
        pass

    def wake(self) -> None:
        pass

    def has_loop(self) -> bool:
        return False


def test_claims_keep_the_worker_off_a_target_the_loop_holds():
    claims, rpc = Claims(), _Rpc()
    fast = _fast(rpc, claims, lambda t: Target("ipc:///nowhere", "alive"))
    assert claims.take(["b"], loop=True) == {"b"}
    assert fast.send([_row("n-1")], wait=True) == [_row("n-1")]  # left to the loop, not sent
    assert rpc.sent == []
    assert claims.take(["b", "c"], loop=True) == {"c"} and claims.skipped
    assert claims.release(["b", "c"]) is True and "b" not in claims


def test_the_fast_path_leaves_batches_and_unknown_or_gone_targets_to_the_loop():
    rpc = _Rpc()
    where = {"b": Target("ipc:///b", "alive"), "c": Target("ipc:///c", "down"),
             "d": Target(None, None)}
    fast = _fast(rpc, Claims(), where.__getitem__)
    two = [_row("n-1"), _row("n-2")]
    assert fast.send(two, wait=True) == two  # one target, two rows: a batch, the loop's
    assert fast.send([_row("n-3", "c")], wait=True) == [_row("n-3", "c")]
    assert fast.send([_row("n-4", "d")], wait=True) == [_row("n-4", "d")]
    assert fast.send([_row("n-5", "b"), _row("n-6", "c")], wait=True) == [_row("n-6", "c")]
    assert rpc.sent == [("worker", "n-5")]


def test_a_reactions_row_goes_out_before_its_commit_and_is_settled_after():
    """A reaction's row (its id derived from its cause) is handed to nng before its commit,
    so it travels while the commit syncs; once committed, `added(early=)` settles it by
    its answer, and the loop never sends it again."""
    rpc, store = _Rpc(), _Store()
    seen: list[Any] = []

    def worker(d: Deliverer) -> None:
        assert d.fast_ok()
        early = d.fast.launch([_row("n-1")])
        seen.append((list(rpc.sent), dict(store.outbox.rows)))  # sent, not committed yet
        store.outbox.rows["n-1"] = _row("n-1")  # the commit
        d.added([_row("n-1")], hand_off=True, alone=True, early=early)
        seen.append(list(store.outbox.delivered))

    _run(rpc, store, worker, lambda: bool(store.outbox.delivered))
    assert seen == [([("worker", "n-1")], {}), ["n-1"]]
    assert rpc.sent == [("worker", "n-1")]


def test_rows_sent_before_a_commit_that_failed_free_their_target():
    """The commit after an early send failed (a full disk): nothing to settle, but the target
    must not stay held, or every later notification to it would wait on the loop."""
    rpc, store = _Rpc(), _Store()

    def worker(d: Deliverer) -> None:
        early = d.fast.launch([_row("n-1")])
        assert early is not None and "b" in d.claims
        d.fast.abandon(early)
        assert "b" not in d.claims
        store.outbox.rows["n-2"] = _row("n-2")
        d.added([_row("n-2")], hand_off=True, alone=True)

    _run(rpc, store, worker, lambda: bool(store.outbox.delivered))
    assert rpc.sent == [("worker", "n-1"), ("worker", "n-2")]
    assert store.outbox.delivered == ["n-2"]


def test_an_early_send_that_cannot_go_leaves_the_row_to_the_loop_after_its_commit():
    def no_pipe(args: dict[str, Any]) -> Any:
        raise RpcError(NOT_SENT, "no connection to ipc:///nowhere yet")

    rpc, store = _Rpc(no_pipe), _Store()

    def worker(d: Deliverer) -> None:
        assert d.fast.launch([_row("n-1")]) is None
        store.outbox.rows["n-1"] = _row("n-1")
        d.added([_row("n-1")], hand_off=True, alone=True, early=None)

    _run(rpc, store, worker, lambda: bool(store.outbox.delivered))
    assert rpc.sent == [("loop", "n-1")]
