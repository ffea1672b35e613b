"""The store's repositories answer typed rows (msgspec Structs), and those rows become the
same maps on the wire as before (msgspec.to_builtins at the RPC edge)."""

from __future__ import annotations

import asyncio
import time

import msgspec

from flock_node.store import (
    AuditEntry,
    InboxRow,
    OutboxItem,
    RunResult,
    RunRow,
    Store,
    SubscriptionRow,
    WantedRow,
    WantedSpec,
)
from flock_node.trust.actor import TrustApi


def test_runs_are_rows_with_their_results_and_notifications(tmp_path):
    store = Store(tmp_path / "flock.db", node="a")
    store.runs.start("r1", "reaction", {"notification": "n-1"})
    store.runs.record_result("r1", 1, "execute[x]", "run", "updated", 0.5, output="done",
                             outbox=[OutboxItem("b", "execute[y]", "run", id="n-2")])
    store.runs.finish("r1", True, total=1)
    run = store.runs.get("r1")
    assert isinstance(run, RunRow) and run.kind == "reaction" and run.updated == 1
    assert run.cause == {"notification": "n-1"} and run.duration is not None
    assert run.resources == [RunResult("execute[x]", "run", "updated", 0.5, None, "done")]
    assert [(n.id, n.target, n.status) for n in run.notifications] == [("n-2", "b", "pending")]
    assert store.runs.last() == msgspec.structs.replace(run, resources=[], notifications=[])
    assert store.runs.history(5) == [run]
    wire = msgspec.to_builtins(run)  # what `history` and `run` answer
    assert list(wire) == ["id", "kind", "status", "started", "finished", "duration", "error",
                          "updated", "total", "cause", "resources", "notifications"]
    assert wire["resources"][0] == {"resource": "execute[x]", "action": "run",
                                    "result": "updated", "duration": 0.5, "error": None,
                                    "output": "done"}
    store.close()


def test_inbox_rows_carry_the_attempt_to_run_again(tmp_path):
    store = Store(tmp_path / "flock.db", node="a")
    assert store.inbox.accept("n-1", "b", "execute[x]", "run", 2, {"origin": "n-0"},
                              run=("r1", {"notification": "n-1"}))
    (n,) = store.inbox.pending()
    assert isinstance(n, InboxRow) and (n.sender, n.hops, n.cause) == ("b", 2, {"origin": "n-0"})
    assert n.status == "pending" and n.attempt == 1
    (again,) = store.inbox.recover()  # its run was opened, never got to its action
    assert again.id == "n-1" and again.attempt == 2
    store.inbox.done("n-1", "r2", True, None)
    got = store.inbox.get("n-1")
    assert got is not None and (got.status, got.run_id) == ("applied", "r2")
    store.close()


def test_subscriptions_and_wanted_ones_are_rows(tmp_path):
    store = Store(tmp_path / "flock.db", node="a")
    sid = store.subscriptions.add("file[/x]", "web1", "execute[reload]", "run")
    (s,) = store.subscriptions.of("file[/x]")
    assert isinstance(s, SubscriptionRow) and (s.id, s.subscriber) == (sid, "web1")
    assert store.subscriptions.all() == [s]
    assert store.subscriptions.subscriber_of(sid) == "web1"
    assert store.subscriptions.subscriber_of("sub-none") is None
    assert list(msgspec.to_builtins(s)) == ["id", "resource", "subscriber",
                                            "subscriber_resource", "action", "created"]
    store.wanted.set_recipe([WantedSpec("file[/mine]", "create", "db0", "file[/etc/schema]")])
    (w,) = store.wanted.all()
    assert isinstance(w, WantedRow) and (w.node, w.origin, w.state) == ("db0", "recipe", "pending")
    assert store.wanted.get(w.id) == w and store.wanted.get("nope") is None
    store.wanted.set_state(w.id, "failed", "bad_request: no")
    assert store.wanted.all({"failed"})[0].last_error == "bad_request: no"
    store.close()


def test_audit_entries_are_rows_and_answer_as_maps(tmp_path):
    store = Store(tmp_path / "flock.db", node="a")
    store.audit.record("operator:alice", "operator", True, "flock_api.run_chef", {}, "ok")
    store.audit.record("b", "node", False, "resource_manager.notify", {"x": "y" * 3000},
                       "refused", "no")
    new, old = store.audit.recent(10)
    assert isinstance(old, AuditEntry) and old.verified and old.args == {}
    assert isinstance(new.args, str) and len(new.args) == 2000  # cut: kept as text
    got = asyncio.run(TrustApi("a", store.audit, None).audit(10))
    assert got[1] == {"seq": old.seq, "at": old.at, "caller": "operator:alice",
                      "role": "operator", "verified": True, "call": "flock_api.run_chef",
                      "args": {}, "outcome": "ok", "detail": None, "via": "certificate"}
    store.close()


