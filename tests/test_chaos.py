"""The chaos suite, short: real agents in network namespaces (loopback where namespaces are
unavailable), a stream of notifications through a two-hop chain, random kill -9, SIGSTOP,
SIGTERM and partitions. The promise: every acknowledged notification applied exactly once,
and no agent exits on its own. The long runs are `benchmarks/chaos.py`."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from chaoslib import (  # noqa: E402
    KINDS,
    ChaosConfig,
    crash_tracebacks,
    log_findings,
    plan_faults,
    run_chaos,
    tally,
)


def test_tally_by_origin_finds_lost_doubled_and_extra():
    r = tally(["a", "b", "c"], ["a n1", "b n2", "b n3", "x n4"])
    assert (r["sent"], r["applied"], r["lost"], r["doubled"]) == (3, 2, 1, 1)
    assert r["lost_ids"] == ["c"] and r["doubled_ids"] == ["b"]
    assert r["applied_but_not_acknowledged"] == 1
    assert (r["doubled_reruns"], r["doubled_chains"]) == (0, 1)  # b: two notifications
    r = tally(["a"], ["a n1", "a n1"])  # one notification whose action ran twice
    assert (r["doubled"], r["doubled_reruns"], r["doubled_chains"]) == (1, 1, 0)


def test_tally_without_origins_compares_counts():
    r = tally(["a", "b", "c"], ["? ?", "? ?"])
    assert (r["applied"], r["lost"], r["doubled"]) == (2, 1, 0)
    assert r["identification"].startswith("counts only")


def test_fault_plan_is_seeded_and_inside_the_window():
    nodes = ["src", "mid-1", "dst"]
    a = plan_faults(random.Random(7), 10, (2.0, 20.0), nodes, KINDS, (1.0, 2.0))
    assert a == plan_faults(random.Random(7), 10, (2.0, 20.0), nodes, KINDS, (1.0, 2.0))
    assert len(a) == 10 and all(2.0 <= f.at <= 20.0 and 1.0 <= f.duration <= 2.0 for f in a)
    assert [f.at for f in a] == sorted(f.at for f in a)
    assert {f.kind for f in a[:len(KINDS)]} == set(KINDS)


def test_log_findings_group_errors_by_shape():
    logs = {"src.log": "t src ERROR flock.agent: task delivery crashed; stopping the agent\n"
                       "t src ERROR flock.agent: notification n-ab12cd34 to dst refused: x\n"
                       "t src ERROR flock.agent: notification n-ef56ab78 to dst refused: x\n"}
    f = log_findings(logs)
    assert f[0]["count"] == 2 and f[0]["nodes"] == ["src"]
    assert any("task delivery crashed" in g["example"] for g in f)


def test_crash_tracebacks_are_kept_whole():
    log = ("t mid ERROR flock.supervisor: loop delivery crashed; restarting in 0.1s\n"
           "Traceback (most recent call last):\n  File \"d.py\", line 3, in run\n    x()\n"
           "KeyError: 'target'\nt mid INFO flock.agent: later\n")
    [tb] = crash_tracebacks({"mid-1.log": log})
    assert tb.startswith("mid-1.log:") and tb.endswith("KeyError: 'target'")


def test_every_notification_applied_exactly_once_through_faults():
    cfg = ChaosConfig(agents=4, seconds=20.0, rate=20.0, faults=8, seed=11, drain=15.0,
                      fault_s=(1.0, 2.5))
    r = run_chaos(cfg)
    print(json.dumps(r, indent=1, ensure_ascii=False))
    summary = json.dumps({k: r[k] for k in ("network", "sent", "applied", "lost", "doubled",
                                            "exited_on_their_own", "faults")})
    assert r["sent"] > 0, summary
    assert r["lost"] == 0, f"{summary}\nlost: {r.get('lost_ids')}\n{r['log_findings']}"
    assert r["doubled"] == 0, f"{summary}\ndoubled: {r.get('doubled_ids')}\n{r['log_findings']}"
    assert r["exited_on_their_own"] == 0, f"{summary}\n{r['exits']}"
    assert r["applied"] == r["sent"], summary
