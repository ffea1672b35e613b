"""The converge engine against real files, a real SQLite store and real subprocesses."""

from __future__ import annotations

import os
import stat
import textwrap
import threading
import time
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from flock_node import dsl
from flock_node.engine import (
    Engine,
    RecipeError,
    RunContext,
    UnknownAction,
    UnknownResource,
)
from flock_node.engine.notifications import DelayedQueue
from flock_node.store import Store

_runs = iter(range(1, 1_000_000))


def ctx(**kw) -> RunContext:
    return RunContext(run_id=f"run-{next(_runs)}", **kw)


def wait_for(cond, timeout=5.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return cond()


class Hooks:
    def __init__(self, targets=None):
        self.targets = targets or {}
        self.changed = 0

    def resolve_targets(self, node, tag):
        return list(self.targets.get(node or f"tag:{tag}", []))

    def outbox_changed(self):
        self.changed += 1


class Env:
    def __init__(self, tmp_path: Path):
        self.dir = tmp_path
        self.store = Store(tmp_path / "state" / "flock.db", node="bender0")
        self.recipe = tmp_path / "recipe.py"
        self.hooks = None

    def write(self, body: str, name: str = "recipe.py") -> Path:
        path = self.dir / name
        head = f"from flock_node.dsl import *\nD = {str(self.dir)!r}\n"
        path.write_text(head + textwrap.dedent(body))
        return path

    def engine(self, *recipes: Path, hooks=None) -> Engine:
        return Engine("bender0", list(recipes) or [self.recipe], self.store, hooks=hooks)

    def converge(self, body: str | None = None, hooks=None, **kw):
        if body is not None:
            self.write(body)
        eng = self.engine(hooks=hooks)
        c = ctx(**kw)
        return eng, eng.converge(c), msgspec.to_builtins(self.store.runs.get(c.run_id))


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    yield e
    e.store.close()


def results(run):
    return [(r["resource"], r["action"], r["result"]) for r in run["resources"]]


# -- file, directory ----------------------------------------------------------------------------
def test_file_create_then_second_converge_updates_nothing(env):
    body = """
        file(D + "/a", content="hello")
        file(D + "/b", content="x", mode=0o600)
        directory(D + "/d/e", recursive=True, mode="0750")
        log("hi")
    """
    _, r1, run1 = env.converge(body)
    assert r1["status"] == "ok" and r1["updated"] == 3 and r1["total"] == 4
    assert (env.dir / "a").read_text() == "hello"
    assert stat.S_IMODE(os.stat(env.dir / "b").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(env.dir / "d/e").st_mode) == 0o750
    _, r2, run2 = env.converge()
    assert r2["status"] == "ok" and r2["updated"] == 0
    assert {r["result"] for r in run2["resources"]} == {"up_to_date"}
    assert env.store.runs.last().id == r2["id"]


def test_file_content_and_mode_drift_are_repaired(env):
    env.write('file(D + "/a", content="v1", mode="0644")')
    eng = env.engine()
    eng.converge(ctx())
    (env.dir / "a").write_text("tampered")
    os.chmod(env.dir / "a", 0o666)
    r = eng.converge(ctx())
    assert r["updated"] == 1
    assert (env.dir / "a").read_text() == "v1"
    assert stat.S_IMODE(os.stat(env.dir / "a").st_mode) == 0o644
    os.chmod(env.dir / "a", 0o600)
    c = ctx()
    assert eng.converge(c)["updated"] == 1
    assert "mode 0600 -> 0644" in env.store.runs.get(c.run_id).resources[0].output
    assert not [p for p in os.listdir(env.dir) if p.startswith(".flock-")]


def test_file_delete_touch_create_if_missing(env):
    (env.dir / "gone").write_text("x")
    (env.dir / "keep").write_text("mine")
    body = """
        file(D + "/gone", action="delete")
        file(D + "/keep", action="create_if_missing", content="theirs")
        file(D + "/t", action="touch")
    """
    _, r, run = env.converge(body)
    assert results(run) == [
        (f"file[{env.dir}/gone]", "delete", "updated"),
        (f"file[{env.dir}/keep]", "create_if_missing", "up_to_date"),
        (f"file[{env.dir}/t]", "touch", "updated"),
    ]
    assert not (env.dir / "gone").exists() and (env.dir / "keep").read_text() == "mine"
    _, r2, run2 = env.converge()
    assert [x[2] for x in results(run2)] == ["up_to_date", "up_to_date", "updated"]


def test_file_in_missing_directory_fails_with_message(env):
    _, r, _ = env.converge('file(D + "/no/such/f", content="x")')
    assert r["status"] == "failed"
    assert (
        r["error"]
        == f"file[{env.dir}/no/such/f]: parent directory {env.dir}/no/such does not exist"
    )


def test_directory_delete(env):
    (env.dir / "tree/sub").mkdir(parents=True)
    _, r, _ = env.converge('directory(D + "/tree", action="delete")')
    assert r["status"] == "failed" and "recursive=True" in r["error"]
    _, r, _ = env.converge('directory(D + "/tree", action="delete", recursive=True)')
    assert r["status"] == "ok" and r["updated"] == 1 and not (env.dir / "tree").exists()


# -- execute ------------------------------------------------------------------------------------
def test_execute_creates_returns_cwd_env(env):
    body = """
        execute("mk", command="echo $GREETING > made; pwd >> made", cwd=D,
                environment={"GREETING": "hey"}, creates="made")
        execute("three", command="exit 3", returns=[0, 3])
    """
    _, r, run = env.converge(body)
    assert r["status"] == "ok", r
    assert (env.dir / "made").read_text() == f"hey\n{env.dir}\n"
    _, r2, run2 = env.converge()
    assert [x[2] for x in results(run2)] == ["up_to_date", "updated"]
    assert run2["resources"][0]["output"] == "made exists"


def test_execute_failure_names_resource_status_and_last_stderr_line(env):
    body = """
        execute("foo", command="echo out; echo first >&2; echo 'the reason' >&2; exit 3")
        file(D + "/after", content="x")
    """
    _, r, run = env.converge(body)
    assert r["status"] == "failed"
    assert r["error"] == "execute[foo]: command exited 3 (expected 0): the reason"
    assert len(run["resources"]) == 1  # the rest of the run is not recorded
    assert "out" in run["resources"][0]["output"] and not (env.dir / "after").exists()


def test_execute_output_is_bounded(env):
    _, r, run = env.converge(
        'execute("big", command="head -c 100000 /dev/zero | tr \\"\\\\0\\" a")'
    )
    assert r["status"] == "ok"
    assert len(run["resources"][0]["output"]) == 16 * 1024


def test_execute_timeout_kills_the_process_group(env):
    pidfile = env.dir / "child.pid"
    body = f"""
        execute("slow", command="sleep 60 & echo $! > {pidfile}; wait", timeout=0.5)
    """
    t0 = time.monotonic()
    _, r, _ = env.converge(body)
    assert time.monotonic() - t0 < 10
    assert r["status"] == "failed"
    assert r["error"] == "execute[slow]: command timed out after 0.5 s (process group killed)"
    child = int(pidfile.read_text())

    def gone():
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return True
        # a zombie not yet reaped by init counts as gone
        try:
            return Path(f"/proc/{child}/stat").read_text().split(")")[1].split()[0] == "Z"
        except OSError:
            return True

    assert wait_for(gone, timeout=5)


# -- guards, retries, ignore_failure ------------------------------------------------------------
def test_guards_skip(env):
    body = """
        file(D + "/a", content="x", only_if="false")
        file(D + "/b", content="x", not_if="true")
        file(D + "/c", content="x", only_if=lambda: True, not_if="test -e /nonexistent")
        file(D + "/d", content="x", not_if=lambda: False)
    """
    _, r, run = env.converge(body)
    assert [x[2] for x in results(run)] == ["skipped", "skipped", "updated", "updated"]
    assert not (env.dir / "a").exists() and not (env.dir / "b").exists()
    assert run["resources"][0]["output"] == "skipped: only_if false was false"


def test_retries_then_success(env):
    counter = env.dir / "n"
    body = f"""
        execute("flaky", command="echo x >> {counter}; test $(wc -l < {counter}) -ge 3",
                retries=3, retry_delay=0.01)
    """
    _, r, run = env.converge(body)
    assert r["status"] == "ok"
    assert len(counter.read_text().splitlines()) == 3
    assert "attempt 2 failed" in run["resources"][0]["output"]


def test_retries_exhausted(env):
    _, r, _ = env.converge('execute("no", command="exit 1", retries=2, retry_delay=0)')
    assert r["error"] == "execute[no]: command exited 1 (expected 0) (after 3 attempts)"


def test_ignore_failure_continues_and_run_is_ok(env):
    body = """
        execute("bad", command="exit 1", ignore_failure=True)
        file(D + "/after", content="x")
    """
    _, r, run = env.converge(body)
    assert r["status"] == "ok" and r["error"] is None
    assert [x[2] for x in results(run)] == ["failed", "updated"]
    assert run["resources"][0]["error"] == "command exited 1 (expected 0)"


# -- local notifications ------------------------------------------------------------------------
def test_notifies_immediately_vs_delayed_dedup(env):
    body = """
        file(D + "/a", content="1").notifies("write", "log[late]").notifies(
            "write", "log[now]", timing="immediately")
        file(D + "/b", content="2").notifies("write", "log[late]")
        file(D + "/c", content="3")
        log("now", action="nothing")
        log("late", action="nothing")
    """
    _, r, run = env.converge(body)
    d = env.dir
    assert results(run) == [
        (f"file[{d}/a]", "create", "updated"),
        ("log[now]", "write", "up_to_date"),
        (f"file[{d}/b]", "create", "updated"),
        (f"file[{d}/c]", "create", "updated"),
        ("log[now]", "nothing", "up_to_date"),
        ("log[late]", "nothing", "up_to_date"),
        ("log[late]", "write", "up_to_date"),  # once, at the end
    ]
    _, r2, run2 = env.converge()  # nothing updated: nothing notified
    assert [x[1] for x in results(run2)] == ["create", "create", "create", "nothing", "nothing"]


def test_delayed_notifications_still_run_after_a_failure(env):
    out = env.dir / "ran"
    body = f"""
        file(D + "/a", content="1").notifies("run", "execute[restart]")
        execute("boom", command="echo broken >&2; exit 2")
        file(D + "/never", content="x")
        execute("restart", command="echo restarted > {out}", action="nothing")
    """
    _, r, run = env.converge(body)
    assert r["status"] == "failed"
    assert r["error"] == "execute[boom]: command exited 2 (expected 0): broken"
    assert out.read_text() == "restarted\n"
    assert results(run)[-1] == ("execute[restart]", "run", "updated")
    assert not (env.dir / "never").exists()


def test_subscribes(env):
    out = env.dir / "ran"
    body = f"""
        file(D + "/conf", content="1")
        execute("reload", command="echo r >> {out}", action="nothing").subscribes(
            "run", "file[" + D + "/conf]", timing="immediately")
    """
    env.converge(body)
    assert out.read_text() == "r\n"
    env.converge()
    assert out.read_text() == "r\n"


# -- compile errors -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body,line,message",
    [
        ('file(D + "/x", contnet="y")', 3, "file[{d}/x]: unknown property 'contnet'"),
        (
            '\nfile(D + "/x", action="explode")',
            4,
            "file[{d}/x]: unknown action 'explode' (allowed: create, create_if_missing, delete, touch, nothing)",
        ),
        ("x = (1,\n", 3, "syntax error: "),
        ('\n\nraise ValueError("nope")', 5, "ValueError: nope"),
        ('file(D + "/x")\nfile(D + "/x")', 4, "file[{d}/x]: duplicate resource"),
        (
            'file(D + "/x").notifies("run", "execute[ghost]")',
            3,
            "file[{d}/x]: notifies unknown resource execute[ghost]",
        ),
        (
            'file(D + "/x").notifies("run", "log[l]")\nlog("l")',
            3,
            "file[{d}/x]: notifies unknown action 'run' of log[l]",
        ),
        (
            'file(D + "/x").notifies("write", "log[l]", timing="later")\nlog("l")',
            3,
            "file[{d}/x]: bad timing 'later'",
        ),
        ('file(D + "/x", mode="rw")', 3, "file[{d}/x]: property 'mode' must be an octal mode"),
        (
            'file(D + "/x").remote_notifies("touch", "file[/y]", node="bad name!")',
            3,
            "file[{d}/x]: node='bad name!' is not a node name or glob",
        ),
        (
            'file(D + "/x").remote_subscribes("touch", "file[/y]")',
            3,
            "file[{d}/x]: remote_subscribes needs node=NAME",
        ),
    ],
)
def test_compile_errors_name_file_and_line(env, body, line, message):
    path = env.write(body)
    with pytest.raises(RecipeError) as ei:
        env.engine().compile()
    msg = str(ei.value)
    assert msg.startswith(f"{path}:{line}: " + message.format(d=env.dir)), msg
    assert env.store.resources.all() == []
    c = ctx()
    r = env.engine().converge(c)
    assert r["status"] == "failed" and r["error"] == msg and r["total"] == 0
    assert env.store.runs.get(c.run_id).resources == []


