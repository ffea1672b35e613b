"""Digests per range of start times: a node catching up compares only the recent joiners.

Incarnations are start times in milliseconds, so members that joined in the same quarter of a
second share an epoch (`incarnation >> EPOCH_SHIFT`). A node that joined a forming flock got
the whole table from its seed and lacks only those who started after it: a catch-up push-pull
sends its latest epochs (XOR of entry hashes and a count each, 20 bytes an epoch) and the other
side answers with its entries in the epochs that differ, so an exchange costs what it teaches
plus an epoch or two, not a pass over both tables. Older differences are left to the periodic
digest exchanges (`digest.py`).
"""

from __future__ import annotations

import heapq
import struct
from itertools import compress, repeat
from operator import attrgetter, rshift

from flock_node.membership.messages import Entry

EPOCH_SHIFT = 8  # 256 ms of start time an epoch
EPOCHS_SENT = 128  # a catch-up compares by epochs while the table spans fewer (32 s of starts)
_inc_of = attrgetter("incarnation")

Epochs = dict[int, list[int]]  # epoch -> [XOR of hashes, entries]


def epoch_of(e: Entry) -> int:
    """The epoch an entry falls in (its incarnation: a start time, or a refutation of one)."""
    return e.incarnation >> EPOCH_SHIFT


def recent(epochs: Epochs, me: Entry, me_hash: int, k: int = EPOCHS_SENT) -> dict[int, tuple[int, int]]:
    """The latest `k` epochs, our own statement counted in."""
    out = {e: (v[0], v[1]) for e, v in _latest(epochs, k)}
    _add(out, epoch_of(me), me_hash)
    return out


def _latest(epochs: Epochs, k: int) -> list[tuple[int, list[int]]]:
    if len(epochs) <= k:
        return list(epochs.items())
    return [(e, epochs[e]) for e in heapq.nlargest(k, epochs)]


def _add(out: dict[int, tuple[int, int]], ep: int, h: int) -> None:
    x, n = out.get(ep, (0, 0))
    out[ep] = (x ^ h, n + 1)


def differing(mine: Epochs, me: Entry, me_hash: int,
              theirs: dict[int, tuple[int, int]]) -> set[int]:
    """Epochs where our table (with our statement) and their request differ, within the range
    they sent: all epochs when they sent fewer than `EPOCHS_SENT`, else from their oldest."""
    floor = min(theirs) if len(theirs) >= EPOCHS_SENT else None
    ours = {e: (v[0], v[1]) for e, v in mine.items() if floor is None or e >= floor}
    me_ep = epoch_of(me)
    if floor is None or me_ep >= floor:
        _add(ours, me_ep, me_hash)
    return {e for e in ours.keys() | theirs.keys()
            if ours.get(e, (0, 0))[0] != theirs.get(e, (0, 0))[0]}


def view(mine: Epochs, me: Entry, me_hash: int, wanted: set[int]) -> dict[int, tuple[int, int]]:
    """Our epochs among `wanted` (with our statement; an empty one as zero)."""
    out = {e: (mine[e][0], mine[e][1]) if e in mine else (0, 0) for e in wanted}
    me_ep = epoch_of(me)
    if me_ep in wanted:
        _add(out, me_ep, me_hash)
    return out


def select(entries: list[Entry], wanted: set[int]) -> list[Entry]:
    """The entries that fall in the `wanted` epochs."""
    return list(compress(entries, map(wanted.__contains__,
                                      map(rshift, map(_inc_of, entries), repeat(EPOCH_SHIFT)))))


def pack(epochs: dict[int, tuple[int, int]]) -> bytes:
    """Wire bytes: each epoch, then each XOR, then each count (20 bytes an epoch)."""
    keys = sorted(epochs)
    vals = [epochs[e] for e in keys]
    n = len(keys)
    return struct.pack(f"<{n}q{n}q{n}I", *keys, *(v[0] for v in vals),
                       *(min(v[1], 0xFFFFFFFF) for v in vals))


def unpack(data: bytes) -> dict[int, tuple[int, int]] | None:
    """Epochs from wire bytes; None unless whole epochs."""
    n, rest = divmod(len(data), 20)
    if rest or not n:
        return None
    both = struct.unpack(f"<{n}q{n}q{n}I", data)
    return {both[i]: (both[n + i], both[2 * n + i]) for i in range(n)}
