"""Remote primitives between real agent processes: remote_notifies, remote_subscribes,
wait_until / wait_while, and durable exactly-once delivery (SPEC "Delivery semantics").

Every node is a real `flock-node` subprocess on ipc:// in a private runtime dir; every wait
polls a condition with a deadline.
"""

from __future__ import annotations

import json
import sqlite3
import textwrap
import time
from pathlib import Path

import pytest
from conftest import FlockEnv, wait_for, write_recipe

from flock_node.client import Flock
from flock_node.transport import RpcError

HB = 0.2  # short heartbeats: discovery and liveness in a fraction of a second


# -- helpers ---------------------------------------------------------------------------------
def recipe(env: FlockEnv, name: str, text: str) -> Path:
    return write_recipe(env.root / f"{name}.py", textwrap.dedent(text))


def start(env: FlockEnv, name: str, text: str | None = None, *args: str, **kw):
    recipes = [recipe(env, name, text)] if text is not None else []
    return env.start(name, *args, recipes=recipes, heartbeat=HB, **kw)


def lines(p: Path) -> list[str]:
    return p.read_text().splitlines() if p.exists() else []


def finished(f: Flock, node: str, run_id: str) -> dict | None:
    r = f[node].flock_api.run(run_id)
    return r if r and r["status"] != "running" else None


def converge(f: Flock, node: str, timeout: float = 30.0) -> dict:
    """run_chef and wait for that run to end; returns its record."""
    rid = f[node].flock_api.run_chef()["run_id"]
    return wait_for(lambda: finished(f, node, rid), timeout, what=f"converge {rid} on {node}")


def knows(f: Flock, node: str, *others: str) -> bool:
    alive = {m["name"] for m in f[node].flock_api.members() if m["state"] == "alive"}
    return set(others) <= alive


def reactions(f: Flock, node: str, limit: int = 200) -> list[dict]:
    return [h for h in f[node].flock_api.history(limit) if h["kind"] == "reaction"]


def outbox(f: Flock, node: str, status: str | None = None, limit: int = 10_000) -> list[dict]:
    return f[node].flock_api.outbox(status, limit)


def inbox_ids(node) -> list[tuple[str, str]]:
    """(id, status) of every notification in a node's inbox, read from its SQLite file."""
    db = sqlite3.connect(f"file:{node.state_dir / 'flock.db'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT id, status FROM inbox").fetchall()
    finally:
        db.close()


def quiet(f: Flock, node: str) -> bool:
    st = f[node].flock_api.status()
    return not st["active"] and not st["queued"] and st["pending"] == 0


HIT = """
    from flock_node.dsl import execute
    execute("hit", command="echo hit >> {out}", action="nothing")
"""


# -- remote_notifies -------------------------------------------------------------------------
@pytest.mark.parametrize("membership", ["mesh", "swim"])
def test_remote_notifies_runs_the_action_on_the_target_exactly_once(flock_env, membership):
    env = flock_env
    env.env["FLOCK_MEMBERSHIP"] = membership
    out = env.root / "humans"
    start(env, "b1", HIT.format(out=out))
    start(env, "b0", f"""
        from flock_node.dsl import file, execute
        fubar = file("{env.root}/fubar", content="foobar")
        fubar.remote_notifies("run", "execute[hit]", node="b1")
    """)
    f = env.flock()
    run = converge(f, "b0")
    assert run["status"] == "ok" and run["updated"] == 1
    wait_for(lambda: len(lines(out)) == 1, 10, what="b1 to run execute[hit]")
    wait_for(lambda: quiet(f, "b0") and quiet(f, "b1"), 10, what="both quiet")
    [row] = outbox(f, "b0")
    assert row["status"] == "delivered" and row["target"] == "b1"
    # Causality: b1's reaction says who caused it.
    [r] = reactions(f, "b1")
    assert r["status"] == "ok"
    assert r["cause"]["node"] == "b0" and r["cause"]["run"] == run["id"]
    assert r["cause"]["resource"] == f"file[{env.root}/fubar]"
    assert r["cause"]["notification"] == row["id"]
    assert [x["resource"] for x in r["resources"]] == ["execute[hit]"]
    # The file is now up to date: a second converge updates nothing and notifies nobody.
    run2 = converge(f, "b0")
    assert run2["status"] == "ok" and run2["updated"] == 0
    wait_for(lambda: quiet(f, "b0"), 5)
    assert len(outbox(f, "b0")) == 1 and len(lines(out)) == 1
    # `flockctl history` shows the chain.
    cli = env.cli("history", "b1")
    assert cli.returncode == 0, cli.stderr
    assert f"caused by b0:file[{env.root}/fubar]" in cli.stdout and row["id"] in cli.stdout