def test_dsl_outside_a_compile_is_a_clear_error():
    with pytest.raises(RecipeError, match="only be declared inside a recipe"):
        dsl.file("/tmp/nope")


def test_recipes_compile_in_order_across_files(env):
    a = env.write('file(D + "/one", content="1").notifies("write", "log[two]")', "a.py")
    b = env.write('log("two", action="nothing")', "b.py")
    eng = env.engine(a, b)
    rows = eng.compile()
    assert [r.id for r in rows] == [f"file[{env.dir}/one]", "log[two]"]
    assert rows[0].source == f"{a}:3" and rows[1].source == f"{b}:3"
    assert eng.resource_ids() == [r.id for r in rows]


# -- out of band ---------------------------------------------------------------------------------
def test_run_action_out_of_band(env):
    out = env.dir / "ran"
    body = f"""
        execute("kill all humans", command="echo done >> {out}", action="nothing").notifies(
            "write", "log[after]")
        log("after", action="nothing")
    """
    env.write(body)
    eng = env.engine()
    eng.compile()
    c = ctx(kind="reaction", cause={"node": "bender1", "run": "r9", "resource": "file[/x]"}, hops=1)
    r = eng.run_action("execute[kill all humans]", "run", c)
    assert r["status"] == "ok" and r["updated"] == 1 and r["total"] == 2
    run = msgspec.to_builtins(env.store.runs.get(c.run_id))
    assert run["kind"] == "reaction" and run["cause"]["node"] == "bender1"
    assert results(run) == [
        ("execute[kill all humans]", "run", "updated"),
        ("log[after]", "write", "up_to_date"),
    ]
    assert out.read_text() == "done\n"
    with pytest.raises(UnknownResource, match="unknown resource 'execute\\[nope\\]'"):
        eng.run_action("execute[nope]", "run", ctx())
    with pytest.raises(UnknownAction) as ei:
        eng.run_action("execute[kill all humans]", "explode", ctx())
    assert ei.value.allowed == ["run", "nothing"] and "allowed: run, nothing" in str(ei.value)


