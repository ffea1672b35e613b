"""Where nodes are: a name's RPC address (ourselves, a member, or a local agent found in the
runtime directory) and the nodes a notification's node=/tag= pattern names."""

from __future__ import annotations

import threading
from fnmatch import fnmatchcase
from pathlib import Path

from flock_node.delivery import Target
from flock_node.membership import Membership
from flock_node.membership.view import SwimView
from flock_node.transport import scan_runtime_dir


class Directory:
    """Resolves node names and patterns against the membership view (loop and worker)."""

    def __init__(self, name: str, rpc_addr: str, tags: list[str],
                 membership: Membership | SwimView, runtime_dir: Path,
                 view_synced: threading.Event, view_wait: float):
        self.name = name
        self.rpc_addr = rpc_addr
        self.tags = tags
        self.membership = membership
        self.runtime_dir = runtime_dir
        self.view_synced = view_synced  # heard from the seeds: targets can resolve
        self.view_wait = view_wait  # how long the first glob waits for that

    def resolve_addr(self, name: str) -> str | None:
        """The RPC address of node `name`, None if it is not known at all."""
        if name == self.name:
            return self.rpc_addr
        m = self.membership.get(name)
        if m is not None:
            return m.rpc
        local = scan_runtime_dir(self.runtime_dir).get(name)
        return local[1] if local else None

    def locate(self, target: str) -> Target:
        """Where a notification's target is and what state the flock believes it in."""
        m = self.membership.get(target)
        return Target(self.resolve_addr(target), m.state if m is not None else None)

    def resolve_targets(self, node: str | None, tag: str | None) -> list[str]:
        """The nodes a remote notification names (called from the worker thread)."""
        if node is not None and not any(c in node for c in "*?["):
            return [node]  # a named node is queued even if unknown now: it may come back
        # Every member we know, gone ones too: a node restarting (left) or down for a while
        # gets its notification when it is back; the TTL bounds how long it is waited for.
        # Before the first converge resolves a glob or tag, the seeds and local nodes get a
        # moment to be heard (bounded), so targets resolve against the flock, not an empty view.
        self.view_synced.wait(self.view_wait)
        names = set(self.membership.match(node, tag, include_gone=True))
        if (node is None or fnmatchcase(self.name, node)) and (tag is None or tag in self.tags):
            names.add(self.name)
        return sorted(names)
