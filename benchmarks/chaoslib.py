"""The chaos harness: real agents in their own network namespaces, a steady stream of
notifications through a two-hop chain, random faults, and a count of what the flock promised.

Shared by `benchmarks/chaos.py` (long runs) and `tests/test_chaos.py` (a short run in CI).

The flock: `src` → `mid-1..K` → `dst`. The harness (a pump process in a client namespace that
is never faulted) calls `resource_manager.notify("execute[step-J]", "run", id=ROOT)` on `src`
with an explicit root id; src's `execute[step-J]` remote_notifies `execute[relay]` on `mid-J`,
whose relay remote_notifies `execute[sink]` on `dst`; the sink appends
`$FLOCK_ORIGIN $FLOCK_NOTIFICATION` to a file. Without those variables (an older agent) the
lines carry `?` and only counts can be compared.

Faults, drawn from a seeded RNG: kill -9 then restart, SIGSTOP for a few seconds then SIGCONT,
SIGTERM then restart, a partition (the node's veth in the bridge namespace set down, then
up), and a slow link (tbf at 64 kbit/s both ways for a few seconds; this kernel has no netem). Without namespaces (not root, no `ip`, netns refused) agents run on 127.0.0.1 with their
own ports, partitions and slow links are skipped, and the result says so in `network`.

Counted: sent (roots the pump got acknowledged), applied (distinct acknowledged origins in the
sink file), lost (acknowledged, never applied once faults stopped and outboxes drained, within
a deadline), doubled (origins applied more than once), exited_on_their_own (agents that exited
without the harness killing them; the harness restarts them). The promise: lost == doubled ==
exited_on_their_own == 0 and applied == sent.

Also runnable as `python benchmarks/chaoslib.py pump ...`: the pump, started by the harness.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import free_port  # benchmarks/ is on the path: as a script and from the test

KINDS = ("kill9", "stop", "term", "partition", "slow")
PORT = 7600  # inside namespaces every agent has its own address, so one port for all
SUBNET = "10.77.0"
UP_MARK = "up (incarnation"
NO_ID = "?"


# -- pure parts: the fault plan and the tally ----------------------------------------------------
@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the stream started
    node: str
    kind: str
    duration: float  # SIGSTOP or partition length; the pause before a restart


def plan_faults(rng: random.Random, count: int, window: tuple[float, float], nodes: list[str],
                kinds: tuple[str, ...], duration: tuple[float, float]) -> list[Fault]:
    """`count` faults spread evenly over `window` with jitter, each on a random node; the
    kinds are dealt from shuffled decks, so even a short run sees every kind."""
    if count <= 0 or not nodes or not kinds:
        return []
    start, end = window
    slot = (end - start) / count
    deck: list[str] = []
    out = []
    for k in range(count):
        if not deck:
            deck = list(kinds)
            rng.shuffle(deck)
        at = start + slot * k + rng.uniform(0, slot * 0.5)
        out.append(Fault(round(at, 3), rng.choice(nodes), deck.pop(),
                         round(rng.uniform(*duration), 3)))
    return out


def parse_sink(lines: list[str]) -> tuple[Counter[str], int]:
    """(origin → times applied, lines without an origin) from the sink file's lines."""
    origins: Counter[str] = Counter()
    anonymous = 0
    for line in lines:
        parts = line.split()
        if not parts:
            continue
        if parts[0] == NO_ID:
            anonymous += 1
        else:
            origins[parts[0]] += 1
    return origins, anonymous


def doubled_kinds(lines: list[str], doubled: list[str]) -> dict[str, list[str]]:
    """Why each doubled origin doubled: `rerun` when every line carries the same notification
    (its action ran again, e.g. after a kill -9 between the command and the commit);
    `distinct` when several notifications reached the sink for one root (a chain doubled)."""
    want = set(doubled)
    seen: dict[str, set[str]] = {}
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] in want:
            seen.setdefault(parts[0], set()).add(parts[1])
    out: dict[str, list[str]] = {"rerun": [], "distinct": []}
    for o in doubled:
        out["rerun" if len(seen.get(o, ())) == 1 else "distinct"].append(o)
    return out


