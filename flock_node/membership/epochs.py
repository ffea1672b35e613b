"""Digests per range of start times: a node catching up compares only the recent joiners.

Incarnations are start times in milliseconds, so members that joined in the same 32 ms share
an epoch (`incarnation >> EPOCH_SHIFT`: fine enough that a node lacking a few members of an
epoch is not sent the names of hundreds it holds, 64 at 2,000 starts a second). A node that joined a forming flock got
the whole table from its seed and lacks only those who started after it: a catch-up push-pull
sends its latest epochs (sum of entry hashes and a count each, 20 bytes an epoch) and the other
side answers with its entries in the epochs that differ, so an exchange costs what it teaches
plus an epoch or two, not a pass over both tables. Older differences are left to the periodic
digest exchanges (`digest.py`), whose buckets are epochs too. Every step over the epochs
runs at C speed (`map`, `compress`, set operations): a forming flock spans a few hundred.
"""

from __future__ import annotations

import heapq
import struct
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from itertools import compress, repeat
from operator import attrgetter, itemgetter, ne, rshift
from typing import Any

from flock_node.membership.messages import Entry

EPOCH_SHIFT = 5  # 32 ms of start time an epoch
HASH_BITS = 48  # an entry's hash: sums of up to 2^15 stay in a C long (sum() at C speed)
M64 = (1 << 64) - 1  # digests are sums of hashes modulo 2^64
EPOCHS_SENT = 1024  # a catch-up compares by epochs while the table spans fewer (32 s of starts)
_inc_of = attrgetter("incarnation")
_first, _second = itemgetter(0), itemgetter(1)
_NONE = (0, 0)  # an epoch not held: no entries, sum zero
_COUNT_MAX = 0xFFFFFFFF  # a count on the wire: 4 bytes

Epochs = dict[int, list[int]]  # epoch -> [sum of hashes modulo 2^64, entries]


def epoch_of(e: Entry) -> int:
    """The epoch an entry falls in (its incarnation: a start time, or a refutation of one)."""
    return e.incarnation >> EPOCH_SHIFT


def pack_recent(epochs: Epochs, me: Entry, me_hash: int, k: int = EPOCHS_SENT) -> bytes:
    """The latest `k` epochs, our own statement counted in, packed (`pack`): read straight
    from the table's epochs, no dict of them built on the way (a catch-up request is
    packed anew each time the table changed: every exchange of a forming flock)."""
    keys = sorted(epochs) if len(epochs) <= k else sorted(heapq.nlargest(k, epochs))
    vals = list(map(epochs.__getitem__, keys))
    sums, counts = list(map(_first, vals)), list(map(_second, vals))
    ep = epoch_of(me)
    i = bisect_left(keys, ep)
    if i < len(keys) and keys[i] == ep:
        sums[i] = (sums[i] + me_hash) & M64
        counts[i] += 1
    else:
        keys.insert(i, ep)
        sums.insert(i, me_hash & M64)
        counts.insert(i, 1)
    return _pack(keys, sums, counts)


def _add(out: dict[int, tuple[int, int]], ep: int, h: int) -> None:
    x, n = out.get(ep, (0, 0))
    out[ep] = ((x + h) & M64, n + 1)


def _sums_at(epochs: dict[int, Any], keys: Iterable[int]) -> Iterator[int]:
    """The sum of each of `keys` (zero for an epoch not there)."""
    return map(_first, map(epochs.get, keys, repeat(_NONE)))


def _fix_me(diff: set[int], mine: Epochs, theirs: dict[int, tuple[int, int]], me_ep: int,
            me_hash: int) -> None:
    """Compare our own statement's epoch again, our statement counted in."""
    if (mine.get(me_ep, _NONE)[0] + me_hash) & M64 != theirs.get(me_ep, _NONE)[0]:
        diff.add(me_ep)
    else:
        diff.discard(me_ep)


def differing(mine: Epochs, me: Entry, me_hash: int,
              theirs: dict[int, tuple[int, int]]) -> set[int]:
    """Epochs where our table (with our statement) and their request differ, within the range
    they sent: all epochs when they sent fewer than `EPOCHS_SENT`, else from their oldest."""
    floor = min(theirs) if len(theirs) >= EPOCHS_SENT else None
    diff = unequal_in(mine, me, me_hash, theirs)
    # Ours alone (they hold none there), unless empty after all (a sum of zero).
    diff.update(e for e in mine.keys() - theirs.keys()
                if mine[e][0] and (floor is None or e >= floor))
    me_ep = epoch_of(me)
    if me_ep not in theirs and (floor is None or me_ep >= floor):
        _fix_me(diff, mine, theirs, me_ep, me_hash)
    return diff


def unequal_in(mine: Epochs, me: Entry, me_hash: int,
               theirs: dict[int, tuple[int, int]]) -> set[int]:
    """The epochs they sent whose sum differs from ours (with our statement)."""
    keys = list(theirs)
    diff = set(compress(keys, map(ne, _sums_at(mine, keys), map(_first, theirs.values()))))
    me_ep = epoch_of(me)
    if me_ep in theirs:
        _fix_me(diff, mine, theirs, me_ep, me_hash)
    return diff


def view(mine: Epochs, me: Entry, me_hash: int, wanted: set[int]) -> dict[int, tuple[int, int]]:
    """Our epochs among `wanted` (with our statement; an empty one as zero)."""
    keys = list(wanted)
    out: dict[int, tuple[int, int]] = dict(zip(keys, map(
        tuple, map(mine.get, keys, repeat((0, 0)))), strict=True))  # type: ignore[arg-type]
    me_ep = epoch_of(me)
    if me_ep in wanted:
        _add(out, me_ep, me_hash)
    return out


def held(theirs: dict[int, tuple[int, int]], eps: set[int]) -> int:
    """How many entries they hold in the epochs `eps`."""
    return sum(map(_second, map(theirs.get, eps, repeat((0, 0)))))


def select(entries: list[Entry], wanted: set[int]) -> list[Entry]:
    """The entries that fall in the `wanted` epochs."""
    return list(compress(entries, map(wanted.__contains__,
                                      map(rshift, map(_inc_of, entries), repeat(EPOCH_SHIFT)))))


def pack(epochs: dict[int, tuple[int, int]]) -> bytes:
    """Wire bytes: each epoch, then each sum, then each count (20 bytes an epoch)."""
    keys = sorted(epochs)
    vals = list(map(epochs.__getitem__, keys))
    return _pack(keys, list(map(_first, vals)), list(map(_second, vals)))


def _pack(keys: list[int], sums: list[int], counts: list[int]) -> bytes:
    n = len(keys)
    if counts and max(counts) > _COUNT_MAX:  # clamped only when needed: min() a count is slow
        counts = [min(c, _COUNT_MAX) for c in counts]
    return struct.pack(f"<{n}q{n}Q{n}I", *keys, *sums, *counts)


def unpack(data: bytes) -> dict[int, tuple[int, int]] | None:
    """Epochs from wire bytes; None unless whole epochs."""
    n, rest = divmod(len(data), 20)
    if rest or not n:
        return None
    both = struct.unpack(f"<{n}q{n}Q{n}I", data)
    return dict(zip(both[:n], zip(both[n:2 * n], both[2 * n:], strict=True), strict=True))
