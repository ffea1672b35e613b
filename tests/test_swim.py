"""SWIM + Lifeguard membership: the state machine, driven through the deterministic simulator.

Every scenario has a fixed seed, so a failure replays exactly; the flocks are small and the
runs a few virtual seconds, so the whole file takes seconds of wall time.
"""

import json
import random
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flock_node.membership.lifeguard import Suspicion, suspicion_bounds
from flock_node.membership.messages import (
    ALIVE,
    DOWN,
    FORGOTTEN,
    LEFT,
    SUSPECT,
    Ack,
    Alive,
    BadMessage,
    Dead,
    Gossip,
    Mark,
    Nack,
    Ping,
    PingReq,
    PushPull,
    Suspect,
    decode,
    encode,
)
from flock_node.membership.sim import Scenario, Sim, simulate
from flock_node.membership.swim import Config, Swim


def converged(sim: Sim) -> bool:
    return sim.good == sim.h * (sim.h - 1)


def flock(n: int = 12, seed: int = 3, settle: float = 12.0, **kw) -> Sim:
    sim = Sim(Scenario(nodes=n, seconds=600, seed=seed, fault_at=10_000, **kw))
    sim.advance(settle)
    assert converged(sim)
    return sim


def test_a_falsely_suspected_node_refutes_with_a_higher_incarnation():
    sim = flock()
    x, accuser = 5, 2
    inc = sim.nodes[x].me.incarnation
    sim.inject(accuser, Gossip(sim.names[7], [Suspect(sim.names[x], inc, sim.names[7])]))
    assert sim.nodes[accuser].state(sim.names[x]) == SUSPECT
    sim.advance(sim.now + 5)
    assert sim.nodes[x].me.incarnation > inc
    assert sim.views(x) == {ALIVE: 11}
    assert not sim.false_dead


def test_indirect_probes_carry_a_member_through_a_broken_direct_path():
    sim = flock()
    a, b = 1, 4
    sim.cut(a, b)
    sim.cut(b, a)
    sim.advance(sim.now + 40)  # a probes b several times, never directly
    assert sim.nodes[a].state(sim.names[b]) == ALIVE
    assert not sim.false_suspect and not sim.false_dead


def test_without_indirect_probes_the_same_broken_path_means_suspicion():
    # The control for the test above: the indirect path is what kept b alive.
    sim = flock(config=Config(indirect_checks=0))
    a, b = 1, 4
    sim.cut(a, b)
    sim.cut(b, a)
    sim.advance(sim.now + 40)
    assert b in sim.false_suspect


def test_suspicion_timeout_shrinks_with_independent_confirmations():
    lo, hi = suspicion_bounds(4, 6, 100, 1.0)
    assert (lo, hi) == (8.0, 48.0)
    s = Suspicion(start=0.0, lo=lo, hi=hi, k=2, by="a", incarnation=1)
    first = s.deadline()
    assert first == hi
    assert s.confirm("b") and s.deadline() < first
    assert not s.confirm("b")  # the same accuser twice is one confirmation
    assert s.confirm("c") and s.deadline() == pytest.approx(lo)
    assert not s.confirm("d")  # past k confirmations nothing changes


def test_confirmations_through_the_machine_bring_the_deadline_forward():
    sim = flock()
    x, node = 6, sim.nodes[0]
    inc = sim.nodes[x].me.incarnation
    sim.silent[x] = True  # nobody hears x refute
    sim.inject(0, Gossip(sim.names[1], [Suspect(sim.names[x], inc, sim.names[1])]))
    alone = node._suspicions[sim.names[x]].deadline()
    sim.inject(0, Gossip(sim.names[2], [Suspect(sim.names[x], inc, sim.names[2])]))
    sim.inject(0, Gossip(sim.names[3], [Suspect(sim.names[x], inc, sim.names[3])]))
    confirmed = node._suspicions[sim.names[x]].deadline()
    assert confirmed < alone
    sim.advance(confirmed + 0.01)
    assert node.state(sim.names[x]) == DOWN