_OUTBOX_COLUMNS = ["id", "target", "resource", "action", "status", "hops", "cause", "hold_run",
                   "run_id", "dedup", "created", "deadline", "next_attempt", "attempts",
                   "last_error", "done_at"]


def test_outbox_rows_are_typed_and_answer_the_tables_map(tmp_path):
    from flock_node.store import OutboxRow, Outgoing, outgoing

    store = Store(tmp_path / "flock.db", node="a")
    items = [OutboxItem("b", "execute[y]", "run", hops=2, cause={"k": ("v", 1)}, id="n-1"),
             OutboxItem("c", "execute[z]", "run", timing="delayed", id="n-2"),
             OutboxItem("tag=web", "execute[w]", "run", id="n-3", unmatched="no node matched")]
    store.outbox.enqueue(items, "r1")
    # What the worker hands the deliverer in memory is what a query of the store reads back.
    assert outgoing(items) == store.outbox.due(time.time() + 1) == [
        Outgoing("n-1", "b", "execute[y]", "run", 2, {"k": ["v", 1]}, 0)]
    rows = {r.id: r for r in store.outbox.rows()}
    assert all(isinstance(r, OutboxRow) for r in rows.values())
    assert (rows["n-2"].status, rows["n-2"].hold_run) == ("held", "r1")
    assert (rows["n-3"].status, rows["n-3"].last_error) == ("unmatched", "no node matched")
    wire = msgspec.to_builtins(rows["n-1"])  # what `outbox` answers: the table's columns
    assert list(wire) == _OUTBOX_COLUMNS
    raw = store.db.one("SELECT * FROM outbox WHERE id='n-1'")
    assert raw is not None and wire == {**dict(raw), "cause": {"k": ["v", 1]}}
    store.close()


def test_paged_answers_are_typed_and_keep_their_maps():
    from flock_node.actors.flock_api import _in_a_page
    from flock_node.paging import PAGE_BUDGET, NamePage, Page, RunPage, by_name, fill_page
    from flock_node.store import PagedRun

    page = fill_page([RunResult("r", "run", "updated", 0.1)], 3, more=True)
    assert isinstance(page, Page)
    assert msgspec.to_builtins(page) == {"items": [{"resource": "r", "action": "run",
                                                    "result": "updated", "duration": 0.1,
                                                    "error": None, "output": None}],
                                         "next_offset": 4}
    named = by_name(fill_page(["a", "b"], 0, more=True), lambda n: n)
    assert isinstance(named, NamePage)
    assert msgspec.to_builtins(named) == {"items": ["a", "b"], "next_offset": 2,
                                          "next_after": "b"}
    run = RunRow("r1", "converge", "ok", 1.0, 2.0, 1.0, None, 1, 1, None,
                 resources=[RunResult("r", "run", "updated", 0.1, output="x" * PAGE_BUDGET)])
    big = _in_a_page(run)  # alone it would crowd a page of history: its resources come later
    assert isinstance(big, PagedRun) and big.resources == [] and big.resources_paged == 1
    assert list(msgspec.to_builtins(big))[-2:] == ["notifications", "resources_paged"]
    small = msgspec.structs.replace(run, resources=[])
    assert _in_a_page(small) is small
    one = RunPage(small, run.resources, None)
    assert list(msgspec.to_builtins(one)) == ["run", "items", "next_offset"]


def test_every_commit_reaches_the_disk_before_it_is_acted_on(tmp_path):
    """Exactly once across a power cut: an inbox row acknowledged to the sender, or an outbox
    row about to be sent, must be on the disk, not only in the OS's cache. WAL with
    synchronous=NORMAL (what the store used before) syncs only at checkpoints: a commit
    survives a kill -9 but not the machine going down, and the sender would then hold a
    notification delivered that the receiver never recorded."""
    store = Store(tmp_path / "flock.db", node="a")
    with store.db.lock:
        journal = store.db.conn.execute("PRAGMA journal_mode").fetchone()[0]
        sync = store.db.conn.execute("PRAGMA synchronous").fetchone()[0]
    assert journal == "wal" and sync == 2  # 2 = FULL: the WAL is synced at every commit
