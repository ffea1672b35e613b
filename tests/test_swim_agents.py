"""Issue 11, phase 2: real agents running SWIM (`flock-node run --membership swim`) over nng:
joins through a seed, facts in the gossip, a frozen node, bounded connections, forged
statements. Liveness after kill -9 / SIGTERM and remote notifications are the existing tests
of test_agent.py and test_remote.py, parametrized with `membership`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import pytest
from conftest import FlockEnv, free_port, wait_for
from test_trust import Tls

from flock_node.client import Flock
from flock_node.membership.messages import Alive, Gossip, Suspect, encode
from flock_node.membership.statements import Notary
from flock_node.protocol import Codec
from flock_node.transport.datagram import Datagrams
from flock_node.trust.tls import load_identity

HB = "0.2"  # probe interval: detection in a fraction of the default's time


def states(f: Flock, observer: str) -> dict[str, str]:
    return {m["name"]: m["state"] for m in f[observer].flock_api.members()}


def members(f: Flock, observer: str) -> dict[str, dict]:
    return {m["name"]: m for m in f[observer].flock_api.members()}


def all_see(f: Flock, observers, want: dict[str, str]) -> bool:
    return all(states(f, o) == want for o in observers)


class KeyedTcp:
    """Agents on TCP loopback with a flock key, each seeded only by the first one."""

    def __init__(self, env: FlockEnv):
        self.env = env
        self.key = env.root / "flock.key"
        assert env.cli("keygen", str(self.key)).returncode == 0
        self.ports: dict[str, int] = {}
        env.env["FLOCK_MEMBERSHIP"] = "swim"

    def start(self, name: str, *args: str, seed: str | None = None, wait: bool = True):
        port = self.ports.setdefault(name, free_port())
        flags = ["--listen", f"tcp://127.0.0.1:{port}", "--key-file", str(self.key),
                 "--heartbeat", HB]
        if seed is not None:
            flags += ["--seed", self.bus(seed)]
        return self.env.start(name, *flags, *args, wait=wait)

    def bus(self, name: str) -> str:
        return f"tcp://127.0.0.1:{self.ports[name]}"

    def swim(self, name: str) -> str:
        return f"tcp://127.0.0.1:{self.ports[name] + 2}"

    def flock(self, seed: str = "a") -> Flock:
        return Flock.connect(seeds=[self.bus(seed)], runtime_dir=self.env.runtime_dir,
                             key_file=str(self.key), timeout=3.0)


@pytest.fixture
def keyed(flock_env) -> KeyedTcp:
    return KeyedTcp(flock_env)


def _send_swim(codec: Codec, addr: str, msgs: list, tls_dir: Path | None = None) -> None:
    """Frames straight onto a node's SWIM socket, as an agent (or a forger) would send them."""
    async def go() -> None:
        net = Datagrams(codec, lambda sender, data: None,
                        tls=load_identity(tls_dir) if tls_dir else None)
        net.start()
        for m in msgs:
            net.send(addr, encode(m))
        await asyncio.sleep(1.0)
        await net.close()

    asyncio.run(go())


def test_join_through_a_seed_facts_travel_and_one_member_answers_for_all(keyed):
    keyed.start("a", "--tag", "db")
    for n in ("b", "c", "d"):
        keyed.start(n, "--tag", "web", seed="a", wait=False)
    for n in ("b", "c", "d"):
        keyed.env.wait_up(keyed.env.nodes[n])
    everyone = dict.fromkeys("abcd", "alive")
    with keyed.flock() as f:
        wait_for(lambda: all_see(f, "abcd", everyone), 10, what="every node sees every node")
        # The facts of d's statement, as b heard them through the gossip.
        d = members(f, "b")["d"]
        assert d["tags"] == ["web"] and d["rpc"] == f"tcp://127.0.0.1:{keyed.ports['d'] + 1}"
        assert d["bus"] == keyed.bus("d") and d["last_converge"] is None
        # A fact changes (a converge ends): every member learns the new record.
        f["d"].flock_api.run_chef()
        wait_for(lambda: all((members(f, o)["d"]["last_converge"] or {}).get("status") == "ok"
                             for o in "abc"), 10, what="d's last converge known to all")
    # `flockctl nodes` asks one member for the whole flock; a glob resolves against it.
    r = keyed.env.cli("--seed", keyed.bus("b"), "--key-file", str(keyed.key), "--json", "nodes")
    assert r.returncode == 0, r.stderr
    nodes = {n["name"]: n for n in json.loads(r.stdout)}
    assert set(nodes) == set("abcd") and nodes["a"]["tags"] == ["db"]
    r = keyed.env.cli("--seed", keyed.bus("b"), "--key-file", str(keyed.key), "--json",
                      "run-chef", "[bcd]")
    assert r.returncode == 0 and set(json.loads(r.stdout)["runs"]) == set("bcd"), r.stdout