@pytest.mark.parametrize("membership", ["mesh", "swim"])
def test_remote_notifies_tag_and_glob_targets(flock_env, membership):
    env = flock_env
    env.env["FLOCK_MEMBERSHIP"] = membership
    outs = {n: env.root / f"out-{n}" for n in ("web-1", "web-2", "db-1", "other")}
    for n in ("web-1", "web-2", "other"):
        start(env, n, HIT.format(out=outs[n]))
    start(env, "db-1", HIT.format(out=outs["db-1"]), "--tag", "database")
    start(env, "src", f"""
        from flock_node.dsl import file
        file("{env.root}/a", content="1").remote_notifies("run", "execute[hit]", node="web-*")
        file("{env.root}/b", content="1").remote_notifies("run", "execute[hit]", tag="database")
    """)
    f = env.flock()
    wait_for(lambda: knows(f, "src", "web-1", "web-2", "db-1", "other"), 10,
             what="src to know the flock")
    assert converge(f, "src")["status"] == "ok"
    wait_for(lambda: all(len(lines(outs[n])) == 1 for n in ("web-1", "web-2", "db-1")), 10,
             what="web-1, web-2 and db-1 to react")
    wait_for(lambda: quiet(f, "src"), 10)
    assert sorted(r["target"] for r in outbox(f, "src")) == ["db-1", "web-1", "web-2"]
    assert not outs["other"].exists()


def test_delayed_remote_notifications_are_deduplicated_and_sent_at_the_end(flock_env):
    env = flock_env
    out = env.root / "hits"
    start(env, "rcv", HIT.format(out=out))
    start(env, "snd", f"""
        from flock_node.dsl import file, execute
        for i in range(3):
            file(f"{env.root}/d{{i}}", content="x").remote_notifies(
                "run", "execute[hit]", node="rcv", timing="delayed")
        execute("slow", command="sleep 0.6")
    """)
    f = env.flock()
    run = converge(f, "snd")
    assert run["status"] == "ok" and run["updated"] == 4
    wait_for(lambda: len(lines(out)) >= 1, 10, what="rcv to react")
    wait_for(lambda: quiet(f, "snd") and quiet(f, "rcv"), 10)
    assert len(lines(out)) == 1
    [row] = outbox(f, "snd")
    assert row["status"] == "delivered"
    [r] = reactions(f, "rcv")
    assert r["started"] >= run["finished"] - 0.01  # released when the converge ended


# -- remote_subscribes -----------------------------------------------------------------------
SUBSCRIBER = """
    from flock_node.dsl import execute
    e = execute("react", command="echo r >> {out}", action="nothing")
    {decl}
"""
DECL = 'e.remote_subscribes("run", "file[{path}]", node="pub")'


def incoming(f: Flock, node: str) -> list[dict]:
    return f[node].resource_manager.subscriptions()["incoming"]