def test_run_action_after_restart_with_broken_recipe_restores_from_store(env):
    env.write('file(D + "/f", content="persisted", mode="0600")\npython_block("pb", block=print)')
    env.engine().converge(ctx())
    (env.dir / "f").unlink()
    env.write('file(D + "/f", content=  # broken')
    eng = env.engine()  # the agent restarted
    with pytest.raises(RecipeError):
        eng.compile()
    assert eng.resource_ids() == [f"file[{env.dir}/f]", "python_block[pb]"]
    r = eng.run_action(f"file[{env.dir}/f]", "create", ctx())
    assert r["status"] == "ok" and r["updated"] == 1
    assert (env.dir / "f").read_text() == "persisted"
    assert stat.S_IMODE(os.stat(env.dir / "f").st_mode) == 0o600
    r = eng.run_action("python_block[pb]", "run", ctx())
    assert r["status"] == "failed" and "cannot be restored from the store" in r["error"]


# -- remote notifications ------------------------------------------------------------------------
def test_remote_notifies_queue_outbox_only_when_updated(env):
    hooks = Hooks({"bender1": ["bender1"], "tag:web": ["web1", "web2"], "db-*": []})
    body = """
        f = file(D + "/fubar", content="foobar")
        f.remote_notifies("run", "execute[kill all humans]", node="bender1")
        f.remote_notifies("restart", "execute[svc]", tag="web")
        f.remote_notifies("run", "execute[x]", node="db-*")
    """
    _, r, run = env.converge(body, hooks=hooks, hops=2)
    assert r["status"] == "ok", r
    due = sorted(env.store.outbox.due(time.time() + 1), key=lambda x: x.target)
    assert [(d.target, d.resource, d.action, d.hops) for d in due] == [
        ("bender1", "execute[kill all humans]", "run", 3),
        ("web1", "execute[svc]", "restart", 3),
        ("web2", "execute[svc]", "restart", 3),
    ]
    assert due[0].cause == {
        "node": "bender0",
        "run": r["id"],
        "resource": f"file[{env.dir}/fubar]",
        "action": "create",
    }
    assert hooks.changed >= 1
    assert (
        "remote_notifies run execute[x] node=db-*: no node matched" in run["resources"][0]["output"]
    )
    env.converge(hooks=hooks)  # up to date: nothing more queued
    assert len(env.store.outbox.due(time.time() + 1)) == 3


