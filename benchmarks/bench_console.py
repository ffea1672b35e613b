"""Console under load: a simulated flock of N nodes over SWIM, next to a 10-node baseline.

A fake flock runs in a child process (as real agents would, off the console's GIL): one entry
point answering `flock_api.status` (membership: swim) and `flock_api.members` with N
`api.Member` rows over a real Rep0 socket, rows changing every second (nodes starting and
ending runs, outboxes filling and draining, every age moving), and one Bus0 socket listening
on each node's bus address (N ipc listeners) that sends run_progress events, in each node's
own name, to the consoles connected to that node. The console is the real app with its real
connection (poll of `members`, bus connections to the nodes it looks at), headless at
140x40. Measured: key press -> effect latency (space marks the cursor row, up moves the
cursor), p50 and p95; the console process's CPU (cores); the bus connections the console
holds (most at any time, counted on its side as dialled addresses and nng pipes, and on the
flock's side as connected pipes: the real count, pynng's list on the console's side keeps
some closed pipes) while the operator pages through the whole table.

    .venv/bin/python benchmarks/bench_console.py [--nodes 1000] [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pynng  # noqa: E402
from textual import events  # noqa: E402

from flock_node.api import LastRun, Member, State  # noqa: E402
from flock_node.cli import build_parser  # noqa: E402
from flock_node.protocol import Codec, Envelope, Error, Event, Request, Response  # noqa: E402
from flock_node.transport import AsyncRpc, RpcServer  # noqa: E402
from flock_tui.app import FlockApp  # noqa: E402
from flock_tui.macros import ConsoleConfig  # noqa: E402
from flock_tui.watch import limits  # noqa: E402

EVENTS_PER_NODE = 5  # run_progress events a second from each converging node a console holds


# -- the simulated flock (child process) ---------------------------------------------------------
def member(i: int, d: Path, t: int, start: float) -> Member:
    """Node i's row at second t: each node converges 10 s in every 30 (a third at a time,
    about 70 rows starting or ending a run each second), outboxes move on a few, the ages of
    all of them every second."""
    phase = (t + i * 7919) % 30
    busy = phase < 10
    runs = (t + i * 7919) // 30
    ok = bool((i + runs) % 7)
    done = LastRun(id=f"r{runs}", status="ok" if ok else "failed", ok=ok,
                   started=start + t - phase, duration=10.0, updated=(i + runs) % 5,
                   kind="converge")
    return Member(
        name=f"node{i:04d}", state=State.ALIVE, address=f"tcp://10.0.{i // 250}.{i % 250}:7601",
        bus=f"ipc://{d}/node{i:04d}.bus", rpc=f"tcp://10.0.{i // 250}.{i % 250}:7601",
        incarnation=1, active=busy, run=None, last_run=done, last_converge=done,
        pending=(i + t // 5) % 3 if i % 10 == 0 else 0, dead_letters=0,
        tags=["web" if i % 2 else "db"], version="0.1.0", age=(t + i) % 3 + 0.25)


class FakeFlock:
    """The entry point and the nodes' buses."""

    def __init__(self, n: int, d: Path):
        self.n, self.d = n, d
        self.start = time.time()
        self.second = 0
        self.rows = [member(i, d, 0, self.start) for i in range(n)]
        self.codec = Codec(None, "node0000")
        self.codecs: dict[int, Codec] = {}
        self.most_pipes = self.pipes = 0

    async def handle(self, req: Request, env: Envelope, caller: Any) -> Response:
        if req.method == "members":
            return Response(req.call_id, True, result=self.rows)
        if req.method == "status":
            return Response(req.call_id, True, result={
                "name": "node0000", "membership": "swim", "pipes": self.pipes,
                "most_pipes": self.most_pipes})
        return Response(req.call_id, False, error=Error("unknown_method", req.method))

    async def run(self) -> None:
        # A socket per node, as each agent has its own: a Bus0 send goes to all its pipes.
        self.buses = []
        for i in range(self.n):
            b = pynng.Bus0(send_buffer_size=64)
            b.listen(f"ipc://{self.d}/node{i:04d}.bus")
            self.buses.append(b)
        server = RpcServer(self.codec, self.handle)
        server.listen(f"ipc://{self.d}/entry.rpc")
        server.start()
        print("ready", flush=True)
        tick, seq = 1.0 / EVENTS_PER_NODE, 0
        next_second = time.monotonic() + 1.0
        while True:
            await asyncio.sleep(tick)
            seq += 1
            if time.monotonic() >= next_second:
                next_second += 1.0
                self.second += 1
                self.rows = [member(i, self.d, self.second, self.start) for i in range(self.n)]
            connected = [i for i, b in enumerate(self.buses) if b.pipes]
            self.pipes = sum(len(self.buses[i].pipes) for i in connected)
            self.most_pipes = max(self.most_pipes, self.pipes)
            for i in connected:
                if not self.rows[i].active:
                    continue
                codec = self.codecs.setdefault(i, Codec(None, f"node{i:04d}"))
                ev = Event(f"node{i:04d}", "run_progress", time.time(), {
                    "run": f"r{self.second}", "resource": f"file[/etc/app/{seq % 7}.conf]",
                    "k": seq % 7, "n": 7})
                try:
                    self.buses[i].send(codec.encode(ev), block=False)
                except pynng.NNGException:
                    pass


