"""Issue 8: the exactly-once promise under faults — crashes of the delivery loop, restarts,
first starts, chains across crashes, full disks, rolling restarts and recipe subscriptions.

Each test reproduces a fault found on the seed and checks what must hold instead."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for

from flock_node.engine import Engine, RunContext
from flock_node.store import Store


class _Hooks:
    def __init__(self, targets: dict[str, list[str]]):
        self.targets = targets

    def resolve_targets(self, node, tag):
        return list(self.targets.get(node or f"tag:{tag}", []))

    def outbox_changed(self):
        pass


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "state" / "flock.db", node="a")
    yield s
    s.close()


def _engine(tmp_path: Path, store: Store, body: str) -> Engine:
    recipe = tmp_path / "recipe.py"
    recipe.write_text("from flock_node.dsl import *\n" + textwrap.dedent(body))
    return Engine("a", [recipe], store, hooks=_Hooks({"b": ["b"], "tag:web": ["w1", "w2"]}))


# -- item 4: a chain re-run after a crash is de-duplicated by the next hop ----------------------
def test_a_reaction_run_again_sends_the_same_notification_ids(tmp_path, store):
    out = tmp_path / "env.txt"
    eng = _engine(tmp_path, store, f"""
        execute("relay", command="env | grep ^FLOCK_ | sort >> {out}", action="nothing") \\
            .remote_notifies("run", "execute[sink]", node="b") \\
            .remote_notifies("run", "execute[sink]", tag="web")
    """)
    eng.compile()
    cause = {"node": "src", "notification": "n-root", "hops": 1}

    def react(run_id: str) -> list[tuple[str, str]]:
        eng.run_action("execute[relay]", "run", RunContext(run_id, "reaction", cause=dict(cause),
                                                           hops=1))
        return sorted((r.target, r.id) for r in store.outbox.rows()
                      if r.run_id == run_id)

    first = react("r-1")
    # The same notification applied again (a crash between the action and its commit): the
    # same ids, so the receivers' inboxes drop the copies.
    store.db.conn.execute("DELETE FROM outbox")
    again = react("r-2")
    assert [t for t, _ in first] == ["b", "w1", "w2"]
    assert first == again
    assert len({i for _, i in first}) == 3
    # ...and the chain's origin travels with them and reaches the commands.
    assert all(r.cause["origin"] == "n-root" for r in store.outbox.rows())
    env_lines = out.read_text().splitlines()
    assert "FLOCK_NOTIFICATION=n-root" in env_lines and "FLOCK_ORIGIN=n-root" in env_lines
    assert "FLOCK_SENDER=src" in env_lines


def test_a_converge_sends_fresh_ids_each_run(tmp_path, store):
    eng = _engine(tmp_path, store, f"""
        file({str(tmp_path / 'f')!r}, action="touch").remote_notifies("run", "execute[x]", node="b")
    """)
    eng.converge(RunContext("c-1"))
    eng.converge(RunContext("c-2"))
    ids = {r.id for r in store.outbox.rows()}
    assert len(ids) == 2
    # A notification caused by a converge starts a chain: its own id is the origin downstream.
    assert all("origin" not in r.cause for r in store.outbox.rows())


class _EarlyHooks(_Hooks):
    """Hooks that take a reaction's rows before their commit, as the agent does."""

    def __init__(self, store: Store):
        super().__init__({"b": ["b"]})
        self.store = store
        self.calls: list[tuple[str, Any, Any]] = []

    def outbox_early(self, items):
        committed = [r.id for r in self.store.outbox.rows()]
        self.calls.append(("early", [i.id for i in items], committed))
        return "launched"

    def outbox_added(self, items, early=None):
        self.calls.append(("added", [i.id for i in items], early))

    def outbox_abandoned(self, early):
        self.calls.append(("abandoned", early, None))


def _relay(tmp_path: Path, store: Store) -> tuple[Engine, _EarlyHooks]:
    recipe = tmp_path / "recipe.py"
    recipe.write_text("from flock_node.dsl import *\n"
                      "execute('relay', command='true', action='nothing')"
                      ".remote_notifies('run', 'execute[sink]', node='b')\n")
    hooks = _EarlyHooks(store)
    eng = Engine("a", [recipe], store, hooks=hooks)
    eng.compile()
    return eng, hooks


def _react(eng: Engine, run_id: str) -> None:
    eng.run_action("execute[relay]", "run", RunContext(
        run_id, "reaction", cause={"node": "src", "notification": "n-root", "hops": 1}, hops=1))


