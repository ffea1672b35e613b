"""Which nodes the console holds a bus connection to: the ones it is looking at.

Membership comes from one member's `members` answer; run progress (resource k/n) and the live
event log come from the nodes themselves, over their buses. A flock of thousands must not
cost the console a connection per node, so it holds connections only to the nodes on screen
(the visible rows, the cursor, the marked rows) and to the node screens open, least recently
looked at closed first beyond a cap, and a row scrolled out of view keeps its connection for
a short grace (scrolling back and forth does not redial). Pure: the app says what is looked
at, the connection dials and closes what `step` answers.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

CAP = 64  # connections for the rows looked at; each open node screen gets one beyond it
GRACE = 5.0  # seconds a row out of view keeps its connection
CAP_ENV = "FLOCK_CONSOLE_CONNECTIONS"
GRACE_ENV = "FLOCK_CONSOLE_GRACE"


def limits(env: Mapping[str, str] = os.environ) -> tuple[int, float]:
    """The cap and the grace: FLOCK_CONSOLE_CONNECTIONS and FLOCK_CONSOLE_GRACE, else the
    defaults (a value that is not a number, or below its floor, is the default)."""
    cap, grace = CAP, GRACE
    try:
        cap = max(1, int(env.get(CAP_ENV, CAP)))
    except ValueError:
        pass
    try:
        grace = max(0.0, float(env.get(GRACE_ENV, GRACE)))
    except ValueError:
        pass
    return cap, grace


def ordered(*groups: Iterable[str]) -> list[str]:
    """The names of `groups` in order, each once."""
    seen: dict[str, None] = {}
    for g in groups:
        for n in g:
            seen.setdefault(n, None)
    return list(seen)


@dataclass
class Watch:
    """The bus connections the console holds, node by node (`held`: node → bus address)."""

    cap: int = CAP
    grace: float = GRACE
    held: dict[str, str] = field(default_factory=dict)
    last_seen: dict[str, float] = field(default_factory=dict)  # node → last looked at

    def choose(self, now: float, looked_at: Iterable[str], pinned: Iterable[str],
               dialable: Mapping[str, str]) -> dict[str, str]:
        """The nodes to hold and their bus addresses: every `pinned` one (open node
        screens), then at most `cap` others: those `looked_at` now (most wanted first: the
        cursor, the visible rows, the marked ones), then those looked at within the grace,
        most recent first. Only nodes with a bus address in `dialable` count."""
        looked = [n for n in ordered(looked_at) if n in dialable]
        for n in looked:
            self.last_seen[n] = now
        for n in list(self.last_seen):
            if now - self.last_seen[n] > self.grace and n not in looked:
                del self.last_seen[n]
        recent = sorted((n for n in self.last_seen if n not in looked and n in dialable),
                        key=lambda n: -self.last_seen[n])
        keep = [n for n in ordered(pinned) if n in dialable]
        others = [n for n in ordered(looked, recent) if n not in keep][:self.cap]
        return {n: dialable[n] for n in keep + others}

    def step(self, now: float, looked_at: Iterable[str], pinned: Iterable[str],
             dialable: Mapping[str, str]) -> tuple[list[str], list[str]]:
        """Move to what `choose` says: (bus addresses to dial, bus addresses to close)."""
        want = self.choose(now, looked_at, pinned, dialable)
        close = [a for n, a in self.held.items() if want.get(n) != a]
        dial = [a for n, a in want.items() if self.held.get(n) != a]
        self.held = want
        return dial, close


def dialable(members: Mapping[str, Mapping[str, object]]) -> dict[str, str]:
    """Nodes worth a connection: alive or suspect, with a bus address."""
    return {n: str(m["bus"]) for n, m in members.items()
            if m.get("bus") and m.get("state") in ("alive", "suspect")}
