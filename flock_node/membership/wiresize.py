"""What the simulator's messages weigh on the wire (msgspec's encoding), and its statements'
digest hashes, both measured once per object.

Messages are passed by reference, so the same statement object rides on many messages: its
size is measured once; a push-pull's size is its head plus the sum of its entries' (exactly
what encoding the whole message gives).
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any

from msgspec.structs import replace

from flock_node.membership.digest import alive_hashes, entry_hash
from flock_node.membership.messages import Alive, Entry, Mark, Message, PushPull, encode

_ENTRIES = (Alive, Mark)


_size_of, _hash_of = attrgetter("_s"), attrgetter("_h")


class Sizes:
    """Encoded sizes, measured once per object: a table entry (`Alive`, `Mark`) keeps its own
    in `__dict__`; other objects by id (kept alive, so an id is never reused)."""

    def __init__(self) -> None:
        self._by_id: dict[int, int] = {}
        self._keep: list[Any] = []
        # Lists measured lately (kept, so an id is not reused while listed): a push-pull's
        # pages are measured by their sender, then counted as sent.
        self._lists: dict[int, tuple[list[Entry], int, int]] = {}

    def of(self, obj: Any) -> int:
        """Bytes of one update or table entry."""
        if type(obj) in _ENTRIES:
            d = obj.__dict__
            n = d.get("_s")
            if n is None:
                n = d["_s"] = len(encode(obj))
            return n  # type: ignore[no-any-return]
        n = self._by_id.get(id(obj))
        if n is None:
            n = len(encode(obj))
            self._by_id[id(obj)] = n
            self._keep.append(obj)
        return n

    def entries(self, states: list[Entry]) -> int:
        """Bytes of a list of entries, as msgspec encodes it."""
        seen = self._lists.get(id(states))
        if seen is not None and seen[0] is states and seen[1] == len(states):
            return seen[2]
        n = self._entries(states)
        if len(self._lists) >= 64:
            self._lists.clear()
        self._lists[id(states)] = (states, len(states), n)
        return n

    def _entries(self, states: list[Entry]) -> int:
        try:
            total: int = sum(map(_size_of, states))
        except AttributeError:  # a few entries never measured (new suspicions): measure them
            total = sum(map(self.of, states))
        n = len(states)
        return total + (1 if n < 16 else 3 if n < 65536 else 5)  # msgpack array header

    def message(self, msg: Message) -> int:
        """Bytes of one message on the wire."""
        if type(msg) is not PushPull:
            return len(encode(msg))
        head = len(encode(replace(msg, states=[])))
        return head - 1 + self.entries(msg.states)


class Hashes:
    """`digest.alive_hashes` of the statements the simulator signed, shared by every table:
    hashed when signed, the hash (and the size) kept in the statement's `__dict__`, allocated
    together (read for every statement a table learns: kept close, they are read faster).
    A statement holding a hash is one the simulator signed: the signature check and the
    hashes of a batch are one pass (the batch checked is the batch added next)."""

    def __init__(self) -> None:
        self._last: tuple[list[Alive], int, list[int]] | None = None

    def stamp(self, a: Alive, size: int) -> None:
        """Mark `a` as signed here, with its hash and encoded size."""
        a.__dict__.update(_h=entry_hash(a), _s=size)

    def signed(self, a: Alive) -> bool:
        """Whether the simulator signed `a`."""
        return "_h" in a.__dict__

    def all_signed(self, alives: list[Alive]) -> bool:
        """Whether the simulator signed every one of `alives` (their hashes kept for the
        digest's next call, which adds these same statements)."""
        try:
            hashes = list(map(_hash_of, alives))
        except AttributeError:
            return False
        self._last = (alives, len(alives), hashes)
        return True

    def __call__(self, alives: list[Alive]) -> list[int]:
        """The hashes of `alives`, in order."""
        last, self._last = self._last, None
        if last is not None and last[0] is alives and last[1] == len(alives):
            return last[2]
        try:
            return list(map(_hash_of, alives))
        except AttributeError:  # some not signed here: hashed each time, never kept
            return alive_hashes(alives)