def test_remote_subscribes_registers_reacts_and_is_dropped_with_the_declaration(flock_env):
    env = flock_env
    out, path = env.root / "reacted", env.root / "schema.sql"
    start(env, "pub", f"""
        from flock_node.dsl import file
        file("{path}", content="v1")
    """)
    sub = start(env, "sub", SUBSCRIBER.format(out=out, decl=DECL.format(path=path)))
    f = env.flock()
    # Registered on compile, without a converge.
    [s] = wait_for(lambda: incoming(f, "pub"), 10, what="the subscription on pub")
    assert (s["subscriber"], s["subscriber_resource"], s["action"]) == (
        "sub", "execute[react]", "run")
    [w] = f["sub"].resource_manager.subscriptions()["outgoing"]
    assert w["state"] == "registered" and w["id"] == s["id"]
    # Idempotent across converges.
    assert converge(f, "sub")["status"] == "ok"
    assert len(incoming(f, "pub")) == 1
    # pub's update runs sub's action, once.
    assert converge(f, "pub")["updated"] == 1
    wait_for(lambda: len(lines(out)) == 1, 10, what="sub to react")
    [r] = reactions(f, "sub")
    assert r["cause"]["subscription"] == s["id"] and r["cause"]["node"] == "pub"
    # Drop the declaration: the next converge removes it on pub too.
    recipe(env, "sub", SUBSCRIBER.format(out=out, decl=""))
    assert converge(f, "sub")["status"] == "ok"
    wait_for(lambda: incoming(f, "pub") == [], 10, what="pub to drop the subscription")
    assert f["sub"].resource_manager.subscriptions()["outgoing"] == []
    recipe(env, "pub", f"""
        from flock_node.dsl import file
        file("{path}", content="v2")
    """)
    assert converge(f, "pub")["updated"] == 1
    wait_for(lambda: quiet(f, "pub") and quiet(f, "sub"), 10)
    assert len(lines(out)) == 1
    assert sub.proc.poll() is None


@pytest.mark.parametrize("membership", ["mesh", "swim"])
def test_remote_subscription_is_registered_when_the_remote_node_comes_later(flock_env, membership):
    env = flock_env
    env.env["FLOCK_MEMBERSHIP"] = membership
    out, path = env.root / "reacted", env.root / "schema.sql"
    start(env, "sub", SUBSCRIBER.format(out=out, decl=DECL.format(path=path)))
    f = env.flock()
    [w] = f["sub"].resource_manager.subscriptions()["outgoing"]
    assert w["state"] != "registered"
    start(env, "pub", f"""
        from flock_node.dsl import file
        file("{path}", content="v1")
    """)
    f = env.flock()
    wait_for(lambda: incoming(f, "pub"), 15, what="the subscription to reach pub")
    wait_for(lambda: f["sub"].resource_manager.subscriptions()["outgoing"][0]["state"]
             == "registered", 5)
    converge(f, "pub")
    wait_for(lambda: len(lines(out)) == 1, 10, what="sub to react")


# -- wait_until / wait_while -----------------------------------------------------------------
SLOW = """
    from flock_node.dsl import execute
    execute("migrate", command="sleep 1.5; date +%s.%N > {out}")
"""


def test_wait_until_another_node_is_idle(flock_env):
    env = flock_env
    mig, gated = env.root / "migrated", env.root / "gated"
    start(env, "db", SLOW.format(out=mig))
    start(env, "web", f"""
        from flock_node.dsl import file, flock
        file("{gated}", content="x").wait_until(
            lambda: not flock["db"].flock_api.active(), interval=0.1, timeout=30)
    """)
    f = env.flock()
    db_run = f["db"].flock_api.run_chef()["run_id"]
    wait_for(lambda: f["db"].flock_api.active(), 5, what="db to converge")
    web_run = f["web"].flock_api.run_chef()["run_id"]
    # web waits, and says it is active while it waits.
    wait_for(lambda: f["web"].flock_api.status()["current_run"] is not None, 5)
    assert f["db"].flock_api.active() and f["web"].flock_api.active()
    assert not gated.exists()
    db = wait_for(lambda: finished(f, "db", db_run), 10)
    web = wait_for(lambda: finished(f, "web", web_run), 10)
    assert db["status"] == "ok" and web["status"] == "ok", web
    assert gated.exists() and mig.exists()
    assert gated.stat().st_mtime >= float(mig.read_text()) - 0.05
    assert web["finished"] >= db["finished"]


def test_wait_while_another_node_converges(flock_env):
    env = flock_env
    mig, done = env.root / "migrated", env.root / "done"
    start(env, "db", SLOW.format(out=mig))
    start(env, "web", f"""
        from flock_node.dsl import execute, flock
        execute("warm", command="date +%s.%N > {done}").wait_while(
            lambda: flock["db"].flock_api.active(), interval=0.1, timeout=30)
    """)
    f = env.flock()
    db_run = f["db"].flock_api.run_chef()["run_id"]
    wait_for(lambda: f["db"].flock_api.active(), 5)
    web = converge(f, "web")
    db = wait_for(lambda: finished(f, "db", db_run), 10)
    assert web["status"] == "ok" and db["status"] == "ok"
    assert float(done.read_text()) >= float(mig.read_text())


