"""Messages from the connection to the screens. The connection posts them to the app, which
hands each screen its own copy; screens handle them with `@on`. They do not bubble."""

from __future__ import annotations

from textual.message import Message

from flock_node.protocol import Event


class MembersUpdated(Message, bubble=False):
    """Members changed (a poll, a heartbeat, an event): `names` are the ones that did."""

    def __init__(self, names: frozenset[str]) -> None:
        super().__init__()
        self.names = names


class NodeEvent(Message, bubble=False):
    """An event from a node's bus (run started/finished, notification delivered...)."""

    def __init__(self, event: Event) -> None:
        super().__init__()
        self.event = event


class ConnectionProblem(Message, bubble=False):
    """The flock cannot be reached or listed ("" once it can again)."""

    def __init__(self, problem: str) -> None:
        super().__init__()
        self.problem = problem
