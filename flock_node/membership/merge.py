"""Merging many statements at once (a push-pull's entries): every step over them at C speed.

A joiner learns the whole flock from one answer, and a node catching up learns thousands of
members an exchange: compared with the table in bulk (`map`, `compress`), the members never
heard of and plainly alive added in one go, the rest through the rules one by one
(`table.py`). `tests/test_sim_merge.py` proves a bulk merge decides as merging one by one.
"""

from __future__ import annotations

from itertools import chain, compress, islice, repeat
from operator import attrgetter, is_, is_not

from flock_node.membership.messages import ALIVE, SUSPECT, Alive, Entry, Mark
from flock_node.membership.table import Table

_node_of = attrgetter("node")


class Merging(Table):
    """A table that merges a list of entries in bulk."""

    def _merge(self, now: float, states: list[Entry], sender: str) -> None:
        # Every step over the whole state runs at C speed (map, compress): a table of
        # thousands is compared in a millisecond. Shared, unchanged entries are skipped.
        table = self.table
        names = list(map(_node_of, states))
        curs = list(map(table.get, names)) if table else None  # a joiner's table is empty
        if curs is not None and any(curs):
            changed = list(compress(states, map(is_not, curs, states)))
            if not changed:
                return
            new = list(map(is_, curs, repeat(None)))
            fresh = list(compress(states, new))
            names = list(compress(names, new))
        else:
            changed = fresh = states  # all new: a joiner learning the flock, a catch-up
        # Members we never heard of, plainly alive and vouched for, are added in bulk.
        if fresh and Mark not in set(map(type, fresh)):
            oks = self.vouch_many(fresh)  # type: ignore[arg-type]
            if not all(oks):
                fresh = list(compress(fresh, oks))
                names = list(compress(names, oks))
            added = self._add_many(names, fresh, sender) if fresh else 0  # type: ignore[arg-type]
            if added:
                if len(changed) == added:
                    return
                get = table.get
                changed = list(compress(changed, map(is_not, map(get, map(_node_of, changed)),
                                                     changed)))
        for s in changed:
            node = s.node
            if type(s) is Alive:
                # What a push-pull teaches is not gossiped again, except a joiner about itself.
                self._alive(now, s, sender, node == sender)
            else:
                self._alive(now, s.alive, sender, False)  # type: ignore[union-attr]
                if s.state == SUSPECT:  # type: ignore[union-attr]
                    self._suspect(now, node, s.incarnation, s.by)  # type: ignore[union-attr]
                else:
                    self._dead(now, node, s.incarnation, s.by)  # type: ignore[union-attr]

    def _add_many(self, names: list[str], alives: list[Alive], sender: str) -> int:
        """Add members we never heard of in bulk, but our own statement (left to the rules
        one by one: it may need refuting); how many were added: 0 when the list names one
        twice (then all go one by one)."""
        table = self.table
        before = len(table)
        joiner = sender not in table
        table.update(zip(names, alives, strict=True))
        own = table.pop(self.name, None)  # a catch-up's answer often holds our statement
        if own is not None:  # (left in `alives`, added to the digest and taken out again)
            k = names.index(self.name)
            names = names[:k] + names[k + 1:]
        if len(table) - before != len(names):
            for n in names:
                table.pop(n, None)
            return 0
        if not names:
            return 0
        self.digest.add_alives(alives)
        if own is not None:
            self.digest.toggle(own, -1)
        # Rotated by a random offset: nodes that learned the same list do not probe in step;
        # and put at a random place among those not yet probed this round, not at the end:
        # members learned late (a catch-up's, in start order) would otherwise wait a whole
        # round everywhere, and a crash among them go unprobed by all.
        k = int(self.rng.random() * len(names))
        order = self._order
        at = self._pos + int(self.rng.random() * (len(order) - self._pos + 1))
        order[at:at] = chain(islice(names, k, None), islice(names, k))  # one copy
        self.learned += len(names)
        if self.bulk is not None:
            self.bulk.append(names)  # counted by the caller, without a change each
        else:
            changes = list(zip(names, repeat(None), repeat(ALIVE)))
            self._changes.extend(changes)
            for fn in self.listeners:
                for c in changes:
                    fn(c)
        if joiner and sender in table:
            a = table[sender]
            self._broadcast(sender, a)  # type: ignore[arg-type]  # a joiner's arrival is news
        return len(names)
