"""Lifeguard's two local rules (Dadgar et al., 2018; memberlist `awareness.go`, `suspicion.go`).

Local health: a member that misses nacks or must refute suspicions about itself is probably the
slow one, so it stretches its own probe interval and timeout instead of accusing others.
Dynamic suspicion: a suspicion starts with a long timeout that shrinks, with the log of the
number of independent confirmations, down to a minimum.
"""

from __future__ import annotations

import math


class Awareness:
    """Local health multiplier: score 0 (healthy) .. max - 1; timeouts scale by score + 1."""

    def __init__(self, max_score: int = 8) -> None:
        self.max_score = max_score
        self.score = 0

    def apply(self, delta: int) -> None:
        """Raise (trouble) or lower (a successful probe) the score, within bounds."""
        self.score = min(self.max_score - 1, max(0, self.score + delta))

    def scale(self, seconds: float) -> float:
        """`seconds` stretched by local health."""
        return seconds * (self.score + 1)


def suspicion_bounds(mult: int, max_mult: int, members: int,
                     interval: float) -> tuple[float, float]:
    """(min, max) suspicion timeout in seconds for a flock of `members`."""
    lo = mult * max(1.0, math.log10(max(1, members))) * interval
    return lo, lo * max_mult


def confirmations_wanted(mult: int, members: int) -> int:
    """Independent confirmations that bring a suspicion down to its minimum timeout."""
    k = mult - 2
    return 0 if members - 2 < k else k


class Suspicion:
    """One suspected member: when it is declared down, given who confirmed it."""

    __slots__ = ("start", "lo", "hi", "k", "by", "incarnation")

    def __init__(self, start: float, lo: float, hi: float, k: int, by: str,
                 incarnation: int) -> None:
        self.start, self.lo, self.hi, self.k = start, lo, hi, k
        self.by = {by}
        self.incarnation = incarnation

    def confirm(self, by: str) -> bool:
        """Count `by` once; True when it was a new confirmation (worth passing on)."""
        if by in self.by or len(self.by) - 1 >= self.k:
            return False
        self.by.add(by)
        return True

    @property
    def confirmations(self) -> int:
        return len(self.by) - 1  # the first suspecter starts it, others confirm

    def deadline(self) -> float:
        """Start plus a timeout shrinking with log(confirmations + 1) from max to min."""
        if self.k < 1:
            return self.start + self.lo
        frac = math.log(self.confirmations + 1) / math.log(self.k + 1)
        return self.start + max(self.lo, self.hi - frac * (self.hi - self.lo))
