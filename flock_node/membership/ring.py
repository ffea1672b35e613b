"""The ring neighbours a SWIM agent holds standing connections to (their closed pipe turns a
`kill -9` into an immediate suspicion), and the connections that go stale when the ring
changes or a member moves to another address. Pure: the driver passes the table in and
applies the answer to its sockets."""

from __future__ import annotations

from flock_node.membership.heartbeat import SUSPECT
from flock_node.membership.messages import Alive, Entry

RING = 3  # successors in the sorted member list we keep a standing connection to


def ring_successors(me: str, alive: list[str], k: int = RING) -> list[str]:
    """The `k` members after `me` in the sorted ring of live members (wrapping round)."""
    names = sorted(set(alive) | {me})
    i = names.index(me)
    out = [names[(i + j) % len(names)] for j in range(1, len(names))]
    return out[:k]


def _addr(e: Entry) -> str:
    return e.addr if type(e) is Alive else e.alive.addr  # type: ignore[union-attr]


class Ring:
    """`names`: our ring neighbours; `live`: the addresses of the live members."""

    def __init__(self, me: str) -> None:
        self.me = me
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
        self.names = ring_successors(self.me, alive)
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
