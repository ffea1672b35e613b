"""Flock's SWIM membership next to HashiCorp Serf, N real agents of each on loopback TCP.

    .venv/bin/python benchmarks/bench_membership_vs_serf.py [--nodes 20 100 200] [--idle 300]
        [--seeds 3] [--wave 10] [--only flock|serf] [--json]

For each N, first N `flock-node run --membership swim` agents (a flock key, TCP), then N
`serf agent`s (an encryption key) — one system at a time, so neither slows the other; each
started in waves (`--wave`, 10), a wave listening before the next starts, every agent
joining through the first `--seeds` (3) — and for each:
- convergence: from starting the last wave until every agent sees every other alive (and
  from the moment all listen);
- kill -9 of one: until every other agent sees it suspect or down (Serf shows no suspicion
  to the outside: its `EventMemberFailed`);
- SIGSTOP of one: the same, then SIGCONT and back to alive;
- idle: CPU (% of one core) and RSS per agent over `--idle` seconds, and the false
  suspicions in that window (a live member suspected or declared failed by anyone; each
  observer's suspicion counts once).
Times are when each agent's log line arrives here (read from its pipe as it is written), so
both systems are timed alike; each agent's view is kept as its lines arrive, so watching 200
agents costs this script little. At the end, a Markdown table puts every figure next to
Serf's. Every agent runs in its own process group, killed whatever ends the run (an error,
Ctrl-C, SIGTERM). Serf is installed with apt-get if missing.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

CLK = os.sysconf("SC_CLK_TCK")
FLOCK_RE = re.compile(r"flock\.swim: (\S+): (\S+) → (\S+)")
SERF_RE = re.compile(r"serf: EventMember(Join|Failed|Leave|Reap): (\S+)")
SERF_SUSPECT_RE = re.compile(r"memberlist: Suspect (\S+) has failed")
SERF_STATE = {"Join": "alive", "Failed": "down", "Leave": "left", "Reap": "gone"}


class Proc:
    """One agent: its process and its log lines, each stamped when it arrived. With `peers`
    (the other agents' names) it also keeps, as lines arrive, its view and when it last came
    to see every peer alive."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], parse: Callable[
            [str], tuple[str, str] | None], peers: set[str] | None = None) -> None:
        self.name = name
        self.parse = parse
        self.events: list[tuple[float, str, str]] = []  # (arrived, member, new state)
        self.by_member: dict[str, list[tuple[float, str]]] = {}
        self.lines: list[tuple[float, str]] = []
        self.peers = peers or set()
        self.view: dict[str, str] = {}
        self.n_alive = 0  # peers seen alive now
        self.full_at: float | None = None  # since when every peer is seen alive
        self.started = time.monotonic()
        self.p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for raw in self.p.stdout:
            now = time.monotonic()
            line = raw.decode(errors="replace")
            self.lines.append((now, line))
            got = self.parse(line)
            if got is not None:
                self._event(now, *got)

    def _event(self, now: float, member: str, state: str) -> None:
        self.events.append((now, member, state))
        self.by_member.setdefault(member, []).append((now, state))
        if state == "suspected" or member not in self.peers:
            return
        was = self.view.get(member) == "alive"
        self.view[member] = state
        self.n_alive += (state == "alive") - was
        if self.n_alive == len(self.peers):
            self.full_at = self.full_at or now
        else:
            self.full_at = None

    def cpu(self) -> float:
        """Seconds of CPU so far."""
        f = Path(f"/proc/{self.p.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / CLK

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.p.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def signal(self, sig: int) -> None:
        self.p.send_signal(sig)

    def kill(self) -> None:
        """Kill its process group (whatever it started too), stopped or not."""
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self) -> None:
        self.kill()
        self.p.wait(10)


def parse_flock(line: str) -> tuple[str, str] | None:
    m = FLOCK_RE.search(line)
    return (m.group(1), m.group(3)) if m else None


def parse_serf(line: str) -> tuple[str, str] | None:
    m = SERF_RE.search(line)
    if m:
        return m.group(2), SERF_STATE[m.group(1)]
    m = SERF_SUSPECT_RE.search(line)
    # One prober's suspicion (refuted silently if wrong): counted, not a state others see.
    return (m.group(1), "suspected") if m else None


def free_ports(n: int, width: int) -> list[int]:
    """`n` bases of `width` consecutive free TCP and UDP ports on loopback."""
    out: list[int] = []
    # Below the ephemeral range (32768-60999 here): outgoing connections never take them.
    p = random.randrange(10000, 32768 - 3 * n - 100)
    while len(out) < n:
        ok = True
        for q in range(p, p + width):
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                with socket.socket(socket.AF_INET, kind) as s:
                    try:
                        s.bind(("127.0.0.1", q))
                    except OSError:
                        ok = False
        if ok:
            out.append(p)
        p += width
    return out


