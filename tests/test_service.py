"""`flock-node service NAME ...` prints a systemd unit whose ExecStart really runs the agent."""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys

from conftest import wait_for


def _service(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flock_node.cli_node", "service", *args],
                          capture_output=True, text=True, env=env.env, timeout=30,
                          cwd=env.root)


def test_the_unit_runs_the_agent_with_the_same_flags(flock_env):
    env = flock_env
    recipe = env.root / "r.py"
    recipe.write_text("from flock_node.dsl import log\nlog('hello')\n")
    r = _service(env, "svc", "--recipe", "r.py", "--state-dir", str(env.root / "st"),
                 "--runtime-dir", str(env.runtime_dir), "--interval", "60", "--splay", "5",
                 "--tag", "web", "--stop-timeout", "10")
    assert r.returncode == 0, r.stderr
    unit = r.stdout
    assert "[Service]" in unit and "WantedBy=multi-user.target" in unit
    assert "TimeoutStopSec=25" in unit and "KillSignal=SIGTERM" in unit
    exec_line = next(ln for ln in unit.splitlines() if ln.startswith("ExecStart="))
    cmd = shlex.split(exec_line[len("ExecStart="):])
    assert cmd[cmd.index("--recipe") + 1] == str(recipe.resolve())  # "r.py" written absolute
    assert cmd[cmd.index("--interval") + 1] == "60" and "--splay" in cmd and "web" in cmd


def test_the_unit_names_its_membership_mode_swim_by_default(flock_env):
    env = flock_env
    env.env.pop("FLOCK_MEMBERSHIP", None)

    def mode(*args: str) -> str:
        r = _service(env, "svc", *args)
        assert r.returncode == 0, r.stderr
        cmd = shlex.split(next(ln for ln in r.stdout.splitlines()
                               if ln.startswith("ExecStart="))[len("ExecStart="):])
        return cmd[cmd.index("--membership") + 1]

    assert mode() == "swim"
    assert mode("--membership", "mesh") == "mesh"
    env.env["FLOCK_MEMBERSHIP"] = "mesh"  # the shell's choice is written into the unit
    assert mode() == "mesh"


def test_the_exec_line_starts_a_working_agent(flock_env, tmp_path):
    env = flock_env
    recipe = tmp_path / "r.py"
    recipe.write_text("from flock_node.dsl import log\nlog('hello')\n")
    r = _service(env, "svc2", "--recipe", str(recipe), "--state-dir", str(env.root / "st2"),
                 "--runtime-dir", str(env.runtime_dir), "--heartbeat", "0.2")
    exec_line = next(ln for ln in r.stdout.splitlines() if ln.startswith("ExecStart="))
    proc = subprocess.Popen(shlex.split(exec_line[len("ExecStart="):]), env=env.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with env.flock() as f:
            wait_for(lambda: f["svc2"].flock_api.status()["ready"], 20, what="svc2 up")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


def test_bad_flags_give_no_unit(flock_env):
    r = _service(flock_env, "bad/name")
    assert r.returncode == 2 and "invalid node name" in r.stderr and not r.stdout
    r = _service(flock_env, "n", "--listen", "tcp://127.0.0.1:7600")
    assert r.returncode == 2 and "needs a flock key" in r.stderr and not r.stdout