def test_a_reactions_notification_may_leave_before_its_commit_a_converges_not(tmp_path, store):
    """Sending while the commit syncs is safe only for ids derived from the cause: a crash
    before the commit runs the reaction again, with the same ids, and the receiver keeps one.
    A converge's ids are fresh each run, so its rows go only once committed."""
    eng, hooks = _relay(tmp_path, store)
    _react(eng, "r-1")
    (rid,) = [r.id for r in store.outbox.rows()]
    assert hooks.calls == [("early", [rid], []), ("added", [rid], "launched")]
    hooks.calls.clear()
    store.db.conn.execute("DELETE FROM outbox")
    eng.converge(RunContext("c-1"))
    eng.run_action("execute[relay]", "run", RunContext("c-2"))
    assert [c[0] for c in hooks.calls] == ["added"]
    assert hooks.calls[0][2] is None


def test_rows_sent_before_a_failed_commit_are_abandoned_and_the_rerun_sends_the_same_id(
        tmp_path, store, monkeypatch):
    import sqlite3

    eng, hooks = _relay(tmp_path, store)
    real = store.runs.record_result

    def full(*a, **k):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store.runs, "record_result", full)
    _react(eng, "r-1")
    assert [c[0] for c in hooks.calls] == ["early", "abandoned"]
    first_id = hooks.calls[0][1]
    assert store.outbox.rows() == []
    monkeypatch.setattr(store.runs, "record_result", real)
    hooks.calls.clear()
    _react(eng, "r-2")  # the reaction run again once the disk has room
    assert hooks.calls[0][1] == first_id == [r.id for r in store.outbox.rows()]


# -- with real agents ---------------------------------------------------------------------------
HB = 0.2


def _recipe(env, name: str, text: str) -> Path:
    p = env.root / f"{name}.py"
    p.write_text(textwrap.dedent(text))
    return p


def _start(env, name: str, text: str | None = None, *args: str, **kw):
    recipes = [_recipe(env, name, text)] if text is not None else []
    return env.start(name, *args, recipes=recipes, heartbeat=HB, **kw)


def _lines(p: Path) -> list[str]:
    return p.read_text().splitlines() if p.exists() else []


def _run(f, node: str, timeout: float = 30.0) -> dict:
    rid = f[node].flock_api.run_chef()["run_id"]

    def done():
        r = f[node].flock_api.run(rid)
        return r if r and r["status"] != "running" else None

    return wait_for(done, timeout, what=f"run {rid} on {node}")


def _quiet(f, node: str) -> bool:
    st = f[node].flock_api.status()
    return not st["active"] and not st["queued"] and st["pending"] == 0


def _knows(f, node: str, *others: str) -> bool:
    return set(others) <= {m["name"] for m in f[node].flock_api.members()
                           if m["state"] == "alive"}


SINK = """
    from flock_node.dsl import execute
    execute("hit", command='echo "$FLOCK_NOTIFICATION" >> {out}', action="nothing")
"""

FAN = """
    from flock_node.dsl import execute
    for i in range({n}):
        execute(f"s{{i}}", command="true").remote_notifies("run", "execute[hit]", node="rcv")
"""


# -- item 1: a dead or frozen receiver does not stop its senders --------------------------------
def test_a_frozen_receiver_going_down_mid_call_does_not_stop_the_sender(flock_env):
    import signal

    env = flock_env
    out = env.root / "hits"
    rcv = _start(env, "rcv", SINK.format(out=out))
    snd = _start(env, "snd", FAN.format(n=40))
    f = env.flock()
    wait_for(lambda: _knows(f, "snd", "rcv"), 5)
    rcv.proc.send_signal(signal.SIGSTOP)
    try:
        _run(f, "snd")
        # The sender's batch call hangs on the frozen node until the node turns down (10
        # heartbeats) and its socket is dropped under the call.
        wait_for(lambda: any(m["name"] == "rcv" and m["state"] == "down"
                             for m in f["snd"].flock_api.members()), 10, what="rcv down")
        wait_for(lambda: f["snd"].flock_api.outbox(None, 100)[0]["attempts"] >= 2, 15,
                 what="a retry after the receiver went down")
        assert snd.proc.poll() is None, snd.output()
        assert "crashed" not in snd.output(), snd.output()
    finally:
        rcv.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: len(_lines(out)) >= 40 and _quiet(f, "snd"), 30, what="all delivered")
    assert len(_lines(out)) == 40 and len(set(_lines(out))) == 40
    assert snd.proc.poll() is None


