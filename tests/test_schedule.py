"""Scheduled converges (`flock-node run --interval S [--splay S]`), chef-client's daemon mode."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import wait_for


def _scheduled(f, node: str) -> list[dict]:
    return [h for h in f[node].flock_api.history(50)
            if h["kind"] == "converge" and (h.get("cause") or {}).get("scheduled")]


def test_an_interval_converges_after_start_then_on_a_fixed_cadence(flock_env):
    env = flock_env
    recipe = env.root / "r.py"
    recipe.write_text("from flock_node.dsl import log\nlog('tick')\n")
    env.start("sched", "--interval", "1", recipes=[recipe])
    with env.flock() as f:
        wait_for(lambda: len(_scheduled(f, "sched")) >= 1, 10, what="the converge after start")
        st = f["sched"].flock_api.status()
        assert st["next_run"] is not None
        # A run_chef in between is its own run and does not shift the schedule.
        wait_for(lambda: not f["sched"].flock_api.active(), 10)
        f["sched"].flock_api.run_chef()
        wait_for(lambda: len(_scheduled(f, "sched")) >= 4, 15, what="three more scheduled runs")
        runs = sorted(_scheduled(f, "sched"), key=lambda h: h["started"])
        gaps = [b["started"] - a["started"] for a, b in zip(runs, runs[1:], strict=False)]
        assert all(0.7 <= g <= 1.6 for g in gaps), gaps
        manual = [h for h in f["sched"].flock_api.history(50)
                  if h["kind"] == "converge" and not h.get("cause")]
        assert manual, "the run_chef run is recorded apart from the scheduled ones"
    h = env.cli("history", "sched", "--limit", "3")
    assert "scheduled (--interval)" in h.stdout, h.stdout
    s = env.cli("status", "sched")
    assert "next run:" in s.stdout, s.stdout


@pytest.mark.parametrize("args, message", [
    (["--splay", "5"], "--splay needs --interval"),
    (["--interval", "0"], "--interval"),
    (["--interval", "1", "--splay", "-1"], "--splay"),
])
def test_bad_schedules_are_usage_errors(flock_env, args, message):
    r = subprocess.run([sys.executable, "-m", "flock_node.cli_node", "run", "x",
                        "--state-dir", str(flock_env.root / "s"), *args],
                       capture_output=True, text=True, env=flock_env.env, timeout=30)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