def wait(cond: Callable[[], object], timeout: float, what: str, every: float = 0.05) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(every)
    raise TimeoutError(what)


def first_after(proc: Proc, member: str, states: tuple[str, ...], t0: float) -> float | None:
    for t, s in list(proc.by_member.get(member, ())):
        if t >= t0 and s in states:
            return t
    return None


class System:
    """How to start one agent of a system, and what its log says."""

    name = ""
    gone: tuple[str, ...] = ()
    parse: Callable[[str], tuple[str, str] | None]

    def __init__(self, root: Path) -> None:
        self.root = root

    def cmd(self, name: str, port: int, seeds: list[int]) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)


class FlockSwim(System):
    name, gone = "flock", ("suspect", "down")

    def __init__(self, root: Path, pool: int | None = None) -> None:
        super().__init__(root)
        self.pool = pool
        self.key = root / "flock.key"
        import flock_node
        from flock_node.protocol import generate_key_file

        # Bytecode compiled beforehand, as a package installed by pip has it: without it
        # (an editable install under PYTHONDONTWRITEBYTECODE) each agent compiles every
        # module again as it starts, twice the CPU of a start.
        compileall.compile_dir(Path(flock_node.__file__).parent, quiet=1)

        generate_key_file(self.key)
        self.parse = parse_flock  # type: ignore[assignment]

    def cmd(self, name: str, port: int, seeds: list[int]) -> list[str]:
        c = [sys.executable, "-m", "flock_node.cli_node", "run", name, "--listen",
             f"tcp://127.0.0.1:{port}", "--key-file", str(self.key), "--membership", "swim",
             "--state-dir", str(self.root / "state" / name), "--log-level", "info"]
        c += ["--swim-pool", str(self.pool)] if self.pool else []
        return c + [a for s in seeds for a in ("--seed", f"tcp://127.0.0.1:{s}")]

    def env(self) -> dict[str, str]:
        e = dict(os.environ, FLOCK_RUNTIME_DIR=str(self.root / "run"),
                 FLOCK_CONFIG_DIR=str(self.root / "config"), PYTHONUNBUFFERED="1")
        for k in ("FLOCK_KEY_FILE", "FLOCK_STATE_DIR", "FLOCK_SEEDS", "FLOCK_MEMBERSHIP"):
            e.pop(k, None)
        return e


class Serf(System):
    name, gone = "serf", ("down",)

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.key = subprocess.run(["serf", "keygen"], capture_output=True, text=True,
                                  check=True).stdout.strip()
        self.parse = parse_serf  # type: ignore[assignment]

    def cmd(self, name: str, port: int, seeds: list[int]) -> list[str]:
        c = ["serf", "agent", f"-node={name}", f"-bind=127.0.0.1:{port}",
             f"-rpc-addr=127.0.0.1:{port + 1}", f"-encrypt={self.key}", "-log-level=info"]
        return c + [f"-join=127.0.0.1:{s}" for s in seeds]


