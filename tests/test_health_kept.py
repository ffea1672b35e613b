"""Health is the last converge, and it stays known however many reactions ran since: pruning
the run history (HISTORY_LIMIT runs kept) never removes the newest finished converge."""

from __future__ import annotations

from flock_node.store import HISTORY_LIMIT, HISTORY_SLACK, Store

MANY = HISTORY_LIMIT + HISTORY_SLACK + 10  # past the batch that prunes


def test_the_last_converge_outlives_many_reactions(tmp_path):
    store = Store(tmp_path / "flock.db", node="a")
    store.runs.start("c-old", "converge")
    store.runs.finish("c-old", True, total=1)
    store.runs.start("c1", "converge")
    store.runs.finish("c1", False, "exited 7", total=2)
    for i in range(MANY):
        store.runs.start(f"r{i}", "reaction", {"notification": f"n-{i}"})
        store.runs.finish(f"r{i}", True, total=1)
    last = store.runs.last("converge")
    assert last is not None and (last.id, last.status, last.error) == ("c1", "failed", "exited 7")
    assert store.runs.get("c1") is not None  # `run c1` still answers, with its results
    assert store.runs.get("c-old") is None  # an older converge goes as before
    kept = store.runs.history(10_000)
    # Still bounded: the newest HISTORY_LIMIT (plus the slack), and the last converge.
    assert len(kept) <= HISTORY_LIMIT + HISTORY_SLACK + 1
    assert kept[-1].id == "c1" and store.runs.last().id == f"r{MANY - 1}"  # type: ignore[union-attr]
    store.close()


def test_an_agent_keeps_its_health_after_many_reactions(flock_env, tmp_path):
    """Through the agent: `status`, `members` and `flockctl nodes` still say the converge."""
    recipe = tmp_path / "hit.py"
    recipe.write_text('from flock_node.dsl import execute\n'
                      'execute("boom", command="exit 7")\n'
                      'execute("hit", command="true", action="nothing")\n')
    flock_env.start("h", recipes=[recipe])
    with flock_env.flock(timeout=10.0) as f:
        from conftest import wait_for

        conv = f["h"].flock_api.run_chef()["run_id"]
        wait_for(lambda: (f["h"].flock_api.status()["last_converge"] or {}).get("status")
                 == "failed", 15, what="the converge to fail")
        items = [{"resource": "execute[hit]", "action": "run", "id": f"n-{i}", "sender": "t"}
                 for i in range(MANY)]
        for k in range(0, MANY, 100):
            f["h"].resource_manager.notify_batch(items=items[k:k + 100])
        wait_for(lambda: len(f["h"].flock_api.history(limit=1000)) >= HISTORY_LIMIT
                 and not f["h"].flock_api.active()
                 and f["h"].flock_api.status()["last_run"]["kind"] == "reaction"
                 and f["h"].flock_api.history(limit=1)[0]["cause"]["notification"]
                 == f"n-{MANY - 1}", 60, what=f"{MANY} reactions")
        st = f["h"].flock_api.status()
        assert st["last_converge"]["id"] == conv and st["last_converge"]["status"] == "failed"
    r = flock_env.cli("nodes")
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if line.startswith("h "))
    assert " failed " in row and "never" not in row, r.stdout
