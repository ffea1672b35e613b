"""The SWIM driver's pure parts, without sockets: the ring, signed statements, the member
view, and the inputs only a real agent feeds the state machine (a closed connection, gossip
rounds, late joins, a name clash)."""

from __future__ import annotations

import random

import pytest

from flock_node.discovery import Me
from flock_node.membership.agentswim import AgentSwim
from flock_node.membership.driver import SwimDriver
from flock_node.membership.messages import Alive, Gossip, Ping, PushPull, Suspect
from flock_node.membership.ring import ring_neighbours, ring_successors
from flock_node.membership.statements import Notary
from flock_node.membership.table import Config
from flock_node.membership.view import SwimView, facts_of, heartbeat_of
from flock_node.protocol import Codec
from flock_node.trust import ca
from flock_node.trust.tls import load_identity


def test_ring_successors_wrap_round_and_ignore_order():
    assert ring_successors("c", ["e", "a", "b", "d"]) == ["d", "e", "a"]
    assert ring_successors("a", ["b"]) == ["b"]
    assert ring_successors("a", []) == []
    assert ring_successors("b", ["a", "b", "c"], k=1) == ["c"]


def test_ring_neighbours_are_as_many_before_as_after_and_watch_each_other():
    names = [f"n{i:02d}" for i in range(20)]
    assert ring_neighbours("n05", names, 4) == ["n06", "n07", "n04", "n03"]
    assert ring_neighbours("n00", names, 3) == ["n01", "n02", "n19"]
    assert sorted(ring_neighbours("b", ["a", "c"], 10)) == ["a", "c"]
    assert ring_neighbours("a", [], 4) == []
    # Symmetric: whoever I probe probes me, so an ack goes back on a standing connection.
    for me in names:
        for other in ring_neighbours(me, names, 6):
            assert me in ring_neighbours(other, names, 6)


def _alive(node: str, inc: int = 1, version: int = 1, record=None) -> Alive:
    return Alive(node, inc, f"i-{node}", f"tcp://127.0.0.1:9/{node}", version,
                 record or {"tags": ["web"]})


def test_keyed_statements_are_believed_only_with_the_flock_key():
    mine, theirs = Notary(b"k" * 32), Notary(b"z" * 32)
    a = mine.sign(_alive("b"))
    assert a.sig and mine.vouch(a)
    assert not theirs.vouch(a)
    # Any change to the statement (a record, an address) breaks the signature.
    forged = Alive(a.node, a.incarnation, a.instance, a.addr, a.version + 1, {"tags": ["x"]},
                   a.sig)
    assert not mine.vouch(forged)
    assert not mine.vouch(_alive("b"))  # unsigned
    # Without a key or TLS (ipc, --insecure) there is nothing to check.
    assert Notary().vouch(_alive("b"))


def test_tls_statements_need_the_nodes_own_certificate(tmp_path):
    ca.init(tmp_path / "ca")
    ids = {}
    for name in ("a", "b", "m"):
        ca.issue(tmp_path / "ca", name, "node", tmp_path / name)
        ids[name] = load_identity(tmp_path / name)
    ca.issue(tmp_path / "ca", "alice", "operator", tmp_path / "alice")
    a = Notary(tls=ids["a"])
    by_b = Notary(tls=ids["b"]).sign(_alive("b"))
    assert a.vouch(by_b)
    assert not a.vouch(Notary(tls=ids["m"]).sign(_alive("b")))  # m speaking for b
    assert not a.vouch(Notary(tls=load_identity(tmp_path / "alice")).sign(_alive("alice")))
    ca.init(tmp_path / "ca2")
    ca.issue(tmp_path / "ca2", "b", "node", tmp_path / "b2")
    assert not a.vouch(Notary(tls=load_identity(tmp_path / "b2")).sign(_alive("b")))
    assert not a.vouch(Alive(by_b.node, by_b.incarnation, by_b.instance, by_b.addr,
                             by_b.version, by_b.record, b"garbage"))
    # A verdict is remembered for the whole statement: b's real signature on another address
    # or record (a dead node revived at an attacker's address) is not vouched by the cache.
    moved = Alive(by_b.node, by_b.incarnation, by_b.instance, "tls+tcp://127.0.0.1:6/evil",
                  by_b.version, {"tags": ["pwned"]}, by_b.sig)
    assert not a.vouch(moved)
    mine = Notary(b"k" * 32)
    keyed = mine.sign(_alive("b"))
    assert mine.vouch(keyed)
    assert not mine.vouch(Alive(keyed.node, keyed.incarnation, keyed.instance, "tcp://evil:1",
                                keyed.version, keyed.record, keyed.sig))


