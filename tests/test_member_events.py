"""MemberEvents without sockets: transitions become the deliverer's, the sync's and the RPC
client's calls."""

from __future__ import annotations

from flock_node.member_events import MemberEvents
from flock_node.membership import Membership, Transition
from flock_node.protocol import Heartbeat


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def target_back(self, target: str) -> None:
        self.calls.append(("target_back", target))

    def wake(self) -> None:
        self.calls.append(("wake",))

    def forget(self, addr: str) -> None:
        self.calls.append(("forget", addr))


def test_a_member_back_is_retried_and_one_gone_gets_a_fresh_socket_later():
    ms = Membership("a")
    ms.heartbeat(Heartbeat(node="b", incarnation=1, seq=1, bus="bus-b", rpc="rpc-b",
                           instance="i"), 1.0)
    b = ms.get("b")
    rec = Recorder()
    events = MemberEvents(rec, rec, rec)
    events(Transition("b", None, "alive", "joined"), b)
    events(Transition("b", "alive", "suspect", "missed"), b)  # nothing to do yet
    events(Transition("b", "suspect", "down", "missed"), b)
    events(Transition("c", "alive", "left", "bye"), None)  # forgotten already: no socket
    assert rec.calls == [("target_back", "b"), ("wake",), ("forget", "rpc-b")]
