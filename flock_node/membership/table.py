"""The member table and the rules of belief: which update about a node replaces which.

A node is believed only about itself: an `Alive` about X counts when X sent it or when the
`vouch` hook (the driver's signature check) holds; a suspicion or a death may come from anyone,
and X refutes it with a higher incarnation. A new process behind a name (another `instance`)
replaces an entry that is suspect, down or left whatever its incarnation (SPEC: a restart
replaces the old entry); a live entry keeps its name until it is suspected.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flock_node.membership.digest import Digest
from flock_node.membership.gossip import Broadcasts
from flock_node.membership.lifeguard import (
    Awareness,
    Suspicion,
    confirmations_wanted,
    suspicion_bounds,
)
from flock_node.membership.messages import (
    ALIVE,
    DOWN,
    LEFT,
    SUSPECT,
    Alive,
    Dead,
    Entry,
    Mark,
    Message,
    Suspect,
    Update,
    encode,
)

TOP_INCARNATION = 2**63 - 1  # the largest a message carries (messages.Count)
REFUTE_JUMP = 10**9  # incarnations are start times in ms: about 11 days


def refutable(mine: int, inc: int) -> bool:
    """A claim about us at `inc` we answer with a higher incarnation: at ours or above, by
    at most REFUTE_JUMP (a past life after a wiped state and a clock set back); a claim
    beyond is a forgery, answered by nothing."""
    return mine <= inc <= mine + REFUTE_JUMP

Change = tuple[str, str | None, str]  # (node, old state or None when new, new state)
Send = tuple[str, Message]  # (address, message)
Output = tuple[list[Send], list[Change]]


@dataclass
class Config:
    """Protocol timings and bounds (memberlist's LAN defaults unless said otherwise)."""

    probe_interval: float = 1.0
    probe_timeout: float = 0.5
    indirect_checks: int = 3
    retransmit_mult: int = 4
    suspicion_mult: int = 4
    suspicion_max_mult: int = 6
    awareness_max: int = 8
    gossip_budget: int = 1024  # bytes of updates on one message
    queue_max: int = 256
    push_pull_interval: float = 30.0
    push_pull_first: float = 2.0  # a joiner's catch-up exchanges start here and double
    join_retry: float = 1.0
    # While we hold members down, one of them is pinged this often (serf's reconnect, which
    # waits 30 s): one that answers is a healed partition, and gets a push-pull at once.
    reconnect_interval: float = 2.0
    reap_after: float = 120.0  # a down or left member stays listed this long
    page_bytes: int = 512 * 1024  # entries in one push-pull message: well under nng's 1 MiB


def state_of(e: Entry) -> str:
    """The SPEC word for a table entry."""
    return ALIVE if type(e) is Alive else e.state  # type: ignore[union-attr]


class Table:
    """One node's members and what it believes about them."""

    def __init__(self, me: Alive, rng: random.Random, config: Config | None = None,
                 vouch: Callable[[Alive], bool] | None = None,
                 sign: Callable[[Alive], Alive] | None = None,
                 size: Callable[[Any], int] | None = None,
                 vouch_many: Callable[[list[Alive]], list[bool]] | None = None) -> None:
        self.cfg = config or Config()
        self.rng = rng
        self.vouch = vouch or (lambda a: False)  # relayed statements need the driver's check
        # Many statements at once (a push-pull): a driver can batch its signature checks.
        self.vouch_many: Callable[[list[Alive]], list[bool]] = vouch_many or (
            lambda alives: [self.vouch(a) for a in alives])
        self.sign = sign or (lambda a: a)
        self.size = size or (lambda u: len(encode(u)))
        self.me = self.sign(me)
        self.name = me.node
        self.table: dict[str, Entry] = {}  # written through _put and _drop (the digest)
        self.digest = Digest()
        # Bytes of many entries (a push-pull's pages): the simulator sums cached sizes.
        self.measure: Callable[[list[Entry]], int] = lambda states: len(encode(states))
        self.learned = 0  # members found alive (new or back): push-pull comes back soon
        # Members we never heard of added in bulk (_add_many): a change each, unless a caller
        # that counts them itself (the simulator: 10^8 of them) sets a list here; then each
        # bulk add appends its list of names instead, for that caller to take.
        self.bulk: list[list[str]] | None = None
        self.down: set[str] = set()  # members we hold down (not left): push-pull tries them
        self.accuser: str | None = None  # who last held us suspect or down (we refuted)
        self.awareness = Awareness(self.cfg.awareness_max)
        self.queue = Broadcasts(self.cfg.queue_max)
        self.listeners: list[Callable[[Change], None]] = []
        self._suspicions: dict[str, Suspicion] = {}
        self._timers: list[tuple[float, int, str, Any]] = []
        self._tseq = 0
        self._order: list[str] = []  # probe order: shuffled each round
        self._pos = 0
        self._sends: list[Send] = []
        self._changes: list[Change] = []

    # -- queries --------------------------------------------------------------------------
    def state(self, node: str) -> str | None:
        """alive, suspect, down or left; None for a node we do not know."""
        e = self.table.get(node)
        return None if e is None else state_of(e)

    def record(self, node: str) -> dict[str, Any] | None:
        """The latest record `node` published, as we know it."""
        e = self.table.get(node)
        if e is None:
            return None
        return (e if type(e) is Alive else e.alive).record  # type: ignore[union-attr]

    # -- updates --------------------------------------------------------------------------
    def _apply_updates(self, now: float, updates: list[Update], sender: str) -> None:
        get = self.table.get
        for u in updates:
            tu = type(u)
            if tu is Alive:
                if get(u.node) is not u:
                    self._alive(now, u, sender, True)  # type: ignore[arg-type]
            elif tu is Suspect:
                self._suspect(now, u.node, u.incarnation, u.by)  # type: ignore[union-attr]
            else:
                self._dead(now, u.node, u.incarnation, u.by)  # type: ignore[union-attr]

    def _alive(self, now: float, a: Alive, sender: str, gossip: bool) -> None:
        node = a.node
        if node == self.name:
            me = self.me
            if a is not me and refutable(me.incarnation, a.incarnation) and (
                    a.instance != me.instance or a.incarnation > me.incarnation):
                self._refute(a.incarnation)  # someone else's (or our past's) claim to our name
            return
        cur = self.table.get(node)
        if cur is a:
            return
        if node != sender and not self.vouch(a):
            return  # a node is believed only about itself
        if cur is None:
            self._put(node, a)
            self._enlist(node)
            self._note(node, None, ALIVE)
            if gossip:
                self._broadcast(node, a)
            return
        marked = type(cur) is Mark
        known: Alive = cur.alive if marked else cur  # type: ignore[union-attr, assignment]
        if a.instance != known.instance:
            if not marked and a.incarnation <= cur.incarnation:
                return  # a live member keeps its name until it is suspected
        elif a.incarnation < cur.incarnation:
            return
        elif a.incarnation == cur.incarnation:
            if a.version <= known.version:
                return
            if marked:  # a newer record does not refute a suspicion
                m: Mark = cur  # type: ignore[assignment]
                self._put(node, Mark(node, m.state, m.incarnation, m.by, a))
                self._broadcast(node, a)
                return
        self._put(node, a)
        if marked:
            self._suspicions.pop(node, None)
            self._note(node, cur.state, ALIVE)  # type: ignore[union-attr]
            self._enlist(node)
        self._broadcast(node, a)

    def _accused(self, node: str, inc: int, by: str) -> Entry | None:
        """The entry a suspicion or death of `node` at `inc` is about, or None when it changes
        nothing here: about us (refuted when it is current), unknown, older than ours, or
        about an incarnation newer than any we hold (nobody can have seen it: a forgery that
        would push the accused to incarnations it cannot refute)."""
        if node == self.name:
            if refutable(self.me.incarnation, inc):
                self._refute(inc)
                self.accuser = by
            return None
        cur = self.table.get(node)
        if cur is None or inc != cur.incarnation:
            return None
        return cur

    def _suspect(self, now: float, node: str, inc: int, by: str) -> None:
        if node == self.name and refutable(self.me.incarnation, inc):
            self.awareness.apply(1)  # being suspected hints that we are the slow one
        cur = self._accused(node, inc, by)
        if cur is None:
            return
        if type(cur) is Mark:
            if cur.state != SUSPECT:
                return
            s = self._suspicions.get(node)
            if inc == cur.incarnation and s is not None:
                if s.confirm(by):
                    self._at(s.deadline(), "suspect", node)
                    self._broadcast(node, Suspect(node, inc, by))
                return
        alive: Alive = cur.alive if type(cur) is Mark else cur  # type: ignore[assignment]
        self._put(node, Mark(node, SUSPECT, inc, by, alive))
        n = len(self.table) + 1
        lo, hi = suspicion_bounds(self.cfg.suspicion_mult, self.cfg.suspicion_max_mult, n,
                                  self.cfg.probe_interval)
        s = Suspicion(now, lo, hi, confirmations_wanted(self.cfg.suspicion_mult, n), by, inc)
        self._suspicions[node] = s
        self._at(s.deadline(), "suspect", node)
        if type(cur) is Alive:
            self._note(node, ALIVE, SUSPECT)
        self._broadcast(node, Suspect(node, inc, by))

    def _suspicion_due(self, now: float, node: str) -> None:
        s = self._suspicions.get(node)
        if s is None or s.deadline() > now + 1e-9:
            return  # refuted, or a later timer holds it
        del self._suspicions[node]
        self._dead(now, node, s.incarnation, self.name)

    def _dead(self, now: float, node: str, inc: int, by: str) -> None:
        cur = self._accused(node, inc, by)
        if cur is None:
            return
        new = LEFT if by == node else DOWN
        old = state_of(cur)
        if old in (DOWN, LEFT) and (old == new or inc == cur.incarnation):
            return
        alive: Alive = cur.alive if type(cur) is Mark else cur  # type: ignore[assignment]
        self._put(node, Mark(node, new, inc, by, alive))
        self._suspicions.pop(node, None)
        self._note(node, old, new)
        self._broadcast(node, Dead(node, inc, by))
        self._at(now + self.cfg.reap_after, "reap", node)

    def _refute(self, inc: int) -> None:
        m = self.me
        new = min(inc + 1, TOP_INCARNATION)  # never past what a message can carry
        self.me = self.sign(Alive(m.node, new, m.instance, m.addr, m.version, m.record))
        self._broadcast(self.name, self.me)

    # -- plumbing -------------------------------------------------------------------------
    def _enlist(self, node: str) -> None:
        # At a random place among those not yet probed this round (memberlist does the same):
        # members learned together are not probed in lockstep by everyone.
        order = self._order
        order.append(node)
        j = self._pos + int(self.rng.random() * (len(order) - self._pos))
        order[j], order[-1] = order[-1], order[j]

    def _broadcast(self, node: str, u: Update) -> None:
        self.queue.add(node, u, self.size(u))

    def _note(self, node: str, old: str | None, new: str) -> None:
        if new == DOWN:
            self.down.add(node)
        elif old == DOWN:
            self.down.discard(node)
        if new == ALIVE:
            self.learned += 1
        c = (node, old, new)
        self._changes.append(c)
        for fn in self.listeners:
            fn(c)

    def _addr(self, node: str, e: Entry | None) -> str:
        if e is None:
            return ""
        return e.addr if type(e) is Alive else e.alive.addr  # type: ignore[union-attr]

    def _put(self, node: str, e: Entry) -> None:
        old = self.table.get(node)
        if old is not None:
            self.digest.toggle(old, -1)
        self.table[node] = e
        self.digest.toggle(e)

    def _drop(self, node: str) -> None:
        e = self.table.pop(node, None)
        if e is not None:
            self.digest.toggle(e, -1)

    def _at(self, when: float, kind: str, arg: Any) -> None:
        self._tseq += 1
        heapq.heappush(self._timers, (when, self._tseq, kind, arg))
