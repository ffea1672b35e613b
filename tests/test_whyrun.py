"""Why-run end to end on real agents: `flockctl run-chef a --why-run` changes nothing and sends
nothing, yet names the node its remote notification would reach."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import FlockEnv, wait_for, write_recipe


def _two(flock_env: FlockEnv) -> tuple[Path, Path, Path, Path]:
    root = flock_env.root
    conf, ran, guard, hits = (root / "conf", root / "ran", root / "guard-ran", root / "hits")
    conf.write_text("old")
    a = write_recipe(root / "a.py", f"""\
from flock_node.dsl import *
file({str(conf)!r}, content="new").remote_notifies("run", "execute[hit]", node="b")
execute("cmd", command="touch {ran}")
execute("guarded", command="touch {ran}", only_if="touch {guard}; false")
""")
    b = write_recipe(root / "b.py", f"""\
from flock_node.dsl import *
execute("hit", command="echo hit >> {hits}", action="nothing")
""")
    flock_env.start("a", recipes=[a])
    flock_env.start("b", recipes=[b])
    with flock_env.flock() as f:
        wait_for(lambda: {m["name"] for m in f["a"].flock_api.members()
                          if m["state"] == "alive"} == {"a", "b"}, 10, what="a to see b")
    return conf, ran, guard, hits


def test_why_run_changes_nothing_sends_nothing_and_names_the_target_node(flock_env):
    conf, ran, guard, hits = _two(flock_env)
    r = flock_env.cli("run-chef", "a", "--why-run", "--json")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)["plans"]["a"]
    assert conf.read_text() == "old" and not ran.exists()  # nothing changed
    assert guard.exists()  # a shell guard is still evaluated, as Chef does
    rows = {x["resource"]: x for x in plan["resources"]}
    f = rows[f"file[{conf}]"]
    assert (f["result"], f["why"]) == ("would_update", "content differs")
    assert [(x["node"], x["resource"], x["action"]) for x in f["remote"]] == [
        ("b", "execute[hit]", "run")]
    assert rows["execute[cmd]"]["why"] == f"command would run: touch {ran}"
    assert rows["execute[guarded]"]["result"] == "skipped"
    with flock_env.flock() as fl:
        assert fl["a"].flock_api.outbox() == []  # nothing queued
        (h,) = fl["a"].flock_api.history()
        assert h["kind"] == "why-run" and h["id"] == plan["id"] and h["updated"] == 2
        assert all(x["last_result"] is None for x in fl["a"].resource_manager.resources())
        assert fl["a"].flock_api.status()["last_run"] is None  # health: no converge yet
        # The Python client asks the same (a new plan, recorded too).
        again = fl["a"].flock_api.why_run(timeout=30)
        assert again["kind"] == "why-run" and again["id"] != plan["id"]
        assert [x["result"] for x in again["resources"]] == [
            x["result"] for x in plan["resources"]]
        # The human form says the same.
        text = flock_env.cli("run-chef", "a", "--why-run").stdout
        assert "would send run execute[hit] -> b (immediately)" in text
        assert "content differs" in text and "nothing was sent" in text
        # Now a real converge: b reacts exactly once, to it (delivery keeps order per target,
        # so a notification from the why-runs would have arrived first).
        r = flock_env.cli("--json", "run-chef", "a", "--wait")
        assert r.returncode == 0, r.stderr
        run_id = json.loads(r.stdout)["runs"]["a"]["id"]
        wait_for(lambda: hits.exists(), 10, what="b's reaction")
        wait_for(lambda: fl["b"].flock_api.active() is False, 10, what="b idle")
        (reaction,) = fl["b"].flock_api.history()
        assert reaction["kind"] == "reaction" and reaction["cause"]["run"] == run_id
    assert hits.read_text() == "hit\n" and conf.read_text() == "new" and ran.exists()
