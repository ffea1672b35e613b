"""Console under load: N simulated nodes heartbeating once a second.

Heartbeats (real `protocol.Heartbeat` structs, round-tripped through the real Codec so decode
cost counts) are fed to the app's bus handler from inside its loop; a third of the nodes are
converging with progress moving every beat, so rows really change. Measured, headless at
140x40: key press -> effect latency (space marks the cursor row, down moves the cursor), p50
and p95, and the console process CPU (cores) while idle under that load. Printed for 10 nodes
(the baseline) and 1,000 nodes, with the ratio.

    .venv/bin/python benchmarks/bench_console.py [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from textual import events  # noqa: E402

from flock_node.cli import build_parser  # noqa: E402
from flock_node.protocol import Codec, Heartbeat, RunProgress, RunSummary  # noqa: E402
from flock_tui.app import FlockApp  # noqa: E402
from flock_tui.macros import ConsoleConfig  # noqa: E402


def members(n: int) -> list[dict]:
    return [{"name": f"node{i:04d}", "state": "alive", "address": f"tcp://10.0.{i // 250}.{i % 250}:7601",
             "bus": "", "rpc": "", "incarnation": 1, "active": False, "run": None,
             "last_run": None, "pending": 0, "dead_letters": 0, "tags": ["web" if i % 2 else "db"],
             "version": "0.1.0", "age": 0.0} for i in range(n)]


async def feed(app: FlockApp, n: int, stop: asyncio.Event, counter: list[int]) -> None:
    """Every node beats once a second, spread evenly over the second."""
    codec = Codec(None, "bench")
    seq = 0
    tick = 0.02
    i = 0
    start = time.time()
    t0 = time.perf_counter()
    while not stop.is_set():
        seq += 1
        # Catch up to exactly n beats per second of wall time, whatever the loop's delays.
        due = int((time.perf_counter() - t0) * n) - i
        for _ in range(max(0, due)):
            k = i % n
            busy = k % 3 == 0
            hb = Heartbeat(
                node=f"node{k:04d}", incarnation=1, seq=seq, bus="", rpc="", tags=["web"],
                active=busy,
                run=RunProgress(id="r", resource=f"file[/etc/app/{seq % 7}.conf]", k=seq % 7,
                                n=7, started=start) if busy else None,
                last_run=RunSummary(id="p", status="ok", started=start - 30, duration=2.5,
                                    updated=seq % 5),
            )
            env, msg = codec.decode(codec.encode(hb), check_replay=False)
            app.on_bus_message(env, msg, 0)
            counter[0] += 1
            i += 1
        await asyncio.sleep(tick)


def press(app: FlockApp, key: str, char: str | None) -> None:
    """What the terminal driver does for a key (Pilot.press would also wait for idle)."""
    ev = events.Key(key, char)
    ev.set_sender(app)
    app._driver.send_message(ev)


async def measure(n: int, seconds: float) -> dict:
    args = build_parser().parse_args(["--insecure"])
    app = FlockApp(args, config=ConsoleConfig(), connect=False)
    lat: list[float] = []
    async with app.run_test(size=(140, 40)) as pilot:
        while not app.ready:
            await pilot.pause(0.01)
        app.apply_members(members(n))
        app.flush()
        await pilot.pause(0.2)
        stop = asyncio.Event()
        counter = [0]
        task = asyncio.create_task(feed(app, n, stop, counter))
        await asyncio.sleep(1.0)  # warm up
        # CPU while idle under load
        c0, w0, b0 = time.process_time(), time.perf_counter(), counter[0]
        await asyncio.sleep(seconds / 2)
        cpu = (time.process_time() - c0) / (time.perf_counter() - w0)
        rate = (counter[0] - b0) / (time.perf_counter() - w0)
        # key press -> effect
        for j in range(40):
            before_cursor = app.cursor_node()
            if j % 2 == 0:
                target = before_cursor
                was = target in app.marks
                t0 = time.perf_counter()
                press(app, "space", " ")
                while (target in app.marks) == was or app.shown[target]["mark"].plain == (
                        "●" if was else " "):
                    await asyncio.sleep(0.0005)
            else:
                t0 = time.perf_counter()
                press(app, "up", None)
                while app.cursor_node() == before_cursor:
                    await asyncio.sleep(0.0005)
            lat.append(time.perf_counter() - t0)
            await asyncio.sleep(seconds / 2 / 40)
        stop.set()
        await task
    lat.sort()
    return {"n": n, "p50": statistics.median(lat) * 1000,
            "p95": lat[int(len(lat) * 0.95) - 1] * 1000, "cpu": cpu, "rate": rate}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=8.0)
    a = p.parse_args()
    base = asyncio.run(measure(10, a.seconds))
    big = asyncio.run(measure(1000, a.seconds))
    print(f"{'nodes':>6} {'hb/s':>7} {'key p50 ms':>11} {'key p95 ms':>11} {'cpu cores':>10}")
    for r in (base, big):
        print(f"{r['n']:>6} {r['rate']:>7.0f} {r['p50']:>11.1f} {r['p95']:>11.1f} "
              f"{r['cpu']:>10.2f}")
    print(f"ratio 1000/10: key p95 x{big['p95'] / max(base['p95'], 1e-6):.1f}, "
          f"cpu x{big['cpu'] / max(base['cpu'], 1e-6):.1f}")
    ok = big["p95"] < 100 and big["cpu"] < 0.5
    print("targets (p95 < 100 ms, cpu < 0.5 core at 1,000 nodes):", "met" if ok else "NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