def test_wait_timeout_fails_naming_the_condition_and_the_last_error(flock_env):
    env = flock_env
    start(env, "web", f"""
        from flock_node.dsl import file, flock
        file("{env.root}/never", content="x").wait_until(
            lambda: not flock["ghost"].flock_api.active(), interval=0.1, timeout=1)
    """)
    f = env.flock()
    run = converge(f, "web")
    assert run["status"] == "failed"
    assert "wait_until" in run["error"] and "timed out" in run["error"]
    assert "last error" in run["error"] and "ghost" in run["error"]
    assert not (env.root / "never").exists()
    assert f["web"].flock_api.status()["active"] is False


def test_unreachable_node_in_a_wait_counts_as_not_yet(flock_env):
    env = flock_env
    gated = env.root / "gated"
    start(env, "web", f"""
        from flock_node.dsl import file, flock
        file("{gated}", content="x").wait_until(
            lambda: flock["late"].flock_api.status()["name"] == "late", interval=0.1, timeout=30)
    """)
    f = env.flock()
    rid = f["web"].flock_api.run_chef()["run_id"]
    wait_for(lambda: f["web"].flock_api.active(), 5)
    time_waiting = time.monotonic()
    wait_for(lambda: time.monotonic() - time_waiting > 0.5, 2)  # several failed polls
    assert f["web"].flock_api.active() and not gated.exists()
    start(env, "late")
    run = wait_for(lambda: finished(f, "web", rid), 15, what="web's wait to end")
    assert run["status"] == "ok", run
    assert gated.exists()


# -- durable delivery ------------------------------------------------------------------------
@pytest.mark.parametrize("membership", ["mesh", "swim"])
def test_notification_to_a_down_node_arrives_once_when_it_comes_back(flock_env, membership):
    env = flock_env
    env.env["FLOCK_MEMBERSHIP"] = membership
    out = env.root / "hits"
    start(env, "rcv", HIT.format(out=out))
    start(env, "snd", f"""
        from flock_node.dsl import file
        file("{env.root}/x", content="x").remote_notifies("run", "execute[hit]", node="rcv")
    """)
    f = env.flock()
    wait_for(lambda: knows(f, "snd", "rcv"), 5)
    env.nodes["rcv"].stop()
    assert converge(f, "snd")["updated"] == 1
    wait_for(lambda: outbox(f, "snd")[0]["attempts"] >= 2, 10, what="retries while rcv is down")
    assert f["snd"].flock_api.status()["pending"] == 1
    assert not out.exists()
    start(env, "rcv", HIT.format(out=out))
    wait_for(lambda: len(lines(out)) == 1, 15, what="the notification to arrive")
    wait_for(lambda: quiet(f, "snd") and quiet(f, "rcv"), 10)
    assert outbox(f, "snd")[0]["status"] == "delivered"
    assert len(lines(out)) == 1 and len(reactions(f, "rcv")) == 1


def test_notification_arriving_during_a_converge_runs_after_it(flock_env):
    env = flock_env
    out = env.root / "hits"
    start(env, "rcv", f"""
        from flock_node.dsl import execute
        execute("slow", command="sleep 1")
        execute("hit", command="echo hit >> {out}", action="nothing")
    """)
    f = env.flock()
    rid = f["rcv"].flock_api.run_chef()["run_id"]
    wait_for(lambda: f["rcv"].flock_api.active(), 5)
    r = f["rcv"].resource_manager.notify("execute[hit]", "run", id="n-during", sender="t")
    assert r["accepted"] and not r["duplicate"]
    assert not out.exists()
    conv = wait_for(lambda: finished(f, "rcv", rid), 10)
    wait_for(lambda: len(lines(out)) == 1, 10)
    [re] = reactions(f, "rcv")
    assert re["started"] >= conv["finished"]
    assert re["cause"]["notification"] == "n-during"
    # The same id again is a duplicate: no second run.
    assert f["rcv"].resource_manager.notify("execute[hit]", "run", id="n-during",
                                                sender="t")["duplicate"]
    wait_for(lambda: quiet(f, "rcv"), 5)
    assert len(lines(out)) == 1


