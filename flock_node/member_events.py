"""What this node does when the flock changes (memberlist's EventDelegate idea): a member that
comes (back) gets what waits for it, a member gone gets a fresh socket when it returns."""

from __future__ import annotations

from typing import Protocol

from flock_node.membership import ALIVE, DOWN, LEFT, Member, Transition


class Outbox(Protocol):
    def target_back(self, target: str) -> None: ...


class Waker(Protocol):
    def wake(self) -> None: ...


class Sockets(Protocol):
    def forget(self, addr: str) -> None: ...


class MemberEvents:
    """A membership listener: called with each transition on the loop."""

    def __init__(self, deliverer: Outbox, subscriptions: Waker, rpc: Sockets):
        self.deliverer = deliverer
        self.subscriptions = subscriptions
        self.rpc = rpc

    def __call__(self, t: Transition, m: Member | None) -> None:
        if t.new == ALIVE:
            self.deliverer.target_back(t.name)  # retry at once what waits for it
            self.subscriptions.wake()
        if t.new in (DOWN, LEFT) and m is not None:
            self.rpc.forget(m.rpc)  # a fresh socket if it comes back
