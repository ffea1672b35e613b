"""Who is in the flock: a pure state machine fed heartbeats, departures and a clock.

No sockets and no wall clock in here: callers pass `now` (monotonic seconds), so every rule
is tested by feeding events. States follow the SPEC: `alive`; `suspect` after 3 missed
intervals or as soon as the last connection to the node closes; `down` after 10 missed
intervals, or 2 intervals after its connection closed if it did not come back; `left` when it
announced its shutdown. A heartbeat with a higher incarnation (a restart) replaces the entry;
so does one from a new process (another `instance`) once the member is not alive, whatever its
incarnation (state wiped, clock set back). While a member is alive, a heartbeat in its name
from another process or address is a name clash: the established member is kept.

`admit` holds the checks made before membership sees a message: a node is believed only
about itself, within sane intervals and incarnations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from flock_node.membership.messages import FORGOTTEN  # a transition only: no longer listed

ALIVE, SUSPECT, DOWN, LEFT = "alive", "suspect", "down", "left"
CLASH = "name_clash"  # a transition only: a heartbeat refused, the established member kept
MIN_INTERVAL, MAX_INTERVAL = 0.05, 60.0  # seconds: heartbeat intervals outside are refused


def admit(msg: Any, sender: str, wall_now: float, window: float = 60.0) -> str | None:
    """Why a heartbeat or leave (anything with node, incarnation, maybe interval) must be
    dropped before membership sees it, as a counter key; None to accept it.

    Incarnations are wall-clock milliseconds at start (or a count, from older peers): one
    more than `window` ahead of our clock cannot come from a peer whose frames we accept."""
    if msg.node != sender:
        return "impersonation"  # a node speaks only for itself
    interval = getattr(msg, "interval", None)
    if interval is not None and not MIN_INTERVAL <= interval <= MAX_INTERVAL:
        return "bad_interval"  # also NaN: 1e9 would keep a dead node alive forever
    if msg.incarnation > (wall_now + window) * 1000:
        return "future_incarnation"
    return None


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
    instance: str = ""  # the process behind the name ("" from older peers)


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
        """A heartbeat (anything with node, incarnation, bus, rpc, interval, tags and
        maybe instance)."""
        if hb.node == self.self_name:
            return []
        m = self._members.get(hb.node)
        instance = getattr(hb, "instance", "")
        if m is None:
            return [self._replace(hb, instance, None, now)]
        if instance == m.instance and hb.incarnation < m.incarnation:
            return []  # a late heartbeat from before a restart
        if instance != m.instance or (hb.bus, hb.rpc) != (m.bus, m.rpc):
            if m.state == ALIVE:
                # Another process claims a name whose owner is alive: keep the established
                # one; the newcomer gets in once that one is suspect, down or left (a real
                # restart closes the old connection, so that is milliseconds).
                return [Transition(hb.node, ALIVE, CLASH,
                                   f"heartbeat from {hb.bus} while {m.bus} is alive")]
            return [self._replace(hb, instance, m, now)]
        if hb.incarnation > m.incarnation:
            return [self._replace(hb, instance, m, now)]
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

    def _replace(self, hb: Any, instance: str, m: Member | None, now: float) -> Transition:
        self._members[hb.node] = Member(
            name=hb.node, incarnation=hb.incarnation, state=ALIVE, bus=hb.bus, rpc=hb.rpc,
            interval=max(hb.interval, 0.01), last_seen=now, since=now, tags=list(hb.tags),
            info=hb, instance=instance,
        )
        return Transition(hb.node, m.state if m else None, ALIVE,
                          "joined" if m is None else "restarted")

    def leave(self, name: str, incarnation: int, now: float,
              instance: str = "") -> list[Transition]:
        """`name` announced its shutdown; a goodbye from another process than the member's
        is ignored."""
        m = self._members.get(name)
        if m is None or incarnation < m.incarnation or m.state == LEFT:
            return []
        if instance != m.instance:
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
        return match_members(self.members(), pattern, tag, include_gone)


def match_members(members: list[Member], pattern: str | None, tag: str | None,
                  include_gone: bool) -> list[str]:
    """Names of `members` matching a name or glob, and/or carrying a tag (left and down
    ones only with `include_gone`): one rule for every membership view."""
    out = []
    for m in members:
        if not include_gone and m.state in (LEFT, DOWN):
            continue
        if pattern is not None and not fnmatchcase(m.name, pattern):
            continue
        if tag is not None and tag not in m.tags:
            continue
        out.append(m.name)
    return out