@pytest.mark.parametrize("target, code", [
    ("execute[nope]", "unknown_resource"),
    ("execute[hit]#dance", "unknown_action"),
])
def test_unknown_resource_or_action_fails_at_the_sender_without_retry(flock_env, target, code):
    env = flock_env
    res, _, action = target.partition("#")
    start(env, "rcv", HIT.format(out=env.root / "hits"))
    start(env, "snd", f"""
        from flock_node.dsl import file
        file("{env.root}/x", content="x").remote_notifies("{action or 'run'}", "{res}",
                                                         node="rcv")
    """)
    f = env.flock()
    wait_for(lambda: knows(f, "snd", "rcv"), 5)
    converge(f, "snd")
    [row] = wait_for(lambda: outbox(f, "snd", "failed"), 10, what="the refusal")
    assert row["last_error"].startswith(code)
    assert row["attempts"] == 1
    st = f["snd"].flock_api.status()
    assert st["failed_notifications"] == 1 and st["pending"] == 0
    # No retry loop: still one attempt a while later.
    t0 = time.monotonic()
    wait_for(lambda: time.monotonic() - t0 > 1.0, 2)
    assert outbox(f, "snd")[0]["attempts"] == 1
    assert reactions(f, "rcv") == []
    # The refusal is recorded in the sender's history, on the run that sent it.
    [run] = [h for h in f["snd"].flock_api.history(5) if h["kind"] == "converge"]
    [sent] = run["notifications"]
    assert sent["status"] == "failed" and sent["error"].startswith(code)
    shown = env.cli("history", "snd")
    assert f"→ rcv {res}" in shown.stdout and "failed" in shown.stdout, shown.stdout


def test_ping_pong_stops_at_the_hop_limit(flock_env):
    env = flock_env
    out = env.root / "balls"
    for me, other, verb in (("ping", "pong", "ping"), ("pong", "ping", "pong")):
        start(env, me, f"""
            from flock_node.dsl import execute
            execute("{verb}", command="echo {verb} >> {out}", action="nothing"
                    ).remote_notifies("run", "execute[{'pong' if verb == 'ping' else 'ping'}]",
                                      node="{other}")
        """)
    f = env.flock()
    wait_for(lambda: knows(f, "ping", "pong") and knows(f, "pong", "ping"), 5)
    f["ping"].resource_manager.notify("execute[ping]", "run", sender="t")
    failed = wait_for(lambda: outbox(f, "ping", "failed") + outbox(f, "pong", "failed"), 20,
                      what="the hop limit")
    assert len(failed) == 1 and failed[0]["last_error"].startswith("hop_limit")
    assert failed[0]["hops"] == 17
    wait_for(lambda: quiet(f, "ping") and quiet(f, "pong"), 5)
    assert len(lines(out)) == 16
    assert lines(out)[:4] == ["ping", "pong", "ping", "pong"]


def test_ttl_dead_letters_a_notification_to_a_node_that_never_comes(flock_env):
    env = flock_env
    start(env, "snd", f"""
        from flock_node.dsl import file
        file("{env.root}/x", content="x").remote_notifies("run", "execute[hit]", node="nobody")
    """, "--ttl", "1.5")
    f = env.flock()
    converge(f, "snd")
    assert f["snd"].flock_api.status()["pending"] == 1
    wait_for(lambda: f["snd"].flock_api.status()["dead_letters"] == 1, 10, what="dead letter")
    st = f["snd"].flock_api.status()
    assert st["pending"] == 0
    [row] = outbox(f, "snd", "dead")
    assert row["target"] == "nobody" and "nobody" in row["last_error"]
    cli = env.cli("status", "snd")
    assert cli.returncode == 0 and "1 dead-lettered" in cli.stdout, cli.stdout
    cli = env.cli("--json", "status", "snd")
    assert json.loads(cli.stdout)["dead_letters"] == 1
    listed = env.cli("outbox", "snd", "--status", "dead")
    assert listed.returncode == 0 and row["id"] in listed.stdout and "dead" in listed.stdout
    # The node shows up at last: the operator sends the dead letter again, and it lands once.
    out = env.root / "hits"
    start(env, "nobody", HIT.format(out=out))
    wait_for(lambda: knows(f, "snd", "nobody"), 10)
    again = env.cli("retry", "snd")
    assert again.returncode == 0, again.stderr
    assert "1 dead-lettered or refused notification sent again" in again.stdout
    wait_for(lambda: lines(out) == ["hit"] and quiet(f, "snd"), 10, what="the retried delivery")
    assert outbox(f, "snd")[0]["status"] == "delivered"
    assert f["snd"].flock_api.status()["dead_letters"] == 0
    nothing = env.cli("retry", "snd", row["id"])
    assert nothing.returncode == 1 and "neither dead-lettered nor refused" in nothing.stderr


