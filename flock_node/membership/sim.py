"""A deterministic simulator of SWIM membership: the real state machine, a virtual network.

    python -m flock_node.membership.sim --nodes N --seconds S [--loss P] [--crash K]
        [--freeze K] [--partition F] [--seed X] [--json]

One event heap orders message deliveries, timers and faults on a virtual clock; one seeded
`random.Random` decides loss, delay and every protocol choice, so a seed replays a run exactly.
Messages are passed by reference (never copied), their bytes counted as msgspec encodes them
(a push-pull's: the sum of its entries' sizes, each measured once, as encoding it would give).
"""

from __future__ import annotations

import argparse
import gc
import heapq
import json
import os
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from flock_node.argtypes import parsed, positive_seconds, whole_number
from flock_node.membership.digest import Digest
from flock_node.membership.messages import (
    ALIVE,
    DOWN,
    LEFT,
    SUSPECT,
    Alive,
    Message,
    encode,
)
from flock_node.membership.ports import dispatch
from flock_node.membership.swim import Change, Config, Send, Swim, state_of
from flock_node.membership.wiresize import Hashes, Sizes

_DELIVER, _TICK, _FAULT = 0, 1, 2
_BAD = (SUSPECT, DOWN, LEFT)
_GONE = "gone"  # a member no longer in a table: neither alive nor bad
INF = float("inf")
T = TypeVar("T")


@dataclass
class Scenario:
    """What to simulate: the flock, the network and the faults."""

    nodes: int = 50
    seconds: float = 30.0
    loss: float = 0.0
    crash: int = 0
    freeze: int = 0
    partition: float = 0.0
    seed: int = 1
    delay: tuple[float, float] = (0.0005, 0.004)  # one-way, uniform: jitter
    fault_at: float | None = None  # default: 40 % into the run
    freeze_for: float = 5.0
    partition_for: float = 10.0
    seeds: int = 3
    start_window: float | None = None  # default min(5 s, 5 ms per node)
    config: Config = field(default_factory=Config)


class SimPort:
    """The simulator's `Transport` for one node: loss, delay, partitions, cut links."""

    __slots__ = ("sim", "i")

    def __init__(self, sim: Sim, i: int) -> None:
        self.sim, self.i = sim, i

    def send(self, addr: str, msg: Message) -> None:
        """Count the message and its bytes; deliver it later unless the network drops it."""
        self.sim._send(self.i, addr, msg)