def tally(acked: list[str], sink_lines: list[str]) -> dict[str, Any]:
    """The promise's counters: by origin id when the sink lines carry one, else by count."""
    origins, anonymous = parse_sink(sink_lines)
    sent = set(acked)
    if origins and not anonymous:
        lost = sorted(sent - set(origins))
        doubled = sorted(o for o, c in origins.items() if c > 1)
        extra = sorted(set(origins) - sent)
        why = doubled_kinds(sink_lines, doubled)
        return {
            "identification": "by origin (FLOCK_ORIGIN)",
            "sent": len(sent), "applied": len(sent & set(origins)),
            "lost": len(lost), "doubled": len(doubled),
            "doubled_reruns": len(why["rerun"]), "doubled_chains": len(why["distinct"]),
            "sink_lines": sum(origins.values()),
            # Attempts after a crash cut one (FLOCK_ATTEMPT > 1) that had to apply the effect:
            # how often a kill landed inside a reaction before its effect.
            "reapplied_after_crash": sum(1 for line in sink_lines
                                         if len(line.split()) >= 3 and line.split()[2] != "1"),
            "applied_but_not_acknowledged": len(extra),
            "lost_ids": lost[:10], "doubled_ids": doubled[:10],
            "doubled_times": {o: origins[o] for o in doubled[:10]},
        }
    n = sum(origins.values()) + anonymous
    return {
        "identification": "counts only (the sink saw no FLOCK_ORIGIN: lost and doubled are "
                          "lower bounds, one can hide the other)",
        "sent": len(sent), "applied": min(n, len(sent)),
        "lost": max(0, len(sent) - n), "doubled": max(0, n - len(sent)),
        "sink_lines": n,
    }


_CRASH = re.compile(r" (?:task|loop) \S+ crashed")
_NOISE = re.compile(r"\b[0-9a-f]{6,}\b|\b\d+(\.\d+)?\b|'[^']*'|\"[^\"]*\"")


def log_findings(texts: dict[str, str], limit: int = 12) -> list[dict[str, Any]]:
    """ERROR/CRITICAL lines and tracebacks of every agent log, grouped by their shape."""
    groups: dict[str, dict[str, Any]] = {}
    for node, text in texts.items():
        for line in text.splitlines():
            if " ERROR " not in line and " CRITICAL " not in line and not line.startswith(
                    "Traceback"):
                continue
            msg = line.split(": ", 1)[1] if ": " in line else line
            shape = _NOISE.sub("#", msg)[:160]
            g = groups.setdefault(shape, {"count": 0, "nodes": set(), "example": line[:300]})
            g["count"] += 1
            g["nodes"].add(node.split(".")[0])
    rows = sorted(groups.values(), key=lambda g: -g["count"])[:limit]
    return [{**g, "nodes": sorted(g["nodes"])} for g in rows]


def crash_tracebacks(texts: dict[str, str], limit: int = 5) -> list[str]:
    """The tracebacks logged after a crash (a loop restarted, an agent died), whole: the
    line that names the crash and the traceback under it."""
    out: list[str] = []
    for node, text in texts.items():
        lines = text.splitlines()
        for i, line in enumerate(lines):
            if not _CRASH.search(line):
                continue
            block = [line]
            for nxt in lines[i + 1:i + 60]:
                if not nxt.startswith((" ", "Traceback", "\t")) and block[-1].strip() and \
                        len(block) > 1 and not block[-1].startswith(" "):
                    break
                block.append(nxt)
                if nxt and not nxt.startswith((" ", "Traceback")):
                    break  # the exception line ends the traceback
            out.append(f"{node}:\n" + "\n".join(block))
            if len(out) >= limit:
                return out
    return out


# -- the network: namespaces around a bridge, or loopback ----------------------------------------
class NetworkUnavailable(Exception):
    pass


def _ip(*args: str, tool: str = "ip") -> None:
    r = subprocess.run([tool, *args], capture_output=True, text=True, timeout=20)
    if r.returncode != 0:
        raise NetworkUnavailable(f"`{tool} {' '.join(args)}` failed: {r.stderr.strip()}")