# -- the CLI against real agents ---------------------------------------------------------------
def test_cli_resources_notify_subscribe_unsubscribe(flock_env):
    env = flock_env
    out, path = env.root / "hits", env.root / "schema.sql"
    start(env, "pub", f"""
        from flock_node.dsl import file
        file("{path}", content="v1")
    """)
    start(env, "sub", HIT.format(out=out))
    f = env.flock()
    cli = env.cli("resources", "sub")
    assert cli.returncode == 0 and "execute[hit]" in cli.stdout
    rs = json.loads(env.cli("--json", "resources", "sub").stdout)
    assert [r["id"] for r in rs] == ["execute[hit]"] and "run" in rs[0]["actions"]
    # notify, text and json
    cli = env.cli("notify", "sub", "execute[hit]", "run")
    assert cli.returncode == 0 and "queued" in cli.stdout, cli.stderr
    r = json.loads(env.cli("--json", "notify", "sub", "execute[hit]", "run").stdout)
    assert r["accepted"] and r["id"]
    wait_for(lambda: len(lines(out)) == 2, 10)
    cli = env.cli("notify", "sub", "execute[nope]", "run")
    assert cli.returncode != 0 and "unknown_resource" in (cli.stdout + cli.stderr)
    # subscribe by hand
    cli = env.cli("subscribe", "sub", "execute[hit]", "run", "--to", "pub", f"file[{path}]")
    assert cli.returncode == 0 and "registered" in cli.stdout, cli.stdout + cli.stderr
    [s] = incoming(f, "pub")
    subs = json.loads(env.cli("--json", "subscriptions", "sub").stdout)
    assert subs["outgoing"][0]["id"] == s["id"] and subs["outgoing"][0]["origin"] == "manual"
    assert s["id"] in env.cli("subscriptions").stdout
    # persisted on both nodes: survives a restart of both
    env.nodes["pub"].stop()
    env.nodes["sub"].stop()
    env.restart("pub", recipes=[env.root / "pub.py"], heartbeat=HB)
    env.restart("sub", recipes=[env.root / "sub.py"], heartbeat=HB)
    f = env.flock()
    assert [x["id"] for x in incoming(f, "pub")] == [s["id"]]
    assert f["sub"].resource_manager.subscriptions()["outgoing"][0]["state"] == "registered"
    path.unlink(missing_ok=True)
    assert converge(f, "pub")["updated"] == 1
    wait_for(lambda: len(lines(out)) == 3, 10, what="the manual subscription to fire")
    # unsubscribe (json), both sides forget it
    r = json.loads(env.cli("--json", "unsubscribe", "sub", s["id"]).stdout)
    assert r["removed"] == "outgoing" and r["remote_done"]
    assert incoming(f, "pub") == []
    assert f["sub"].resource_manager.subscriptions()["outgoing"] == []
    cli = env.cli("unsubscribe", "sub", s["id"])
    assert cli.returncode != 0


def test_a_subscription_to_a_node_never_reached_is_removed_at_once(flock_env):
    """Unsubscribing one that waits for a publisher never known (nothing was ever sent to it)
    needs no call: it used to stay `removing` for good, retried every few seconds."""
    env = flock_env
    start(env, "sub", """
        from flock_node.dsl import execute
        execute("hit", command="true", action="nothing")
    """)
    f = env.flock()
    r = f["sub"].resource_manager.subscribe_to("execute[hit]", "run", "ghost", "execute[x]")
    assert r["state"] == "pending"
    out = f["sub"].resource_manager.unsubscribe(r["id"])
    assert out["removed"] == "outgoing" and out["remote_done"]
    assert f["sub"].resource_manager.subscriptions()["outgoing"] == []