def test_a_frozen_node_is_suspected_by_all_then_alive_again(keyed):
    for n in "abc":
        keyed.start(n, seed=None if n == "a" else "a")
    with keyed.flock() as f:
        wait_for(lambda: all_see(f, "abc", dict.fromkeys("abc", "alive")), 10, what="flock")
        inc = members(f, "a")["c"]["incarnation"]
        c = keyed.env.nodes["c"].proc
        t0 = time.monotonic()
        c.send_signal(signal.SIGSTOP)
        try:
            wait_for(lambda: all(states(f, o)["c"] in ("suspect", "down") for o in "ab"), 8,
                     interval=0.02, what="frozen c suspected by a and b")
            seen = time.monotonic() - t0
        finally:
            c.send_signal(signal.SIGCONT)
        # It learns it was suspected and refutes with a higher incarnation.
        wait_for(lambda: all(states(f, o)["c"] == "alive" for o in "ab"), 15,
                 what="c alive again after SIGCONT")
        assert members(f, "a")["c"]["incarnation"] > inc
    assert seen < 4.0, seen


def _tcp_sockets() -> list[tuple[int, int, int]]:
    """Established loopback TCP sockets: (local port, remote port, inode)."""
    out = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = line.split()
        if cols[3] == "01":
            out.append((int(cols[1].split(":")[1], 16), int(cols[2].split(":")[1], 16),
                        int(cols[9])))
    return out


def _inodes(pid: int) -> set[int]:
    got = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            got.add(int(link[8:-1]))
    return got


def test_connections_per_agent_are_bounded(keyed):
    names = [f"n{i}" for i in range(10)]
    keyed.start(names[0], "--swim-pool", "2")
    for n in names[1:]:
        keyed.start(n, "--swim-pool", "2", seed=names[0], wait=False)
    for n in names[1:]:
        keyed.env.wait_up(keyed.env.nodes[n])
    with keyed.flock(names[0]) as f:
        wait_for(lambda: all_see(f, names[::3], dict.fromkeys(names, "alive")), 20,
                 what="10 agents see each other")
    swim_ports = {keyed.ports[n] + 2 for n in names}
    bus_ports = {keyed.ports[n] for n in names}
    worst = 0
    for _ in range(10):  # over a few probe rounds through the whole flock
        time.sleep(0.2)
        socks = _tcp_sockets()
        for n in names:
            mine = _inodes(keyed.env.nodes[n].proc.pid)
            # Ours to others' SWIM listeners: at most 2 pooled + 3 ring neighbours (one
            # more while an evicted one closes), where a full mesh holds 9.
            out = sum(1 for lp, rp, ino in socks if ino in mine and rp in swim_ports)
            worst = max(worst, out)
            # The bus carries no member traffic at all.
            assert not any(ino in mine and rp in bus_ports for lp, rp, ino in socks)
    assert 3 <= worst <= 2 + 3 + 1, worst


