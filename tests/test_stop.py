"""Nothing hangs: the agent's --stop-timeout, and children that never outlive the agent.

Real `flock-node` subprocesses; every wait polls a condition with a deadline.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import FlockEnv, wait_for, write_recipe

from flock_node.client import Flock

HB = 0.2


def start(env: FlockEnv, name: str, text: str, *args: str):
    recipe = write_recipe(env.root / f"{name}.py", textwrap.dedent(text))
    return env.start(name, *args, recipes=[recipe], heartbeat=HB)


def lines(p: Path) -> list[str]:
    return p.read_text().splitlines() if p.exists() else []


def db_rows(node, sql: str) -> list[tuple]:
    db = sqlite3.connect(f"file:{node.state_dir / 'flock.db'}?mode=ro", uri=True)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def last_run(node) -> tuple[str, str, list[tuple]]:
    """(status, error, [(resource, result, error)]) of the node's newest run, from its file."""
    [(rid, status, error)] = db_rows(
        node, "SELECT id, status, error FROM runs ORDER BY started DESC LIMIT 1")
    res = db_rows(node, "SELECT resource, result, error FROM run_resources "
                        f"WHERE run_id = '{rid}' ORDER BY seq")
    return status, error, res


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie waiting for init counts as gone
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def children_of(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rpartition(")")[2].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def sigterm_timed(node, within: float) -> float:
    t0 = time.monotonic()
    node.proc.send_signal(signal.SIGTERM)
    try:
        code = node.proc.wait(within)
    except subprocess.TimeoutExpired:
        node.proc.kill()
        node.proc.wait(5)
        raise AssertionError(f"{node.name} still running {within} s after SIGTERM:\n"
                             + node.output()) from None
    assert code == 0, node.output()
    return time.monotonic() - t0


@pytest.mark.parametrize("value", ["-1", "abc", "0"])
def test_stop_timeout_must_be_a_positive_number(value, tmp_path):
    r = subprocess.run([sys.executable, "-m", "flock_node.cli_node", "run", "x",
                        "--state-dir", str(tmp_path), "--stop-timeout", value],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, r.stderr
    assert "--stop-timeout" in r.stderr and "seconds" in r.stderr and "Traceback" not in r.stderr


def _converge_until(env: FlockEnv, node: str, marker: Path) -> Flock:
    f = env.flock()
    f[node].flock_api.run_chef()
    wait_for(marker.exists, 10, what="the slow resource to start")
    return f


def test_sigterm_kills_a_command_after_the_stop_timeout(flock_env):
    env = flock_env
    started, pidfile = env.root / "started", env.root / "pid"
    node = start(env, "s1", f"""
        from flock_node.dsl import execute, file
        execute("slow", command="echo $$ > {pidfile}; touch {started}; sleep 1000")
        file("{env.root}/after", content="x")
    """, "--stop-timeout", "1")
    _converge_until(env, "s1", started)
    took = sigterm_timed(node, 8)
    assert took < 5, took
    status, error, res = last_run(node)
    assert status == "failed"
    assert error == "interrupted: killed after --stop-timeout 1 s (execute[slow])"
    assert res == [("execute[slow]", "failed", "interrupted: killed after --stop-timeout 1 s")]
    assert not (env.root / "after").exists()
    assert wait_for(lambda: gone(int(pidfile.read_text())), 5)
    assert "node s1 stopped" in node.output()


def test_sigterm_stops_a_python_loop_after_the_stop_timeout(flock_env):
    env = flock_env
    started = env.root / "started"
    node = start(env, "s2", f"""
        from flock_node.dsl import python_block
        def spin():
            open("{started}", "w").close()
            while True:
                pass
        python_block("spin", block=spin)
    """, "--stop-timeout", "1")
    _converge_until(env, "s2", started)
    took = sigterm_timed(node, 8)
    assert took < 5, took
    status, error, res = last_run(node)
    assert status == "failed" and error.startswith("interrupted: killed after --stop-timeout 1 s")
    assert res == [("python_block[spin]", "failed",
                    "interrupted: killed after --stop-timeout 1 s")]


def test_a_worker_that_never_comes_back_does_not_keep_the_agent(flock_env):
    """A recipe whose compile hangs in a C call (the compile runs on the worker itself): the
    agent records the run interrupted anyway and exits 0 a few seconds after the stop
    timeout."""
    env = flock_env
    flag, started = env.root / "hang", env.root / "started"
    node = start(env, "s3", f"""
        import os, time
        from flock_node.dsl import log
        if os.path.exists("{flag}"):
            open("{started}", "w").close()
            time.sleep(1000)
        log("x")
    """, "--stop-timeout", "0.5")
    flag.write_text("")
    _converge_until(env, "s3", started)
    took = sigterm_timed(node, 12)
    assert took < 9, took
    status, error, _ = last_run(node)
    assert status == "failed"
    assert error == "interrupted: killed after --stop-timeout 0.5 s (the worker did not stop)"


def test_a_resource_that_ends_within_the_stop_timeout_finishes(flock_env):
    env = flock_env
    started = env.root / "started"
    node = start(env, "s4", f"""
        from flock_node.dsl import execute, file
        execute("short", command="touch {started}; sleep 0.5")
        file("{env.root}/after", content="x")
    """, "--stop-timeout", "5")
    _converge_until(env, "s4", started)
    sigterm_timed(node, 8)
    status, error, res = last_run(node)
    assert res == [("execute[short]", "updated", None)]
    assert status == "failed" and error == "stopped"


def test_kill9_of_the_agent_kills_a_guard_grandchild(flock_env):
    env = flock_env
    pidfile = env.root / "pid"
    node = start(env, "s5", f"""
        from flock_node.dsl import file
        file("{env.root}/x", content="x",
             only_if="sh -c 'echo $$ > {pidfile}; sleep 100000; true'")
    """)
    env.flock()["s5"].flock_api.run_chef()
    inner = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 10,
                         what="the guard to start"))
    sleeps = wait_for(lambda: children_of(inner), 5, what="the sleep to start")
    node.kill9()
    for pid in [inner, *sleeps]:
        wait_for(lambda p=pid: gone(p), 5, what=f"process {pid} to die with the agent")


