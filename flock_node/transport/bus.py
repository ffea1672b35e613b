"""`Bus`: Bus0 for heartbeats, departures and events (best effort, one hop, full mesh)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import pynng

from flock_node.protocol import (
    MAX_FRAME,
    Codec,
    Envelope,
    FrameError,
    Message,
)
from flock_node.transport.base import BUS_BUFFER, _listen, cancel_and_wait, receive
from flock_node.transport.pipes import StalePipes
from flock_node.transport.tls import (
    Callers,
    close_revoked,
    dial,
    guard_pipes,
    spoke_for_itself,
)
from flock_node.trust.tls import TlsIdentity

log = logging.getLogger("flock.transport")


class Bus:
    """Bus0 endpoint. Received frames are decoded and verified here; bad ones are counted.

    A frame that arrives again on another pipe (two pipes to one node) is dropped as a
    `duplicate`, never handed on twice; on the same pipe it is a `replay`."""

    def __init__(
        self,
        codec: Codec,
        on_message: Callable[[Envelope, Message, int], None],
        on_pipe_removed: Callable[[int], None] | None = None,
        on_pipe_added: Callable[[int], None] | None = None,
        tls: TlsIdentity | None = None,
    ):
        self.codec = codec
        self.tls = tls
        self._callers = Callers(tls)
        self.on_message = on_message
        self.on_pipe_removed = on_pipe_removed
        self.on_pipe_added = on_pipe_added
        self.sock = pynng.Bus0(recv_max_size=MAX_FRAME)
        self.sock.recv_buffer_size = BUS_BUFFER
        self.sock.send_buffer_size = BUS_BUFFER
        self.sock.reconnect_time_min = 100
        self.sock.reconnect_time_max = 1000
        self._dialed: dict[str, Any] = {}
        self._stale = StalePipes(self.sock)
        self._task: asyncio.Task[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.listen_addr: str | None = None
        self._outq: queue.SimpleQueue[bytes | None] | None = None
        self._sender: threading.Thread | None = None
        self._sender_lock = threading.Lock()
        self._closed = False

    def listen(self, addr: str) -> None:
        _listen(self.sock, addr, self.tls, "bus")
        self.listen_addr = addr

    def dial(self, addr: str) -> None:
        if addr in self._dialed or addr == self.listen_addr:
            return
        self._stale.sweep()
        try:
            self._dialed[addr] = dial(self.sock, addr, self.tls)
        except pynng.NNGException as e:
            log.warning("cannot dial %s: %s", addr, e)

    def undial(self, addr: str) -> None:
        d = self._dialed.pop(addr, None)
        if d is not None:
            with contextlib.suppress(Exception):
                d.close()
        self._stale.sweep()

    def dialed(self) -> set[str]:
        return set(self._dialed)

    def is_dialed(self, addr: str) -> bool:
        return addr in self._dialed

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        guard_pipes(self.sock, self.tls)
        if self.on_pipe_removed is not None or self.tls is not None:
            self.sock.add_post_pipe_remove_cb(self._pipe_removed)
        if self.on_pipe_added is not None:
            self.sock.add_post_pipe_connect_cb(self._pipe_added)
        self._task = asyncio.create_task(self._recv_loop(), name="bus-recv")

    def _pipe_removed(self, pipe: pynng.Pipe) -> None:
        self._to_loop(self._forget_pipe, pipe.id)

    def _forget_pipe(self, pid: int) -> None:
        self._callers.forget(pid)
        if self.on_pipe_removed is not None:
            self.on_pipe_removed(pid)

    def close_revoked(self) -> int:
        """Close the bus connections of identities revoked since they connected."""
        return close_revoked(self.sock, self.tls) if self.tls is not None else 0

    def _pipe_added(self, pipe: pynng.Pipe) -> None:
        self._to_loop(self.on_pipe_added, pipe.id)

    def _to_loop(self, cb: Callable[[int], None] | None, pid: int) -> None:
        # nng thread: never touch sockets here, hand it to the loop.
        loop = self._loop
        if loop is not None and cb is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(cb, pid)

    async def _recv_loop(self) -> None:
        while True:
            msg = await receive(self.sock, "bus")
            if msg is None:
                return
            pipe = msg.pipe.id if msg.pipe else 0
            try:
                env, body = self.codec.decode(msg.bytes, channel=pipe or None)
            except FrameError as e:
                log.debug("bus frame dropped: %s", e)
                if e.reason == "stale" and e.env is not None:
                    self._warn_skew(e)
                continue
            except Exception:  # a decoder bug must not end the receive loop
                log.exception("bus frame dropped")
                self.codec.dropped["malformed"] = self.codec.dropped.get("malformed", 0) + 1
                continue
            if self.tls is not None and not spoke_for_itself(
                    self._callers, self.codec, env, msg.pipe):
                continue
            try:
                self.on_message(env, body, pipe)
            except Exception:
                log.exception("bus handler failed")

    def _warn_skew(self, e: FrameError) -> None:
        """Once per peer per minute, not once per frame."""
        assert e.env is not None
        sender = e.env.sender
        if self.codec.should_log_skew(sender):
            way = "ahead of" if e.skew > 0 else "behind"
            log.warning("clock skew: %s's clock is %.1f s %s ours; flock accepts ±%g s, so "
                        "its frames are dropped (check NTP on both)",
                        sender, abs(e.skew), way, self.codec.window)

    def send(self, msg: Message) -> None:
        """Best effort and never blocking (callable from any thread): Bus0 drops what a full
        peer cannot take, so nothing that must arrive goes over the bus.

        A Bus0 send writes to every peer's socket before it returns (tens of µs), so a sender
        thread does it: an event costs the loop or the worker an encode and a queue put."""
        frame = self.codec.encode(msg)
        q = self._outq if self._outq is not None else self._start_sender()
        if q is not None:
            q.put(frame)

    def _start_sender(self) -> queue.SimpleQueue[bytes | None] | None:
        with self._sender_lock:
            if self._closed:
                return None
            if self._outq is None:
                q: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
                self._sender = threading.Thread(target=self._send_loop, args=(q,),
                                                name="bus-send", daemon=True)
                self._sender.start()
                self._outq = q
            return self._outq

    def _send_loop(self, q: queue.SimpleQueue[bytes | None]) -> None:
        while (frame := q.get()) is not None:
            try:
                self.sock.send(frame, block=False)
            except pynng.NNGException as e:
                log.debug("bus send: %s", e)

    def _stop_sender(self) -> None:
        with self._sender_lock:
            self._closed = True
            q, t = self._outq, self._sender
        if q is not None and t is not None:
            q.put(None)  # after what is queued: a goodbye still goes out
            t.join(2.0)

    async def close(self) -> None:
        await cancel_and_wait([self._task] if self._task else [])
        await asyncio.get_running_loop().run_in_executor(None, self._stop_sender)
        self.sock.close()
        await cancel_and_wait([self._task] if self._task else [])  # settled by the close