def test_delayed_remote_notifications_are_held_until_the_run_ends(env):
    seen = {}

    class Peek(Hooks):
        pass

    hooks = Peek({"bender1": ["bender1"]})
    body = """
        file(D + "/a", content="1").remote_notifies("run", "execute[r]", node="bender1", timing="delayed")
        file(D + "/b", content="1").remote_notifies("run", "execute[r]", node="bender1", timing="delayed")
        python_block("peek", block=lambda: PEEK())
    """
    env.write(body)
    eng = env.engine(hooks=hooks)
    import builtins

    def peek():
        seen["during"] = env.store.outbox.counts()

    builtins.PEEK = peek
    try:
        eng.converge(ctx())
    finally:
        del builtins.PEEK
    assert seen["during"] == {"held": 1}  # de-duplicated, held while the run goes on
    due = env.store.outbox.due(time.time() + 1)
    assert [(d.target, d.resource) for d in due] == [("bender1", "execute[r]")]


def test_subscribers_of_produce_outbox_items(env):
    sid = env.store.subscriptions.add(f"file[{env.dir}/conf]", "web1", "execute[reload]", "run")
    _, r, _ = env.converge('file(D + "/conf", content="v1")', hooks=Hooks())
    due = env.store.outbox.due(time.time() + 1)
    assert [(d.target, d.resource, d.action, d.hops) for d in due] == [
        ("web1", "execute[reload]", "run", 1)
    ]
    assert due[0].cause["subscription"] == sid


