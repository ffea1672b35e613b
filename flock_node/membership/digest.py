"""Table digests: a push-pull between equal tables costs a few bytes per bucket, a differing
one carries only the buckets that differ.

Members are spread over `FINE` buckets by their start time: a bucket is every epoch
(`epochs.py`, 32 ms of starts) equal to it modulo `FINE`, so start times spread over more
than 16 s fill every bucket, and a table learned in start order (a joiner's, a catch-up's) is
added a run of members at a time at C speed, where a bucket by name cost a Python step per
member. A bucket's digest is the sum modulo 2^64 of its entries' hashes (name, instance,
incarnation, record version, state; 48 bits, so `sum` adds a run of them in a C long, ten
times faster than XOR-ing Python ints one by one; mixed by splitmix64's finalizer, see
`_mix`: raw tuple hashes summed let swapped states cancel out), kept up to date on every
write, so a digest costs nothing to produce. A push-pull sends the digest folded to about
16 members a bucket; the other side answers with its entries in the buckets that differ and
its own digest, and the first side sends back what the other still lacks. Hashes are built from
integers only (names through CRC-32), so two processes agree on them (Python randomizes
`hash` of strings, not of ints and tuples of ints). Two Pythons that hash tuples differently
only cost needless exchanges of whole buckets; a collision (one in 2^48) would hide one
difference from the exchanges between two members, not from gossip.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from itertools import chain, compress, islice, repeat
from operator import add, and_, attrgetter, is_not, ne, rshift

from flock_node.membership.epochs import EPOCH_SHIFT, HASH_BITS, M64, Epochs
from flock_node.membership.messages import DOWN, LEFT, SUSPECT, Alive, Entry

FINE = 512  # buckets kept up to date: a digest is at most 4 KiB
_MASK = FINE - 1
PER_BUCKET = 16  # members a bucket holds in the folded digest (on average)
_STATE = {SUSPECT: 1, DOWN: 2, LEFT: 3}
_node_of, _instance_of = attrgetter("node"), attrgetter("instance")
_inc_of, _version_of = attrgetter("incarnation"), attrgetter("version")


class _Keys(dict[str, int]):
    """Stable integer keys of names and instances (CRC-32), computed once per string, and
    the way back: a `want` (name keys) is answered without a pass over the table."""

    def __init__(self) -> None:
        super().__init__()
        # key -> the one string seen with it. Every member of every table was keyed when it
        # went in (its digest hash), so a key missing here names no member we hold.
        self.names: dict[int, str] = {}
        self.shared: set[int] = set()  # keys of two strings or more
        self.whole = True  # no clear yet: `names` still knows every member ever keyed

    def __missing__(self, s: str) -> int:
        if len(self) > 1 << 20:
            self.clear()  # bounded: a long-lived agent meets many instances over time
            self.names.clear()
            self.whole = False
        k = zlib.crc32(s.encode())
        self[s] = k
        if self.names.setdefault(k, s) != s:
            self.shared.add(k)
        return k


_keys = _Keys()


def names_of(keys: list[int]) -> list[str] | None:
    """The member names behind name keys (unknown keys dropped); None when a key is shared
    by two strings or the map was cleared: then only a pass over the table is exact."""
    if not _keys.whole or not _keys.shared.isdisjoint(keys):
        return None
    return list(filter(None, map(_keys.names.get, keys)))


def bucket_of(e: Entry) -> int:
    """The fine bucket of an entry: its epoch (start time, epochs.py) modulo `FINE`."""
    return (e.incarnation >> EPOCH_SHIFT) & _MASK


def _mix(h: int) -> int:
    """48 well-mixed bits of a tuple's hash (splitmix64's finalizer). Digests are sums, and
    CPython's tuple hash moves by nearly the same amount for every member when one item
    changes (its rounds add, rotate and multiply): summed raw, two members that swapped
    states (one suspect, the other alive) gave the same digest. The XOR-shifts break that."""
    h &= M64
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & M64
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & M64
    return (h ^ (h >> 31)) >> (64 - HASH_BITS)


def entry_hash(e: Entry) -> int:
    """What a digest knows of one entry: equal for two equivalent beliefs, anywhere."""
    if type(e) is Alive:
        return _mix(hash((_keys[e.node], _keys[e.instance], e.incarnation, e.version, 0)))
    a = e.alive  # type: ignore[union-attr]
    return _mix(hash((_keys[e.node], _keys[a.instance], e.incarnation, a.version,
                      _STATE[e.state])))  # type: ignore[union-attr]


def alive_hashes(alives: list[Alive]) -> list[int]:
    """`entry_hash` of many plain statements: the tuples built and hashed at C speed, then a
    Python call per statement to mix each (`_mix`; under 1 µs: 7 ms for a joiner's table of
    10,000, and the simulator hashes each statement once, when it signs it)."""
    return list(map(_mix, map(hash, zip(map(_keys.__getitem__, map(_node_of, alives)),
                                        map(_keys.__getitem__, map(_instance_of, alives)),
                                        map(_inc_of, alives), map(_version_of, alives),
                                        repeat(0)))))


def buckets_for(members: int) -> int:
    """Buckets of the folded digest for a table of `members`: a power of two, 1..FINE."""
    b = 1
    while b < FINE and b * PER_BUCKET < members:
        b *= 2
    return b


class Digest:
    """The digest of one table, bucket by bucket: sums of entry hashes modulo 2^64."""

    __slots__ = ("_fine", "_folded", "hashes", "epochs", "members", "_dirty", "writes")

    def __init__(self, hashes: Callable[[list[Alive]], list[int]] | None = None) -> None:
        # Kept up to date entry by entry, bulk adds too: recomputing it from the table when
        # next asked for cost a pass over the whole table each time a bulk add came between
        # two exchanges (every node's first digest exchange after the join storm at least).
        self._fine = [0] * FINE
        # Hashes of many statements at once: the simulator, whose statements are shared
        # objects, remembers them.
        self.hashes = hashes or alive_hashes
        self._folded: tuple[int, Entry, list[int]] | None = None  # the last fold, while valid
        self.epochs: Epochs = {}  # the same hashes by start time (epochs.py): catch-ups
        # The entries in each epoch, so a catch-up selects what differs without a pass
        # over the whole table, nor a lookup per entry: a list (a tenth of a dict's memory,
        # which matters for the simulator's 10,000 tables); an entry taken out stays listed
        # until the list is next read and cleaned (`_dirty`).
        self.members: dict[int, list[Entry]] = {}
        self._dirty: set[int] = set()
        self.writes = 0  # a count of changes: what was computed from the digest is still good

    def toggle(self, e: Entry, count: int = 1) -> None:
        """Add an entry (`count` 1), or take it out again (-1): its hash added or subtracted."""
        h = entry_hash(e)
        self.writes += 1
        ep = e.incarnation >> EPOCH_SHIFT
        fine, b, h = self._fine, ep & _MASK, h * count
        fine[b] = (fine[b] + h) & M64
        self._folded = None
        v = self.epochs.get(ep)
        if v is None:
            v = self.epochs[ep] = [0, 0]
            self.members[ep] = []
        v[0] = (v[0] + h) & M64
        v[1] += count
        if count > 0:
            self.members[ep].append(e)
        else:
            self._dirty.add(ep)
        if v[1] <= 0:
            del self.epochs[ep], self.members[ep]
            self._dirty.discard(ep)

    def add_alives(self, alives: list[Alive]) -> None:
        """Add many plain `Alive` entries (a joiner learning the flock): hashed at C speed."""
        if not alives:
            return
        self.writes += 1
        hashes = self.hashes(alives)
        fine = self._fine
        self._folded = None
        # A table arrives in start order: epochs come in runs (found at C speed), each
        # reduced at C speed; a run's epoch names its bucket too.
        eps = list(map(rshift, map(_inc_of, alives), repeat(EPOCH_SHIFT)))
        n = len(eps)
        ends = list(compress(range(1, n), map(ne, islice(eps, 1, None), eps)))
        ends.append(n)
        epochs, members = self.epochs, self.members
        i = 0
        for j in ends:
            ep = eps[i]
            x = sum(hashes[i:j])  # hashes of 48 bits: summed in C longs
            b = ep & _MASK
            fine[b] = (fine[b] + x) & M64
            v = epochs.get(ep)
            if v is None:
                epochs[ep] = [x & M64, j - i]
                members[ep] = alives[i:j]  # type: ignore[assignment]
            else:
                v[0] = (v[0] + x) & M64
                v[1] += j - i
                members[ep] += alives[i:j]
            i = j

    @property
    def fine(self) -> list[int]:
        """The digest at `FINE` buckets."""
        return self._fine

    def in_epochs(self, wanted: set[int], get: Callable[[str], Entry | None]) -> list[Entry]:
        """The entries in the `wanted` epochs (`get`: the table's), read without the table."""
        members, dirty = self.members, self._dirty
        for ep in dirty.intersection(wanted):
            # Entries since taken out, or put back (twice): kept once, if still the table's.
            m = members[ep]
            m[:] = [e for e in {id(e): e for e in m}.values() if get(e.node) is e]
            dirty.discard(ep)
        return list(chain.from_iterable([members[ep] for ep in wanted if ep in members]))

    def folded(self, buckets: int, me: Entry) -> list[int]:
        """The digest at `buckets` buckets, with our own statement in it."""
        last = self._folded
        if last is not None and last[0] == buckets and last[1] is me:
            return last[2]  # no change since: both ends of an exchange fold once
        # Bucket i of `buckets` holds the fine buckets i, i + buckets, ...: halving the
        # array with one pass of sums at a time folds it.
        out = list(self.fine)
        n = FINE
        while n > buckets:
            n //= 2
            out = list(map(and_, map(add, out[:n], out[n:]), repeat(M64)))
        b = bucket_of(me) & (buckets - 1)
        out[b] = (out[b] + entry_hash(me)) & M64
        self._folded = (buckets, me, out)
        return out


def pack(digest: list[int]) -> bytes:
    """Wire bytes of a folded digest."""
    return struct.pack(f"<{len(digest)}Q", *digest)


def unpack(data: bytes) -> list[int] | None:
    """A folded digest from wire bytes; None unless a power of two of buckets up to FINE."""
    n, rest = divmod(len(data), 8)
    if rest or n < 1 or n > FINE or n & (n - 1):
        return None
    return list(struct.unpack(f"<{n}Q", data))


def differing(ours: list[int], theirs: list[int]) -> set[int]:
    """Buckets whose digests differ."""
    return {j for j, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b}


def select(entries: list[Entry], buckets: int, wanted: set[int]) -> list[Entry]:
    """The entries that fall in the `wanted` buckets of a `buckets`-bucket digest."""
    if len(wanted) == buckets:
        return entries
    return list(compress(entries, map(wanted.__contains__, map(
        and_, map(rshift, map(_inc_of, entries), repeat(EPOCH_SHIFT)), repeat(buckets - 1)))))


def keys_of(entries: list[Entry]) -> list[int]:
    """The name keys (CRC-32) of entries, in order."""
    return list(map(_keys.__getitem__, map(_node_of, entries)))


def entry_hashes(entries: list[Entry], many: Callable[[list[Alive]], list[int]]) -> list[int]:
    """`entry_hash` of each entry, the plain statements through `many` (at C speed)."""
    try:
        return many(entries)  # type: ignore[arg-type]  # plain statements only (most often)
    except AttributeError:  # a marked entry (suspect, down, left) among them
        pass
    marked = list(compress(range(len(entries)), map(is_not, map(type, entries), repeat(Alive))))
    # The few marked entries hashed one by one, in place; the plain ones at C speed.
    alives = list(entries)
    for i in marked:
        alives[i] = entries[i].alive  # type: ignore[union-attr]
    hs = many(alives)  # type: ignore[arg-type]
    for i in marked:
        hs[i] = entry_hash(entries[i])
    return hs


def pack_summary(keys: list[int], hashes: list[int]) -> bytes:
    """Wire bytes of a summary: each entry's name key then each entry's hash (12 bytes)."""
    n = len(keys)
    return struct.pack(f"<{n}I{n}q", *keys, *hashes)


def unpack_summary(data: bytes) -> tuple[list[int], list[int]] | None:
    """Name keys and hashes of a summary; None unless whole entries."""
    n, rest = divmod(len(data), 12)
    if rest:
        return None
    both = struct.unpack(f"<{n}I{n}q", data)
    return list(both[:n]), list(both[n:])


def pack_keys(keys: list[int]) -> bytes:
    """Wire bytes of a list of name keys."""
    return struct.pack(f"<{len(keys)}I", *keys)


def unpack_keys(data: bytes) -> list[int] | None:
    """Name keys from wire bytes; None unless whole keys."""
    n, rest = divmod(len(data), 4)
    return None if rest else list(struct.unpack(f"<{n}I", data))
