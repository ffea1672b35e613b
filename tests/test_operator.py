"""The operator's daily tools (issue 12): JSON usage errors, clear CLI errors, health from the
last converge, what the agent logs, and what `flockctl history` shows without --json."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import msgspec
import pytest
from conftest import FlockEnv, wait_for

from flock_node.api import Member
from flock_node.cli import text
from flock_tui.main import main

RECIPE = """\
from pathlib import Path
from flock_node.dsl import execute, file

ctl = Path({ctl!r})
mode = ctl.read_text().strip() if ctl.exists() else "ok"
execute("react", command="true", action="nothing")
# Fails its first attempt and succeeds on the retry, every converge.
flaky = {flag!r}
execute("flaky", retries=1, retry_delay=0,
        command=f"if [ -e {{flaky}} ]; then rm {{flaky}}; else touch {{flaky}}; "
                "echo first try >&2; exit 1; fi")
stamp = file({stamp!r}, content=str(__import__("time").time()))
stamp.remote_notifies("run", "execute[react]", node="gam*")
if mode == "fail":
    execute("boom", command="echo line one; echo doomed >&2; exit 7")
"""


class Ops:
    def __init__(self, env: FlockEnv):
        self.env = env

    def mode(self, mode: str) -> None:
        (self.env.root / "op1.mode").write_text(mode)

    def cli(self, *args: str, **kw):
        return self.env.cli(*args, **kw)

    def json(self, *args: str):
        return self.env.json(*args)


@pytest.fixture(scope="module")
def ops(tmp_path_factory):
    env = FlockEnv(Path(tmp_path_factory.mktemp("o", numbered=True)))
    recipe = env.root / "op1.py"
    recipe.write_text(RECIPE.format(ctl=str(env.root / "op1.mode"),
                                    flag=str(env.root / "flaky"), stamp=str(env.root / "stamp")))
    try:
        a = env.start("op1", recipes=[recipe], wait=False, heartbeat=0.2)
        b = env.start("op2", wait=False, heartbeat=0.2)
        env.wait_up(a)
        env.wait_up(b)
        with env.flock() as f:
            wait_for(lambda: len([m for m in f["op2"].flock_api.members()
                                  if m["state"] == "alive"]) == 2, 10, what="the mesh")
        yield Ops(env)
    finally:
        env.stop_all()


# --- 1. --json errors are JSON; headless macros show their steps ------------------------------

@pytest.mark.parametrize("argv", [
    ["--json", "history", "b0", "--limit", "x"],
    ["bogus", "--json"],
    ["--json", "status"],
    ["wait-until", "b0", "sleepy", "--json"],
])
def test_usage_errors_with_json_are_json_on_stdout(argv, capsys):
    assert main(argv) == 2
    out = capsys.readouterr()
    doc = json.loads(out.out)
    assert doc["exit_code"] == 2 and doc["error"]
    assert "usage:" in out.err and doc["error"] in out.err  # the human line stays


def test_usage_errors_without_json_keep_stdout_empty(capsys):
    assert main(["history", "b0", "--limit", "x"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and "argument --limit" in out.err


def test_macro_errors_with_json_are_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FLOCK_CONFIG_DIR", str(tmp_path))
    assert main(["--json", "macro", "nope"]) == 2
    out = capsys.readouterr()
    assert json.loads(out.out) == {"error": json.loads(out.out)["error"], "exit_code": 2}
    assert "no macro named 'nope'" in out.out and "no macro named 'nope'" in out.err
    (tmp_path / "console.toml").write_text('[[macros]]\nname = "m"\nkey = "x"\nsteps = '
                                           '["active {node}"]\n')
    assert main(["macro", "m", "--json"]) == 2  # {node} without --node
    assert json.loads(capsys.readouterr().out)["exit_code"] == 2


# --- 2. clear errors: retry, notify, wait-until --------------------------------------------------

def test_retry_and_discard_of_a_row_that_is_not_dead_is_one_error(ops):
    for args in (("retry", "op1", "n-nope"), ("outbox", "discard", "op1", "n-nope")):
        r = ops.cli(*args)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert r.stdout == "", (args, r.stdout)  # no success line
        assert len(r.stderr.strip().splitlines()) == 1 and "n-nope" in r.stderr, r.stderr
        j = ops.cli("--json", *args)
        assert j.returncode == 1 and json.loads(j.stdout)["exit_code"] == 1


def test_notify_with_a_malformed_resource_is_a_usage_error(tmp_path):
    env = FlockEnv(tmp_path)  # no node at all: the check comes before any call
    for args in (("notify", "op1", "bad id", "run"),
                 ("subscribe", "op1", "file[/x]", "touch", "--to", "op2", "nobrackets")):
        r = env.cli(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "type[name]" in r.stderr and "Traceback" not in r.stderr


def test_wait_for_a_node_that_does_not_exist_says_so_at_once(ops):
    t0 = time.monotonic()
    r = ops.cli("wait-until", "ghost", "idle", "--timeout", "600", timeout=30)
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert "ghost" in r.stderr and "op1" in r.stderr  # names the nodes it knows
    r = ops.cli("wait-while", "ghost", "active", "--timeout", "600", timeout=30)
    assert r.returncode == 3, (r.stdout, r.stderr)
    r = ops.cli("--json", "wait-until", "gh*", "idle", "--timeout", "600", timeout=30)
    assert r.returncode == 3 and json.loads(r.stdout)["exit_code"] == 3
    assert time.monotonic() - t0 < 20
    # `alive` waits for a node to join (it may be starting), and says it is waiting.
    r = ops.cli("wait-until", "ghost", "alive", "--timeout", "0.5", timeout=30)
    assert r.returncode == 1 and "waiting for it to join" in r.stderr, r.stderr


# --- 3. health is the last converge --------------------------------------------------------------

def test_health_is_the_last_converge_with_the_reaction_beside_it(ops):
    ops.mode("fail")
    try:
        r = ops.cli("run-chef", "op1", "--wait", "--timeout", "30")
        assert r.returncode == 1, r.stdout + r.stderr
    finally:
        ops.mode("ok")
    r = ops.cli("notify", "op1", "execute[react]", "run")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: ops.json("status", "op1")["last_run"]["kind"] == "reaction", 10,
             what="the reaction to end")
    st = ops.json("status", "op1")
    assert st["last_run"]["status"] == "ok"
    lc = st["last_converge"]
    assert lc["status"] == "failed" and lc["ok"] is False and "boom" in lc["error"]
    assert lc["finished"] >= lc["started"] and lc["id"] != st["last_run"]["id"]
    # The heartbeat carries it: another node's view says the same.
    with ops.env.flock() as f:
        def seen() -> bool:
            m = next(m for m in f["op2"].flock_api.members() if m["name"] == "op1")
            return (m.get("last_converge") or {}).get("status") == "failed"
        wait_for(seen, 10, what="op2 to see op1's failed converge")
    st_text = ops.cli("status", "op1").stdout
    assert re.search(r"^health:\s+failed", st_text, re.M), st_text
    assert re.search(r"^last reaction:.*ok", st_text, re.M), st_text
    row = next(ln for ln in ops.cli("nodes").stdout.splitlines() if ln.startswith("op1 "))
    assert re.match(r"op1\s+alive\s+failed\b", row), row
    assert "reaction ok" in row, row  # beside it, never instead
    # A good converge makes it healthy again.
    assert ops.cli("run-chef", "op1", "--wait", "--timeout", "30").returncode == 0
    assert ops.json("status", "op1")["last_converge"]["status"] == "ok"


def test_the_outbox_column_keeps_the_dead_count_whole():
    m = msgspec.convert({"name": "a", "state": "alive", "address": "x", "bus": "x", "rpc": "x",
                         "incarnation": 1, "active": False, "run": None, "last_run": None,
                         "last_converge": None, "pending": 0, "dead_letters": 2, "tags": [],
                         "version": "", "age": 0.0}, Member)
    assert text._outbox_text(m) == "0 (2 dead)"


# --- 4. logs and history -----------------------------------------------------------------------

def test_history_shows_output_tails_and_notes(ops):
    ops.mode("fail")
    try:
        ops.cli("run-chef", "op1", "--wait", "--timeout", "30")
    finally:
        ops.mode("ok")
    hist = ops.cli("history", "op1", "--limit", "1").stdout
    assert "doomed" in hist and "line one" in hist, hist  # the failed execute's output tail
    assert "attempt 1 failed" in hist, hist
    assert "node=gam*: no node matched" in hist, hist


def test_output_excerpt_keeps_notes_and_a_tail():
    output_excerpt = text.output_excerpt
    out = "attempt 1 failed: exit 1\n" + "\n".join(f"line {i}" for i in range(40))
    ex = output_excerpt(out, failed=True)
    assert ex[0] == "attempt 1 failed: exit 1" and ex[-1] == "line 39"
    assert any("earlier line" in x for x in ex) and len(ex) <= 8
    assert output_excerpt("", failed=True) == []
    assert output_excerpt("just one", failed=False) == ["just one"]


def test_the_agent_logs_each_converge_and_reaction_on_one_line(ops):
    r = ops.json("run-chef", "op1", "--wait", "--timeout", "30")
    run = r["runs"]["op1"]["id"]
    ops.cli("notify", "op1", "execute[react]", "run")
    log = ops.env.nodes["op1"]

    def lines() -> list[str]:
        return log.output().splitlines()

    wait_for(lambda: any("reaction finished" in ln and "sender=flockctl" in ln
                         for ln in lines()), 10, what="the reaction's log line")
    start = next(ln for ln in lines() if "converge started" in ln and f"run={run}" in ln)
    end = next(ln for ln in lines() if "converge finished" in ln and f"run={run}" in ln)
    assert " INFO " in start and "cause=run_chef" in start
    assert re.search(r"updated=\d+/\d+ ", end) and re.search(r"duration=\d+\.\d+s", end), end
    assert "status=ok" in end
    react = next(ln for ln in lines() if "reaction finished" in ln and "sender=flockctl" in ln)
    for needle in ("notification=n", "resource=execute[react]", "action=run", "status=ok",
                   "result=updated"):
        assert needle in react, react
    assert "\x1b" not in log.output()


def test_log_file_is_appended_and_reopened_on_sighup(flock_env):
    env = flock_env
    logf = env.root / "agent.log"
    logf.write_text("an old line\n")
    node = env.start("lf1", "--log-file", str(logf), wait=False)
    wait_for(lambda: "up (incarnation" in logf.read_text(), 20, what="lf1 up, in its log file")
    assert logf.read_text().startswith("an old line\n")  # appended, not truncated
    assert "up (incarnation" not in node.output()  # the file instead of stderr
    logf.rename(env.root / "agent.log.1")  # what logrotate does before it signals
    node.proc.send_signal(signal.SIGHUP)
    wait_for(logf.exists, 10, what="the log file to be reopened")
    r = env.cli("run-chef", "lf1", "--wait", "--timeout", "30")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: "converge finished" in logf.read_text(), 10, what="a line in the new file")
    assert node.proc.poll() is None


def test_sighup_without_a_log_file_stops_gracefully(flock_env):
    node = flock_env.start("hup1")
    node.proc.send_signal(signal.SIGHUP)
    assert node.proc.wait(15) == 0  # not killed by the signal (that would be -1)
    assert "node hup1 stopped" in node.output()


def test_history_says_who_caused_a_run_in_words():
    """An out-of-band notification (flockctl notify, the console) reads as such, not as
    `caused by flockctl:? (run ?, ...)`."""
    assert text.cause_text({"node": "flockctl", "notification": "n-1", "hops": 1}) == (
        "caused by operator (flockctl), out of band (notification n-1)")
    assert text.cause_text({"node": "flock-console", "notification": "n-3", "hops": 1}) == (
        "caused by operator (console), out of band (notification n-3)")
    assert text.cause_text({"node": "db", "resource": "file[/s]", "run": "r-1",
                            "notification": "n-2", "hops": 2}) == (
        "caused by db:file[/s] (run r-1, notification n-2, hop 2)")
    assert text.cause_text({"scheduled": True}) == "scheduled (--interval)"
    assert text.cause_text(None) is None