def test_remote_subscribes_are_persisted_as_wanted(env):
    env.write('file(D + "/x").remote_subscribes("create", "file[/etc/schema]", node="db0")')
    env.engine().compile()
    (w,) = env.store.wanted.all()
    assert (w.resource, w.action, w.node, w.remote_resource, w.origin) == (
        f"file[{env.dir}/x]",
        "create",
        "db0",
        "file[/etc/schema]",
        "recipe",
    )


# -- waits, stop, progress -----------------------------------------------------------------------
class FakeApi:
    def __init__(self, answers):
        self.answers = list(answers)

    def active(self):
        a = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(a, Exception):
            raise a
        return a


class FakeFlock:
    def __init__(self, api):
        self.api = api

    def __getitem__(self, name):
        node = type("Node", (), {})()
        node.flock_api = self.api
        return node


@pytest.fixture
def bound():
    def bind(answers):
        dsl.bind_flock(FakeFlock(FakeApi(answers)))

    yield bind
    dsl.bind_flock(None)


def test_wait_until_success_with_exception_as_not_yet(env, bound):
    bound([ConnectionError("unreachable"), True, True, False])
    body = """
        g = file(D + "/gated", content="x")
        g.wait_until(lambda: not flock["bender0"].flock_api.active(), interval=0.01, timeout=5)
    """
    _, r, _ = env.converge(body)
    assert r["status"] == "ok" and (env.dir / "gated").exists()


def test_wait_until_timeout_names_condition_and_last_error(env, bound):
    bound([ConnectionError("bender0 unreachable")])
    body = """
        g = file(D + "/gated", content="x")
        g.wait_until(lambda: not flock["bender0"].flock_api.active(), interval=0.05, timeout=0.2)
    """
    _, r, _ = env.converge(body)
    assert r["status"] == "failed"
    assert r["error"].startswith(f"file[{env.dir}/gated]: wait_until timed out after 0.2 s: ")
    assert 'lambda: not flock["bender0"].flock_api.active()' in r["error"]
    assert r["error"].endswith("(last error: ConnectionError: bender0 unreachable)")
    assert not (env.dir / "gated").exists()