def run_system(sysm: System, n: int, idle: float, n_seeds: int = 3,
               wave_size: int = 10, settle: float = 0.0) -> dict[str, object]:
    names = [f"n{i:03d}" for i in range(n)]
    ports = free_ports(n, 3)
    env = sysm.env()
    everyone = set(names)
    procs: dict[str, Proc] = {}
    out: dict[str, object] = {"system": sysm.name, "nodes": n}

    def start(k: int, seeds: list[int]) -> None:
        procs[names[k]] = Proc(names[k], sysm.cmd(names[k], ports[k], seeds), env, sysm.parse,
                               everyone - {names[k]})

    try:
        # The seeds one by one, each joining those before it; then the others in waves,
        # each listening before the next starts: 200 Python interpreters starting at once
        # would starve each other (and the machine) for minutes.
        seeds = ports[:max(1, min(n_seeds, n))]
        for k in range(len(seeds)):
            start(k, seeds[:k])
            _listening(ports[k], 60)
        t_last = time.monotonic()
        for k in range(len(seeds), n, wave_size):
            wave = list(range(k, min(n, k + wave_size)))
            for i in wave:
                start(i, seeds)
            t_last = time.monotonic()
            wait(lambda wave=wave: _listening_all([ports[i] for i in wave]) or _exited(procs),
                 120, "a wave", every=0.2)
            if _exited(procs):
                raise SystemExit(_exited(procs))
            if settle and wave[-1] < n - 1:
                # And until the flock holds it (every agent sees every started one alive),
                # at most `settle` s: a 2-core machine cannot absorb 200 joins at once.
                try:
                    wait(lambda: _all_see(procs), settle, "a wave joined", every=0.5)
                except TimeoutError:
                    print(f"{sysm.name}: wave at {k} not joined by all in {settle} s",
                          file=sys.stderr)
        t_listen = time.monotonic()

        def all_converged() -> float | None:
            ts = [p.full_at for p in procs.values()]
            return None if any(t is None for t in ts) else max(ts)  # type: ignore[type-var]

        t_conv = wait(all_converged, 60 + n, "convergence")
        out["converged_s"] = round(float(t_conv) - t_last, 2)  # type: ignore[arg-type]
        out["converged_after_listening_s"] = round(max(0.0, float(t_conv) - t_listen), 2)  # type: ignore[arg-type]
        time.sleep(3.0)  # settle: the joins' gossip ends

        out["kill9_s"] = _fault(sysm, procs, names[-1], signal.SIGKILL)
        out["sigstop_s"] = _fault(sysm, procs, names[-2], signal.SIGSTOP)
        live = {k: v for k, v in procs.items() if k != names[-1]}
        t_back = time.monotonic()
        try:
            wait(lambda: all(p.view.get(names[-2]) == "alive"
                             for k, p in live.items() if k != names[-2]), 60, "back alive")
            out["sigcont_back_s"] = round(time.monotonic() - t_back, 2)
        except TimeoutError:
            out["sigcont_back_s"] = None
        time.sleep(5.0)

        cpu0 = {k: p.cpu() for k, p in live.items()}
        t0 = time.monotonic()
        time.sleep(idle)
        t1 = time.monotonic()
        cpu = sorted((live[k].cpu() - c) / (t1 - t0) * 100 for k, c in cpu0.items())
        rss = sorted(p.rss_mb() for p in live.values())
        out["idle_cpu_pct"] = round(sum(cpu) / len(cpu), 2)
        out["idle_cpu_pct_max"] = round(cpu[-1], 2)
        out["rss_mb"] = round(sum(rss) / len(rss), 1)
        # About live members only: the killed one may still turn from suspect to down.
        out["false_suspicions"] = sum(
            1 for p in live.values() for t, m, s in list(p.events)
            if t0 <= t <= t1 and m != names[-1] and s in ("suspect", "suspected", "down"))
        out["idle_s"] = idle
        out["load"] = round(os.getloadavg()[1], 1)  # the machine's, over the idle minutes
    finally:
        # All at once: one by one, each death would be news to hundreds still alive.
        for p in procs.values():
            p.kill()
        for p in procs.values():
            p.stop()
    return out