class Netns:
    """One namespace per host (agents and the client), each with a veth into a bridge that
    lives in its own namespace: nothing in the root namespace's network, no route out."""

    kind = "netns"

    def __init__(self, hosts: int):
        # pid + random: parallel runs (and leftovers of a killed one) never collide.
        self.prefix = f"chaos{os.getpid()}{uuid.uuid4().hex[:4]}"
        self.hosts = hosts
        self.bridge = f"{self.prefix}-br"
        self.made: list[str] = []

    def ns(self, i: int) -> str:
        """The namespace of host i."""
        return f"{self.prefix}-{i}"

    def host(self, i: int) -> str:
        """Host i's address, reachable only from the other namespaces on the bridge."""
        return f"{SUBNET}.{i + 2}"

    def port(self, i: int) -> int:
        return PORT

    def setup(self) -> None:
        """Create the bridge and one namespace per host; NetworkUnavailable says why not."""
        if os.geteuid() != 0:
            raise NetworkUnavailable("not root")
        if shutil.which("ip") is None:
            raise NetworkUnavailable("`ip` (iproute2) is not installed")
        try:
            _ip("netns", "add", self.bridge)
            self.made.append(self.bridge)
            _ip("-n", self.bridge, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.bridge, "link", "set", "br0", "up")
            for i in range(self.hosts):
                ns = self.ns(i)
                _ip("netns", "add", ns)
                self.made.append(ns)
                _ip("-n", self.bridge, "link", "add", f"v{i}", "type", "veth", "peer", "name",
                    "eth0", "netns", ns)
                _ip("-n", self.bridge, "link", "set", f"v{i}", "master", "br0", "up")
                _ip("-n", ns, "addr", "add", f"{self.host(i)}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except Exception:
            self.close()
            raise

    def wrap(self, i: int, cmd: list[str]) -> list[str]:
        """`cmd` run inside host i's namespace (`ip netns exec` execs: same pid)."""
        return ["ip", "netns", "exec", self.ns(i), *cmd]

    def link(self, i: int, up: bool) -> None:
        """Partition host i (its veth on the bridge down) or heal it."""
        _ip("-n", self.bridge, "link", "set", f"v{i}", "up" if up else "down")

    def slow(self, i: int, on: bool) -> None:
        """A congested link: tbf on both ends of host i's veth (64 kbit/s), or back to normal."""
        for ns, dev in ((self.bridge, f"v{i}"), (self.ns(i), "eth0")):
            if on:
                _ip("-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", "64kbit",
                    "burst", "4kb", "latency", "400ms", tool="tc")
            else:
                _ip("-n", ns, "qdisc", "del", "dev", dev, "root", tool="tc")

    def close(self) -> None:
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
        self.made.clear()


class Loopback:
    """Every host on 127.0.0.1 with its own port pair; no partitions."""

    kind = "loopback"

    def __init__(self, hosts: int):
        self.ports = [free_port() for _ in range(hosts)]

    def host(self, i: int) -> str:
        return "127.0.0.1"

    def port(self, i: int) -> int:
        return self.ports[i]

    def setup(self) -> None:
        pass

    def wrap(self, i: int, cmd: list[str]) -> list[str]:
        return cmd

    def link(self, i: int, up: bool) -> None:
        raise NetworkUnavailable("no partitions on loopback")

    def slow(self, i: int, on: bool) -> None:
        raise NetworkUnavailable("no slow links on loopback")

    def close(self) -> None:
        pass


# -- agents ------------------------------------------------------------------------------------
SRC = """
from flock_node.dsl import execute
for j in range(1, {mids} + 1):
    execute(f"step-{{j}}", command="true", action="nothing").remote_notifies(
        "run", "execute[relay]", node=f"mid-{{j}}")
"""
MID = """
from flock_node.dsl import execute
execute("relay", command="true", action="nothing").remote_notifies(
    "run", "execute[sink]", node="dst")
"""
# The sink is idempotent the way a Chef resource is: when Flock says an earlier attempt of
# this notification was cut by a crash (FLOCK_ATTEMPT > 1), it checks whether that attempt's
# effect landed before acting. A first attempt never checks, so a notification Flock applies
# twice without saying so still shows as doubled.
DST = """
from flock_node.dsl import execute
execute("sink", action="nothing",
        command='if [ "${{FLOCK_ATTEMPT:-1}}" != 1 ] && grep -q " ${{FLOCK_NOTIFICATION}} " {sink}; '
                'then exit 0; fi; '
                'echo "${{FLOCK_ORIGIN:-?}} ${{FLOCK_NOTIFICATION:-?}} ${{FLOCK_ATTEMPT:-1}}" >> {sink}')
"""


@dataclass
class Agent:
    name: str
    index: int  # host index in the network
    cmd: list[str]
    log: Path
    proc: subprocess.Popen | None = None
    expected_exit: bool = False  # the harness signalled it
    starts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def output(self) -> str:
        """Everything the agent logged, across its restarts."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class ChaosConfig:
    agents: int = 4  # src, mid-1..agents-2, dst
    seconds: float = 20.0  # length of the notification stream
    rate: float = 20.0  # roots per second
    faults: int = 6
    seed: int = 1
    drain: float = 20.0  # deadline for everything to arrive once faults stop
    fault_s: tuple[float, float] = (1.0, 3.0)
    kinds: tuple[str, ...] = KINDS
    heartbeat: float = 0.5
    network: str = "auto"  # auto | netns | loopback
    root: Path | None = None
    keep: bool = False  # keep the temporary dir (logs, state) for a post-mortem


class Chaos:
    """One chaos run: set up, stream, inject, drain, count, tear down (always)."""

    def __init__(self, cfg: ChaosConfig):
        if cfg.agents < 3:
            raise ValueError("--agents must be at least 3 (src, a mid, dst)")
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.root = cfg.root or Path(tempfile.mkdtemp(prefix="chaos"))
        self.names = ["src", *[f"mid-{j}" for j in range(1, cfg.agents - 1)], "dst"]
        self.client = len(self.names)  # host index of the pump
        self.net: Netns | Loopback = Loopback(0)
        self.net_note = ""
        self.agents: dict[str, Agent] = {}
        self.exits: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.faults_done: Counter[str] = Counter()
        self.pump: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._closed = False
        self.sink = self.root / "sink.txt"
        self.acked = self.root / "acked.txt"
        self.key = self.root / "flock.key"
        atexit.register(self.close)

    # -- setup ---------------------------------------------------------------------------------
    def _network(self) -> None:
        hosts = len(self.names) + 1
        want = self.cfg.network
        if want in ("auto", "netns"):
            net = Netns(hosts)
            try:
                net.setup()
                self.net, self.net_note = net, f"netns ({SUBNET}.0/24, bridge in {net.bridge})"
                return
            except NetworkUnavailable as e:
                if want == "netns":
                    raise
                reason = str(e)
        else:
            reason = "asked for loopback"
        self.net = Loopback(hosts)
        self.net_note = f"loopback (namespaces unavailable: {reason})"

    def bus(self, i: int) -> str:
        """Host i's bus address (also its --listen)."""
        return f"tcp://{self.net.host(i)}:{self.net.port(i)}"

    def rpc(self, i: int) -> str:
        """Host i's RPC address (the bus port + 1)."""
        return f"tcp://{self.net.host(i)}:{self.net.port(i) + 1}"

    def setup(self) -> None:
        """Network, key, recipes; start every agent and wait until all see each other."""
        from flock_node.protocol import generate_key_file

        self._network()
        generate_key_file(self.key)
        mids = len(self.names) - 2
        texts = {"src": SRC.format(mids=mids), "dst": DST.format(sink=self.sink)}
        for i, name in enumerate(self.names):
            recipe = self.root / f"{name}.py"
            recipe.write_text(texts.get(name, MID))
            cmd = [sys.executable, "-m", "flock_node.cli_node", "run", name,
                   "--recipe", str(recipe), "--listen", self.bus(i),
                   "--key-file", str(self.key), "--heartbeat", str(self.cfg.heartbeat),
                   "--state-dir", str(self.root / "state" / name),
                   "--runtime-dir", str(self.root / "run" / name), "--log-level", "info"]
            for j in range(len(self.names)):
                if j != i:
                    cmd += ["--seed", self.bus(j)]
            self.agents[name] = Agent(name, i, self.net.wrap(i, cmd), self.root / f"{name}.log")
        for a in self.agents.values():
            self._start(a)
        for a in self.agents.values():
            if not self._wait_up(a, 1, 60.0):
                raise RuntimeError(f"{a.name} did not start:\n{a.output()[-3000:]}")
        # Every node sees the others before the stream starts: a root accepted while src does
        # not know mid-J yet would only test discovery.
        deadline = time.monotonic() + 30.0
        while not all(self._sees_all(a) for a in self.agents.values()):
            if time.monotonic() > deadline:
                raise RuntimeError("the agents did not all see each other within 30 s")
            time.sleep(0.2)

    def _sees_all(self, a: Agent) -> bool:
        text = a.output()
        return all(f"{n}: new → alive" in text for n in self.names if n != a.name)

    def _start(self, a: Agent) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", FLOCK_CONFIG_DIR=str(self.root / "config"))
        for k in ("FLOCK_KEY_FILE", "FLOCK_STATE_DIR", "FLOCK_SEEDS", "FLOCK_RUNTIME_DIR"):
            env.pop(k, None)
        with open(a.log, "ab") as fh:
            a.proc = subprocess.Popen(a.cmd, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                      start_new_session=True)
        a.starts += 1
        a.expected_exit = False

    def _wait_up(self, a: Agent, nth: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if a.output().count(UP_MARK) >= nth:
                return True
            if a.proc is not None and a.proc.poll() is not None and not a.expected_exit:
                break
            time.sleep(0.1)
        return False

    # -- faults --------------------------------------------------------------------------------
    def _signal(self, a: Agent, sig: int) -> None:
        if a.proc is not None and a.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(a.proc.pid, sig)

    def _apply(self, f: Fault) -> None:
        a = self.agents[f.node]
        ev: dict[str, Any] = {"t": f.at, "node": f.node, "kind": f.kind, "s": f.duration}
        if f.kind in ("partition", "slow") and isinstance(self.net, Loopback):
            ev["skipped"] = "needs namespaces"
            self.events.append(ev)
            return
        if f.kind == "stop":
            self._signal(a, signal.SIGSTOP)
            self._stop.wait(f.duration)
            self._signal(a, signal.SIGCONT)
        elif f.kind == "partition":
            self.net.link(a.index, False)
            self._stop.wait(f.duration)
            self.net.link(a.index, True)
        elif f.kind == "slow":
            self.net.slow(a.index, True)
            try:
                self._stop.wait(f.duration)
            finally:
                self.net.slow(a.index, False)
        else:
            with a.lock:
                a.expected_exit = True
                assert a.proc is not None
                self._signal(a, signal.SIGKILL if f.kind == "kill9" else signal.SIGTERM)
                try:
                    code = a.proc.wait(30.0)
                except subprocess.TimeoutExpired:
                    ev["finding"] = "still running 30 s after SIGTERM: killed"
                    a.proc.kill()
                    code = a.proc.wait(10)
                ev["exit_code"] = code
                if f.kind == "term" and code != 0:
                    ev["finding"] = f"exit code {code} after SIGTERM (expected 0)"
                self._stop.wait(min(f.duration, 1.0))
                nth = a.output().count(UP_MARK) + 1
                self._start(a)
            if not self._wait_up(a, nth, 30.0):
                ev["finding"] = "did not come back up within 30 s"
        self.faults_done[f.kind] += 1
        self.events.append(ev)

    def _fault_loop(self, plan: list[Fault], t0: float) -> None:
        for f in plan:
            delay = t0 + f.at - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            try:
                self._apply(f)
            except Exception as e:  # noqa: BLE001 - a harness failure is reported, not hidden
                self.events.append({"t": f.at, "node": f.node, "kind": f.kind,
                                    "harness_error": repr(e)})

    def _watch(self) -> None:
        """Agents that exit without the harness asking are counted and restarted."""
        while not self._stop.wait(0.2):
            for a in self.agents.values():
                with a.lock:
                    if a.proc is None or a.expected_exit or a.proc.poll() is None:
                        continue
                    tail = a.output().splitlines()[-12:]
                    self.exits.append({"node": a.name, "code": a.proc.returncode,
                                       "log_tail": tail})
                    self._start(a)

    # -- the stream ----------------------------------------------------------------------------
    def _start_pump(self) -> None:
        cmd = [sys.executable, str(Path(__file__).resolve()), "pump",
               "--addr", self.rpc(0), "--key-file", str(self.key),
               "--rate", str(self.cfg.rate), "--seconds", str(self.cfg.seconds),
               "--steps", str(len(self.names) - 2), "--acked", str(self.acked),
               "--prefix", f"c{self.cfg.seed}-{uuid.uuid4().hex[:6]}-"]
        with open(self.root / "pump.log", "wb") as fh:
            self.pump = subprocess.Popen(self.net.wrap(self.client, cmd), stdout=fh,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def _read_acked(self) -> list[str]:
        if not self.acked.exists():
            return []
        return [x for x in self.acked.read_text().split("\n") if x]

    def _read_sink(self) -> list[str]:
        return self.sink.read_text().splitlines() if self.sink.exists() else []

    def queues(self) -> dict[str, dict[str, int]]:
        """Per node: outbox and inbox rows by status, read from its SQLite file."""
        out = {}
        for name in self.names:
            db = self.root / "state" / name / "flock.db"
            try:
                c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2.0)
                try:
                    rows = {f"outbox_{s}": n for s, n in c.execute(
                        "SELECT status, COUNT(*) FROM outbox GROUP BY status")}
                    rows.update({f"inbox_{s}": n for s, n in c.execute(
                        "SELECT status, COUNT(*) FROM inbox GROUP BY status")})
                finally:
                    c.close()
            except sqlite3.Error as e:  # busy or not created yet: "not yet"
                rows = {"error": str(e)}
            out[name] = rows
        return out

    def _quiet(self) -> bool:
        q = self.queues()
        return all(not r.get("error") and not r.get("outbox_pending") and not r.get(
            "outbox_held") and not r.get("inbox_pending") for r in q.values())

    def _complete(self, acked: list[str]) -> bool:
        origins, anonymous = parse_sink(self._read_sink())
        if origins and not anonymous:
            return set(acked) <= set(origins)
        return sum(origins.values()) + anonymous >= len(acked)

    # -- the run -------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run the whole scenario; returns the result (tear-down included)."""
        t_setup = time.monotonic()
        try:
            self.setup()
            setup_s = time.monotonic() - t_setup
            cfg = self.cfg
            # Faults over the middle of the stream, ending well before it does: the last
            # seconds of the stream run on a healed flock.
            window = (min(2.0, cfg.seconds * 0.1), cfg.seconds * 0.85)
            plan = plan_faults(self.rng, cfg.faults, window, self.names, cfg.kinds, cfg.fault_s)
            watcher = threading.Thread(target=self._watch, daemon=True)
            watcher.start()
            t0 = time.monotonic()
            self._start_pump()
            faulter = threading.Thread(target=self._fault_loop, args=(plan, t0), daemon=True)
            faulter.start()
            assert self.pump is not None
            try:
                self.pump.wait(cfg.seconds + 60)
            except subprocess.TimeoutExpired:
                self.pump.kill()
            faulter.join(120)
            stream_s = time.monotonic() - t0
            acked = self._read_acked()
            t_drain = time.monotonic()
            drained = False
            while time.monotonic() - t_drain < cfg.drain:
                if self._complete(acked) and self._quiet():
                    drained = True
                    break
                time.sleep(0.25)
            drain_s = time.monotonic() - t_drain
            if drained:
                time.sleep(1.5)  # late retries show up as doubles here, not after we counted
            self._stop.set()
            watcher.join(5)
            result = tally(acked, self._read_sink())
            queues = self.queues()
            # Supervised loops restart instead of taking the agent down: count them too.
            crashes = sum(len(_CRASH.findall(a.output())) for a in self.agents.values())
            tracebacks = crash_tracebacks({n: a.output() for n, a in self.agents.items()})
            return {
                "network": self.net_note,
                "agents": len(self.names), "seconds": cfg.seconds, "rate": cfg.rate,
                "seed": cfg.seed, "faults_planned": cfg.faults,
                "faults": dict(self.faults_done),
                **{k: result[k] for k in ("sent", "applied", "lost", "doubled")},
                "exited_on_their_own": len(self.exits),
                "loops_crashed": crashes, "crash_tracebacks": tracebacks,
                **{k: v for k, v in result.items()
                   if k not in ("sent", "applied", "lost", "doubled")},
                "drained": drained, "setup_s": round(setup_s, 1),
                "stream_s": round(stream_s, 1), "drain_s": round(drain_s, 1),
                "pump": self._pump_summary(),
                "queues_at_end": {n: q for n, q in queues.items()
                                  if any(k != "outbox_delivered" and k != "inbox_applied"
                                         for k in q)},
                "exits": self.exits[:10],
                "fault_log": [" ".join(f"{k}={v}" for k, v in e.items()) for e in self.events],
                "fault_findings": [e for e in self.events
                                   if "finding" in e or "harness_error" in e],
                "log_findings": log_findings({a.log.name: a.output()
                                              for a in self.agents.values()}),
                "dir": str(self.root) if cfg.keep else None,
            }
        finally:
            self.close()

    def _pump_summary(self) -> dict[str, Any]:
        text = (self.root / "pump.log").read_text(errors="replace") if (
            self.root / "pump.log").exists() else ""
        for line in reversed(text.splitlines()):
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    return json.loads(line)
        return {"error": "no summary from the pump", "log_tail": text.splitlines()[-5:]}

    def close(self) -> None:
        """Kill every process we started and remove the namespaces; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        procs = [a.proc for a in self.agents.values() if a.proc is not None]
        if self.pump is not None:
            procs.append(self.pump)
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGCONT)  # a stopped one must be able to die
                    os.killpg(p.pid, signal.SIGKILL)
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)
        with contextlib.suppress(Exception):
            self.net.close()
        if not self.cfg.keep and self.cfg.root is None:
            shutil.rmtree(self.root, ignore_errors=True)
        atexit.unregister(self.close)


def run_chaos(cfg: ChaosConfig) -> dict[str, Any]:
    """One chaos run with `cfg`; the result as one JSON-able dict."""
    return Chaos(cfg).run()


def promise_kept(r: dict[str, Any]) -> bool:
    """True when the run kept Flock's promise: nothing lost, nothing twice, no exits."""
    return (r["lost"] == 0 and r["doubled"] == 0 and r["exited_on_their_own"] == 0
            and r["applied"] == r["sent"] and r["sent"] > 0)


# -- the pump (a subprocess in the client namespace) ---------------------------------------------
def pump_main(argv: list[str]) -> int:
    """Notify src at a steady rate with explicit root ids; append each acknowledged id."""
    ap = argparse.ArgumentParser(prog="chaoslib pump")
    ap.add_argument("--addr", required=True)
    ap.add_argument("--key-file", required=True)
    ap.add_argument("--rate", type=float, required=True)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--acked", required=True)
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--give-up", type=float, default=20.0,
                    help="after the stream's end, stop retrying the last root after this long")
    a = ap.parse_args(argv)
    from flock_node.protocol import Codec, load_key
    from flock_node.transport import RpcError, SyncRpc

    rpc = SyncRpc(Codec(load_key(a.key_file), "chaos-pump"), timeout=2.0)
    errors: Counter[str] = Counter()
    unacked: list[str] = []
    t0 = start = time.monotonic()
    end = t0 + a.seconds
    i = 0
    with open(a.acked, "a") as out:
        while time.monotonic() < end:
            due = t0 + i / a.rate
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            elif now - due > 1.0:
                t0 = now - i / a.rate  # after an outage, resume the rate instead of a burst
            rid = f"{a.prefix}{i:07d}"
            args = {"resource": f"execute[step-{i % a.steps + 1}]", "action": "run",
                    "id": rid, "sender": "chaos"}
            # Same id until acknowledged: the receiver de-duplicates, so a retry after a lost
            # answer is safe, and only acknowledged roots count as sent.
            while True:
                try:
                    rpc.call(a.addr, "resource_manager", "notify", args)
                    out.write(rid + "\n")
                    out.flush()
                    break
                except RpcError as e:
                    errors[e.code] += 1
                if time.monotonic() > end + a.give_up:
                    unacked.append(rid)
                    break
                time.sleep(0.1)
            i += 1
    rpc.close()
    print(json.dumps({"roots_tried": i, "errors": dict(errors), "unacked": unacked,
                      "seconds": round(time.monotonic() - start, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "pump":
        sys.exit(pump_main(sys.argv[2:]))
    sys.exit("usage: chaoslib.py pump ... (the harness starts it; see benchmarks/chaos.py)")
