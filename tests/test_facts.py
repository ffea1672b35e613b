"""The heartbeat's record of a node, read from a real store without sockets."""

from __future__ import annotations

from types import SimpleNamespace

from flock_node.facts import node_record
from flock_node.store import OutboxItem, Store


def test_the_record_names_the_last_run_the_last_converge_and_the_outbox(tmp_path):
    store = Store(tmp_path / "flock.db", node="a")
    work = SimpleNamespace(active=False, progress=None)
    rec = node_record(store, work, ["web"], 3)  # type: ignore[arg-type]
    assert rec["last_run"] is None and rec["last_converge"] is None
    store.runs.start("c1", "converge")
    store.runs.finish("c1", True, total=2)
    store.runs.start("r1", "reaction", {"notification": "n-1"})
    store.runs.record_result("r1", 1, "x", "run", "updated", 0.1,
                             outbox=[OutboxItem("b", "y", "run"), OutboxItem("c", "y", "run")])
    store.runs.finish("r1", False, "boom", total=1)
    rec = node_record(store, work, ["web"], 3)  # type: ignore[arg-type]
    assert rec["last_run"].id == "r1" and rec["last_run"].status == "failed"
    assert rec["last_run"].error == "boom" and rec["last_run"].updated == 1
    assert rec["last_converge"].id == "c1"  # a reaction never stands in for the health
    assert (rec["pending"], rec["dead"], rec["crl"], rec["tags"]) == (2, 0, 3, ["web"])
    store.close()