def test_a_crashing_loop_is_restarted_and_shown():
    import asyncio

    from flock_node.supervisor import Supervisor

    async def main():
        sup = Supervisor()
        runs = []

        async def flaky():
            runs.append(1)
            if len(runs) < 3:
                raise RuntimeError(f"boom {len(runs)}")
            await asyncio.sleep(3600)

        sup.spawn("delivery", flaky)
        for _ in range(200):
            if len(runs) >= 3:
                break
            await asyncio.sleep(0.02)
        report = sup.report()
        for t in sup.all():
            t.cancel()
        return runs, report

    runs, report = asyncio.run(main())
    assert len(runs) == 3
    assert report == [{"loop": "delivery", "crashes": 2, "last_error": "RuntimeError: boom 2",
                       "last_at": report[0]["last_at"], "running": True}]


# -- items 2 and 3: recovery before serving; not ready while the recipe compiles ----------------
SLOW_SINK = """
    import time
    time.sleep(3)  # a slow compile: notifications land while it runs
    from flock_node.dsl import execute
    execute("hit", command='echo "$FLOCK_NOTIFICATION" >> {out}', action="nothing")
"""


@pytest.mark.parametrize("fresh", [True, False], ids=["first-start", "restart"])
def test_notifications_landing_during_the_start_compile_apply_once(flock_env, fresh):
    env = flock_env
    out = env.root / "hits"
    if not fresh:  # the receiver has a store already: a restart
        _start(env, "rcv", SINK.format(out=out))
        env.nodes["rcv"].stop()
    snd = _start(env, "snd", FAN.format(n=5))
    f = env.flock()
    _run(f, "snd")
    wait_for(lambda: all(r["attempts"] >= 1 for r in f["snd"].flock_api.outbox(None, 100)), 10)
    _start(env, "rcv", SLOW_SINK.format(out=out), wait=False)
    wait_for(lambda: len(_lines(out)) >= 5 and _quiet(f, "snd"), 40, what="all applied")
    rows = f["snd"].flock_api.outbox(None, 100)
    assert {r["status"] for r in rows} == {"delivered"}, rows
    assert sorted(_lines(out)) == sorted(r["id"] for r in rows)
    # While it compiled, the receiver said "not ready" (retryable), never a final refusal.
    assert snd.proc.poll() is None


# -- a reaction cut by kill -9 runs again, and its commands know it -----------------------------
def test_a_reaction_cut_by_kill9_runs_again_as_attempt_2(flock_env):
    env = flock_env
    out = env.root / "attempts"
    body = f"""
        from flock_node.dsl import execute
        execute("hit", action="nothing",
                command='echo "$FLOCK_ATTEMPT $FLOCK_NOTIFICATION" >> {out}; sleep 1000')
    """
    rcv = _start(env, "rcv", body)
    f = env.flock()
    f.call("rcv", "resource_manager", "notify",
           {"resource": "execute[hit]", "action": "run", "id": "n-cut"})
    wait_for(lambda: _lines(out), 10, what="the first attempt to start")
    rcv.kill9()
    _start(env, "rcv", body.replace("sleep 1000", "true"))
    wait_for(lambda: len(_lines(out)) >= 2 and _quiet(f, "rcv"), 15, what="the second attempt")
    assert _lines(out) == ["1 n-cut", "2 n-cut"]
    runs = [h for h in f["rcv"].flock_api.history(10) if h["kind"] == "reaction"]
    assert [r["status"] for r in runs] == ["ok", "failed"]  # newest first: the cut one failed
    assert runs[0]["cause"]["attempt"] == 2