def test_leftover_groups_are_killed_at_the_next_start(flock_env, tmp_path):
    """The backstop for a group whose watchdog died too: the next agent kills it."""
    env = flock_env
    victim = subprocess.Popen(["sleep", "100000"], start_new_session=True)
    try:
        st = Path(f"/proc/{victim.pid}/stat").read_text().rpartition(")")[2].split()[19]
        state = env.root / "state" / "s6"
        state.mkdir(parents=True)
        (state / "children").write_text(f"{victim.pid} {st}\n999999 1\n")
        start(env, "s6", "from flock_node.dsl import log\nlog('x')\n")
        assert victim.wait(5) == -signal.SIGKILL
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()


def test_an_interrupted_reaction_runs_again_after_the_restart(flock_env):
    env = flock_env
    log, duration = env.root / "log", env.root / "duration"
    duration.write_text("30")
    text = f"""
        from flock_node.dsl import execute
        execute("slow", command="echo start >> {log}; sleep $(cat {duration}); echo done >> {log}",
                action="nothing")
    """
    node = start(env, "s7", text, "--stop-timeout", "1")
    f = env.flock()
    f["s7"].resource_manager.notify("execute[slow]", "run", id="n-int-1", sender="test")
    wait_for(lambda: lines(log) == ["start"], 10, what="the reaction to start")
    took = sigterm_timed(node, 8)
    assert took < 5, took
    status, error, _ = last_run(node)
    assert status == "failed" and error.startswith("interrupted"), error
    assert db_rows(node, "SELECT id, status FROM inbox") == [("n-int-1", "pending")]
    duration.write_text("0.1")
    node = start(env, "s7", text, "--stop-timeout", "1")
    f = env.flock()
    wait_for(lambda: db_rows(node, "SELECT status FROM inbox") == [("applied",)], 15,
             what="the reaction to run again")
    assert lines(log) == ["start", "start", "done"]
    again = f["s7"].resource_manager.notify("execute[slow]", "run", id="n-int-1", sender="test")
    assert again["duplicate"] is True
    assert lines(log) == ["start", "start", "done"]


def test_a_recipe_compile_hanging_at_start_does_not_keep_the_agent(flock_env):
    """SIGTERM while the start-up compile hangs: the agent waits --stop-timeout, then exits 0."""
    env = flock_env
    started = env.root / "started"
    recipe = env.root / "hang.py"
    recipe.write_text(f"import time\nopen({str(started)!r}, 'w').close()\ntime.sleep(1000)\n")
    node = env.start("s9", "--stop-timeout", "0.5", recipes=[recipe], wait=False)
    wait_for(lambda: started.exists(), 20, what="the start-up compile to begin")
    took = sigterm_timed(node, 12)
    assert took < 6, took
    assert node.proc.returncode == 0, node.output()
    assert "did not end within --stop-timeout" in node.output()
