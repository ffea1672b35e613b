"""Converge N up-to-date `file` resources vs. a plain loop doing the same reads and compares.

    .venv/bin/python benchmarks/bench_engine.py [--files 1000] [--repeat 5]

Prints the best-of-N times and the ratio engine/baseline (target: within 3x). The engine figure
is a whole converge: compile the recipe, persist the resources, check every file, record
every result in the store, finish the run.
"""

from __future__ import annotations

import argparse
import os
import stat
import tempfile
import time
from pathlib import Path

from flock_node.engine import Engine, RunContext
from flock_node.store import Store

RECIPE = """
from flock_node.dsl import file
for i in range({n}):
    file({d!r} + f"/f{{i}}", content=f"content of file {{i}}\\n", mode=0o644)
"""


def baseline(d: str, n: int) -> None:
    """What any converge must do at least: read each file, compare content, stat the mode."""
    for i in range(n):
        path = f"{d}/f{i}"
        want = f"content of file {i}\n".encode()
        with open(path, "rb") as f:
            same = f.read() == want
        ok = same and stat.S_IMODE(os.stat(path).st_mode) == 0o644
        if not ok:
            raise SystemExit(f"{path} is not up to date")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    n = args.files
    with tempfile.TemporaryDirectory() as tmp:
        d = os.path.join(tmp, "files")
        os.mkdir(d)
        recipe = Path(tmp, "recipe.py")
        recipe.write_text(RECIPE.format(n=n, d=d))
        store = Store(Path(tmp, "state.db"), node="bench")
        engine = Engine("bench", [recipe], store)
        first = engine.converge(RunContext("warmup"))
        assert first["status"] == "ok" and first["updated"] == n, first

        engine_times, compile_times, base_times = [], [], []
        for k in range(args.repeat):
            t0 = time.perf_counter()
            r = engine.converge(RunContext(f"run-{k}"))
            engine_times.append(time.perf_counter() - t0)
            assert r["status"] == "ok" and r["updated"] == 0 and r["total"] == n, r
            t0 = time.perf_counter()
            engine.compile()
            compile_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            baseline(d, n)
            base_times.append(time.perf_counter() - t0)
        store.close()

    e, c, b = min(engine_times), min(compile_times), min(base_times)
    print(f"{n} up-to-date file resources, best of {args.repeat}")
    print(f"  engine converge (compile + persist + check + record): {e * 1000:8.2f} ms")
    print(f"    of which compile + persist resources:              {c * 1000:8.2f} ms")
    print(f"    check + record (converge - compile):               {(e - c) * 1000:8.2f} ms")
    print(f"  plain loop (read + compare + stat):                  {b * 1000:8.2f} ms")
    print(f"  ratio engine/plain: {e / b:.2f}x  (check + record only: {(e - c) / b:.2f}x)")


if __name__ == "__main__":
    main()