def test_facts_travel_without_run_progress_and_bad_records_give_a_bare_member():
    facts = facts_of({"tags": ["db"], "active": True, "run": {"id": "r", "k": 1}, "pending": 2,
                      "bus": "tcp://h:1", "rpc": "tcp://h:2", "secret": 1})
    assert "run" not in facts and "secret" not in facts and facts["pending"] == 2
    hb = heartbeat_of(_alive("b", record=facts))
    assert hb.tags == ["db"] and hb.active and hb.rpc == "tcp://h:2" and hb.pending == 2
    bad = heartbeat_of(_alive("b", record={"tags": "not a list", "pending": -1}))
    assert bad.node == "b" and bad.tags == [] and bad.rpc == ""


def _pair(cfg: Config | None = None) -> tuple[AgentSwim, AgentSwim]:
    # Every statement believed: the signatures are Notary's business (tested above).
    a = AgentSwim(_alive("a"), random.Random(1), cfg, vouch=lambda x: True)
    b = AgentSwim(_alive("b"), random.Random(2), cfg)
    a.receive(0.0, PushPull("b", b.me.addr, True, False, [b.me]))
    b.receive(0.0, PushPull("a", a.me.addr, True, False, [a.me]))
    return a, b


def test_a_lost_connection_suspects_at_once_and_gossip_rounds_spread_it():
    a, b = _pair()
    c = AgentSwim(_alive("c"), random.Random(3))
    a.receive(0.0, PushPull("c", c.me.addr, True, False, [c.me]))
    sends, changes = a.lost(0.1, "b")
    assert changes == [("b", "alive", "suspect")]
    sends, _ = a.gossip_round(0.1, 3)
    assert sends and all(type(m) is Gossip for _, m in sends)
    assert any(isinstance(u, Suspect) and u.node == "b" for _, m in sends for u in m.gossip)
    # Losing a member that is not alive (or unknown) changes nothing.
    assert a.lost(0.2, "b") == ([], []) and a.lost(0.2, "nobody") == ([], [])


def test_in_a_large_flock_only_the_watched_neighbours_are_probed():
    a = AgentSwim(_alive("a"), random.Random(1), vouch=lambda x: True)
    others = [_alive(f"m{i:02d}") for i in range(30)]
    a.receive(0.0, PushPull("m00", others[0].addr, True, False, others))
    a.start(0.0, [])
    a.watch = {"m03", "m07", "m11"}
    probed = [m.target for t in range(200) for _, m in a.tick(t * 0.05)[0] if type(m) is Ping]
    # Every watched member in turn, nobody else: the same connections serve every probe.
    assert set(probed) == a.watch, probed
    a.watch = None
    probed = [m.target for t in range(200, 1400) for _, m in a.tick(t * 0.05)[0]
              if type(m) is Ping]
    assert set(probed) - {"m03", "m07", "m11"}


