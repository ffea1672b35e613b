"""Resources' decide step (what would change and why) per type, and the engine's why-run
mode: nothing changed, nothing queued, a plan in history."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import msgspec
import pytest

from flock_node.engine import Engine, ResourceFailure, RunContext
from flock_node.engine.resources import TYPES, Decision, Resource, converge_by, up_to_date
from flock_node.store import Store


def make(type_name: str, name: str, **props) -> Resource:
    return TYPES[type_name](name, dict(props), "test.py:1")


def decide(type_name: str, name: str, action: str | None = None, **props) -> Decision:
    res = make(type_name, name, **props)
    return res.decide(action or res.action)


# -- decide, per type ---------------------------------------------------------------------------
def test_file_decide_says_why_and_changes_nothing(tmp_path):
    p = tmp_path / "f"
    d = decide("file", str(p), content="new")
    assert d.would_converge and d.why == f"{p} does not exist" and not p.exists()
    p.write_text("old")
    os.chmod(p, 0o644)
    d = decide("file", str(p), content="new", mode=0o600)
    assert d.why == "content differs, mode 0644 -> 0600"
    assert p.read_text() == "old" and (p.stat().st_mode & 0o777) == 0o644
    p.write_text("new")
    assert decide("file", str(p), content="new", mode=0o600).why == "mode 0644 -> 0600"
    d = decide("file", str(p), content="new", mode=0o644)
    assert not d.would_converge and d.why == "content and mode as wanted"
    assert not decide("file", str(p), action="create_if_missing", content="other").would_converge
    assert decide("file", str(p), action="delete").why == f"{p} exists"
    assert decide("file", str(tmp_path / "none"), action="delete").why.endswith("does not exist")
    assert decide("file", str(p), action="touch").would_converge
    with pytest.raises(ResourceFailure, match="is a directory"):
        decide("file", str(tmp_path), content="x")


def test_directory_decide(tmp_path):
    d = tmp_path / "d"
    assert decide("directory", str(d)).why == f"{d} does not exist" and not d.exists()
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    assert decide("directory", str(d), mode="0700").why == "mode 0755 -> 0700"
    assert not decide("directory", str(d)).would_converge
    assert decide("directory", str(d), action="delete").why == f"{d} exists"
    (tmp_path / "f").write_text("")
    with pytest.raises(ResourceFailure, match="not a directory"):
        decide("directory", str(tmp_path / "f"))


def test_execute_decide_never_runs_the_command(tmp_path):
    mark = tmp_path / "ran"
    d = decide("execute", "x", command=f"touch {mark}")
    assert d.would_converge and d.why == f"command would run: touch {mark}"
    assert not mark.exists()
    (tmp_path / "made").write_text("")
    d = decide("execute", "x", command="false", creates="made", cwd=str(tmp_path))
    assert not d.would_converge and d.why == "made exists" and d.output == "made exists"


def test_log_and_python_block_decide():
    d = decide("log", "hello", level="warn")
    assert d.would_converge and not d.updates and d.why == "would log at warn: hello"
    calls = []
    d = decide("python_block", "b", block=lambda: calls.append(1))
    assert d.would_converge and d.why == "the block would run" and calls == []


def test_a_new_type_plugs_in_by_subclassing():
    class Probe(Resource):
        type = "probe_for_test"
        actions = ("check", "nothing")
        default_action = "check"

        def load_current_resource(self, action: str) -> bool:
            return self.name == "drifted"

        def decide_check(self, drifted: bool) -> Decision:
            if drifted:
                return converge_by("drift found", lambda: "fixed")
            return up_to_date("no drift")

    try:
        assert TYPES["probe_for_test"] is Probe
        assert make("probe_for_test", "drifted").act("check") == (True, "fixed")
        assert make("probe_for_test", "fine").act("check") == (False, "")
        with pytest.raises(TypeError, match="decide_go"):
            type("Broken", (Resource,), {"type": "broken_for_test", "actions": ("go",)})
    finally:
        TYPES.pop("probe_for_test", None)


# -- the engine's why-run mode ------------------------------------------------------------------
class Hooks:
    def resolve_targets(self, node, tag):
        return {"b*": ["b1", "b2"], "tag:db": ["d1"]}.get(node or f"tag:{tag}", [])

    def outbox_changed(self):
        raise AssertionError("a why-run must not touch the outbox")

    def outbox_added(self, items):
        raise AssertionError("a why-run must not touch the outbox")


def test_why_run_plans_without_changing_anything(tmp_path):
    store = Store(tmp_path / "state.db", node="a")
    f, ran, guard = tmp_path / "conf", tmp_path / "ran", tmp_path / "guard-ran"
    f.write_text("old")
    recipe = tmp_path / "r.py"
    recipe.write_text(textwrap.dedent(f"""
        from flock_node.dsl import *
        file({str(f)!r}, content="new").notifies("run", "execute[reload]") \\
            .remote_notifies("run", "execute[restart]", node="b*") \\
            .remote_notifies("run", "execute[x]", tag="web")
        execute("reload", command="touch {ran}", action="nothing")
        execute("guarded", command="touch {ran}", only_if="touch {guard}; false")
        execute("later", command="touch {ran}").notifies("write", "log[done]", "delayed")
        log("done", action="nothing")
    """))
    eng = Engine("a", [recipe], store, hooks=Hooks())
    r = eng.why_run(RunContext("w-1"))
    assert f.read_text() == "old" and not ran.exists()
    assert guard.exists()  # a shell guard is still evaluated
    rows = {(x["resource"], x["action"]): x for x in r["resources"]}
    fr = rows[(f"file[{f}]", "create")]
    assert fr["result"] == "would_update" and fr["why"] == "content differs"
    assert fr["notifies"] == [{"action": "run", "target": "execute[reload]",
                               "timing": "delayed"}]
    assert [(x["node"], x["resource"]) for x in fr["remote"]] == [
        ("b1", "execute[restart]"), ("b2", "execute[restart]"), (None, "execute[x]")]
    assert fr["remote"][2]["unmatched"] == "no node matched tag=web"
    assert rows[("execute[guarded]", "run")]["result"] == "skipped"
    assert "only_if" in rows[("execute[guarded]", "run")]["why"]
    assert rows[("execute[reload]", "run")]["why"].startswith("command would run")
    assert rows[("log[done]", "write")]["result"] == "up_to_date"
    assert r["kind"] == "why-run" and r["status"] == "ok" and r["updated"] == 3
    # history has the plan; resources, outbox and subscriptions are untouched
    (run,) = msgspec.to_builtins(store.runs.history(5))
    assert run["kind"] == "why-run" and run["updated"] == 3
    assert "would send run execute[restart] to b1" in run["resources"][0]["output"]
    assert store.resources.all() == [] and store.outbox.rows(None, 10) == []
    assert store.runs.last() is None  # a why-run says nothing about the node's health
    store.close()


def test_why_run_of_a_broken_recipe_fails_with_the_line(tmp_path):
    store = Store(tmp_path / "state.db", node="a")
    recipe = tmp_path / "r.py"
    recipe.write_text("from flock_node.dsl import *\nfile(3)\n")
    r = Engine("a", [recipe], store).why_run(RunContext("w-2"))
    assert r["status"] == "failed" and "r.py:2" in r["error"] and r["resources"] == []
    store.close()


def test_converge_after_why_run_still_does_the_work(tmp_path):
    store = Store(tmp_path / "state.db", node="a")
    recipe = tmp_path / "r.py"
    target = tmp_path / "x"
    recipe.write_text(f"from flock_node.dsl import *\nfile({str(target)!r}, content='1')\n")
    eng = Engine("a", [recipe], store)
    assert eng.why_run(RunContext("w-3"))["updated"] == 1
    assert eng.converge(RunContext("c-3"))["updated"] == 1 and Path(target).read_text() == "1"
    assert eng.why_run(RunContext("w-4"))["resources"][0]["result"] == "up_to_date"
    store.close()
