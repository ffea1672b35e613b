"""The SWIM member table seen through the heartbeat membership's questions (`get`, `members`,
`match`), so delivery, `flock_api.members`, globs and tags work unchanged on either.

A member's facts (tags, addresses, active, last run and converge, pending and dead counts,
version) are the record of its own signed statement; here they become the `Member` and
`Heartbeat` shapes the rest of the agent reads. Pure: the table and a clock are passed in.
"""

from __future__ import annotations

from typing import Any

import msgspec

from flock_node.membership.heartbeat import Member, match_members
from flock_node.membership.messages import FORGOTTEN, Alive, Entry
from flock_node.membership.table import Table, state_of
from flock_node.protocol import Heartbeat

FACTS = ("tags", "active", "last_run", "last_converge", "pending", "dead", "crl", "bus", "rpc",
         "version", "started")


def facts_of(record: dict[str, Any]) -> dict[str, Any]:
    """The facts of an agent's heartbeat record that travel in gossip, as plain values.

    Run progress (`run`) changes with every resource: it is asked from the node itself."""
    return msgspec.to_builtins({k: record[k] for k in FACTS if k in record})  # type: ignore[no-any-return]


def heartbeat_of(a: Alive) -> Heartbeat:
    """A member's statement as the heartbeat the agent's readers know."""
    rec = a.record if isinstance(a.record, dict) else {}
    base = {"node": a.node, "incarnation": a.incarnation, "seq": a.version,
            "instance": a.instance, "bus": "", "rpc": ""}
    try:
        return msgspec.convert({**rec, **base, "bus": str(rec.get("bus", "")),
                                "rpc": str(rec.get("rpc", ""))}, Heartbeat)
    except (msgspec.ValidationError, TypeError):
        return msgspec.convert(base, Heartbeat)  # facts we cannot read: a bare member


def member_of(e: Entry, seen: float, since: float) -> Member:
    """One table entry as a `Member`."""
    a: Alive = e if type(e) is Alive else e.alive  # type: ignore[union-attr]
    hb = heartbeat_of(a)
    return Member(name=a.node, incarnation=e.incarnation, state=state_of(e), bus=hb.bus,
                  rpc=hb.rpc, interval=1.0, last_seen=seen, since=since, tags=list(hb.tags),
                  info=hb, instance=a.instance)


class SwimView:
    """`Membership`'s read side over a SWIM table. `heard(node, now)` notes direct contact
    (the member's age), `changed(node, now, new)` a change of its state (`forgotten`: reaped)."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self._seen: dict[str, float] = {}
        self._since: dict[str, float] = {}
        self._cache: dict[str, tuple[Entry, Member]] = {}

    def heard(self, node: str, now: float) -> None:
        self._seen[node] = now

    def changed(self, node: str, now: float, new: str | None = None) -> None:
        if new == FORGOTTEN:  # reaped from the table
            self.forget(node)
            return
        self._since[node] = now
        self._seen.setdefault(node, now)

    def get(self, name: str) -> Member | None:
        """The member called `name`, None if unknown."""
        e = self.table.table.get(name)
        return None if e is None else self._member(name, e)

    def _member(self, name: str, e: Entry) -> Member:
        hit = self._cache.get(name)
        seen = self._seen.get(name, 0.0)
        if hit is not None and hit[0] is e:
            hit[1].last_seen = seen
            return hit[1]
        m = member_of(e, seen, self._since.get(name, 0.0))
        if len(self._cache) > 4 * len(self.table.table) + 64:
            self._cache.clear()
        self._cache[name] = (e, m)
        return m

    def members(self) -> list[Member]:
        """Every member we know, by name."""
        # list() is one C call under the GIL: a snapshot even from the worker thread.
        items = list(self.table.table.items())
        return sorted((self._member(n, e) for n, e in items), key=lambda m: m.name)

    def match(self, pattern: str | None = None, tag: str | None = None,
              include_gone: bool = False) -> list[str]:
        """Names matching a name or glob, and/or carrying a tag."""
        return match_members(self.members(), pattern, tag, include_gone)

    def forget(self, name: str) -> None:
        """`name` was reaped from the table: its times go too (names come and go in a
        long-lived flock; kept, they would add up)."""
        self._seen.pop(name, None)
        self._since.pop(name, None)
        self._cache.pop(name, None)
