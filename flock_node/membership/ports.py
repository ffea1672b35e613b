"""The seams between the SWIM state machine and the world around it (memberlist's
`Transport` and `EventDelegate`): the driver over nng and the simulator each implement
`Transport`; whoever cares about membership (discovery's listeners, the console's view)
subscribes a `Listener` to a `Swim`'s `listeners`.
"""

from __future__ import annotations

from typing import Protocol

from flock_node.membership.messages import Message
from flock_node.membership.table import Change, Output


class Transport(Protocol):
    """Moves one message to an address; never blocks, may drop (SWIM expects loss)."""

    def send(self, addr: str, msg: Message) -> None:
        """Queue `msg` for the member listening at `addr`."""


class Listener(Protocol):
    """Told of every membership change: (node, old state or None when new, new state)."""

    def __call__(self, change: Change) -> None:
        """One change, in the order the state machine made it."""


def dispatch(out: Output, transport: Transport) -> list[Change]:
    """Hand a state machine's sends to `transport`; its changes, for the caller."""
    sends, changes = out
    for addr, msg in sends:
        transport.send(addr, msg)
    return changes