# -- item 8: a full disk on the receiver is retryable ------------------------------------------
def test_a_full_disk_on_the_receiver_loses_nothing(flock_env, tmp_path):
    import os
    import subprocess

    env = flock_env
    out = env.root / "hits"
    disk = tmp_path / "disk"
    disk.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
                       capture_output=True, text=True)
    assert r.returncode == 0, f"this test needs root to mount a small tmpfs: {r.stderr}"
    try:
        _start(env, "rcv", SINK.format(out=out), "--state-dir", str(disk / "rcv"))
        _start(env, "snd", FAN.format(n=5))
        f = env.flock()
        wait_for(lambda: _knows(f, "snd", "rcv"), 5)
        filler = disk / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)
        _run(f, "snd")
        wait_for(lambda: any("disk" in (r["last_error"] or "")
                             for r in f["snd"].flock_api.outbox(None, 100)), 15,
                 what="the receiver to refuse for a full disk")
        rows = f["snd"].flock_api.outbox(None, 100)
        assert {r["status"] for r in rows} == {"pending"}, rows  # retried, not failed
        os.unlink(filler)
        wait_for(lambda: len(_lines(out)) >= 5 and _quiet(f, "snd"), 30, what="all applied")
        assert len(_lines(out)) == 5 and len(set(_lines(out))) == 5
        assert env.nodes["rcv"].proc.poll() is None
    finally:
        for n in env.nodes.values():
            n.stop()
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_retry_resends_refused_notifications(tmp_path, store):
    from flock_node.store import OutboxItem

    store.outbox.enqueue([OutboxItem("b", "execute[x]", "run", id="n-1"),
                   OutboxItem("b", "execute[y]", "run", id="n-2")], "r-1")
    store.outbox.settle([], [("n-1", "unknown_resource: b has no resource execute[x]")])
    assert store.outbox.retry_many(["n-2"], "unreachable", 1e12) == {"n-2"}  # past its deadline
    assert {r.status for r in store.outbox.rows()} == {"failed", "dead"}
    assert sorted(store.outbox.revive(None)) == ["n-1", "n-2"]
    assert {r.status for r in store.outbox.rows()} == {"pending"}


# -- item 10: a rolling restart does not lose tag and glob notifications -------------------------
def test_tag_and_glob_targets_reach_members_that_are_restarting(flock_env):
    env = flock_env
    out = env.root / "hits"
    _start(env, "gamma", SINK.format(out=out), "--tag", "web")
    _start(env, "src", f"""
        from flock_node.dsl import file
        file("{env.root}/t", action="touch") \\
            .remote_notifies("run", "execute[hit]", tag="web") \\
            .remote_notifies("run", "execute[hit]", node="gam*") \\
            .remote_notifies("run", "execute[hit]", node="nobody-*")
    """)
    f = env.flock()
    wait_for(lambda: _knows(f, "src", "gamma"), 5)
    env.nodes["gamma"].stop()  # announced: left
    wait_for(lambda: any(m["name"] == "gamma" and m["state"] == "left"
                         for m in f["src"].flock_api.members()), 5)
    run = _run(f, "src")
    sent = {(n["target"], n["status"]) for n in run["notifications"]}
    assert ("gamma", "pending") in sent
    assert ("node=nobody-*", "unmatched") in sent
    _start(env, "gamma", SINK.format(out=out), "--tag", "web")
    wait_for(lambda: len(_lines(out)) >= 2 and _quiet(f, "src"), 20, what="both applied")
    assert len(_lines(out)) == 2
    h = env.cli("history", "src", "--limit", "1")
    assert "node=nobody-*" in h.stdout and "no node matched" in h.stdout, h.stdout


# -- item 11: the recipe is the truth for the subscriptions it declares --------------------------
def test_a_recipe_subscription_removed_by_hand_comes_back_at_the_next_converge(flock_env):
    env = flock_env
    out = env.root / "hits"
    _start(env, "pub", f"""
        from flock_node.dsl import file
        file("{env.root}/p", action="touch")
    """)
    _start(env, "sub", f"""
        from flock_node.dsl import execute
        execute("hit", command="echo hit >> {out}", action="nothing") \\
            .remote_subscribes("run", "file[{env.root}/p]", node="pub")
    """)
    f = env.flock()
    _run(f, "sub")
    wait_for(lambda: f["pub"].resource_manager.subscriptions()["incoming"], 10)
    sid = f["sub"].resource_manager.subscriptions()["outgoing"][0]["id"]
    r = env.cli("unsubscribe", "sub", sid)
    assert r.returncode == 0 and "next converge registers it again" in r.stdout, r.stdout
    wait_for(lambda: not f["pub"].resource_manager.subscriptions()["incoming"], 10)
    _run(f, "sub")
    wait_for(lambda: f["pub"].resource_manager.subscriptions()["incoming"], 10,
             what="the recipe's subscription to be registered again")