def test_wait_while(env, bound):
    bound([True])
    _, r, _ = env.converge(
        'file(D + "/g").wait_while(lambda: flock["x"].flock_api.active(), interval=0.01, timeout=0.1)'
    )
    assert "wait_while timed out after 0.1 s" in r["error"]


def test_stop_finishes_the_resource_in_progress(env):
    c = ctx()
    started = env.dir / "started"
    body = f"""
        execute("slow", command="touch {started}; sleep 0.3")
        file(D + "/after", content="x")
    """
    env.write(body)
    eng = env.engine()
    seen = []
    c.progress = lambda k, n, rid: seen.append((k, n, rid))
    t = threading.Thread(target=lambda: seen.append(eng.converge(c)))
    t.start()
    assert wait_for(started.exists)
    c.stop.set()
    t.join(10)
    r = seen[-1]
    assert r["status"] == "failed" and r["error"] == "stopped"
    assert seen[:-1] == [(1, 2, "execute[slow]")]
    assert results(msgspec.to_builtins(env.store.runs.get(c.run_id))) == [("execute[slow]", "run", "updated")]
    assert not (env.dir / "after").exists()


def test_stop_cuts_a_wait_short(env, bound):
    bound([False])
    env.write('file(D + "/g").wait_until(lambda: flock["x"].flock_api.active(), interval=0.05)')
    eng, c = env.engine(), ctx()
    timer = threading.Timer(0.2, c.stop.set)
    timer.start()
    t0 = time.monotonic()
    r = eng.converge(c)
    assert time.monotonic() - t0 < 5
    assert r["status"] == "failed" and r["error"] == "stopped"


def test_progress_callback(env):
    seen = []
    env.converge(
        'file(D + "/a")\nfile(D + "/b")', progress=lambda k, n, rid: seen.append((k, n, rid))
    )
    assert seen == [(1, 2, f"file[{env.dir}/a]"), (2, 2, f"file[{env.dir}/b]")]


# -- the notification queue as a pure state machine ------------------------------------------------
@given(st.lists(st.tuples(st.sampled_from("abc"), st.sampled_from(["run", "write"]))))
def test_delayed_queue_dedups_in_first_queued_order(items):
    q = DelayedQueue()
    for t, a in items:
        q.add(t, a)
    out = []
    while (x := q.pop()) is not None:
        out.append(x)
    assert out == list(dict.fromkeys(items))


def test_recompile_persists_only_changes_but_always_the_latest(env):
    env.write('file(D + "/a", content="1")')
    eng = env.engine()
    eng.converge(ctx())
    eng.compile()  # unchanged: nothing rewritten, results kept
    (row,) = env.store.resources.all()
    assert row.properties["content"] == "1" and row.last_result == "updated"
    env.write('file(D + "/a", content="2")\nlog("new")')
    eng.compile()
    rows = env.store.resources.all()
    assert [r.id for r in rows] == [f"file[{env.dir}/a]", "log[new]"]
    assert rows[0].properties["content"] == "2" and rows[0].last_result == "updated"


def test_stop_records_pending_delayed_notifications_as_skipped(env):
    c = ctx()
    started = env.dir / "started"
    env.write(
        f"""
        file(D + "/a", content="1").notifies("write", "log[late]")
        execute("slow", command="touch {started}; sleep 0.3")
        log("late", action="nothing")
        """
    )
    eng = env.engine()
    t = threading.Thread(target=eng.converge, args=(c,))
    t.start()
    assert wait_for(started.exists)
    c.stop.set()
    t.join(10)
    run = msgspec.to_builtins(env.store.runs.get(c.run_id))
    assert run["status"] == "failed" and run["error"] == "stopped"
    assert results(run)[-1] == ("log[late]", "write", "skipped")
    assert run["resources"][-1]["error"] == "delayed notification not run: stopped"


# -- timeouts: guards, python_block, the stop timeout's kill --------------------------------------
def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie not yet reaped by init counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True


def test_string_guard_times_out_and_leaves_no_process(env):
    pidfile = env.dir / "guard.pid"
    body = f"""
        file(D + "/a", content="x", only_if="sleep 3000 & echo $! > {pidfile}; wait",
             guard_timeout=1)
        file(D + "/b", content="x")
    """
    t0 = time.monotonic()
    _, r, run = env.converge(body)
    assert time.monotonic() - t0 < 5
    assert r["status"] == "failed"
    assert r["error"].startswith(f"file[{env.dir}/a]: only_if timed out after 1 s")
    assert "sleep 3000" in r["error"]
    assert results(run) == [(f"file[{env.dir}/a]", "create", "failed")]
    assert wait_for(lambda: _gone(int(pidfile.read_text())), timeout=5)