def test_a_record_update_reaches_everyone_and_the_newer_version_wins():
    sim = flock()
    x = 3
    sim._handle(x, sim.nodes[x].update_record(sim.now, {"active": True, "pending": 2}))
    sim._handle(x, sim.nodes[x].update_record(sim.now, {"active": False, "pending": 0}))
    sim.advance(sim.now + 6)
    assert {str(n.record(sim.names[x])) for k, n in enumerate(sim.nodes) if k != x} == {
        str({"active": False, "pending": 0})}


def test_a_member_that_cannot_be_heard_raises_its_own_health_score():
    # Lifeguard: probes that fail with no nack from the relays point at ourselves.
    sim = flock()
    a = 2
    for j in range(12):
        if j != a:
            sim.cut(j, a)  # a hears nobody (its sends still go out)
    sim.advance(sim.now + 6)
    assert sim.nodes[a].awareness.score >= 2
    assert all(sim.nodes[k].awareness.score <= 1 for k in range(12) if k != a)


def test_a_leave_is_announced_and_gossiped_to_all():
    sim = flock()
    sim.leave(8)
    sim.advance(sim.now + 8)
    assert sim.views(8) == {LEFT: 11}
    assert not sim.false_dead


def test_a_crashed_member_is_reaped_and_every_listener_told_once():
    sim = flock(config=Config(reap_after=5.0))
    x, name = 7, sim.names[7]
    heard: dict[int, list] = {k: [] for k in range(12) if k != x}
    for k, changes in heard.items():
        sim.nodes[k].listeners.append(changes.append)
    sim.silent[x] = True  # crashed
    sim.advance(sim.now + 60)
    for k, changes in heard.items():
        # Suspected, held down, then no longer listed: once each, never back.
        assert [new for n, _, new in changes if n == name] == [SUSPECT, DOWN, FORGOTTEN]
        assert name not in sim.nodes[k].table and name not in sim.nodes[k].down
    assert sim.views(x) == {None: 11}


def test_a_node_that_lost_its_state_rejoins_and_replaces_its_old_entry():
    sim = flock()
    x = 9
    old = sim.nodes[x].me
    sim.silent[x] = True  # crashed...
    sim.advance(sim.now + 1)
    fresh = sim.restart(x, incarnation=0)  # ...and back, state wiped, clock set back
    assert fresh.me.instance != old.instance
    sim.advance(sim.now + 10)
    assert sim.views(x) == {ALIVE: 11}
    assert all(n.table[sim.names[x]].instance == fresh.me.instance
               for k, n in enumerate(sim.nodes) if k != x)


def test_a_partition_heals_and_the_flock_converges_again():
    r = simulate(Scenario(nodes=20, seconds=60, partition=0.3, partition_for=20, fault_at=10,
                          seed=5))
    assert r["heal_s"] is not None and r["converged_now"], r
    assert r["false_dead"] == 0  # declared down only across the cut


def test_a_healed_partition_re_converges_within_a_bound():
    # 150 nodes, 30 % cut off for 10 s: both sides suspect each other, so after the heal
    # nearly every node must refute to every other (before: not re-converged 15 s after;
    # now 11-13 s over seeds 1-3).
    r = simulate(Scenario(nodes=150, seconds=45, loss=0.01, partition=0.3, fault_at=20,
                          seed=2))
    assert r["heal_s"] is not None and r["heal_s"] <= 13.5 and r["converged_now"], r
    assert r["false_dead"] == 0


def test_a_suspect_hears_of_it_from_its_prober_and_refutes():
    sim = flock(8)
    x, y = sim.names[3], sim.nodes[5]
    inc = y.table[x].incarnation
    y._suspect(sim.now, x, inc, y.name)
    y._flush(sim.now)
    y.queue = type(y.queue)(y.cfg.queue_max)  # the gossip about it was lost
    y._order[y._pos:] = [x]  # y probes x next
    y._probe(sim.now)
    sends, _ = y._flush(sim.now)
    pings = [m for _, m in sends if isinstance(m, Ping) and m.target == x]
    assert pings and any(isinstance(u, Suspect) and u.node == x for u in pings[0].gossip)
    sim.nodes[3].receive(sim.now, pings[0])
    assert sim.nodes[3].me.incarnation > inc  # refuted


