"""Dissemination: updates waiting to ride on outgoing messages (memberlist's broadcast queue).

Each update goes out on at most `limit` messages (λ·log10(N+1)); the fewest-sent and newest
go first; a newer update about the same node replaces the older one; the queue is bounded
(the most-sent are dropped first — push-pull anti-entropy repairs what gossip drops).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from flock_node.membership.messages import Update


def retransmit_limit(mult: int, members: int) -> int:
    """How many messages carry one update in a flock of `members` (memberlist's rule)."""
    return mult * max(1, math.ceil(math.log10(members + 1)))


class Broadcasts:
    """The piggyback queue of one member."""

    def __init__(self, max_items: int = 256) -> None:
        self.max_items = max_items
        # _buckets[t]: items sent t times, newest on the right; an item is [update, size, key]
        # (key None: replaced or dropped since, skipped when met)
        self._buckets: list[deque[list[Any]]] = [deque()]
        self._live: dict[str, list[Any]] = {}

    def __len__(self) -> int:
        return len(self._live)

    def add(self, key: str, update: Update, size: int) -> None:
        """Queue `update` (about node `key`), replacing an older one about the same node."""
        old = self._live.get(key)
        if old is not None:
            old[2] = None
        item = [update, size, key]
        self._live[key] = item
        self._buckets[0].append(item)
        if len(self._live) > self.max_items:
            self._drop_one()

    def _drop_one(self) -> None:
        for bucket in reversed(self._buckets):
            while bucket:
                item = bucket.popleft()
                key = item[2]
                if key is not None:
                    del self._live[key]
                    return

    def take(self, budget: int, limit: int) -> list[Update]:
        """Updates for one message, at most `budget` encoded bytes; each counts as sent once."""
        live = self._live
        if not live:
            return []
        out: list[Update] = []
        take = out.append
        buckets = self._buckets
        sent: list[tuple[int, list[list[Any]]]] = []
        for t, bucket in enumerate(buckets):
            if not bucket:
                continue
            moved: list[list[Any]] = []
            keep = t + 1 < limit
            pop = bucket.pop
            while bucket:
                item = pop()
                key = item[2]
                if key is None:
                    continue
                size = item[1]
                if size > budget:
                    bucket.append(item)
                    budget = 0
                    break
                budget -= size
                take(item[0])
                if keep:
                    moved.append(item)
                else:
                    item[2] = None
                    del live[key]
            if moved:
                sent.append((t + 1, moved))
            if budget <= 0:
                break
        # Moved once the message is full, so one message never carries an update twice.
        for t, moved in sent:
            if t == len(buckets):
                buckets.append(deque())
            moved.reverse()
            buckets[t].extend(moved)
        return out