class Views:
    """Who sees whom: the counts behind convergence, detection and false alarms, kept as
    the machines report their changes (the simulator's bookkeeping, apart from its network)."""

    sc: Scenario
    now: float
    nodes: list[Swim]
    names: list[str]
    index: dict[str, int]
    healthy: list[bool]
    h: int
    fault_at: float
    freeze_set: set[int]
    faulty_names: set[str]
    alive_views: list[int]  # healthy observers seeing node i alive
    bad_views: list[int]  # healthy observers seeing node i suspect/down/left
    good: int  # sum of alive_views over healthy nodes
    converged_at: float | None
    detected: dict[int, float]
    recovered: dict[int, float]
    false_dead: set[int]
    false_suspect: set[int]
    partition_dead: set[int]
    cut_window: bool  # from a partition until the flock re-converged after it
    healed_at: float | None
    heal_time: float | None

    def _forget(self, i: int) -> None:
        """Node `i` lost its table (a restart): what it saw is seen no more."""
        m = self.nodes[i]
        self._changes(i, [(n, state_of(e), _GONE) for n, e in m.table.items()])

    def _added(self, i: int, bulk: list[list[str]]) -> None:
        # Members added in bulk (a joiner's thousands) come as lists of names: C speed.
        if self.healthy[i]:
            faulty = self.faulty_names
            for names in bulk:
                hit = faulty.intersection(names)
                self.good += len(names) - len(hit)
                for j in map(self.index.__getitem__, hit):
                    self.alive_views[j] += 1
                    self._milestones(j)
            self._milestones(i)
        bulk.clear()

    def _changes(self, i: int, changes: list[Change]) -> None:
        index, healthy = self.index, self.healthy
        observer_ok = healthy[i]
        for node, old, new in changes:
            j = index.get(node)
            if j is None:
                continue
            if healthy[j] and new in (DOWN, SUSPECT):
                # A partition's verdicts keep arriving until the flock has re-converged:
                # counted apart, they are the protocol working, not a false alarm.
                if self.cut_window:
                    if new == DOWN:
                        self.partition_dead.add(j)
                elif new == DOWN:
                    self.false_dead.add(j)
                else:
                    self.false_suspect.add(j)
            if not observer_ok:
                continue
            if old == ALIVE:
                self.alive_views[j] -= 1
                if healthy[j]:
                    self.good -= 1
            elif old in _BAD:
                self.bad_views[j] -= 1
            if new == ALIVE:
                self.alive_views[j] += 1
                if healthy[j]:
                    self.good += 1
            elif new in _BAD:
                self.bad_views[j] += 1
            self._milestones(j)

    def _milestones(self, j: int) -> None:
        now = self.now
        if self.good == self.h * (self.h - 1):
            if self.converged_at is None:
                self.converged_at = now
            if self.healed_at is not None and self.heal_time is None:
                self.heal_time, self.cut_window = now - self.healed_at, False
        if self.healthy[j] or now < self.fault_at:
            return
        if j not in self.detected and self.bad_views[j] >= self.h:
            self.detected[j] = now - self.fault_at
        if (j in self.freeze_set and j in self.detected and j not in self.recovered
                and self.alive_views[j] >= self.h):
            self.recovered[j] = now - self.fault_at - self.sc.freeze_for