def test_crashes_are_seen_by_all():
    r = simulate(Scenario(nodes=30, seconds=30, crash=3, loss=0.01, seed=2))
    assert r["detect_s"]["detected"] == 3 and r["detect_s"]["max"] is not None, r
    assert r["false_dead"] == 0


def test_a_frozen_node_is_detected_then_comes_back_alive():
    r = simulate(Scenario(nodes=30, seconds=40, freeze=1, freeze_for=6, seed=4))
    assert r["detect_s"]["detected"] == 1, r
    assert r["recovered_s"]["recovered"] == 1, r


def test_no_live_node_is_declared_down_at_one_percent_loss():
    r = simulate(Scenario(nodes=60, seconds=60, loss=0.01, seed=7))
    assert r["converged_s"] is not None and r["converged_now"], r
    assert r["false_dead"] == 0


def test_the_simulator_is_deterministic():
    sc = dict(nodes=20, seconds=15, loss=0.05, crash=1, seed=11)
    a, b = simulate(Scenario(**sc)), simulate(Scenario(**sc))
    a.pop("wall_s"), b.pop("wall_s")
    assert a == b


# -- property tests ------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_bytes_are_one_clean_error(data):
    try:
        msg = decode(data)
    except BadMessage:
        return
    assert decode(encode(msg)) == msg


NAMES = ["a", "b", "c", "d"]
names = st.sampled_from(NAMES)
incs = st.integers(0, 5)
alives = st.builds(Alive, node=names, incarnation=incs, instance=st.sampled_from(["i1", "i2"]),
                   addr=names, version=st.integers(0, 3),
                   record=st.none() | st.just({"tags": ["x"]}))
updates = st.one_of(alives, st.builds(Suspect, names, incs, names),
                    st.builds(Dead, names, incs, names))
entries = st.one_of(alives, st.builds(Mark, names, st.sampled_from([SUSPECT, DOWN, LEFT]),
                                      incs, names, alives))
gossip = st.lists(updates, max_size=4)
messages = st.one_of(
    st.builds(Ping, names, st.integers(0, 9), names, names, gossip),
    st.builds(Ack, names, st.integers(0, 9), gossip),
    st.builds(Nack, names, st.integers(0, 9), gossip),
    st.builds(PingReq, names, st.integers(0, 9), names, names, names, gossip),
    st.builds(Gossip, names, gossip),
    st.builds(PushPull, names, names, st.booleans(), st.booleans(), st.lists(entries, max_size=5)),
)


def _own_statements(msg):
    """The Alive statements in `msg` its sender made about itself."""
    found = list(getattr(msg, "gossip", [])) + [
        e if isinstance(e, Alive) else e.alive for e in getattr(msg, "states", [])]
    return {id(a) for a in found if isinstance(a, Alive) and a.node == msg.sender}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.floats(0, 0.5), messages), max_size=40))
def test_random_messages_never_raise_nor_plant_a_statement_about_x_from_y(steps):
    me = Alive("a", 1, "i0", "a")
    node = Swim(me, random.Random(1))  # no vouch hook: relayed statements are never enough
    node.start(0.0, ["b"])
    own: dict[int, Alive] = {}
    now = 0.0
    for dt, msg in steps:
        now += dt
        for i in _own_statements(msg):
            own[i] = next(a for a in [*getattr(msg, "gossip", []),
                                      *(e if isinstance(e, Alive) else e.alive
                                        for e in getattr(msg, "states", []))] if id(a) == i)
        node.receive(now, msg)
        node.tick(now)
        for name, e in node.table.items():
            statement = e if isinstance(e, Alive) else e.alive
            assert name != "a"
            assert id(statement) in own, (name, statement)  # only ever its own word
        assert node.me.node == "a" and node.me.instance == "i0"


