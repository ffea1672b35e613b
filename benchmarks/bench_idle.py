"""One idle agent: resident memory and CPU share.

    .venv/bin/python benchmarks/bench_idle.py [--seconds 10]

Reads /proc/PID/status (VmRSS) and /proc/PID/stat (utime+stime) of a real `flock-node run`
after it has settled, over SECONDS; next to the same figures for a bare `python -c` sleeping
process (the interpreter's own floor). Targets: < 60 MB resident, < 2 % of one core.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from common import Agents  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def measure(pid: int, seconds: float) -> tuple[float, float]:
    c0, t0 = cpu_s(pid), time.monotonic()
    time.sleep(seconds)
    c1, t1 = cpu_s(pid), time.monotonic()
    return rss_mb(pid), 100 * (c1 - c0) / (t1 - t0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    a = ap.parse_args()
    base = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    try:
        with Agents() as ag:
            p = ag.start("idle")
            ag.wait_listening("idle")
            time.sleep(2)  # settle: compile, first heartbeats
            b_rss, b_cpu = measure(base.pid, 0.1)
            rss, cpu = measure(p.pid, a.seconds)
    finally:
        base.terminate()
        base.wait(5)
    print(f"bare python (baseline):  {b_rss:6.1f} MB resident")
    print(
        f"idle agent over {a.seconds:g}s:  {rss:6.1f} MB resident "
        f"(target < 60 MB: {'OK' if rss < 60 else 'MISSES'}), "
        f"{cpu:.2f} % of a core (target < 2 %: {'OK' if cpu < 2 else 'MISSES'})"
    )
    return 0 if rss < 60 and cpu < 2 else 1


if __name__ == "__main__":
    sys.exit(main())