def test_forged_statements_change_nothing_with_a_key(keyed):
    keyed.start("a")
    keyed.start("b", "--tag", "web", seed="a")
    with keyed.flock() as f:
        wait_for(lambda: all_see(f, "ab", dict.fromkeys("ab", "alive")), 10, what="flock")
        b = members(f, "a")["b"]
        before = f["a"].flock_api.status()["dropped_frames"]
    evil = Alive("b", b["incarnation"] + 10, "evil", "tcp://127.0.0.1:9", 99, {"tags": ["evil"]})
    # Without the flock key: dropped at the frame.
    _send_swim(Codec(b"not the key", "b"), keyed.swim("a"),
               [Gossip("b", [evil]), Gossip("b", [Suspect("b", b["incarnation"] + 5, "b")])])
    # With the key (any key holder is trusted as anyone, but a relayed statement about b
    # still needs b's signature), and a sender that is not the envelope's.
    m = Codec(_key(keyed), "mallory")
    _send_swim(m, keyed.swim("a"), [Gossip("mallory", [evil]), Gossip("b", [evil])])
    with keyed.flock() as f:
        time.sleep(0.5)
        after = f["a"].flock_api.status()["dropped_frames"]
        got = members(f, "a")["b"]
    assert got["state"] == "alive" and got["tags"] == ["web"] and got["rpc"] == b["rpc"]
    assert got["incarnation"] == b["incarnation"]
    assert after.get("unauthorized", 0) >= before.get("unauthorized", 0) + 2, after
    assert after.get("sender_mismatch", 0) >= before.get("sender_mismatch", 0) + 1, after


def _key(keyed: KeyedTcp) -> bytes:
    from flock_node.protocol import load_key

    return load_key(keyed.key)


def test_tls_flock_joins_and_forged_statements_change_nothing(flock_env):
    tls = Tls(flock_env)
    flock_env.env["FLOCK_MEMBERSHIP"] = "swim"
    tls.start("a")
    tls.start("b", "--tag", "web", seed="a")
    tls.start("c", seed="a")
    tls.issue("m")  # a node of the flock that forges
    tls.issue("alice", "operator")
    with tls.flock("alice") as f:
        wait_for(lambda: all_see(f, "abc", dict.fromkeys("abc", "alive")), 15, what="flock")
        b = members(f, "a")["b"]
        before = f["a"].flock_api.status()["dropped_frames"]
    swim_a = f"tls+tcp://127.0.0.1:{tls.ports['a'] + 2}"
    # m's certificate, frames in b's name: dropped. In its own name, a statement about b
    # signed with m's key: not believed.
    forged = Alive("b", b["incarnation"] + 10, "evil", "tls+tcp://127.0.0.1:9", 99,
                   {"tags": ["evil"]})
    signed_by_m = Notary(None, load_identity(tls.dirs["m"])).sign(forged)
    _send_swim(Codec(None, "b"), swim_a, [Gossip("b", [forged])], tls.dirs["m"])
    _send_swim(Codec(None, "m"), swim_a, [Gossip("m", [signed_by_m])], tls.dirs["m"])
    with tls.flock("alice") as f:
        time.sleep(0.5)
        after = f["a"].flock_api.status()["dropped_frames"]
        got = members(f, "a")["b"]
    assert got["state"] == "alive" and got["tags"] == ["web"] and got["rpc"] == b["rpc"]
    # Not even believed for a moment (b would have refuted it with a higher incarnation).
    assert got["incarnation"] == b["incarnation"]
    assert after.get("sender_mismatch", 0) >= before.get("sender_mismatch", 0) + 1, after
    tls.env.stop_all()


