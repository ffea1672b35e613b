"""A hostile member's gossip (issue 11: "a gossip update about node X is only believed when it
comes from X or is backed by X's own signed statement, or is a suspicion that X can refute"),
through the simulator: suspicions and deaths about an incarnation nobody has seen, and
incarnations a refutation cannot go past."""

from __future__ import annotations

from flock_node.membership.messages import ALIVE, Dead, Gossip, Suspect, encode
from flock_node.membership.sim import Scenario, Sim

TOP = 2**63 - 1  # the largest incarnation a message can carry


def _flock(n: int = 8) -> Sim:
    sim = Sim(Scenario(nodes=n, seconds=600, seed=5, fault_at=10_000))
    sim.advance(12.0)
    assert sim.good == sim.h * (sim.h - 1)
    return sim


def test_a_suspicion_or_death_above_the_incarnation_known_is_not_believed():
    """One forged frame used to push a live node to the top incarnation: it refuted past
    what a message can carry, every statement of it was dropped as malformed, and the flock
    lost it until it restarted. A suspicion can only be about a statement we hold."""
    sim = _flock()
    x, attacker, y = 3, sim.names[6], 5
    name = sim.names[x]
    inc = sim.nodes[x].me.incarnation
    sim.inject(y, Gossip(attacker, [Suspect(name, TOP, attacker)]))
    sim.inject(y, Gossip(attacker, [Dead(name, inc + 10**6, name)]))  # a leave never sent
    assert sim.nodes[y].state(name) == ALIVE
    sim.inject(x, Gossip(attacker, [Suspect(name, TOP, attacker)]))
    sim.advance(sim.now + 10)
    me = sim.nodes[x].me
    assert me.incarnation < TOP
    encode(Gossip(name, [me]))  # its statements still fit the wire
    assert sim.views(x) == {ALIVE: 7}


def test_a_suspicion_of_the_current_incarnation_is_still_refuted():
    sim = _flock()
    x, attacker, y = 2, sim.names[7], 4
    inc = sim.nodes[x].me.incarnation
    sim.inject(y, Gossip(attacker, [Suspect(sim.names[x], inc, attacker)]))
    sim.advance(sim.now + 5)
    assert inc < sim.nodes[x].me.incarnation < inc + 10
    assert sim.views(x) == {ALIVE: 7}
