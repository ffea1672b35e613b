"""`AgentSwim`: the SWIM state machine with the two inputs only a real agent has.

- `lost`: a standing connection to a member closed (nng's pipe callback fires within
  milliseconds of a `kill -9`): suspect it at once instead of waiting for its turn to be
  probed. A member that is in fact alive refutes the suspicion, as SWIM intends.
- `gossip_round`: memberlist's gossip timer: queued updates go to a few random members now
  rather than only on the next probe, so news (a crash, a join) reaches a flock of hundreds in
  about a second. Random among the members we are connected to (ring neighbours and the
  pool, which the probes keep changing): memberlist's UDP costs nothing per destination,
  nng's TCP costs a connection.
- `join`: a member found later (a local agent seen in the runtime dir) is joined by push-pull.
- `watch`: in a flock larger than the connections we keep, the members we probe (our ring
  neighbourhood, whose connections stay open): round-robin over the whole flock would open a
  connection for nearly every probe and its ack, the CPU of an idle agent growing with the
  flock. Each member is still probed about once a period, by its own neighbours.
Still sans-IO: the driver calls these with its clock and moves the messages.
"""

from __future__ import annotations

from collections.abc import Callable

from flock_node.membership.messages import Alive, Gossip, PushPull
from flock_node.membership.swim import Output, Swim


class AgentSwim(Swim):
    """`Swim` plus the inputs of a driver that keeps connections. `on_clash` is told of a
    signed statement in our name from another process (two agents given one name)."""

    on_clash: Callable[[Alive], None] | None = None
    watch: set[str] | None = None  # None: probe every member in turn
    _clash_refuted = -1e18

    def _next_target(self, only: set[str] | None = None) -> str | None:
        return super()._next_target(self.watch if only is None else only)

    def _alive(self, now: float, a: Alive, sender: str, gossip: bool) -> None:
        me = self.me
        if a.node == self.name and a.instance != me.instance and a.incarnation >= me.incarnation:
            # Two processes, one name: each refutes the other's claim. Once per probe
            # interval, or the two would raise their incarnations as fast as gossip flows.
            if now - self._clash_refuted < self.cfg.probe_interval:
                return
            self._clash_refuted = now
            if self.on_clash is not None and self.vouch(a):
                self.on_clash(a)
        super()._alive(now, a, sender, gossip)

    def lost(self, now: float, node: str) -> Output:
        """Our standing connection to `node` closed: suspect it now."""
        e = self.table.get(node)
        if e is not None and type(e) is Alive and not self.left:
            self._suspect(now, node, e.incarnation, self.name)
        return self._flush(now)

    def gossip_round(self, now: float, fanout: int = 3,
                     near: list[str] | None = None) -> Output:
        """Send what waits in the piggyback queue to `fanout` random members, picked among
        the addresses `near` (those we hold a connection to) when there are enough: over nng
        a new connection costs far more than a message."""
        if self.left or not len(self.queue):
            return [], []
        if near and len(near) >= fanout:
            # One of them anywhere in the flock: our connections are mostly our ring
            # neighbourhood, and news passed only along the ring would take many hops.
            addrs = self.rng.sample(near, fanout - 1)
            addrs += [a for a in self._random_addrs(2, None) if a not in addrs][:1]
        else:
            addrs = self._random_addrs(fanout, None)
        for addr in addrs:
            g = self._gossip()
            if not g:
                break
            self._sends.append((addr, Gossip(self.name, g)))
        return self._flush(now)

    def join(self, now: float, addr: str) -> Output:
        """Push-pull with the member listening at `addr` (found after we started)."""
        if not self.left and addr != self.me.addr:
            self._sends.append((addr, PushPull(self.name, self.me.addr, True, False,
                                               self._states())))
        return self._flush(now)

    def addr_of(self, node: str) -> str:
        """Where `node` listens, as we know it ("" if unknown)."""
        return self._addr(node, self.table.get(node))
