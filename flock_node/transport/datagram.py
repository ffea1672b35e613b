"""`Datagrams`: SWIM's messages over nng, which has no UDP (PITFALLS).

Each agent listens on a Pull0 socket; it sends through Push0 sockets, one per destination,
from a bounded pool (least recently used closed first), so an agent holds a bounded number
of connections whatever the flock's size. Addresses `pin`ned (the ring neighbours) stay open:
their closed pipe (a `kill -9`) is reported at once through `on_lost`. Frames are signed
envelopes like every other frame; on TLS the verified name of the connection a frame came on
is its only possible sender. Sends never block: Push0 queues in its buffer while it connects.
Frames are read when the socket's receive descriptor says some wait (no `arecv` per frame:
that costs an nng aio, a thread hand-off and a loop wake-up each, the bulk of an idle
agent's CPU after the frames themselves).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import pynng

from flock_node.protocol import MAX_FRAME, Codec, FrameError, SwimFrame
from flock_node.transport.base import _listen
from flock_node.transport.tls import (
    VerifiedListener,
    close_revoked,
    count_drop,
    dial,
    guard_pipes,
    spoke_for_itself,
)
from flock_node.trust.tls import TlsIdentity

log = logging.getLogger("flock.transport")

POOL = 32  # outgoing connections kept besides the pinned ones
SEND_BUFFER = 64  # messages queued per destination while it connects


class _Out:
    """One destination: a Push0 socket dialing it."""

    __slots__ = ("addr", "sock", "closing", "pipes")

    def __init__(self, addr: str, sock: pynng.Socket) -> None:
        self.addr = addr
        self.sock = sock
        self.closing = False
        self.pipes = 0


class Datagrams(VerifiedListener):
    """`on_frame(sender, data)` gets each authenticated SWIM frame; `on_lost(addr)` is told
    when an open connection to `addr` closes without us closing it."""

    def __init__(self, codec: Codec, on_frame: Callable[[str, bytes], None],
                 on_lost: Callable[[str], None] | None = None,
                 tls: TlsIdentity | None = None, pool: int = POOL) -> None:
        super().__init__(codec, tls, pynng.Pull0(recv_max_size=MAX_FRAME))
        self.on_frame = on_frame
        self.on_lost = on_lost
        self.pool = pool
        self.sock.recv_buffer_size = 1024
        self._out: OrderedDict[str, _Out] = OrderedDict()
        self._pinned: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd: int | None = None  # readable while frames wait
        self.listen_addr: str | None = None
        self.sent = 0
        self.received = 0

    def listen(self, addr: str) -> None:
        """Listen for SWIM frames on `addr` (tcp, tls+tcp or ipc)."""
        guard_pipes(self.sock, self.tls, nodes_only=True)
        _listen(self.sock, addr, self.tls, "swim")
        self.listen_addr = addr

    def start(self) -> None:
        """Start receiving (on the running loop)."""
        self._loop = asyncio.get_running_loop()
        self.forget_closed_pipes(self._loop)
        self._fd = self.sock.recv_fd
        self._loop.add_reader(self._fd, self._drain)

    # -- sending -----------------------------------------------------------------------------
    def send(self, addr: str, data: bytes) -> None:
        """Queue one SWIM message for `addr`; never blocks, drops when the queue is full."""
        if not addr:
            return
        out = self._out.get(addr)
        if out is None:
            out = self._open(addr)
            if out is None:
                return
        else:
            self._out.move_to_end(addr)
        try:
            out.sock.send(self.codec.encode(SwimFrame(data)), block=False)
            self.sent += 1
        except pynng.NNGException as e:  # TryAgain: its queue is full; SWIM expects loss
            log.debug("swim send to %s: %s", addr, e)

    def _open(self, addr: str) -> _Out | None:
        sock = pynng.Push0(recv_max_size=MAX_FRAME)
        sock.send_buffer_size = SEND_BUFFER
        sock.reconnect_time_min = 100
        sock.reconnect_time_max = 1000
        out = _Out(addr, sock)
        sock.add_post_pipe_connect_cb(lambda p: self._to_loop(self._connected, out))
        sock.add_post_pipe_remove_cb(lambda p: self._to_loop(self._removed, out))
        try:
            dial(sock, addr, self.tls)
        except pynng.NNGException as e:
            log.debug("cannot dial %s: %s", addr, e)
            sock.close()
            return None
        self._out[addr] = out
        self._trim()
        return out

    def _trim(self) -> None:
        extra = len(self._out) - self.pool - len(self._pinned & self._out.keys())
        for addr in list(self._out):
            if extra <= 0:
                break
            if addr not in self._pinned:
                self._close(addr)
                extra -= 1

    def _close(self, addr: str) -> None:
        out = self._out.pop(addr, None)
        if out is not None:
            out.closing = True
            with contextlib.suppress(pynng.NNGException):
                out.sock.close()

    def pin(self, addrs: set[str]) -> None:
        """Keep a standing connection to these addresses (the ring neighbours) and only these
        pinned; a pinned address is dialed now, so its loss is seen even before we probe it."""
        self._pinned = set(addrs)
        for addr in addrs:
            if addr not in self._out:
                self._open(addr)
        self._trim()

    def forget(self, addr: str) -> None:
        """Close our connection to `addr` (a member gone for good)."""
        if addr not in self._pinned:
            self._close(addr)

    def close_revoked(self) -> int:
        """Close the connections of identities revoked since they connected."""
        if self.tls is None:
            return 0
        return close_revoked(self.sock, self.tls) + sum(
            close_revoked(o.sock, self.tls) for o in list(self._out.values()))

    def connected(self) -> list[str]:
        """Addresses we hold an open connection to."""
        return [a for a, o in self._out.items() if o.pipes > 0]

    def connections(self) -> int:
        """Open pipes: ours to others and theirs to us."""
        return sum(o.pipes for o in self._out.values()) + len(self.sock.pipes)

    def _connected(self, out: _Out) -> None:
        out.pipes += 1

    def _removed(self, out: _Out) -> None:
        if out.pipes <= 0:
            return  # a dial that never connected (or a pipe refused at its handshake)
        out.pipes -= 1
        if not out.closing and self.on_lost is not None and self._out.get(out.addr) is out:
            self.on_lost(out.addr)

    def _to_loop(self, cb: Callable[[Any], None], arg: Any) -> None:
        # nng thread: never touch sockets here (nng #1247), hand it to the loop.
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(cb, arg)

    # -- receiving ---------------------------------------------------------------------------
    def _drain(self) -> None:
        # A batch at a time: the descriptor stays readable while frames wait, so the loop
        # comes back here after the other ready callbacks had their turn.
        for _ in range(64):
            try:
                msg = self.sock.recv_msg(block=False)
            except pynng.TryAgain:
                return
            except pynng.Closed:
                self._stop_reading()
                return
            except pynng.NNGException as e:
                log.debug("swim receive: %s", e)
                return
            self._frame(msg)

    def _frame(self, msg: pynng.Message) -> None:
        try:
            env, body = self.codec.decode(msg.bytes)
        except FrameError as e:
            log.debug("swim frame dropped: %s", e)
            return
        except Exception:  # a decoder bug must not stop the receiving
            log.exception("swim frame dropped")
            count_drop(self.codec, "malformed")
            return
        if not isinstance(body, SwimFrame):
            count_drop(self.codec, "malformed")
            return
        if self.tls is not None and not spoke_for_itself(
                self._callers, self.codec, env, msg.pipe):
            return
        self.received += 1
        try:
            self.on_frame(env.sender, body.data)
        except Exception:
            log.exception("swim handler failed")

    def _stop_reading(self) -> None:
        if self._fd is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
        self._fd = None

    async def close(self) -> None:
        """Stop receiving, then close every socket."""
        self._stop_reading()
        for addr in list(self._out):
            self._close(addr)
        self.sock.close()
