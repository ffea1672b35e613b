"""Chaos run: does every remote notification take effect exactly once while nodes die,
restart, hang and lose their network?

    .venv/bin/python benchmarks/chaos.py [--minutes 10] [--agents 5] [--rate 33] \
        [--faults 100] [--seed 1] [--drain 120] [--network auto|netns|loopback] [--keep]

A steady stream of notifications through a two-hop chain (src → mid-J → dst) between real
agents in their own network namespaces (see benchmarks/chaoslib.py), with random kill -9,
SIGSTOP, SIGTERM and partitions. Prints one JSON object; exits 1 when the promise broke
(lost, doubled, an agent exited on its own, or applied != sent). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from chaoslib import KINDS, ChaosConfig, promise_kept, run_chaos  # noqa: E402


def main() -> int:
    """Parse the flags, run the scenario, print the result."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the stream")
    ap.add_argument("--agents", type=int, default=5, help="src, mid-1..N-2, dst (at least 3)")
    ap.add_argument("--rate", type=float, default=33.4, help="root notifications per second")
    ap.add_argument("--faults", type=int, default=100, help="faults over the stream")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--drain", type=float, default=120.0,
                    help="seconds allowed for everything to arrive after the stream")
    ap.add_argument("--kinds", default=",".join(KINDS),
                    help=f"comma-separated fault kinds among {','.join(KINDS)}")
    ap.add_argument("--network", choices=("auto", "netns", "loopback"), default="auto")
    ap.add_argument("--keep", action="store_true", help="keep logs and state dirs")
    a = ap.parse_args()
    kinds = tuple(k for k in a.kinds.split(",") if k)
    bad = [k for k in kinds if k not in KINDS]
    if bad or a.agents < 3 or a.minutes <= 0 or a.rate <= 0:
        ap.error(f"unknown fault kinds {bad}" if bad else
                 "--agents must be ≥ 3, --minutes and --rate > 0")
    cfg = ChaosConfig(agents=a.agents, seconds=a.minutes * 60, rate=a.rate, faults=a.faults,
                      seed=a.seed, drain=a.drain, kinds=kinds, fault_s=(1.0, 4.0),
                      network=a.network, keep=a.keep)
    # A SIGTERM unwinds like Ctrl-C, so the harness still kills its agents and removes its
    # namespaces on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = run_chaos(cfg)
    print(json.dumps(result, indent=1, ensure_ascii=False))
    return 0 if promise_kept(result) else 1


if __name__ == "__main__":
    sys.exit(main())