def test_bad_arguments_and_unknown_resources_answer_once_and_briefly(flock_env):
    """The method is named once (it read `history: history: limit: ...`), and a resource
    name a megabyte long is not echoed back whole."""
    env = flock_env
    start(env, "n")
    f = env.flock()
    with pytest.raises(RpcError) as e:
        f["n"].flock_api.history(limit=-1)
    assert e.value.code == "bad_request"
    assert e.value.message.startswith("history: limit: expected `int` >= 0"), e.value.message
    with pytest.raises(RpcError) as e:
        f["n"].resource_manager.notify("execute[" + "x" * 100_000 + "]", "run", sender="t")
    assert e.value.code == "unknown_resource" and len(e.value.message) < 1000


def test_an_id_another_sender_used_is_refused_not_taken_for_a_duplicate(flock_env):
    """De-duplication is per sender: a node that used (or guessed: derived ids are uuid5 of
    known fields) another node's notification id first must not make the real one answer
    "duplicate" and never run. The real sender is refused, for good, naming the holder."""
    env = flock_env
    out = env.root / "hits"
    start(env, "rcv", f"""
        from flock_node.dsl import execute
        execute("hit", command="echo $FLOCK_SENDER >> {out}", action="nothing")
    """)
    f = env.flock()
    rm = f["rcv"].resource_manager
    assert rm.notify("execute[hit]", "run", id="victim-7", sender="tm")["duplicate"] is False
    with pytest.raises(RpcError) as e:
        rm.notify("execute[hit]", "run", id="victim-7", sender="tb")
    assert e.value.code == "bad_request" and "already received from tm" in e.value.message
    batch = rm.notify_batch([{"id": "victim-7", "resource": "execute[hit]", "action": "run",
                              "sender": "tb"}])
    assert batch[0]["error"]["code"] == "bad_request"
    again = rm.notify("execute[hit]", "run", id="victim-7", sender="tm")
    assert again["duplicate"] is True  # the holder's own re-send is a duplicate, as before
    wait_for(lambda: out.exists() and lines(out) == ["tm"], 10, what="tm's one run")


def test_a_failed_converge_keeps_saying_the_recipe_does_not_compile(flock_env):
    """A node whose recipe does not compile answers `not_ready` (retryable) for a resource it
    does not know. A converge that fails to compile must not clear that: a notification sent
    after it was answered `unknown_resource`, final, and lost."""
    env = flock_env
    start(env, "bad", "this is not python(\n")
    f = env.flock()
    with pytest.raises(RpcError) as before:
        f["bad"].resource_manager.notify("execute[x]", "run", sender="t")
    assert before.value.code == "not_ready"
    assert converge(f, "bad")["status"] == "failed"
    assert f["bad"].flock_api.status()["compile_error"]
    with pytest.raises(RpcError) as after:
        f["bad"].resource_manager.notify("execute[x]", "run", sender="t")
    assert after.value.code == "not_ready", after.value


def test_persisted_resources_answer_notify_when_the_recipe_no_longer_compiles(flock_env):
    env = flock_env
    out = env.root / "hits"
    node = start(env, "rcv", f"""
        from flock_node.dsl import execute, file
        execute("hit", command="echo hit >> {out}", action="nothing")
        file("{env.root}/f", content="x")
    """)
    f = env.flock()
    assert converge(f, "rcv")["status"] == "ok"
    node.kill9()
    recipe(env, "rcv", "raise RuntimeError('broken recipe')\n")
    env.restart("rcv", recipes=[env.root / "rcv.py"], heartbeat=HB)
    f = env.flock()
    assert "broken recipe" in f["rcv"].flock_api.status()["compile_error"]
    f["rcv"].resource_manager.notify("execute[hit]", "run", sender="t")
    (env.root / "f").unlink()
    f["rcv"].resource_manager.notify(f"file[{env.root}/f]", "create", sender="t")
    wait_for(lambda: len(lines(out)) == 1 and (env.root / "f").exists(), 10)
    wait_for(lambda: quiet(f, "rcv"), 5)
    assert all(r["status"] == "ok" for r in reactions(f, "rcv"))


