"""Who is in the flock: a pure state machine fed heartbeats, departures and a clock.

No sockets and no wall clock in here: callers pass `now` (monotonic seconds), so every rule
is tested by feeding events. States follow the SPEC: `alive`; `suspect` after 3 missed
intervals or as soon as the last connection to the node closes; `down` after 10 missed
intervals, or 2 intervals after its connection closed if it did not come back; `left` when it
announced its shutdown. A heartbeat with a higher incarnation (a restart) replaces the entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

ALIVE, SUSPECT, DOWN, LEFT = "alive", "suspect", "down", "left"
FORGOTTEN = "forgotten"  # a transition only: the member is no longer listed


@dataclass
class Member:
    name: str
    incarnation: int
    state: str
    bus: str
    rpc: str
    interval: float
    last_seen: float
    since: float
    tags: list[str] = field(default_factory=list)
    info: Any = None  # the last Heartbeat
    disconnected_at: float | None = None


@dataclass(frozen=True)
class Transition:
    name: str
    old: str | None  # None: a new member
    new: str
    reason: str


class Membership:
    def __init__(self, self_name: str | None = None, suspect_after: float = 3,
                 down_after: float = 10, down_after_disconnect: float = 2,
                 forget_after: float = 3600.0):
        self.self_name = self_name
        self.forget_after = forget_after  # seconds a left/down node stays listed
        self.suspect_after = suspect_after
        self.down_after = down_after
        self.down_after_disconnect = down_after_disconnect
        self._members: dict[str, Member] = {}

    # -- inputs ---------------------------------------------------------------------------
    def heartbeat(self, hb: Any, now: float) -> list[Transition]:
        """A heartbeat (anything with node, incarnation, bus, rpc, interval, tags)."""
        if hb.node == self.self_name:
            return []
        m = self._members.get(hb.node)
        if m is not None and hb.incarnation < m.incarnation:
            return []  # a late heartbeat from before a restart
        if m is None or hb.incarnation > m.incarnation:
            old = m.state if m else None
            self._members[hb.node] = Member(
                name=hb.node, incarnation=hb.incarnation, state=ALIVE, bus=hb.bus, rpc=hb.rpc,
                interval=max(hb.interval, 0.01), last_seen=now, since=now, tags=list(hb.tags),
                info=hb,
            )
            reason = "joined" if m is None else "restarted"
            return [Transition(hb.node, old, ALIVE, reason)]
        if m.state == LEFT:
            return []  # it said goodbye; only a new incarnation brings it back
        m.last_seen = now
        m.info = hb
        m.bus, m.rpc, m.tags, m.interval = hb.bus, hb.rpc, list(hb.tags), max(hb.interval, 0.01)
        m.disconnected_at = None
        if m.state != ALIVE:
            old = m.state
            m.state, m.since = ALIVE, now
            return [Transition(m.name, old, ALIVE, "heartbeat resumed")]
        return []

    def leave(self, name: str, incarnation: int, now: float) -> list[Transition]:
        m = self._members.get(name)
        if m is None or incarnation < m.incarnation or m.state == LEFT:
            return []
        old = m.state
        m.state, m.since = LEFT, now
        return [Transition(name, old, LEFT, "announced shutdown")]

    def disconnected(self, name: str, now: float) -> list[Transition]:
        """The last connection to `name` closed: suspect at once, no waiting for heartbeats."""
        m = self._members.get(name)
        if m is None or m.state in (LEFT, DOWN):
            return []
        m.disconnected_at = now
        if m.state == ALIVE:
            m.state, m.since = SUSPECT, now
            return [Transition(name, ALIVE, SUSPECT, "connection closed")]
        return []

    def tick(self, now: float) -> list[Transition]:
        out = []
        for m in list(self._members.values()):
            if m.state in (LEFT, DOWN):
                if now - m.since >= self.forget_after:
                    # Churn must not grow the table forever; it comes back if it heartbeats.
                    del self._members[m.name]
                    out.append(Transition(m.name, m.state, FORGOTTEN,
                                          f"{m.state} for {now - m.since:.0f}s"))
                continue
            silent = now - m.last_seen
            if m.disconnected_at is not None and now - m.disconnected_at >= (
                self.down_after_disconnect * m.interval
            ):
                out.append(self._move(m, DOWN, "connection closed and did not come back", now))
            elif silent >= self.down_after * m.interval:
                out.append(self._move(m, DOWN, f"no heartbeat for {silent:.1f}s", now))
            elif m.state == ALIVE and silent >= self.suspect_after * m.interval:
                out.append(self._move(m, SUSPECT, f"no heartbeat for {silent:.1f}s", now))
        return out

    def forget(self, name: str) -> None:
        self._members.pop(name, None)

    @staticmethod
    def _move(m: Member, state: str, reason: str, now: float) -> Transition:
        old = m.state
        m.state, m.since = state, now
        return Transition(m.name, old, state, reason)

    # -- queries --------------------------------------------------------------------------
    def get(self, name: str) -> Member | None:
        return self._members.get(name)

    def members(self) -> list[Member]:
        # list() is one C call under the GIL: a snapshot even when read from the worker
        # thread while the loop adds a member.
        return sorted(list(self._members.values()), key=lambda m: m.name)

    def match(self, pattern: str | None = None, tag: str | None = None,
              include_gone: bool = False) -> list[str]:
        """Names matching a name or glob, and/or carrying a tag."""
        out = []
        for m in self.members():
            if not include_gone and m.state in (LEFT, DOWN):
                continue
            if pattern is not None and not fnmatchcase(m.name, pattern):
                continue
            if tag is not None and tag not in m.tags:
                continue
            out.append(m.name)
        return out
