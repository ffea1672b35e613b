"""SWIM membership at two flock sizes in the deterministic simulator: is the cost per node flat?

    .venv/bin/python benchmarks/bench_sim.py [--small 1000] [--big 10000] [--seconds 60]
                                             [--loss 0.01] [--crash 5] [--seed 1]

Runs `python -m flock_node.membership.sim` for both sizes (one after the other, each in its
own process so the memory of one does not weigh on the other) and prints both sets of figures
and the ratio of messages per node per second, big over small. Goals (issue 11): both
converged, every crash seen by all, false_dead 0, ratio ≤ 1.5 (SWIM's probing is O(1) per
node; dissemination grows with log N).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys


def run(nodes: int, a: argparse.Namespace) -> dict:
    """One simulator run as a subprocess; its JSON figures."""
    cmd = [sys.executable, "-m", "flock_node.membership.sim", "--nodes", str(nodes),
           "--seconds", str(a.seconds), "--loss", str(a.loss), "--crash", str(a.crash),
           "--seed", str(a.seed), "--json"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    r: dict = json.loads(out.stdout)
    # CPU seconds tell the simulator's cost on a shared machine better than wall time does.
    r["cpu_s"] = round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1)
    r["max_rss_mb"] = after.ru_maxrss // 1024  # the largest child so far (Linux: KiB)
    return r


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", type=int, default=1000)
    ap.add_argument("--big", type=int, default=10000)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--loss", type=float, default=0.01)
    ap.add_argument("--crash", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rows = [run(n, a) for n in (a.small, a.big)]
    print(f"{'nodes':>7} {'converged_s':>11} {'detect p50':>10} {'detect max':>10} "
          f"{'false_dead':>10} {'msgs/node/s':>11} {'bytes/node/s':>12} {'wall_s':>7} "
          f"{'cpu_s':>7} {'rss_mb':>7}")
    for r in rows:
        d = r["detect_s"]
        print(f"{r['nodes']:>7} {r['converged_s']!s:>11} {d['p50']!s:>10} {d['max']!s:>10} "
              f"{r['false_dead']:>10} {r['msgs_per_node_s']:>11} {r['bytes_per_node_s']:>12} "
              f"{r['wall_s']:>7} {r['cpu_s']:>7} {r['max_rss_mb']:>7}")
    ratio = rows[1]["msgs_per_node_s"] / rows[0]["msgs_per_node_s"]
    print(f"bytes/node/s at {a.big} over {a.small}: "
          f"{rows[1]['bytes_per_node_s'] / rows[0]['bytes_per_node_s']:.2f}x")
    ok = ratio <= 1.5 and all(
        r["converged_s"] is not None and r["detect_s"]["max"] is not None
        and r["false_dead"] == 0 for r in rows)
    print(f"msgs/node/s at {a.big} over {a.small}: {ratio:.2f}x (goal ≤ 1.5x) -> "
          f"{'ok' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