def test_a_reaction_stopped_during_its_wait_runs_after_the_restart(flock_env):
    """SIGTERM cuts a reaction's wait_until short before its action ran: the acknowledged
    notification must not be lost; it runs once when the node is back."""
    env = flock_env
    out, gate = env.root / "hits", env.root / "go"
    text = f"""
        import os
        from flock_node.dsl import execute
        execute("slow", command="echo hit >> {out}", action="nothing").wait_until(
            lambda: os.path.exists("{gate}"), interval=0.05, timeout=600)
    """
    node = start(env, "c", text)
    f = env.flock()
    f["c"].resource_manager.notify("execute[slow]", "run", id="n-stop-1", sender="test")
    wait_for(lambda: f["c"].flock_api.active(), 5, what="the reaction to start waiting")
    assert node.stop() == 0
    assert inbox_ids(node) == [("n-stop-1", "pending")]
    gate.write_text("go")
    start(env, "c", text)
    f = env.flock()
    wait_for(lambda: lines(out) == ["hit"] and quiet(f, "c"), 15, what="the reaction to run")
    assert inbox_ids(env.nodes["c"]) == [("n-stop-1", "applied")]
    assert lines(out) == ["hit"]


def test_active_is_true_as_soon_as_run_chef_returns(flock_env):
    env = flock_env
    start(env, "c", """
        from flock_node.dsl import execute
        execute("short", command="sleep 0.3")
    """)
    f = env.flock()
    api = f["c"].flock_api
    for _ in range(3):
        rid = api.run_chef()["run_id"]
        assert api.active() is True
        wait_for(lambda rid=rid: finished(f, "c", rid), 15, what="the run to end")
        assert api.active() is False


def test_subscription_ids_name_the_publisher_and_recipe_ones_come_back(flock_env):
    env = flock_env
    out = env.root / "hits"
    start(env, "p1", f'from flock_node.dsl import file\nfile("{env.root}/p1", content="1")\n')
    start(env, "p2", f'from flock_node.dsl import file\nfile("{env.root}/p1", content="1")\n')
    sub_text = f"""
        from flock_node.dsl import execute
        execute("hit", command="echo hit >> {out}", action="nothing").remote_subscribes(
            "run", "file[{env.root}/p1]", node="p1")
    """
    start(env, "s", sub_text)
    f = env.flock()
    # The same resource path on two publishers: two subscriptions, two ids.
    r1 = env.cli("--json", "subscribe", "s", "execute[hit]", "run", "--to", "p1",
                 f"file[{env.root}/p1]")
    r2 = env.cli("--json", "subscribe", "s", "execute[hit]", "run", "--to", "p2",
                 f"file[{env.root}/p1]")
    assert r1.returncode == 0 and r2.returncode == 0, r1.stderr + r2.stderr
    assert json.loads(r1.stdout)["id"] != json.loads(r2.stdout)["id"]
    # A refused subscription is a failure (exit 1), and nothing of it is kept.
    bad = env.cli("subscribe", "s", "execute[hit]", "run", "--to", "p1", "file[/nope]")
    assert bad.returncode == 1 and "unknown_resource" in bad.stderr, bad.stderr
    assert not any(w["remote_resource"] == "file[/nope]"
                   for w in f["s"].resource_manager.subscriptions()["outgoing"])
    # Removed on the publisher's side, the recipe's subscription is back after s converges.
    held = wait_for(lambda: f["p1"].resource_manager.subscriptions()["incoming"], 10)
    recipe_sub = next(x for x in held if x["subscriber_resource"] == "execute[hit]")
    f["p1"].resource_manager.unsubscribe(recipe_sub["id"])
    converge(f, "s")
    wait_for(lambda: any(x["id"] == recipe_sub["id"]
                         for x in f["p1"].resource_manager.subscriptions()["incoming"]),
             10, what="the recipe subscription to be registered again")