# -- item 14: TTLs measure elapsed time, not the wall clock -------------------------------------
def test_a_clock_jump_moves_pending_deadlines_with_it(store):
    from flock_node.delivery import clock_jump
    from flock_node.store import OutboxItem

    assert clock_jump((1000.0, 50.0), (1001.0, 51.0)) is None
    assert clock_jump((1000.0, 50.0), (1000.0 + 86_400 + 1, 51.0)) == pytest.approx(86_400)
    assert clock_jump((1000.0, 50.0), (900.0, 51.0)) == pytest.approx(-101)
    store.outbox.enqueue([OutboxItem("b", "execute[x]", "run", id="n-1")], "r-1")
    before = store.outbox.rows()[0]
    assert store.outbox.shift_times(86_400) == 1
    after = store.outbox.rows()[0]
    assert after.deadline == pytest.approx(before.deadline + 86_400)
    # A day later by the wall clock, but no time passed: not dead yet.
    assert store.outbox.retry_many(["n-1"], "unreachable", before.deadline + 10) == set()


def test_a_backlog_is_batched_by_size_as_well_as_count():
    from flock_node.delivery import BATCH_BYTES, DELIVERY_BATCH, batch

    small = [{"id": f"n-{i}", "cause": {}} for i in range(300)]
    assert len(batch(small, dict)) == DELIVERY_BATCH
    big = [{"id": f"n-{i}", "cause": {"x": "y" * 100_000}} for i in range(10)]
    chunk = batch(big, dict)
    assert 1 <= len(chunk) < 10 and len(chunk) * 100_000 <= BATCH_BYTES
    huge = [{"id": "n-0", "cause": {"x": "y" * 2_000_000}}, *small[:3]]
    assert batch(huge, dict) == huge[:1]  # alone: it fails alone (too_large, final)


def test_the_console_model_takes_a_restarted_node_whatever_its_incarnation():
    from flock_node.protocol import Heartbeat
    from flock_tui.model import merge_heartbeat

    members: dict = {}
    hb = dict(node="b", seq=1, bus="ipc:///x/b.bus", rpc="ipc:///x/b.rpc")
    merge_heartbeat(members, Heartbeat(incarnation=1_700_000_000_000, instance="i1", **hb))
    members["b"]["state"] = "left"
    # Restarted with its state wiped and the clock set back: a lower incarnation, new process.
    merge_heartbeat(members, Heartbeat(incarnation=5, instance="i2", **hb))
    assert members["b"]["state"] == "alive" and members["b"]["instance"] == "i2"
    # A late heartbeat of the old process does not bring it back over the new one.
    merge_heartbeat(members, Heartbeat(incarnation=4, instance="i1", active=True, **hb))
    assert members["b"]["instance"] == "i2" and not members["b"]["active"]


def test_the_node_screen_names_a_crashed_loop():
    from flock_tui.screens import problems_text

    assert problems_text({"loop_failures": [], "ready": True}) == ""
    text = problems_text({"loop_failures": [{"loop": "delivery", "crashes": 3,
                                             "last_error": "OperationalError: disk I/O error"}]})
    assert text == "⚠ delivery loop crashed 3x: OperationalError: disk I/O error"


def test_outbox_discard_forgets_dead_and_refused_notifications_only(flock_env):
    env = flock_env
    _start(env, "snd", f"""
        from flock_node.dsl import file
        file("{env.root}/d", action="touch") \\
            .remote_notifies("run", "execute[x]", node="nowhere") \\
            .remote_notifies("run", "execute[y]", node="nowhere2")
    """, "--ttl", "0.5")
    f = env.flock()
    _run(f, "snd")
    wait_for(lambda: f["snd"].flock_api.status()["dead_letters"] == 2, 15, what="dead letters")
    one = f["snd"].flock_api.outbox("dead", 10)[0]["id"]
    r = env.cli("outbox", "discard", "snd", one)
    assert r.returncode == 0 and "1 notification discarded" in r.stdout, r.stdout + r.stderr
    assert f["snd"].flock_api.status()["dead_letters"] == 1
    again = env.cli("outbox", "discard", "snd", one)
    assert again.returncode == 1 and "neither dead-lettered nor refused" in again.stderr
    r = env.cli("--json", "outbox", "discard", "snd", "--dead")
    assert r.returncode == 0 and len(__import__("json").loads(r.stdout)["discarded"]) == 1
    assert f["snd"].flock_api.status()["dead_letters"] == 0
    usage = env.cli("outbox", "discard", "snd")
    assert usage.returncode == 2, usage.stderr
    assert env.cli("outbox", "snd").returncode == 0  # listing still works
