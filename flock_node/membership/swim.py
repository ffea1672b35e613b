"""SWIM with Lifeguard: the membership of one node as a pure state machine (sans-IO).

Feed it `receive(now, msg)` and `tick(now)`; each returns `(sends, changes)`: messages to
send as `(address, message)` and membership changes as `(node, old, new)` tuples (old None:
a new member). Nothing here reads a clock, a socket or global randomness: `now` is passed in
and random choices come from the injected `random.Random`, so the simulator (`sim.py`) and
the tests replay a run exactly. The driver (not written yet) moves the bytes and checks that a
message's `sender` is the connection's verified identity; `vouch` is its hook for statements
relayed by others (an `Alive` about X is believed from X, or when X's signature holds).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from typing import Any

from flock_node.membership.antientropy import AntiEntropy
from flock_node.membership.gossip import retransmit_limit
from flock_node.membership.messages import (
    DOWN,
    FORGOTTEN,
    LEFT,
    SUSPECT,
    Ack,
    Alive,
    Dead,
    Gossip,
    Mark,
    Message,
    Nack,
    Ping,
    PingReq,
    PushPull,
    Suspect,
    Update,
)
from flock_node.membership.table import Change, Config, Output, Send, state_of

__all__ = ["Change", "Config", "Output", "Send", "Swim", "state_of"]


class Swim(AntiEntropy):
    """One member's view of the flock and its side of the protocol."""

    def __init__(self, me: Alive, rng: random.Random, config: Config | None = None,
                 vouch: Callable[[Alive], bool] | None = None,
                 sign: Callable[[Alive], Alive] | None = None,
                 size: Callable[[Any], int] | None = None,
                 vouch_many: Callable[[list[Alive]], list[bool]] | None = None) -> None:
        super().__init__(me, rng, config, vouch, sign, size, vouch_many)
        self.left = False
        self._seq = 0
        self._acks: dict[int, list[Any]] = {}  # seq -> [kind, target, acked, nacks, expected]
        self._probing: int | None = None
        self._pp_delay = self.cfg.push_pull_first
        self._pp_learned = 0
        self._pp_due = 0.0
        self._seeds: list[str] = []
        self._accused_at = -1e9
        self._limit_for = self._limit = 0  # the retransmit limit, for a table of that size

    # -- inputs ---------------------------------------------------------------------------
    def start(self, now: float, seeds: list[str]) -> Output:
        """Join through `seeds` (addresses): push-pull with one, then probe and gossip."""
        self._seeds = [s for s in seeds if s != self.me.addr]
        self.rng.shuffle(self._seeds)
        self._broadcast(self.name, self.me)
        if self._seeds:
            # One seed answers with its table (the others are tried in turn while nobody
            # answers); the others are only told we exist, so every seed knows every joiner
            # and a catching-up node can learn the whole flock from one late starter.
            self._sends.append((self._seeds[0], PushPull(self.name, self.me.addr, True, False,
                                                         self._states())))
            for s in self._seeds[1:]:
                self._sends.append((s, Gossip(self.name, [self.me])))
            self._at(now + self.cfg.join_retry, "join", self.cfg.join_retry)
        self._at(now + self.rng.random() * self.cfg.probe_interval, "probe", None)
        self._at(now + self.cfg.reconnect_interval * (1 + self.rng.random()), "reconnect", None)
        self._pp_at(now + self.cfg.push_pull_first * (1 + self.rng.random()))
        return self._flush(now)

    def leave(self, now: float) -> Output:
        """Announce our departure to a few members; afterwards we stay silent."""
        bye = Dead(self.name, self.me.incarnation, self.name)
        for addr in self._random_addrs(self.cfg.indirect_checks, None):
            self._sends.append((addr, Gossip(self.name, [bye])))
        self.left = True
        return self._flush(now)

    def update_record(self, now: float, record: dict[str, Any]) -> Output:
        """Our own facts changed: a new version of our statement, gossiped like any update."""
        m = self.me
        self.me = self.sign(Alive(m.node, m.incarnation, m.instance, m.addr, m.version + 1,
                                  record))
        self._broadcast(self.name, self.me)
        return self._flush(now)

    def receive(self, now: float, msg: Message) -> Output:
        """One message from the network (its sender already authenticated by the driver)."""
        if self.left:
            return [], []
        tm = type(msg)
        if tm is not PushPull:
            g = msg.gossip  # type: ignore[union-attr]
            if g:
                self._apply_updates(now, g, msg.sender)
        if tm is Ping:
            if msg.target == self.name:  # type: ignore[union-attr]
                self._sends.append((msg.reply_to, Ack(self.name, msg.seq, self._gossip())))  # type: ignore[union-attr]
        elif tm is Ack:
            self._acked(now, msg)  # type: ignore[arg-type]
        elif tm is Nack:
            w = self._acks.get(msg.seq)  # type: ignore[union-attr]
            if w is not None and w[0] == "probe":
                w[3] += 1
        elif tm is PingReq:
            self._relay(now, msg)  # type: ignore[arg-type]
        elif tm is PushPull:
            self._push_pulled(now, msg)  # type: ignore[arg-type]
        return self._flush(now)

    def tick(self, now: float) -> Output:
        """Run the timers that are due at `now`."""
        timers = self._timers
        while timers and timers[0][0] <= now and not self.left:
            _, _, kind, arg = heapq.heappop(timers)
            if kind == "probe":
                self._probe(now)
            elif kind == "ptimeout":
                self._indirect(now, arg)
            elif kind == "relay":
                w = self._acks.pop(arg, None)
                if w is not None and not w[2]:
                    self._sends.append((w[3], Nack(self.name, w[4], self._gossip())))
            elif kind == "suspect":
                self._suspicion_due(now, arg)
            elif kind == "pp":
                if arg != self._pp_due:
                    continue  # moved earlier since
                self._periodic_push_pull(now)
            elif kind == "join":
                if not self.table:
                    self._seeds.append(self._seeds.pop(0))
                    self._sends.append((self._seeds[0], PushPull(self.name, self.me.addr, True,
                                                                 False, [self.me])))
                    self._at(now + arg, "join", min(arg * 2, 30.0))
            elif kind == "reconnect":
                self._reconnect(now)
            elif kind == "forget":
                self._acks.pop(arg, None)
            elif kind == "reap":
                e = self.table.get(arg)
                if e is not None and type(e) is Mark and e.state in (DOWN, LEFT):
                    self._drop(arg)
                    self._note(arg, e.state, FORGOTTEN)  # told, as the mesh tells it
        return self._flush(now)

    def next_deadline(self) -> float | None:
        """When `tick` has work next (None: never)."""
        return self._timers[0][0] if self._timers and not self.left else None

    # -- probing --------------------------------------------------------------------------
    def _probe(self, now: float) -> None:
        cfg = self.cfg
        if self._probing is not None:
            self._probe_done(now, self._probing)
        self._at(now + self.awareness.scale(cfg.probe_interval), "probe", None)
        target = self._next_target()
        if target is None:
            return
        e = self.table[target]
        self._seq += 1
        seq = self._seq
        self._acks[seq] = ["probe", target, False, 0, 0]
        self._probing = seq
        gossip = self._gossip()
        if type(e) is Mark:
            # Lifeguard's buddy system: a suspect hears of it from whoever probes it, and
            # refutes, even when the gossip about it was dropped.
            gossip.append(Suspect(target, e.incarnation, e.by))
        self._sends.append((self._addr(target, e), Ping(self.name, seq, target, self.me.addr,
                                                        gossip)))
        self._at(now + self.awareness.scale(cfg.probe_timeout), "ptimeout", seq)

    def _next_target(self, only: set[str] | None = None) -> str | None:
        """The next member to probe, round-robin over the shuffled table (`only`: skipping
        the others, each of them still once per round)."""
        order, table = self._order, self.table
        for _ in range(2):
            while self._pos < len(order):
                n = order[self._pos]
                self._pos += 1
                if only is not None and n not in only:
                    continue
                e = table.get(n)
                if e is not None and (type(e) is Alive or e.state == SUSPECT):  # type: ignore[union-attr]
                    return n
            # A new round, reshuffled: every member is probed once per round. Down members
            # stay in the list (not probed) so push-pull can still pick them after a partition.
            order[:] = list(table)
            self.rng.shuffle(order)
            self._pos = 0
        return None

    def _reconnect(self, now: float) -> None:
        """Ping one member we hold down: an answer means the partition between us healed."""
        self._at(now + self.cfg.reconnect_interval * (0.5 + self.rng.random()), "reconnect",
                 None)
        if not self.down:
            return
        target = sorted(self.down)[int(self.rng.random() * len(self.down))]
        e = self.table.get(target)
        if e is None:
            return
        self._seq += 1
        self._acks[self._seq] = ["reconnect", target, False, 0, 0]
        # No gossip on it: a member held down is most likely gone, and every update it
        # carried would count as sent, spending the news of its own death.
        self._sends.append((self._addr(target, e), Ping(self.name, self._seq, target,
                                                        self.me.addr)))
        self._at(now + self.cfg.probe_interval, "forget", self._seq)

    def _indirect(self, now: float, seq: int) -> None:
        w = self._acks.get(seq)
        if w is None or w[2]:
            return
        target = w[1]
        e = self.table.get(target)
        if e is None:
            return
        addrs = self._random_addrs(self.cfg.indirect_checks, target)
        w[4] = len(addrs)
        taddr = self._addr(target, e)
        for addr in addrs:
            self._sends.append((addr, PingReq(self.name, seq, target, taddr, self.me.addr,
                                                     self._gossip())))

    def _probe_done(self, now: float, seq: int) -> None:
        self._probing = None
        w = self._acks.pop(seq, None)
        if w is None:
            return
        if w[2]:
            self.awareness.apply(-1)
            return
        # Lifeguard: relays that did not even nack point at our own trouble.
        self.awareness.apply(w[4] - w[3] if w[4] else 1)
        e = self.table.get(w[1])
        if e is not None and (type(e) is Alive or e.state == SUSPECT):  # type: ignore[union-attr]
            self._suspect(now, w[1], e.incarnation, self.name)

    def _acked(self, now: float, msg: Ack) -> None:
        w = self._acks.get(msg.seq)
        if w is None or w[2]:
            return
        w[2] = True
        if w[0] == "reconnect":
            del self._acks[msg.seq]
            e = self.table.get(w[1])
            if e is not None:  # the other side of a healed partition: compare tables now
                self._push_pull_with(self._addr(w[1], e))
        elif w[0] == "relay":
            del self._acks[msg.seq]
            self._sends.append((w[3], Ack(self.name, w[4], self._gossip())))

    def _relay(self, now: float, msg: PingReq) -> None:
        self._seq += 1
        self._acks[self._seq] = ["relay", msg.target, False, msg.reply_to, msg.seq]
        # Where we know the target listens, if we know it: an asker still holding a member
        # that restarted elsewhere would have us dial its old address (and a connection to a
        # frozen old process would stay open, the ring having closed it already).
        e = self.table.get(msg.target)
        addr = msg.addr if e is None else self._addr(msg.target, e)
        self._sends.append((addr, Ping(self.name, self._seq, msg.target, self.me.addr,
                                       self._gossip())))
        self._at(now + self.cfg.probe_timeout * 0.8, "relay", self._seq)

    # -- plumbing -------------------------------------------------------------------------
    def _gossip(self) -> list[Update]:
        n = len(self.table) + 1
        if n != self._limit_for:  # log10 once per change in the table's size
            self._limit_for, self._limit = n, retransmit_limit(self.cfg.retransmit_mult, n)
        return self.queue.take(self.cfg.gossip_budget, self._limit)

    def _flush(self, now: float) -> Output:
        # News of members we did not know hints that our table has gaps (a lost join, a
        # healed partition): the next push-pull comes within a period, not at the long
        # interval.
        if self.learned != self._pp_learned and not self.left:
            soon = now + self.cfg.probe_interval
            if self._pp_due > soon:
                self._pp_at(soon)
        if self.accuser is not None:
            # We refuted a suspicion: whoever held it likely sat across a partition that
            # healed. A push-pull with it now teaches each side the other's refutations in
            # bulk (gossip carries a dozen updates a message), once a period at most.
            e = self.table.get(self.accuser)
            self.accuser = None
            if e is not None and now >= self._accused_at + self.cfg.probe_interval and (
                    not self.left):
                self._accused_at = now
                self._push_pull_with(self._addr(e.node, e))
        out = (self._sends, self._changes)
        self._sends, self._changes = [], []
        return out