class Sim(Views):
    """The network, the clock and the bookkeeping of one scenario."""

    def __init__(self, sc: Scenario) -> None:
        self.sc = sc
        self.rng = random.Random(sc.seed)
        self.sizes = Sizes()
        self.now = 0.0
        self._heap: list[tuple[float, int, int, int, Any]] = []
        self._n = 0
        n = sc.nodes
        self.names = [f"n{i:05d}" for i in range(n)]
        self.index = {name: i for i, name in enumerate(self.names)}
        self._secret = self.rng.getrandbits(64)
        self.hashes = Hashes()
        self.nodes: list[Swim] = []
        window = sc.start_window if sc.start_window is not None else min(5.0, 0.005 * n)
        self.starts = [window * i / max(1, n) for i in range(n)]
        for name, start in zip(self.names, self.starts, strict=True):
            # Incarnations are start times in milliseconds, as the agent's are.
            me = Alive(name, round(start * 1000), f"{self.rng.getrandbits(32):08x}", name, 0,
                       {"tags": [], "active": False, "pending": 0, "dead": 0})
            self.nodes.append(self._machine(me))
        self.ports = [self.port(i) for i in range(n)]
        self.silent = [False] * n  # crashed or frozen: receives and sends nothing
        self.crashed = [False] * n
        self.tick_at = [INF] * n
        self.side = [0] * n  # partition side; messages cross only when all are on side 0
        self.partitioned = False
        self.cut_links: set[tuple[int, int]] = set()
        # Bookkeeping over "healthy" nodes (never faulted): who sees whom alive or not.
        fault_at = sc.fault_at if sc.fault_at is not None else 0.4 * sc.seconds
        self.fault_at = fault_at
        faulted = self.rng.sample(range(sc.seeds, n), min(n - sc.seeds, sc.crash + sc.freeze))
        self.crash_set = set(faulted[:sc.crash])
        self.freeze_set = set(faulted[sc.crash:])
        self.faulty_idx = self.crash_set | self.freeze_set
        self.faulty_names = {self.names[j] for j in self.faulty_idx}
        self.healthy = [i not in self.crash_set and i not in self.freeze_set for i in range(n)]
        self.h = sum(self.healthy)
        self.alive_views = [0] * n
        self.bad_views = [0] * n
        self.good = 0
        self.converged_at: float | None = None
        self.detected: dict[int, float] = {}
        self.recovered: dict[int, float] = {}
        self.false_dead: set[int] = set()
        self.false_suspect: set[int] = set()
        self.partition_dead: set[int] = set()
        self.cut_window = False
        self.healed_at: float | None = None
        self.heal_time: float | None = None
        self.msgs = 0
        self.bytes = 0
        self.max_awareness = 0
        self._plan()

    def port(self, i: int) -> SimPort:
        """Node `i`'s end of the simulated network."""
        return SimPort(self, i)

    def _machine(self, me: Alive) -> Swim:
        m = Swim(self._sign(me), self.rng, self.sc.config, vouch=self._vouch,
                 sign=self._sign, size=self.sizes.of, vouch_many=self._vouch_many)
        m.digest = Digest(self.hashes)
        m.bulk = []  # members added in bulk: counted from their names (Views._added)
        m.measure = self.sizes.entries
        return m

    # -- the simulated signature: stands for the driver's real check ----------------------
    def _tag(self, a: Alive) -> bytes:
        h = hash((self._secret, a.node, a.instance, a.incarnation, a.version))
        return (h & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big")

    def _sign(self, a: Alive) -> Alive:
        signed = Alive(a.node, a.incarnation, a.instance, a.addr, a.version, a.record,
                       self._tag(a))
        self.hashes.stamp(signed, len(encode(signed)))  # checked once, stays checked
        return signed

    def _vouch(self, a: Alive) -> bool:
        return self.hashes.signed(a) or a.sig == self._tag(a)

    def _vouch_many(self, alives: list[Alive]) -> list[bool]:
        if self.hashes.all_signed(alives):
            return [True] * len(alives)
        return list(map(self._vouch, alives))  # not all signed here: checked one by one

    # -- events ---------------------------------------------------------------------------
    def _push(self, t: float, kind: int, i: int, arg: Any) -> None:
        self._n += 1
        heapq.heappush(self._heap, (t, self._n, kind, i, arg))

    def _plan(self) -> None:
        sc, n = self.sc, self.sc.nodes
        for i in range(n):
            self._push(self.starts[i], _FAULT, i, "start")
        for i in self.crash_set:
            self._push(self.fault_at, _FAULT, i, "crash")
        for i in self.freeze_set:
            self._push(self.fault_at, _FAULT, i, "freeze")
            self._push(self.fault_at + sc.freeze_for, _FAULT, i, "thaw")
        if sc.partition > 0:
            self._push(self.fault_at, _FAULT, -1, "partition")
            self._push(self.fault_at + sc.partition_for, _FAULT, -1, "heal")

    def _fault(self, i: int, what: str) -> None:
        now, node = self.now, self.nodes[i] if i >= 0 else None
        if what == "start" and node is not None:
            k = self.sc.seeds
            seeds = self.names[:min(i, k)]
            self._handle(i, node.start(now, seeds))
        elif what == "crash":
            self.silent[i] = self.crashed[i] = True
        elif what == "freeze":
            self.silent[i] = True
        elif what == "thaw" and node is not None:
            self.silent[i] = False
            self.tick_at[i] = INF
            self._handle(i, node.tick(now))
        elif what == "partition":
            cut = max(1, round(self.sc.partition * self.sc.nodes))
            for j in range(self.sc.nodes - cut, self.sc.nodes):
                self.side[j] = 1
            self.partitioned = self.cut_window = True
        elif what == "heal":
            self.partitioned = False
            self.healed_at = now
            if self.good == self.h * (self.h - 1):
                self.heal_time, self.cut_window = 0.0, False

    def run(self) -> dict[str, Any]:
        """Run the scenario to its end; the figures (taken before collection resumes)."""
        wall = time.perf_counter()
        return _uncollected(lambda: self.advance(self.sc.seconds),
                            lambda: self.report(time.perf_counter() - wall))

    def advance(self, until: float) -> None:
        """Run every event up to virtual time `until`."""
        heap, nodes, silent, tick_at = self._heap, self.nodes, self.silent, self.tick_at
        pop = heapq.heappop
        while heap and heap[0][0] <= until:
            t, _, kind, i, arg = pop(heap)
            self.now = t
            if kind == _DELIVER:
                if not silent[i]:
                    self._handle(i, nodes[i].receive(t, arg))
            elif kind == _TICK:
                if t == tick_at[i] and not silent[i]:
                    tick_at[i] = INF
                    self._handle(i, nodes[i].tick(t))
            else:
                self._fault(i, arg)
        self.now = max(self.now, until)

    # -- what tests do to a running flock ------------------------------------------------
    def inject(self, i: int, msg: Message) -> None:
        """Hand node `i` a message now, as if it came from the network."""
        self._handle(i, self.nodes[i].receive(self.now, msg))

    def leave(self, i: int) -> None:
        """Node `i` announces its departure and goes silent."""
        self._handle(i, self.nodes[i].leave(self.now))
        self.silent[i] = True

    def restart(self, i: int, incarnation: int = 0) -> Swim:
        """Node `i` comes back as a new process with its state wiped (same name)."""
        name = self.names[i]
        me = Alive(name, incarnation, f"{self.rng.getrandbits(32):08x}", name, 0, None)
        self._forget(i)
        self.nodes[i] = self._machine(me)
        self.silent[i] = self.crashed[i] = False
        self.tick_at[i] = INF
        self._handle(i, self.nodes[i].start(self.now, self.names[:self.sc.seeds]))
        return self.nodes[i]

    def cut(self, i: int, j: int) -> None:
        """Drop every message from node `i` to node `j` (one direction)."""
        self.cut_links.add((i, j))

    def views(self, node: int) -> Counter[str | None]:
        """How the other live nodes see `node`: a count per state."""
        name = self.names[node]
        return Counter(n.state(name) for k, n in enumerate(self.nodes)
                       if k != node and not self.silent[k])

    def _handle(self, i: int, out: tuple[list[Send], list[Change]]) -> None:
        changes = dispatch(out, self.ports[i])
        node = self.nodes[i]
        if node.bulk:
            self._added(i, node.bulk)
        if changes:
            self._changes(i, changes)
        d = node.next_deadline()
        if d is not None and d < self.tick_at[i]:
            self.tick_at[i] = d
            self._push(d, _TICK, i, None)
        if node.awareness.score > self.max_awareness:
            self.max_awareness = node.awareness.score

    def _send(self, i: int, addr: str, msg: Message) -> None:
        self.msgs += 1
        self.bytes += self.sizes.message(msg)
        j = self.index.get(addr)
        if j is None or (self.sc.loss and self.rng.random() < self.sc.loss):
            return
        if self.partitioned and self.side[i] != self.side[j]:
            return
        if self.cut_links and (i, j) in self.cut_links:
            return
        lo, hi = self.sc.delay
        self._push(self.now + lo + self.rng.random() * (hi - lo), _DELIVER, j, msg)

    def report(self, wall: float) -> dict[str, Any]:
        """The figures of the run, JSON-ready."""
        sc = self.sc
        det = sorted(self.detected.values())
        faulted = len(self.crash_set) + len(self.freeze_set)
        return {
            "nodes": sc.nodes, "seconds": sc.seconds, "loss": sc.loss, "seed": sc.seed,
            "crash": len(self.crash_set), "freeze": len(self.freeze_set),
            "partition": sc.partition,
            "converged_s": _r(self.converged_at),
            "converged_now": self.good == self.h * (self.h - 1),
            "detect_s": {"p50": _r(statistics.median(det)) if det else None,
                         "max": _r(det[-1]) if det and len(det) == faulted else None,
                         "detected": len(det), "faulted": faulted},
            "recovered_s": {"max": _r(max(self.recovered.values()))
                            if self.recovered else None, "recovered": len(self.recovered)},
            "heal_s": _r(self.heal_time),
            "false_dead": len(self.false_dead),
            "false_suspect": len(self.false_suspect),
            "partition_dead": len(self.partition_dead),
            "max_awareness": self.max_awareness,
            "msgs_per_node_s": round(self.msgs / sc.nodes / sc.seconds, 3),
            "bytes_per_node_s": round(self.bytes / sc.nodes / sc.seconds, 1),
            "wall_s": round(wall, 2),
        }


def _uncollected(run: Callable[[], None], then: Callable[[], T]) -> T:
    """Call `run`, then `then` (its result returned), without cycle collection: the protocol
    makes no reference cycles, and at 10,000 nodes each full collection would walk 10,000
    tables of 10,000 entries (one as soon as collection resumed cost seconds)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        run()
        return then()
    finally:
        if collecting:
            gc.enable()


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def simulate(sc: Scenario) -> dict[str, Any]:
    """Run one scenario; its figures."""
    return Sim(sc).run()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m flock_node.membership.sim",
                                description="Simulate SWIM membership on a virtual network.")
    p.add_argument("--nodes", type=whole_number(2), required=True, help="members in the flock")
    p.add_argument("--seconds", type=positive_seconds, required=True, help="virtual seconds to run")
    p.add_argument("--loss", type=_fraction, default=0.0, help="message loss, 0..1")
    p.add_argument("--crash", type=whole_number(0), default=0, help="nodes that crash (silent forever)")
    p.add_argument("--freeze", type=whole_number(0), default=0,
                   help="nodes frozen for --freeze-for seconds, then resumed")
    p.add_argument("--freeze-for", type=positive_seconds, default=5.0)
    p.add_argument("--partition", type=_fraction, default=0.0,
                   help="fraction of nodes cut off for --partition-for seconds, then healed")
    p.add_argument("--partition-for", type=positive_seconds, default=10.0)
    p.add_argument("--fault-at", type=positive_seconds, default=None,
                   help="when faults start (default: 40%% into the run)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def _fraction(s: str) -> float:
    v = parsed(s, float, "a number")
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"must be from 0 up to (not including) 1: {s}")
    return v


def main(argv: list[str] | None = None) -> int:
    """The simulator's command line: one run, its figures as JSON or a short summary."""
    args = _parser().parse_args(argv)
    if args.crash + args.freeze > args.nodes - 3:
        _parser().error(f"--crash plus --freeze must leave the 3 seeds: at most {args.nodes - 3}")
    sc = Scenario(nodes=args.nodes, seconds=args.seconds, loss=args.loss, crash=args.crash,
                  freeze=args.freeze, partition=args.partition, seed=args.seed,
                  fault_at=args.fault_at, freeze_for=args.freeze_for,
                  partition_for=args.partition_for)
    gc.disable()  # for good: the process ends with the run (see the end of this file)
    r = simulate(sc)
    if args.json:
        print(json.dumps(r))
        return 0
    d = r["detect_s"]
    print(f"{r['nodes']} nodes, {r['seconds']:g} virtual s, loss {r['loss']:g}, seed {r['seed']}")
    print(f"  converged after {r['converged_s']} s (still converged at the end: "
          f"{r['converged_now']})")
    print(f"  faults seen by all: {d['detected']}/{d['faulted']}, p50 {d['p50']} s, "
          f"max {d['max']} s; healed partition re-converged after {r['heal_s']} s")
    print(f"  false dead {r['false_dead']}, false suspect {r['false_suspect']}")
    print(f"  {r['msgs_per_node_s']} msgs and {r['bytes_per_node_s']} bytes per node per s; "
          f"{r['wall_s']} s of wall time")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()  # then out at once: freeing 10,000 tables object by object took ~20 s
    os._exit(code)