def test_callable_guard_endless_loop_times_out(env):
    body = """
        def forever():
            while True:
                pass
        file(D + "/a", content="x", not_if=forever, guard_timeout=1)
    """
    t0 = time.monotonic()
    _, r, _ = env.converge(body)
    assert time.monotonic() - t0 < 5
    assert r["status"] == "failed"
    assert r["error"] == f"file[{env.dir}/a]: not_if timed out after 1 s (callable, stopped)"


def test_guard_timeout_is_validated(env):
    with pytest.raises(RecipeError, match="guard_timeout"):
        env.write('log("x", guard_timeout=-1)')
        env.engine().compile()


def test_python_block_endless_loop_times_out_and_the_run_goes_on(env):
    body = """
        def forever():
            while True:
                pass
        python_block("spin", block=forever, timeout=1, ignore_failure=True)
        file(D + "/after", content="x")
    """
    t0 = time.monotonic()
    _, r, run = env.converge(body)
    assert time.monotonic() - t0 < 5
    assert results(run) == [
        ("python_block[spin]", "run", "failed"),
        (f"file[{env.dir}/after]", "create", "updated"),
    ]
    assert run["resources"][0]["error"] == "timed out after 1 s (the block was stopped)"
    assert r["status"] == "ok"


def test_python_block_that_ignores_the_exception_is_reported(env):
    body = """
        import time
        python_block("stuck", block=lambda: time.sleep(60), timeout=0.3)
    """
    t0 = time.monotonic()
    _, r, _ = env.converge(body)
    # Far below the block's 60 s (the bound leaves room for a loaded or traced machine).
    assert time.monotonic() - t0 < 30
    assert r["error"].startswith("python_block[stuck]: timed out after 0.3 s (the block did not")


def test_interrupt_kills_a_command_and_the_run_is_interrupted(env):
    started = env.dir / "started"
    env.write(f'execute("slow", command="touch {started}; sleep 30")\nfile(D + "/after")')
    eng, c = env.engine(), ctx()
    t = threading.Thread(target=eng.converge, args=(c,), daemon=True)
    t.start()
    assert wait_for(started.exists)
    c.stop.set()
    c.kill.fire("interrupted: killed after --stop-timeout 1 s")
    t.join(5)
    assert not t.is_alive()
    run = msgspec.to_builtins(env.store.runs.get(c.run_id))
    assert results(run) == [("execute[slow]", "run", "failed")]
    assert run["resources"][0]["error"] == "interrupted: killed after --stop-timeout 1 s"
    assert run["status"] == "failed"
    assert run["error"] == "interrupted: killed after --stop-timeout 1 s (execute[slow])"


def test_interrupt_stops_a_python_block(env):
    started = env.dir / "started"
    env.write(
        f"""
        def forever():
            open({str(started)!r}, "w").close()
            while True:
                pass
        python_block("spin", block=forever)
        """
    )
    eng, c = env.engine(), ctx()
    t = threading.Thread(target=eng.converge, args=(c,), daemon=True)
    t.start()
    assert wait_for(started.exists)
    c.stop.set()
    c.kill.fire("interrupted: killed after --stop-timeout 1 s")
    t.join(5)
    assert not t.is_alive()
    run = msgspec.to_builtins(env.store.runs.get(c.run_id))
    assert run["resources"][0]["error"] == "interrupted: killed after --stop-timeout 1 s"
    assert run["error"].startswith("interrupted: ")


def test_a_wait_condition_that_never_returns_is_bounded_by_the_wait_timeout(env):
    env.write("""
        def forever():
            while True:
                pass
        file(D + "/g").wait_until(forever, interval=0.05, timeout=0.5)
    """)
    t0 = time.monotonic()
    r = env.engine().converge(ctx())
    assert time.monotonic() - t0 < 4
    assert r["error"] == (f"file[{env.dir}/g]: wait_until timed out after 0.5 s: "
                          "def forever(): while True: pass (the condition did not return)")
