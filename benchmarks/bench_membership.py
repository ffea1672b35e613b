"""20 agents on ipc at the default 1 s heartbeat: how fast the flock knows who is there.

    .venv/bin/python benchmarks/bench_membership.py [--nodes 20]

Each node's own view is read with `flock_api.members()`. Figures:
- convergence: from the last agent listening until every agent sees all others alive
  (target: within 3 heartbeats);
- `kill -9` of one: until every other agent sees it suspect/down (target ≤ 1 s);
- `SIGSTOP` of one: until every other agent sees it suspect (target ≤ 3.5 s);
- `run-chef '*'`: until the client holds all 20 run ids (target ≤ 250 ms), through the
  Python client (connect + discover + call all) and through the `flockctl` command (wall time,
  next to the wall time of `flockctl --version` as the interpreter start-up baseline).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(__file__))
from common import Agents, wait_for  # noqa: E402

from flock_node.client import Flock  # noqa: E402

HEARTBEAT = 1.0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=20)
    a = ap.parse_args()
    names = [f"n{i:02d}" for i in range(a.nodes)]
    ok = True
    pool = ThreadPoolExecutor(8)
    with Agents() as ag:
        t_start = time.monotonic()
        for n in names:
            ag.start(n)
        for n in names:
            ag.wait_listening(n, timeout=120)
        t_last = time.monotonic()
        print(f"{a.nodes} agents listening {t_last - t_start:.2f}s after the first start")
        f = Flock.connect(runtime_dir=ag.runtime_dir, timeout=5.0)

        def view(n: str) -> dict[str, str]:
            return {m["name"]: m["state"] for m in f[n].flock_api.members()}

        def views(among: list[str]) -> dict[str, dict[str, str]]:
            return dict(zip(among, pool.map(view, among), strict=True))

        def all_alive() -> bool:
            return all(
                len(v) == len(names) and set(v.values()) == {"alive"} for v in views(names).values()
            )

        wait_for(all_alive, 60, 0.02, "every agent to see all others alive")
        conv = time.monotonic() - t_last
        good = conv <= 3 * HEARTBEAT
        ok &= good
        print(
            f"convergence: all {a.nodes} see all alive {conv:.2f}s = "
            f"{conv / HEARTBEAT:.1f} heartbeats after the last agent listened "
            f"(target ≤ 3: {'OK' if good else 'MISSES'})"
        )

        # kill -9
        victim, others = names[-1], names[:-1]
        t0 = time.monotonic()
        os.kill(ag.procs[victim].pid, signal.SIGKILL)
        ag.procs[victim].wait()
        wait_for(
            lambda: all(v[victim] in ("suspect", "down") for v in views(others).values()),
            30,
            0.01,
            "kill -9 to be seen",
        )
        k9 = time.monotonic() - t0
        good = k9 <= 1.0
        ok &= good
        print(
            f"kill -9 {victim}: all {len(others)} others see it suspect/down after "
            f"{k9 * 1000:.0f} ms (target ≤ 1000 ms: {'OK' if good else 'MISSES'})"
        )

        # SIGSTOP
        victim, others = names[-2], names[:-2]
        t0 = time.monotonic()
        os.kill(ag.procs[victim].pid, signal.SIGSTOP)
        try:
            first = None

            def seen() -> bool:
                nonlocal first
                vs = [v[victim] for v in views(others).values()]
                if first is None and any(s != "alive" for s in vs):
                    first = time.monotonic() - t0
                return all(s in ("suspect", "down") for s in vs)

            wait_for(seen, 30, 0.02, "SIGSTOP to be seen")
            st = time.monotonic() - t0
        finally:
            os.kill(ag.procs[victim].pid, signal.SIGCONT)
        good = st <= 3.5
        ok &= good
        print(
            f"SIGSTOP {victim}: first observer after {first:.2f}s, all {len(others)} see it "
            f"suspect after {st:.2f}s (target ≤ 3.5 s: {'OK' if good else 'MISSES'})"
        )
        wait_for(
            lambda: all(v[victim] == "alive" for v in views(others).values()),
            30,
            0.05,
            "SIGCONT to bring it back",
        )

        # run-chef '*' through the Python client: discover + call every live node.
        live = names[:-1]
        times = []
        for _ in range(5):
            wait_for(lambda: not any(f[n].flock_api.active() for n in live), 30, 0.05, "idle")
            t0 = time.monotonic()
            with Flock.connect(runtime_dir=ag.runtime_dir) as c:
                targets = [m["name"] for m in c.nodes() if m["state"] == "alive"]
                with ThreadPoolExecutor(min(32, len(targets))) as ex:
                    ids = list(ex.map(lambda n: c[n].flock_api.run_chef()["run_id"], targets))
            times.append(time.monotonic() - t0)
            assert len(set(ids)) == len(live), ids
        best, med = min(times), sorted(times)[len(times) // 2]
        good = med <= 0.25
        ok &= good
        print(
            f"run-chef '*' via the Python client: {len(live)} run ids in {med * 1000:.0f} ms "
            f"median, {best * 1000:.0f} ms best (target ≤ 250 ms: "
            f"{'OK' if good else 'MISSES'})"
        )

        # ... and through the real `flockctl` command (includes interpreter start-up).
        def wall(*args: str) -> tuple[float, subprocess.CompletedProcess]:
            t = time.monotonic()
            r = subprocess.run(
                [sys.executable, "-m", "flock_tui.main", *args],
                env=ag.env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            return time.monotonic() - t, r

        base = min(wall("--version")[0] for _ in range(3))
        cli_times = []
        for _ in range(3):
            wait_for(lambda: not any(f[n].flock_api.active() for n in live), 30, 0.05, "idle")
            dt, r = wall("--json", "run-chef", "*")
            assert r.returncode == 0, r.stderr
            assert len(json.loads(r.stdout)["runs"]) == len(live)
            cli_times.append(dt)
        cmed = sorted(cli_times)[1]
        print(
            f"run-chef '*' via `flockctl --json run-chef '*'`: {cmed * 1000:.0f} ms wall "
            f"(baseline `flockctl --version` {base * 1000:.0f} ms; difference "
            f"{(cmed - base) * 1000:.0f} ms)"
        )
        f.close()
    pool.shutdown()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
