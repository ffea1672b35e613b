"""The RPC clients' sockets, one per node called, at most `bound` of them: beyond it the least
recently used is closed (redialled if called again). A console scrolling through a flock of
thousands, or an agent notifying hundreds, holds a bounded number of connections.

A socket with calls in flight is never closed under them: when it is the one to go it is
retired, out of the pool, and closed when its last call ends.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from typing import Generic, Protocol, TypeVar

RPC_CONNECTIONS = 64  # as the console's bus connections (flock_tui/watch.py)
RPC_CONNECTIONS_ENV = "FLOCK_RPC_CONNECTIONS"


class Closable(Protocol):
    def close(self) -> None: ...


K = TypeVar("K", bound=Hashable)
S = TypeVar("S", bound=Closable)


def rpc_bound(env: Mapping[str, str] = os.environ) -> int:
    """FLOCK_RPC_CONNECTIONS, else 64 (a value that is not a whole number of at least 1 is
    the default)."""
    try:
        n = int(env.get(RPC_CONNECTIONS_ENV, RPC_CONNECTIONS))
    except ValueError:
        return RPC_CONNECTIONS
    return n if n >= 1 else RPC_CONNECTIONS


def _close(s: Closable) -> None:
    with contextlib.suppress(Exception):
        s.close()


class Pool(Generic[K, S]):
    """Sockets by key, least recently used first; thread-safe (the sync client's callers are
    threads). `use` marks a call in flight, `done` ends it."""

    def __init__(self, bound: int | None = None) -> None:
        self.bound = rpc_bound() if bound is None else max(1, bound)
        self._socks: OrderedDict[K, S] = OrderedDict()
        self._busy: dict[int, int] = {}  # id(socket) → calls in flight
        self._retired: dict[int, S] = {}  # out of the pool, closed when idle
        self._lock = threading.RLock()

    def get(self, key: K) -> S | None:
        """The socket for `key`, now the most recently used; None if there is none."""
        with self._lock:
            s = self._socks.get(key)
            if s is not None:
                self._socks.move_to_end(key)
            return s

    def add(self, key: K, sock: S) -> None:
        """Keep `sock` for `key` (replacing any other); the least recently used beyond the
        bound go, idle ones first."""
        with self._lock:
            old = self._socks.pop(key, None)
            if old is not None and old is not sock:
                self._drop(old)
            self._socks[key] = sock
            while len(self._socks) > self.bound:
                others = [k for k in self._socks if k != key]  # oldest first
                victim = next((k for k in others if not self._busy.get(id(self._socks[k]))),
                              others[0])
                self._drop(self._socks.pop(victim))

    def use(self, sock: S) -> None:
        """A call on `sock` begins."""
        with self._lock:
            self._busy[id(sock)] = self._busy.get(id(sock), 0) + 1

    def done(self, sock: S) -> None:
        """A call on `sock` ended: a retired socket with no other call is closed now."""
        with self._lock:
            n = self._busy.get(id(sock), 0) - 1
            if n > 0:
                self._busy[id(sock)] = n
                return
            self._busy.pop(id(sock), None)
            s = self._retired.pop(id(sock), None)
        if s is not None:
            _close(s)

    def forget(self, key: K) -> None:
        """Drop the socket for `key` (closed once no call uses it)."""
        with self._lock:
            s = self._socks.pop(key, None)
            if s is not None:
                self._drop(s)

    def pop(self, key: K) -> S | None:
        """Take the socket for `key` out of the pool, unclosed (the caller closes it)."""
        with self._lock:
            return self._socks.pop(key, None)

    def sockets(self) -> list[S]:
        """Every socket open: pooled and retired."""
        with self._lock:
            return [*self._socks.values(), *self._retired.values()]

    def __len__(self) -> int:
        with self._lock:
            return len(self._socks) + len(self._retired)

    def close(self) -> None:
        """Close every socket, busy or not (the client is going away)."""
        with self._lock:
            socks = self.sockets()
            self._socks.clear()
            self._retired.clear()
        for s in socks:
            _close(s)

    def _drop(self, s: S) -> None:
        if self._busy.get(id(s)):
            self._retired[id(s)] = s
        else:
            _close(s)
