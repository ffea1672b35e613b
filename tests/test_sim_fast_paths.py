"""The shortcuts that make the simulator fast must not change what it counts or believes.

- the simulator counts a bulk learn from the lists of names the table keeps for it, not
  change by change: its counts must equal a recount from every table;
- it checks a batch's signatures and reads its hashes in one pass: a forged statement in a
  batch of signed ones is still refused;
- a catch-up request equal to our last one, our table unchanged since, is answered with
  nothing without being unpacked;
- a catch-up request's epochs are packed straight from the table's: the same bytes as
  building them first and packing them.
"""

import random

from flock_node.membership import epochs
from flock_node.membership.messages import ALIVE, DOWN, LEFT, SUSPECT, Alive, PushPull
from flock_node.membership.sim import Scenario, Sim
from flock_node.membership.swim import Swim

BAD = (SUSPECT, DOWN, LEFT)


def _recount(sim: Sim) -> tuple[int, dict[int, int], dict[int, int]]:
    """`good`, and the views of the faulty nodes (the only ones the simulator follows one
    by one), counted again from every healthy table."""
    n = sim.sc.nodes
    good, alive, bad = 0, [0] * n, [0] * n
    for i, m in enumerate(sim.nodes):
        if not sim.healthy[i]:
            continue
        for j, name in enumerate(sim.names):
            state = m.state(name) if j != i else None
            if state == ALIVE:
                alive[j] += 1
                good += sim.healthy[j]
            elif state in BAD:
                bad[j] += 1
    return good, _faulty(sim, alive), _faulty(sim, bad)


def _faulty(sim: Sim, views: list[int]) -> dict[int, int]:
    return {j: views[j] for j in sorted(sim.faulty_idx)}


def _counted(sim: Sim) -> tuple[int, dict[int, int], dict[int, int]]:
    return sim.good, _faulty(sim, sim.alive_views), _faulty(sim, sim.bad_views)


def test_the_simulators_counts_equal_a_recount_from_every_table():
    sim = Sim(Scenario(nodes=300, seconds=30, loss=0.02, crash=3, freeze=2, seed=5))
    for t in (1.0, 2.5, 6.0, 14.0, 30.0):  # mid-storm, converged, faults seen
        sim.advance(t)
        assert _counted(sim) == _recount(sim), t
    assert sim.converged_at is not None and sim.crash_set <= set(sim.detected)


def test_a_restarted_node_is_counted_again_from_nothing():
    # Its old table's views are taken out (they used to stay counted: 119 views too many).
    sim = Sim(Scenario(nodes=120, seconds=60, seed=2, fault_at=10_000))
    sim.advance(10.0)
    sim.restart(40)  # a new machine: its count of bulk adds starts again at 0
    sim.advance(25.0)
    assert _counted(sim) == _recount(sim)
    assert sim.good == sim.h * (sim.h - 1)


def test_a_forged_statement_among_signed_ones_is_refused_by_the_simulators_check():
    sim = Sim(Scenario(nodes=60, seconds=60, seed=4, fault_at=10_000))
    sim.advance(8.0)
    me = sim._sign(Alive("x00000", 1, "feed0001", "x00000", 0, None))
    node = Swim(me, random.Random(1), vouch=sim._vouch, vouch_many=sim._vouch_many,
                sign=sim._sign)
    signed = [m.me for m in sim.nodes[:50]]
    forged = Alive("n99999", 5, "bad00001", "n99999", 0, None, b"12345678")
    node._merge(sim.now, [*signed[:20], forged, *signed[20:]], "n00007")
    assert node.state("n99999") is None
    assert {n for n in node.table} == {a.node for a in signed}
    assert all(sim._vouch(a) for a in signed) and not sim._vouch(forged)


def _member(name: str) -> Swim:
    return Swim(Alive(name, 1, f"i-{name}", f"tcp://{name}:7946"), random.Random(1),
                vouch=lambda a: True)


def test_an_equal_catch_up_request_is_answered_with_nothing_unread(monkeypatch):
    a, b = _member("a"), _member("b")
    flock = [Alive(f"j{i:04d}", 1 + 40 * i, f"{i:08x}", f"tcp://10.1.0.{i % 250}:7946")
             for i in range(300)]
    a._merge(0.0, [*flock, b.me], "x")
    b._merge(0.0, [*flock, a.me], "x")
    a._flush(0.0), b._flush(0.0)
    mine = b._recent_epochs()  # b asked with these (its last catch-up request)
    same = PushPull("a", a.me.addr, False, False, epochs=a._recent_epochs())
    assert same.epochs == mine  # equal tables (each holds the other and itself)
    unpacked: list[bytes] = []
    real = epochs.unpack
    monkeypatch.setattr(epochs, "unpack", lambda data: unpacked.append(data) or real(data))
    assert b.receive(1.0, same) == ([], [])
    assert unpacked == []
    # b's table changes: the same bytes are read again, and answered (b holds a member more).
    b._merge(1.0, [Alive("j9999", 1 + 40 * 299, "ffffffff", "tcp://10.1.0.9:7946")], "x")
    sends, _ = b.receive(1.5, same)
    assert unpacked == [mine]
    answered = [s.node for _, m in sends if isinstance(m, PushPull) for s in m.states]
    assert "j9999" in answered and len(answered) <= 3  # the epoch that differs, not all


def _recent_the_long_way(eps: dict, me: Alive, me_hash: int, k: int) -> bytes:
    keys = sorted(eps)[-k:]
    out = {e: tuple(eps[e]) for e in keys}
    ep = epochs.epoch_of(me)
    x, n = out.get(ep, (0, 0))
    out[ep] = ((x + me_hash) & epochs.M64, n + 1)
    return epochs.pack(out)


def test_a_catch_up_request_packs_its_epochs_as_building_them_would():
    rng = random.Random(5)
    for _ in range(300):
        eps = {rng.randrange(1000, 1400): [rng.getrandbits(64), rng.randrange(1, 90)]
               for _ in range(rng.randrange(0, 60))}
        if eps and rng.random() < 0.1:
            eps[rng.choice(list(eps))][1] = 2**33  # a count past 4 bytes: clamped
        inc = rng.choice([rng.randrange(1000, 1400), rng.randrange(0, 1000)]) << epochs.EPOCH_SHIFT
        me = Alive("me", inc, "i", "me")
        k = rng.choice([epochs.EPOCHS_SENT, 8, 1])
        h = rng.getrandbits(48)
        assert epochs.pack_recent(eps, me, h, k) == _recent_the_long_way(eps, me, h, k)