def test_a_late_join_is_a_push_pull_and_an_empty_queue_sends_nothing():
    a, b = _pair()
    for _ in range(30):  # drain the join news
        a.gossip_round(1.0, 3)
    assert a.gossip_round(1.0, 3) == ([], [])
    sends, _ = a.join(1.0, "tcp://127.0.0.1:9/c")
    assert [(addr, type(m)) for addr, m in sends] == [("tcp://127.0.0.1:9/c", PushPull)]
    assert a.join(1.0, a.me.addr) == ([], [])


def test_two_processes_with_one_name_clash_and_refute_at_most_once_per_interval():
    a, _ = _pair()
    seen = []
    a.on_clash = seen.append
    inc0 = a.me.incarnation
    other = Alive("a", inc0, "another", "tcp://127.0.0.1:9/x", 1, {})
    a.receive(5.0, Gossip("b", [other]))
    assert len(seen) == 1 and a.me.incarnation == inc0 + 1
    for k in range(20):  # the other side refutes back, fast
        a.receive(5.0 + k * 0.01, Gossip("b", [Alive("a", a.me.incarnation + k, "another",
                                                      other.addr, 1, {})]))
    assert a.me.incarnation <= inc0 + 2, a.me.incarnation
    a.receive(6.5, Gossip("b", [Alive("a", a.me.incarnation, "another", other.addr, 1, {})]))
    assert len(seen) >= 2


class _Net:
    """The driver's datagrams, recorded: what is pinned, what was closed."""

    def __init__(self) -> None:
        self.pinned: set[str] = set()
        self.forgotten: list[str] = []

    def pin(self, addrs: set[str]) -> None:
        self.pinned = set(addrs)

    def forget(self, addr: str) -> None:
        self.forgotten.append(addr)

    def send(self, addr: str, data: bytes) -> None:
        pass

    def connected(self) -> list[str]:
        return []


def test_a_ring_neighbour_restarted_elsewhere_is_redialed_and_its_old_address_dropped(tmp_path):
    me = Me("a", 1, "i-a", "tcp://127.0.0.1:1", "tcp://127.0.0.1:2", 1.0, 0.0, tmp_path)
    d = SwimDriver(me, Codec(None, "a"), lambda: {}, lambda: False, "tcp://127.0.0.1:3")
    d.net.sock.close()
    d.net = net = _Net()  # type: ignore[assignment]
    for n in "bc":
        d._handle(d.swim.receive(0.0, Gossip(n, [_alive(n)])))
    old = _alive("c").addr
    assert net.pinned == {_alive("b").addr, old}
    # c's old process is frozen (its connection stays open) and a new one starts on another
    # port: its statement replaces the live entry, with no change of state.
    moved = Alive("c", 2, "i-c2", "tcp://127.0.0.1:7/c", 1, {})
    d._handle(d.swim.receive(1.0, Gossip("c", [moved])))
    d._rering()  # the driver's timer looks again every second
    assert net.pinned == {_alive("b").addr, moved.addr}
    assert net.forgotten == [old]


@pytest.mark.parametrize("state", ["alive", "suspect"])
def test_the_view_answers_as_the_heartbeat_membership(state):
    a, _ = _pair()
    if state == "suspect":
        a.lost(0.0, "b")
    v = SwimView(a)
    v.heard("b", 3.0)
    [m] = v.members()
    assert (m.name, m.state, m.tags, m.last_seen) == ("b", state, ["web"], 3.0)
    assert v.get("b") is m and v.get("zz") is None
    assert v.match("b*") == ["b"] and v.match(tag="web") == ["b"] and v.match(tag="db") == []


def test_a_reaped_member_is_forgotten_by_the_view():
    a, _ = _pair()
    v = SwimView(a)
    v.heard("b", 3.0)
    v.changed("b", 3.0)
    b = a.table.pop("b")  # reaped by the table...
    v.forget("b")  # ...and told (the driver does it on a "forgotten" change)
    assert v.get("b") is None
    a.table["b"] = b  # the same name back later: nothing remembered of the old one
    m = v.get("b")
    assert m is not None and (m.last_seen, m.since) == (0.0, 0.0)
