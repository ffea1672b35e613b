"""The ring neighbours a SWIM agent holds standing connections to (their closed pipe turns a
`kill -9` into an immediate suspicion), and the connections that go stale when the ring
changes or a member moves to another address. Pure: the driver passes the table in and
applies the answer to its sockets."""

from __future__ import annotations

from flock_node.membership.heartbeat import SUSPECT
from flock_node.membership.messages import Alive, Entry

RING = 3  # successors in the sorted member list we keep a standing connection to
# Past RING, the driver spends half its pool on standing connections to our ring
# neighbourhood (the members we probe in a large flock, `AgentSwim.watch`); the other half is
# a pool for indirect probes, push-pulls and gossip to random members. At most RING + pool.


def ring_successors(me: str, alive: list[str], k: int = RING) -> list[str]:
    """The `k` members after `me` in the sorted ring of live members (wrapping round)."""
    names = sorted(set(alive) | {me})
    i = names.index(me)
    out = [names[(i + j) % len(names)] for j in range(1, len(names))]
    return out[:k]


def ring_neighbours(me: str, alive: list[str], width: int) -> list[str]:
    """The `width` members nearest `me` in the sorted ring of live members, successors first:
    as many after as before (one more after when `width` is odd), so that we watch the members
    that watch us. Everyone else when the ring is no larger."""
    names = sorted(set(alive) | {me})
    n, i = len(names), names.index(me)
    if width >= n - 1:
        return [names[(i + j) % n] for j in range(1, n)]
    after, before = (width + 1) // 2, width // 2
    return ([names[(i + j) % n] for j in range(1, after + 1)]
            + [names[(i - j) % n] for j in range(1, before + 1)])


def _addr(e: Entry) -> str:
    return e.addr if type(e) is Alive else e.alive.addr  # type: ignore[union-attr]


class Ring:
    """`names`: our ring neighbours (the `width` nearest); `live`: the addresses of the live
    members; `watch`: the members to probe (our neighbours, or None: everyone, in a flock no
    larger than the neighbourhood)."""

    def __init__(self, me: str, width: int = RING) -> None:
        self.me = me
        self.width = width
        self.watch: set[str] | None = None
        self.names: list[str] = []
        self.pinned: set[str] = set()  # the neighbours' addresses we hold open
        self.live: set[str] = set()
        self._addrs: dict[str, str] = {}  # where each member listened at the last look

    def update(self, table: dict[str, Entry]) -> tuple[set[str] | None, set[str]]:
        """(the addresses to pin now, None if unchanged; the addresses to close). A member's
        old address (it restarted elsewhere) and a former neighbour's (down) are closed,
        unless a live or suspect member listens there: a suspect may yet refute."""
        addrs = {n: _addr(e) for n, e in table.items()}
        alive = [n for n, e in table.items() if type(e) is Alive]
        live = self.live = {addrs[n] for n in alive}
        self.names = ring_neighbours(self.me, alive, self.width)
        self.watch = set(self.names) if len(alive) > len(self.names) else None
        pinned = {addrs[n] for n in self.names} - {""}
        moved = {a for n, a in self._addrs.items() if addrs.get(n, a) != a}
        self._addrs = addrs
        old = self.pinned
        if pinned == old and not moved:
            return None, set()
        self.pinned = pinned
        gone = (old - pinned - live) | moved
        if gone:
            gone -= live | {addrs[n] for n, e in table.items()
                            if type(e) is not Alive and e.state == SUSPECT}  # type: ignore[union-attr]
        return (pinned if pinned != old else None), gone
