"""Dissemination: updates waiting to ride on outgoing messages (memberlist's broadcast queue).

Each update goes out on at most `limit` messages (λ·log10(N+1)); the fewest-sent and newest
go first; a newer update about the same node replaces the older one; the queue is bounded
(the most-sent are dropped first — push-pull anti-entropy repairs what gossip drops).
"""

from __future__ import annotations

import math
from collections import deque

from flock_node.membership.messages import Update


def retransmit_limit(mult: int, members: int) -> int:
    """How many messages carry one update in a flock of `members` (memberlist's rule)."""
    return mult * max(1, math.ceil(math.log10(members + 1)))


class Broadcasts:
    """The piggyback queue of one member."""

    def __init__(self, max_items: int = 256) -> None:
        self.max_items = max_items
        # _buckets[t]: items sent t times, newest on the right; an item is [update, size, t, key]
        self._buckets: list[deque[list[object]]] = [deque()]
        self._live: dict[str, list[object]] = {}

    def __len__(self) -> int:
        return len(self._live)

    def add(self, key: str, update: Update, size: int) -> None:
        """Queue `update` (about node `key`), replacing an older one about the same node."""
        old = self._live.get(key)
        if old is not None:
            old[3] = None  # dead: skipped when met
        item: list[object] = [update, size, 0, key]
        self._live[key] = item
        self._buckets[0].append(item)
        if len(self._live) > self.max_items:
            self._drop_one()

    def _drop_one(self) -> None:
        for bucket in reversed(self._buckets):
            while bucket:
                item = bucket.popleft()
                key = item[3]
                if key is not None:
                    del self._live[key]  # type: ignore[arg-type]
                    return

    def take(self, budget: int, limit: int) -> list[Update]:
        """Updates for one message, at most `budget` encoded bytes; each counts as sent once."""
        if not self._live:
            return []
        out: list[Update] = []
        buckets = self._buckets
        sent: list[tuple[int, list[list[object]]]] = []
        for t in range(len(buckets)):
            if budget <= 0:
                break
            bucket = buckets[t]
            moved = []
            while bucket:
                item = bucket.pop()
                key = item[3]
                if key is None:
                    continue
                size: int = item[1]  # type: ignore[assignment]
                if size > budget:
                    bucket.append(item)
                    budget = 0
                    break
                budget -= size
                out.append(item[0])  # type: ignore[arg-type]
                item[2] = t + 1
                if t + 1 >= limit:
                    item[3] = None
                    del self._live[key]  # type: ignore[arg-type]
                else:
                    moved.append(item)
            if moved:
                sent.append((t + 1, moved))
        # Moved once the message is full, so one message never carries an update twice.
        for t, moved in sent:
            if t == len(buckets):
                buckets.append(deque())
            buckets[t].extend(reversed(moved))
        return out