def test_garbage_on_the_swim_socket_changes_nothing(keyed):
    """What test_agent.py's garbage test does to the mesh's bus, done to SWIM's listener."""
    import pynng

    from flock_node.protocol import Heartbeat, SwimFrame

    keyed.start("a")
    keyed.start("b", "--tag", "web", seed="a")
    key = _key(keyed)
    with keyed.flock() as f:
        wait_for(lambda: all_see(f, "ab", dict.fromkeys("ab", "alive")), 10, what="flock")
        before_members = members(f, "a")
        before = f["a"].flock_api.status()["dropped_frames"]
    good = Codec(key, "b").encode(SwimFrame(b"\x00"))
    garbage = [
        b"\x00", b"\xff" * 64, os.urandom(300), good[: len(good) // 2],  # not frames
        Codec(key, "b").encode(Heartbeat("b", 1, 1, "x", "y")),  # a frame, not SWIM's
        Codec(key, "b").encode(SwimFrame(os.urandom(200))),  # SWIM's, unreadable inside
        Codec(os.urandom(32), "b").encode(SwimFrame(b"")),  # wrong key
        Codec(None, "b").encode(SwimFrame(b"")),  # unsigned
    ]
    with pynng.Push0(send_timeout=1000) as push:
        push.dial(keyed.swim("a"), block=True)
        for g in garbage:
            push.send(g)
        time.sleep(0.3)  # Push0 is fire and forget: let a read before we close

    def grew(reason: str, n: int) -> bool:
        with keyed.flock() as f:
            now = f["a"].flock_api.status()["dropped_frames"]
        return now.get(reason, 0) - before.get(reason, 0) >= n

    wait_for(lambda: grew("malformed", 6) and grew("unauthorized", 2), 5,
             what="a to count the SWIM garbage")
    with keyed.flock() as f:
        after = members(f, "a")
    for n in "ab":
        assert {k: after[n][k] for k in ("state", "incarnation", "rpc", "tags")} == {
            k: before_members[n][k] for k in ("state", "incarnation", "rpc", "tags")}


def test_a_node_restarted_at_another_address_is_redialed_and_the_old_connection_closed(keyed):
    for n in "abc":
        keyed.start(n, seed=None if n == "a" else "a")
    with keyed.flock() as f:
        wait_for(lambda: all_see(f, "abc", dict.fromkeys("abc", "alive")), 10, what="flock")
    old = keyed.env.nodes["c"]
    old_swim = keyed.ports["c"] + 2
    a = keyed.env.nodes["a"].proc.pid

    def a_holds(port: int) -> bool:
        mine = _inodes(a)
        return any(ino in mine and rp == port for _, rp, ino in _tcp_sockets())

    wait_for(lambda: a_holds(old_swim), 10, what="a to hold c open (its ring neighbour)")
    # The old process freezes with its connections open (a stalled VM) and c comes back on
    # another port, from another state dir.
    old.proc.send_signal(signal.SIGSTOP)
    try:
        keyed.ports["c"] = free_port()
        keyed.start("c", "--state-dir", str(keyed.env.root / "state" / "c2"), seed="a")
        with keyed.flock() as f:
            wait_for(lambda: members(f, "a")["c"]["rpc"].endswith(f":{keyed.ports['c'] + 1}")
                     and states(f, "a")["c"] == "alive", 15, what="a to know the new c")
        wait_for(lambda: a_holds(keyed.ports["c"] + 2) and not a_holds(old_swim), 10,
                 what="a connected to the new c only")
    finally:
        old.proc.kill()
        old.proc.wait(5)


def test_an_agent_on_the_mesh_beside_swim_agents_is_named_not_silently_ignored(flock_env):
    # The default changed: an agent left on (or started with) --membership mesh speaks
    # heartbeats no SWIM agent listens to. "a" on the mesh dials the local "b" (the smaller
    # name dials), whose log and status say why a never becomes a member.
    flock_env.env.pop("FLOCK_MEMBERSHIP", None)
    b = flock_env.start("b")
    flock_env.start("a", "--membership", "mesh", heartbeat=0.2)
    with flock_env.flock() as f:
        wait_for(lambda: f["b"].flock_api.status()["dropped_frames"].get("mesh_member", 0) >= 2,
                 10, what="b to count a's heartbeats")
        assert "a" not in states(f, "b")
    warned = [ln for ln in b.output().splitlines() if "--membership mesh" in ln]
    assert len(warned) == 1 and "a " in warned[0] and "one mode" in warned[0], warned
