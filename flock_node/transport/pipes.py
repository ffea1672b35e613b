"""pynng's list of a socket's pipes, kept from growing with closed ones.

pynng (0.9) drops a pipe from `Socket.pipes` when nng says it was removed, but a frame from
that pipe read afterwards puts a new `Pipe` for it back (`_try_associate_msg_with_pipe`), and
nothing removes that one: measured, about one stale pipe per hundred dial/undial cycles to
nodes that talk. A socket that dials and undials for hours (the console's bus, following what
is on screen) would keep them all, and `pipes` would count connections long gone.
"""

from __future__ import annotations

from typing import Any

import pynng
from pynng import ffi, lib


def _gone(pipe: pynng.Pipe) -> bool:
    """nng no longer knows this pipe (closed and removed)."""
    addr = ffi.new("nng_sockaddr *")
    return bool(lib.nng_pipe_get_addr(pipe.pipe, b"remote-address", addr) == lib.NNG_ENOENT)


class StalePipes:
    """Sweeps a socket's pipe list. A pipe is dropped when it is gone at two sweeps in a row:
    at the first, nng may still be running its removal (whose callbacks look the pipe up in
    that list, and must find it)."""

    def __init__(self, sock: pynng.Socket):
        self.sock = sock
        self._suspects: set[int] = set()

    def sweep(self) -> int:
        """Drop the pipes gone since the last sweep; how many. On the loop, never from an nng
        callback (the lock below is the one pynng's callbacks hold)."""
        s: Any = self.sock
        with s._pipe_notify_lock:
            gone = {pid for pid, p in s._pipes.items() if _gone(p)}
            drop = gone & self._suspects
            for pid in drop:
                del s._pipes[pid]
        self._suspects = gone - drop
        return len(drop)