def test_the_simulator_command_prints_one_json_object():
    out = subprocess.run([sys.executable, "-m", "flock_node.membership.sim", "--nodes", "50",
                          "--seconds", "20", "--json"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    for key in ("converged_s", "detect_s", "false_dead", "msgs_per_node_s",
                "bytes_per_node_s", "wall_s"):
        assert key in r
    assert set(r["detect_s"]) >= {"p50", "max"}
    assert r["converged_s"] is not None and r["false_dead"] == 0


@pytest.mark.parametrize("args", [["--nodes", "x", "--seconds", "5"],
                                  ["--nodes", "10", "--seconds", "-1"],
                                  ["--nodes", "10", "--seconds", "5", "--loss", "2"],
                                  ["--nodes", "10", "--seconds", "5", "--crash", "9"],
                                  ["--seconds", "5"]])
def test_bad_simulator_flags_are_a_usage_error(args):
    out = subprocess.run([sys.executable, "-m", "flock_node.membership.sim", *args],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "usage:" in out.stderr and "Traceback" not in out.stderr


# -- push-pull: digest first, then only what differs, in pages ---------------------------------

def _member(name: str) -> Swim:
    return Swim(Alive(name, 1, f"i-{name}", f"tcp://{name}:7946"), random.Random(1),
                vouch=lambda a: True)


def _statements(n: int, record: dict | None = None, sig: bytes = b"",
                every_ms: int = 0) -> list[Alive]:
    """`n` members; started `every_ms` apart (incarnations are start times in ms), or all
    at once."""
    return [Alive(f"m{i:05d}", 1 + i * every_ms, f"{i:08x}",
                  f"tcp://10.0.{i // 250}.{i % 250}:7946", 1, record, sig) for i in range(n)]


def _pair(n: int, every_ms: int = 0) -> tuple[Swim, Swim]:
    """Two members holding the same table of `n` others."""
    a, b = _member("a"), _member("b")
    states = _statements(n, every_ms=every_ms)
    a._merge(0.0, [*states, b.me], "x")
    b._merge(0.0, [*states, a.me], "x")
    a._flush(0.0), b._flush(0.0)
    return a, b


def _request(a: Swim, now: float = 1.0, catch_up: bool = False) -> PushPull:
    if not catch_up:
        a._pp_learned = a.learned  # learned nothing lately: a periodic digest exchange
        a._pp_quiet = 2
    a._periodic_push_pull(now)
    sends = [m for _, m in a._flush(now)[0] if isinstance(m, PushPull)]
    assert len(sends) == 1
    return sends[0]


def test_a_push_pull_between_equal_tables_is_one_small_message():
    a, b = _pair(2000)
    req = _request(a)
    assert req.states == [] and req.digest
    assert len(encode(req)) < 2000  # the table itself is over 100 KB
    sends, changes = b.receive(1.0, req)
    assert sends == [] and changes == []  # nothing differs: nothing to answer


def test_a_push_pull_between_differing_tables_carries_only_the_delta():
    # Buckets are ranges of start times: members that started over 80 s fill all of them.
    a, b = _pair(2000, every_ms=40)
    newer_b = Alive("m00007", 1 + 7 * 40, f"{7:08x}", "tcp://10.0.0.7:7946", 2,
                    {"tags": ["b"]})
    newer_a = Alive("m01234", 1 + 1234 * 40, f"{1234:08x}", "tcp://10.0.4.234:7946", 2,
                    {"tags": ["a"]})
    b._merge(0.0, [newer_b], "m00007")
    a._merge(0.0, [newer_a], "m01234")
    req = _request(a)
    answers = [m for _, m in b.receive(1.0, req)[0]]
    assert len(answers) == 1 and answers[0].reply and answers[0].digest
    assert newer_b in answers[0].states and len(answers[0].states) <= 64  # a bucket, not 2000
    back = [m for _, m in a.receive(1.1, answers[0])[0]]
    assert a.table["m00007"] is newer_b
    assert len(back) == 1 and back[0].reply and not back[0].digest
    assert newer_a in back[0].states and len(back[0].states) <= 64
    assert b.receive(1.2, back[0])[0] == []  # the last leg: nothing more to say
    assert b.table["m01234"] is newer_a
    assert _request(a, 2.0).digest == _request(b, 2.0).digest  # the tables agree again


def test_a_ten_thousand_member_table_goes_to_a_joiner_in_frames_under_the_limit():
    from flock_node.protocol import MAX_FRAME, Codec, SwimFrame

    # A member's statement as the agent signs it on TLS (certificate and signature, the
    # bigger of the two signatures), with a full record of facts.
    record = {"tags": ["web", "eu-west-1"], "active": False, "pending": 0, "dead": 0,
              "last_run": {"ok": True, "at": 1.7e9, "resources": 42, "changed": 3},
              "crl": 3, "bus": "tcp://10.1.2.3:7946", "rpc": "tcp://10.1.2.3:7947",
              "version": "0.9.0", "started": 1.7e9}
    seed = _member("seed")
    members = _statements(10_000, record, b"\x01" * 620)
    seed._merge(0.0, members, "x")
    seed._flush(0.0)
    joiner = _member("joiner")
    sends, _ = seed.receive(1.0, PushPull("joiner", joiner.me.addr, True, False, [joiner.me]))
    codec = Codec(b"k" * 32, "seed")
    pages = [m for _, m in sends if isinstance(m, PushPull)]
    assert len(pages) > 1
    for m in pages:
        assert len(codec.encode(SwimFrame(encode(m)))) < MAX_FRAME
        joiner.receive(1.1, decode(encode(m)))
    assert len(joiner.table) == 10_001  # every member and the seed


def _exchange(a: Swim, b: Swim, catch_up: bool = False) -> list[PushPull]:
    """One push-pull from a to b, every leg delivered: the messages it took."""
    moved: list[PushPull] = []
    todo = [(b, _request(a, catch_up=catch_up))]
    while todo:
        to, msg = todo.pop(0)
        moved.append(msg)
        other = a if to is b else b
        todo += [(other, m) for _, m in to.receive(1.0, msg)[0] if isinstance(m, PushPull)]
    return moved


@pytest.mark.parametrize("catch_up", [False, True])
def test_a_catch_up_exchange_moves_about_the_statements_it_teaches(catch_up):
    a, b = _pair(2000)
    # a lacks 90 % of the table and knows 20 members b does not: every bucket differs.
    a, held = _member("a"), _statements(2000)
    extra = [Alive(f"x{i:03d}", 1, f"x{i:08x}", f"tcp://10.9.0.{i}:7946") for i in range(20)]
    a._merge(0.0, [*held[::10], *extra, b.me], "x")
    a._flush(0.0)
    before_a, before_b = len(a.table), len(b.table)
    moved = _exchange(a, b, catch_up)
    taught = (len(a.table) - before_a) + (len(b.table) - before_b)
    assert taught == 1800 + 20
    statements = sum(len(m.states) for m in moved)
    assert statements <= 1.2 * taught  # was 2,000 + 2,000: both tables, every bucket
    # In bytes: the statements taught, plus 16 bytes a member of b's (summary and ask).
    news = [s for i, s in enumerate(held) if i % 10] + extra
    assert sum(len(encode(m)) for m in moved) <= 1.5 * sum(len(encode(s)) for s in news)
    assert _request(a, 2.0).digest == _request(b, 2.0).digest  # the tables agree


def test_a_summary_answer_refutes_and_takes_the_newer_statement_both_ways():
    a, b = _pair(500)
    # Each holds a newer statement of a different member, and b holds a down.
    a._merge(0.0, [Alive("m00001", 2, "00000001", "tcp://10.0.0.1:7946")], "m00001")
    b._merge(0.0, [Alive("m00002", 2, "00000002", "tcp://10.0.0.2:7946")], "m00002")
    for i in range(100, 300):  # and b misses 200 of a's: the answer is a summary
        del b.table[f"m{i:05d}"]
    b.digest = type(b.digest)()
    for e in b.table.values():
        b.digest.toggle(e)
    b._dead(0.0, "a", 1, "b")
    moved = _exchange(a, b)
    assert any(m.summary for m in moved)
    assert a.table["m00002"].incarnation == 2 and b.table["m00001"].incarnation == 2
    assert b.state("a") == "alive" and a.me.incarnation > 1
    assert b.table.keys() >= {f"m{i:05d}" for i in range(100, 300)}
    assert _request(a, 2.0).digest == _request(b, 2.0).digest


def _joiners(n: int, every_ms: int = 5) -> list[Alive]:
    """Members that started `every_ms` apart (incarnations are start times in ms)."""
    return [Alive(f"j{i:05d}", i * every_ms, f"{i:08x}", f"tcp://10.1.{i // 250}.{i % 250}:7946")
            for i in range(n)]


def test_a_catch_up_exchange_compares_only_the_epochs_started_after_the_joiner():
    # b knows the whole forming flock; a joined half way and knows those who started before.
    a, b = _member("a"), _member("b")
    flock = _joiners(2000)
    b._merge(0.0, [*flock, a.me], "x")
    a._merge(0.0, [*flock[:1000], b.me], "x")
    a._flush(0.0), b._flush(0.0)
    moved = _exchange(a, b, catch_up=True)
    # A small request: 20 bytes an epoch of 32 ms that a holds (5 s of starts), where the
    # table is over 100 KB.
    assert len(moved[0].epochs) <= 20 * (5000 // 32 + 3) and not moved[0].digest
    assert not any(m.summary for m in moved)
    statements = sum(len(m.states) for m in moved)
    assert 1000 <= statements <= 1000 + 60  # the 1,000 a lacked, and one epoch it half held
    assert a.table.keys() >= {s.node for s in flock}
    assert _request(a, 2.0).digest == _request(b, 2.0).digest  # the tables agree


def test_epoch_digests_equal_a_fresh_count_after_bulk_and_single_writes():
    from flock_node.membership.digest import Digest

    a = _member("a")
    flock = _joiners(600, every_ms=3)
    a._merge(0.0, flock[:400], "x")  # in bulk
    for s in flock[400:]:
        a._merge(0.0, [s], s.node)  # one by one
    a._suspect(1.0, "j00007", 21, "a")
    a._dead(1.0, "j00300", 900, "a")
    a._drop("j00301")
    fresh = Digest()
    for e in a.table.values():
        fresh.toggle(e)
    assert fresh.epochs == a.digest.epochs and fresh.fine == a.digest.fine
    get = a.table.get
    def names(d: Digest, eps: set[int]) -> list[str]:
        return sorted(e.node for e in d.in_epochs(eps, get))

    assert {k: names(fresh, {k}) for k in fresh.members} == {
        k: names(a.digest, {k}) for k in a.digest.members}
    assert names(a.digest, set(a.digest.epochs)) == sorted(a.table)
    assert all(e is get(e.node) for e in a.digest.in_epochs(set(a.digest.epochs), get))
    assert sum(v[1] for v in a.digest.epochs.values()) == len(a.table)


def test_a_relayed_probe_goes_where_we_know_the_member_listens():
    # b still holds c at the address of its old process (frozen: c restarted elsewhere); a
    # knows the new c. a pings the new address, and dials no connection to the old one.
    a = _member("a")
    new_c = Alive("c", 5, "i-c2", "tcp://c:8001")
    a._merge(0.0, [new_c], "c")
    a._flush(0.0)
    sends, _ = a.receive(1.0, PingReq("b", 7, "c", "tcp://c:7946", "tcp://b:7946"))
    assert [(addr, type(m)) for addr, m in sends] == [("tcp://c:8001", Ping)]
    # A member we do not know is pinged where the asker says.
    sends, _ = a.receive(1.1, PingReq("b", 8, "x", "tcp://x:7946", "tcp://b:7946"))
    assert [addr for addr, _ in sends] == ["tcp://x:7946"]


def test_members_that_swapped_states_make_the_digests_differ():
    # Two tables alike but for pairs of members whose states are swapped (one suspect, the
    # other alive, and the other way round): every such pair must show in the digests.
    # Summed tuple hashes missed most of them (a suspicion moves CPython's tuple hash by
    # nearly the same amount for every member).
    from flock_node.membership.digest import Digest

    flock = _joiners(200, every_ms=3)
    for k in range(0, 200, 2):
        a, b = Digest(), Digest()
        x, y = flock[k], flock[k + 1]
        for e in flock:
            if e is x:
                a.toggle(Mark(x.node, SUSPECT, x.incarnation, "z", x)), b.toggle(x)
            elif e is y:
                a.toggle(y), b.toggle(Mark(y.node, SUSPECT, y.incarnation, "z", y))
            else:
                a.toggle(e), b.toggle(e)
        assert a.fine != b.fine and a.epochs != b.epochs, (x.node, y.node)
