"""systemd readiness: the agent tells `$NOTIFY_SOCKET` READY=1 once it serves, STOPPING=1 on
SIGTERM; the unit is Type=notify and gives a stop more time than the agent can take."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import wait_for

from flock_node import sdnotify
from flock_node.work import ABANDON_AFTER


def test_notify_socket_addresses():
    assert sdnotify.address("@flock/x") == "\0flock/x"  # abstract namespace
    assert sdnotify.address("/run/systemd/notify") == "/run/systemd/notify"
    assert sdnotify.address("") is None and sdnotify.address(None) is None
    assert sdnotify.address("relative/path") is None


def _recv_until(sock: socket.socket, needle: str, timeout: float) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            break
        if any(needle in g.split("\n") for g in got):
            return got
    raise AssertionError(f"no {needle} on the notify socket; got {got}")


@pytest.mark.parametrize("abstract", [False, True])
def test_ready_once_serving_and_stopping_on_sigterm(flock_env, abstract):
    env = flock_env
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"flock-test-notify-{os.getpid()}-{time.monotonic_ns()}"
        sock.bind("\0" + name)
        env.env["NOTIFY_SOCKET"] = "@" + name
    else:
        path = str(env.root / "notify")
        sock.bind(path)
        env.env["NOTIFY_SOCKET"] = path
    recipe = env.root / "r.py"
    seen = env.root / "seen"
    # Children must not inherit the socket: only the agent speaks for the service.
    recipe.write_text("from flock_node.dsl import execute\n"
                      f"execute('env', command='echo ${{NOTIFY_SOCKET:-unset}} > {seen}')\n")
    try:
        node = env.start("sd1", "--interval", "3600", recipes=[recipe], wait=False)
        got = _recv_until(sock, "READY=1", 20)
        with env.flock() as f:  # READY means it serves: the first call answers for real
            assert f["sd1"].flock_api.status()["ready"] is True
        assert any(line.startswith("STATUS=") for g in got for line in g.split("\n"))
        wait_for(lambda: seen.exists() and seen.read_text().strip(), 10, what="the converge")
        assert seen.read_text().strip() == "unset"
        node.proc.send_signal(signal.SIGTERM)
        _recv_until(sock, "STOPPING=1", 20)
        assert node.proc.wait(20) == 0
    finally:
        sock.close()


def test_no_notify_socket_is_fine():
    assert sdnotify.notify("READY=1") is False  # not under systemd: nothing to do


def test_the_unit_is_type_notify_and_waits_longer_than_a_stop_takes(flock_env, tmp_path):
    env = flock_env
    recipe = tmp_path / "slow.py"
    recipe.write_text("from flock_node.dsl import execute\n"
                      "execute('slow', command='sleep 60')\n")
    r = subprocess.run([sys.executable, "-m", "flock_node.cli_node", "service", "slow1",
                        "--recipe", str(recipe), "--state-dir", str(env.root / "st"),
                        "--runtime-dir", str(env.runtime_dir), "--stop-timeout", "1"],
                       capture_output=True, text=True, env=env.env, timeout=30)
    assert r.returncode == 0, r.stderr
    unit = dict(ln.split("=", 1) for ln in r.stdout.splitlines() if "=" in ln)
    assert unit["Type"] == "notify" and unit["NotifyAccess"] == "main"
    stop_sec = float(unit["TimeoutStopSec"])
    assert stop_sec > 1 + ABANDON_AFTER + 5  # stop timeout, abandon, leave: with room to spare
    # Measured: SIGTERM during a resource that would take 60 s.
    proc = subprocess.Popen(shlex.split(unit["ExecStart"]), env=env.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with env.flock() as f:
            wait_for(lambda: f["slow1"].flock_api.status()["ready"], 20, what="slow1 up")
            f["slow1"].flock_api.run_chef()
            wait_for(lambda: (f["slow1"].flock_api.status()["current_run"] or {}).get(
                "resource") == "execute[slow]", 10, what="the slow resource to start")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(stop_sec) == 0
        took = time.monotonic() - t0
        print(f"stop with --stop-timeout 1 during `sleep 60`: {took:.2f}s "
              f"(TimeoutStopSec={stop_sec:g})")
        assert took < stop_sec
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