def _fault(sysm: System, procs: dict[str, Proc], victim: str, sig: int) -> dict[str, float]:
    others = [p for k, p in procs.items() if k != victim and p.p.poll() is None]
    t0 = time.monotonic()
    procs[victim].signal(sig)
    try:
        wait(lambda: all(first_after(p, victim, sysm.gone, t0) for p in others), 90,
             f"{victim} seen")
        seen = sorted(first_after(p, victim, sysm.gone, t0) - t0 for p in others)  # type: ignore[operator]
        return {"p50": round(seen[len(seen) // 2], 2), "all": round(seen[-1], 2)}
    except TimeoutError:
        got = [t - t0 for p in others if (t := first_after(p, victim, sysm.gone, t0))]
        for p in others:
            if not first_after(p, victim, sysm.gone, t0):
                print(f"{p.name} never saw {victim} {'/'.join(sysm.gone)}: it saw "
                      f"{p.by_member.get(victim, [])[-3:]}", file=sys.stderr)
        return {"p50": None, "all": None, "seen_by": len(got), "of": len(others)}  # type: ignore[dict-item]
    finally:
        if sig == signal.SIGSTOP:
            procs[victim].signal(signal.SIGCONT)


def _all_see(procs: dict[str, Proc]) -> bool:
    """Every agent started sees every other alive."""
    names = set(procs)
    return all(sum(p.view.get(o) == "alive" for o in names) == len(names) - 1
               for p in procs.values())


def _listening(port: int, timeout: float) -> None:
    def up() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait(up, timeout, f"port {port}")


def _exited(procs: dict[str, Proc]) -> str:
    """Which agents exited, with their last words ("" if none did)."""
    return "\n".join(f"{k} exited {p.p.returncode}: {''.join(x for _, x in p.lines[-5:])}"
                     for k, p in procs.items() if p.p.poll() is not None)


def _listening_all(ports: list[int]) -> bool:
    """Every port listens (asked of the kernel with `ss`: no connection made to count, and
    /proc/net/tcp would list every one of the flock's thousands of connections)."""
    r = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True)
    listening = {int(cols[3].rsplit(":", 1)[1]) for line in r.stdout.splitlines()
                 if len(cols := line.split()) > 3}
    return all(p in listening for p in ports)


def ensure_serf() -> None:
    if shutil.which("serf") is None:
        subprocess.run(["apt-get", "install", "-y", "serf"], check=True,
                       stdout=subprocess.DEVNULL)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, nargs="+", default=[20, 100])
    ap.add_argument("--idle", type=float, default=60.0, help="seconds of idle measurement")
    ap.add_argument("--seeds", type=int, default=3, help="agents every other joins through")
    ap.add_argument("--wave", type=int, default=10, help="agents started at once")
    ap.add_argument("--settle", type=float, default=0.0, help="after each wave, wait at most "
                    "this long for every agent to see every started one alive")
    ap.add_argument("--swim-pool", type=int, help="flock agents' --swim-pool (a small one "
                    "shows the probing of a big flock in a small one)")
    ap.add_argument("--only", choices=["flock", "serf"])
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    # SIGTERM ends the run through the `finally`s that stop the agents.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    if a.only != "flock":
        ensure_serf()
    rows = []
    for n in a.nodes:
        for cls in (FlockSwim, Serf):
            if a.only and cls.name != a.only:
                continue
            root = Path(tempfile.mkdtemp(prefix="fs"))
            try:
                sysm = FlockSwim(root, a.swim_pool) if cls is FlockSwim else cls(root)
                row = run_system(sysm, n, a.idle, a.seeds, a.wave, a.settle)
            finally:
                shutil.rmtree(root, ignore_errors=True)
            rows.append(row)
            print(json.dumps(row) if a.json else _line(row), flush=True)
    if not a.json:
        print(table(rows))
    return 0


def table(rows: list[dict[str, object]]) -> str:
    """Every figure of each N, flock's next to Serf's, as a Markdown table."""
    def fig(r: dict[str, object] | None, key: str, unit: str, sub: str | None = None,
            paren: str | None = None) -> str:
        if r is None:
            return "–"
        v = r.get(key)
        if sub is not None:
            d = v if isinstance(v, dict) else {}
            v, p = d.get(sub), d.get(paren) if paren else None
            if v is None and "seen_by" in d:
                return f"{r['system']} seen by {d['seen_by']}/{d['of']}"
        else:
            p = r.get(paren) if paren else None
        return f"{r['system']} {v}{unit}" + (f" ({p}{unit})" if p is not None else "")

    head = ("| N | convergence after the last start (after all listen) | kill -9 seen by all "
            "(p50) | SIGSTOP seen by all (p50) | idle CPU per agent (max) | RSS per agent | "
            "false suspicions while idle |\n|---|---|---|---|---|---|---|")
    lines = [head]
    for n in dict.fromkeys(int(r["nodes"]) for r in rows):  # type: ignore[call-overload]
        f = next((r for r in rows if r["nodes"] == n and r["system"] == "flock"), None)
        s = next((r for r in rows if r["nodes"] == n and r["system"] == "serf"), None)
        idle = (f or s or {}).get("idle_s")
        cells = [" · ".join(fig(r, *spec) for r in (f, s) if r is not None) for spec in (
            ("converged_s", " s", None, "converged_after_listening_s"),
            ("kill9_s", " s", "all", "p50"), ("sigstop_s", " s", "all", "p50"),
            ("idle_cpu_pct", " %", None, "idle_cpu_pct_max"), ("rss_mb", " MB"),
            ("false_suspicions", ""))]
        cells[-1] += f" in {idle} s"
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _line(r: dict[str, object]) -> str:
    k9, st = r.get("kill9_s") or {}, r.get("sigstop_s") or {}
    return (f"{r['system']:5} N={r['nodes']:<4} converged {r.get('converged_s')} s after the "
            f"last start ({r.get('converged_after_listening_s')} s after all listen) · "
            f"kill -9 seen by all {k9.get('all')} s (p50 {k9.get('p50')}) · "  # type: ignore[union-attr]
            f"SIGSTOP seen by all {st.get('all')} s (p50 {st.get('p50')}) · "  # type: ignore[union-attr]
            f"idle CPU {r.get('idle_cpu_pct')} % (max {r.get('idle_cpu_pct_max')}) · "
            f"RSS {r.get('rss_mb')} MB · false suspicions {r.get('false_suspicions')} "
            f"in {r.get('idle_s')} s · load {r.get('load')}")


if __name__ == "__main__":
    sys.exit(main())