def serve(n: int, d: Path) -> None:
    # The bench holds our stdin: when it ends, however it ends, so do we.
    threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
    asyncio.run(FakeFlock(n, d).run())


# -- the console (this process) -----------------------------------------------------------------
def press(app: FlockApp, key: str, char: str | None) -> None:
    """What the terminal driver does for a key (Pilot.press would also wait for idle)."""
    ev = events.Key(key, char)
    ev.set_sender(app)
    app._driver.send_message(ev)


async def measure(n: int, seconds: float) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="fbc-"))
    (root / "run").mkdir(mode=0o700)
    child = subprocess.Popen([sys.executable, __file__, "--serve", str(n), "--dir", str(root)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        return await console(n, seconds, root)
    finally:
        child.terminate()
        child.wait(10)


async def console(n: int, seconds: float, root: Path) -> dict[str, Any]:
    args = build_parser().parse_args(["--insecure", "--runtime-dir", str(root / "run"),
                                      "--seed", f"ipc://{root}/entry.bus"])
    app = FlockApp(args, config=ConsoleConfig())
    lat: list[float] = []
    most = {"dialled": 0, "pipes": 0}
    got = [0]
    on_event = app.connection.on_event

    def counted(ev: Event) -> None:
        got[0] += 1
        on_event(ev)

    app.connection.on_event = counted  # type: ignore[method-assign]

    async def sample() -> None:
        while True:
            c = app.connection
            most["dialled"] = max(most["dialled"], c.connections())
            if c.bus is not None:
                most["pipes"] = max(most["pipes"], len(c.bus.sock.pipes))
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    async with app.run_test(size=(140, 40)) as pilot:
        deadline = time.monotonic() + 30
        while len(app.shown) < n:
            if time.monotonic() > deadline:
                raise SystemExit(f"the console showed {len(app.shown)} of {n} rows in 30 s")
            await pilot.pause(0.05)
        await asyncio.sleep(1.0)  # warm up: the first bus connections, events flowing
        c0, w0, e0 = time.process_time(), time.perf_counter(), got[0]
        await asyncio.sleep(seconds / 2)
        cpu = (time.process_time() - c0) / (time.perf_counter() - w0)
        rate = (got[0] - e0) / (time.perf_counter() - w0)
        for j in range(40):  # key press -> effect
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
        # Page through the whole table: every row is on screen once, the connections follow.
        for _ in range(n // 25 + 1):
            press(app, "pagedown", None)
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        held = app.connection.connections()
        bus = app.connection.bus
        pipes_after = len(bus.sock.pipes) if bus is not None else 0
        rpc = AsyncRpc(Codec(None, "bench"), timeout=5.0)
        flock_side = await rpc.call(f"ipc://{root}/entry.rpc", "flock_api", "status")
        rpc.close()
    sampler.cancel()
    lat.sort()
    return {"n": n, "p50": statistics.median(lat) * 1000,
            "p95": lat[int(len(lat) * 0.95) - 1] * 1000, "cpu": cpu, "rate": rate,
            "held": held, "pipes_after": pipes_after, "most": most["dialled"],
            "most_pipes": most["pipes"],
            "flock_most": flock_side["most_pipes"], "flock_after": flock_side["pipes"]}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.serve:
        serve(a.serve, Path(a.dir))
        return 0
    base = asyncio.run(measure(10, a.seconds))
    big = asyncio.run(measure(a.nodes, a.seconds))
    print(f"{'nodes':>6} {'events/s':>9} {'key p50 ms':>11} {'key p95 ms':>11} "
          f"{'cpu cores':>10}   bus connections: most dialled / in pynng's pipe list / "
          "flock side; after paging through: the same three")
    for r in (base, big):
        print(f"{r['n']:>6} {r['rate']:>9.0f} {r['p50']:>11.1f} {r['p95']:>11.1f} "
              f"{r['cpu']:>10.2f}   {r['most']} / {r['most_pipes']} / {r['flock_most']}; "
              f"{r['held']} / {r['pipes_after']} / {r['flock_after']}")
    print(f"ratio {a.nodes}/10: key p95 x{big['p95'] / max(base['p95'], 1e-6):.1f}, "
          f"cpu x{big['cpu'] / max(base['cpu'], 1e-6):.1f}")
    cap = limits()[0]
    ok = big["p95"] < 100 and big["most"] <= cap + 1 and big["flock_most"] <= cap + 1
    print(f"targets (p95 < 100 ms, at most {cap} + 1 bus connections at {a.nodes} nodes):",
          "met" if ok else "NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
