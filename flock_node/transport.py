"""The only module that touches nng sockets.

- `Bus`: Bus0 for heartbeats, departures and events (best effort, one hop, full mesh).
- `RpcServer`: Rep0 with one context per in-flight call, so a slow handler blocks nobody;
  repeated call ids (Req0 re-sends after a reconnect) get the first call's answer, kept
  within bounds (`AnswerCache`); an answer too big for a frame is answered `too_large`.
- `AsyncRpc` / `SyncRpc`: Req0 clients with deadlines; errors come back as `RpcError`.

Every socket takes an optional `TlsIdentity`: `tls+tcp://` endpoints then get its TLS
configuration, each connection passes its gate (a flock identity, not revoked), and the
verified identity of the connection is the only sender its frames may name.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import queue
import socket as _socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pynng

from flock_node.protocol import (
    MAX_FRAME,
    Codec,
    Envelope,
    Error,
    FrameError,
    Message,
    Request,
    Response,
)
from flock_node.transport_tls import (
    Callers,
    close_revoked,
    count_drop,
    dial,
    guard_pipes,
    is_tls,
    need_tls,
    tls_endpoint,
)
from flock_node.trust.identity import NODE, Caller
from flock_node.trust.tls import TlsIdentity

log = logging.getLogger("flock.transport")

BUS_BUFFER = 1024  # messages: the default 16 silently loses bursts
RPC_CONTEXTS = 32


class RpcError(Exception):
    """A call failed; `code` is one of the SPEC's error codes."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# --- addresses ------------------------------------------------------------------------------


def ipc_addresses(runtime_dir: Path, node: str) -> tuple[str, str]:
    return f"ipc://{runtime_dir / (node + '.bus')}", f"ipc://{runtime_dir / (node + '.rpc')}"


def tcp_addresses(listen: str) -> tuple[str, str]:
    """`tcp://HOST:PORT` (or `tls+tcp://`) → bus on PORT, RPC on PORT+1."""
    scheme, sep, hostport = listen.partition("://")
    if not sep or scheme not in ("tcp", "tls+tcp"):
        raise ValueError(f"--listen must look like tcp://HOST:PORT or tls+tcp://HOST:PORT, "
                         f"got {listen!r}")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"--listen must look like {scheme}://HOST:PORT, got {listen!r}")
    p = int(port)
    if not 0 < p < 65535:
        raise ValueError(f"port out of range in {listen!r}")
    return f"{scheme}://{host}:{p}", f"{scheme}://{host}:{p + 1}"


def rpc_for_bus(bus: str) -> str:
    """The RPC address that goes with a bus address (seeds name only the bus)."""
    if bus.startswith("ipc://") and bus.endswith(".bus"):
        return bus[: -len(".bus")] + ".rpc"
    if bus.startswith(("tcp://", "tls+tcp://")):
        scheme, _, hostport = bus.partition("://")
        host, _, port = hostport.rpartition(":")
        return f"{scheme}://{host}:{int(port) + 1}"
    raise ValueError(f"cannot tell the RPC address for {bus!r}")


def ipc_path(addr: str) -> str | None:
    return addr[len("ipc://") :] if addr.startswith("ipc://") else None


def ipc_alive(path: str) -> bool:
    """Is something listening on this unix socket? (False for a stale file after kill -9.)"""
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    s.settimeout(0.5)
    try:
        s.connect(path)
        return True
    except OSError as e:
        return e.errno not in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK)
    finally:
        s.close()


def scan_runtime_dir(runtime_dir: Path, clean: bool = False) -> dict[str, tuple[str, str]]:
    """Nodes listening in a runtime dir: name → (bus, rpc). `clean` removes the sockets of
    agents that are gone (their name lock is free), never those of one still starting."""
    out: dict[str, tuple[str, str]] = {}
    try:
        entries = list(runtime_dir.glob("*.bus"))
    except OSError:
        return out
    for p in entries:
        name = p.name[: -len(".bus")]
        if ipc_alive(str(p)):
            out[name] = ipc_addresses(runtime_dir, name)
        elif clean and not name_locked(runtime_dir, name):
            for suffix in (".bus", ".rpc"):
                with contextlib.suppress(OSError):
                    (runtime_dir / (name + suffix)).unlink()
    return out


def lock_name(runtime_dir: Path, name: str) -> int:
    """Hold NAME.lock in the runtime dir for the agent's lifetime (the kernel drops it when
    the process dies, even by kill -9). Raises if another live agent holds it."""
    fd = os.open(runtime_dir / (name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OSError(errno.EADDRINUSE,
                      f"a node named {name!r} is already running in {runtime_dir}") from None
    return fd


def name_locked(runtime_dir: Path, name: str) -> bool:
    """Is an agent called `name` alive here (holding its lock)?"""
    try:
        fd = os.open(runtime_dir / (name + ".lock"), os.O_RDWR)
    except OSError:
        return False  # no lock file: an agent from before locks, or gone
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


class AddressInUse(OSError):
    """A listen address is taken (by another agent or any other program)."""


def _listen(sock: pynng.Socket, addr: str, tls: TlsIdentity | None = None) -> None:
    path = ipc_path(addr)
    if path and os.path.exists(path):
        if ipc_alive(path):
            raise AddressInUse(errno.EADDRINUSE, f"{path} is in use by another agent")
        os.unlink(path)
    try:
        if is_tls(addr):
            tls_endpoint(sock, addr, need_tls(tls, addr), listen=True)
        else:
            sock.listen(addr)
    except pynng.AddressInUse:
        raise AddressInUse(errno.EADDRINUSE, f"cannot listen on {addr}: the address is already "
                           "in use (another agent or program; choose another --listen port, "
                           "the RPC socket takes PORT+1)") from None
    except pynng.NNGException as e:
        raise OSError(errno.EINVAL, f"cannot listen on {addr}: {e}") from None
    if path:
        os.chmod(path, 0o600)


async def cancel_and_wait(tasks: list[asyncio.Task[Any]], timeout: float = 1.0) -> None:
    """Cancel receiving tasks and give them `timeout` to end (pynng #108: before their
    sockets close). Bounded: a pynng receive whose cancellation never completes must not
    hang a shutdown; closing its socket afterwards ends it."""
    live = [t for t in tasks if not t.done()]
    for t in live:
        t.cancel()
    if live:
        await asyncio.wait(live, timeout=timeout)
    for t in tasks:
        if t.done() and not t.cancelled():
            t.exception()  # retrieved: no "exception was never retrieved" noise


# --- bus --------------------------------------------------------------------------------------


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
        self._task: asyncio.Task[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.listen_addr: str | None = None
        self._outq: queue.SimpleQueue[bytes | None] | None = None
        self._sender: threading.Thread | None = None
        self._sender_lock = threading.Lock()
        self._closed = False

    def listen(self, addr: str) -> None:
        _listen(self.sock, addr, self.tls)
        self.listen_addr = addr

    def dial(self, addr: str) -> None:
        if addr in self._dialed or addr == self.listen_addr:
            return
        try:
            self._dialed[addr] = dial(self.sock, addr, self.tls)
        except pynng.NNGException as e:
            log.warning("cannot dial %s: %s", addr, e)

    def undial(self, addr: str) -> None:
        d = self._dialed.pop(addr, None)
        if d is not None:
            with contextlib.suppress(Exception):
                d.close()

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
            try:
                msg = await self.sock.arecv_msg()
            except asyncio.CancelledError:
                raise
            except pynng.Closed:
                return
            except pynng.NNGException as e:
                log.debug("bus receive: %s", e)
                continue
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
            if self.tls is not None and not self._from_its_sender(env, msg.pipe):
                continue
            try:
                self.on_message(env, body, pipe)
            except Exception:
                log.exception("bus handler failed")

    def _from_its_sender(self, env: Envelope, pipe: pynng.Pipe | None) -> bool:
        """On TLS, only a node speaks on the bus, and only in its own name."""
        caller = self._callers.of(pipe)
        if caller is None or caller.role != NODE:
            count_drop(self.codec, "not_a_node" if caller is not None else "unauthorized")
            return False
        if env.sender != caller.name:
            count_drop(self.codec, "sender_mismatch")
            log.debug("bus frame from %s in the name of %s dropped", caller.name, env.sender)
            return False
        return True

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


# --- RPC server -------------------------------------------------------------------------------

Handler = Callable[[Request, Envelope, Caller], Awaitable[Response]]

# What the RPC server keeps to answer Req0 re-sends. A re-send only comes while its caller
# still waits (a call's timeout is seconds, a few minutes at most), so age bounds it as
# much as bytes and count do.
ANSWERS_MAX_BYTES = 8 << 20
ANSWERS_MAX_AGE = 120.0  # seconds
ANSWERS_MAX_COUNT = 4096
ANSWERS_MAX_ENTRY = 256 << 10  # a bigger answer is not kept: its re-send runs the call again


def _frame_limit() -> str:
    return f"the {MAX_FRAME >> 20} MiB frame limit"


class _Answer:
    __slots__ = ("at", "value", "size", "done")

    def __init__(self, at: float, value: Any, size: int, done: bool):
        self.at, self.value, self.size, self.done = at, value, size, done


RERUN = "rerun"  # AnswerCache: the answer was too big to keep, a re-send runs the call again


class AnswerCache:
    """Answers by call id, so a Req0 re-send gets the first call's answer instead of running
    the call twice: bounded in count, bytes and age, oldest evicted first. A call in flight
    keeps its entry (the value given to `begin`, which re-sends wait on) whatever the bounds.
    Pure: the caller gives the time."""

    def __init__(self, max_bytes: int = ANSWERS_MAX_BYTES, max_age: float = ANSWERS_MAX_AGE,
                 max_count: int = ANSWERS_MAX_COUNT, max_entry: int = ANSWERS_MAX_ENTRY):
        self.max_bytes, self.max_age = max_bytes, max_age
        self.max_count, self.max_entry = max_count, max_entry
        self._entries: OrderedDict[str, _Answer] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[str]:
        return list(self._entries)

    def get(self, call_id: str) -> Any:
        """The in-flight value or the kept answer of `call_id`, or None."""
        e = self._entries.get(call_id)
        return None if e is None else e.value

    def begin(self, call_id: str, pending: Any, now: float) -> None:
        """A call starts: `pending` stands for it until `finish`."""
        self.count_drop(call_id)
        self._entries[call_id] = _Answer(now, pending, 0, False)
        self._evict(now)

    def finish(self, call_id: str, answer: bytes | None, now: float) -> None:
        """A call ended with `answer` (None: it was cut short, keep nothing). An answer over
        `max_entry` is not kept, only the mark RERUN: a re-send then runs the call again,
        which is harmless for the calls that answer big (resources, history, outbox and
        other reads); the calls that change something answer a few bytes, and receivers
        de-duplicate notifications by id anyway."""
        self.count_drop(call_id)
        if answer is None:
            return
        if len(answer) > self.max_entry:
            self._entries[call_id] = _Answer(now, RERUN, 0, True)
        else:
            self._entries[call_id] = _Answer(now, answer, len(answer), True)
            self.bytes += len(answer)
        self._evict(now)

    def count_drop(self, call_id: str) -> None:
        e = self._entries.pop(call_id, None)
        if e is not None:
            self.bytes -= e.size

    def _evict(self, now: float) -> None:
        cutoff = now - self.max_age
        n, size = len(self._entries), self.bytes
        doomed = []
        # Finished answers are in the order they ended; calls in flight are skipped (at most
        # one per server context), so this stops at the first answer within every bound.
        for k, e in self._entries.items():
            if not e.done:
                continue
            if n <= self.max_count and size <= self.max_bytes and e.at >= cutoff:
                break
            doomed.append(k)
            n -= 1
            size -= e.size
        for k in doomed:
            self.count_drop(k)


class RpcServer:
    def __init__(self, codec: Codec, handler: Handler, contexts: int = RPC_CONTEXTS,
                 tls: TlsIdentity | None = None):
        self.codec = codec
        self.handler = handler
        self.tls = tls
        self._callers = Callers(tls)
        self.sock = pynng.Rep0(recv_max_size=MAX_FRAME)
        self.sock.send_timeout = 5000
        self.n = contexts
        self._tasks: list[asyncio.Task[Any]] = []
        self._ctxs: list[pynng.Context] = []
        self._answers = AnswerCache()
        self.addr: str | None = None

    def listen(self, addr: str) -> None:
        _listen(self.sock, addr, self.tls)
        self.addr = addr

    def close_revoked(self) -> int:
        """Close the RPC connections of identities revoked since they connected."""
        return close_revoked(self.sock, self.tls) if self.tls is not None else 0

    def start(self) -> None:
        guard_pipes(self.sock, self.tls)
        if self.tls is not None:
            loop = asyncio.get_running_loop()

            def removed(pipe: pynng.Pipe) -> None:  # an nng thread: hand it to the loop
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(self._callers.forget, pipe.id)

            self.sock.add_post_pipe_remove_cb(removed)
        for i in range(self.n):
            ctx = self.sock.new_context()
            self._ctxs.append(ctx)
            self._tasks.append(asyncio.create_task(self._serve(ctx), name=f"rpc-{i}"))

    async def _serve(self, ctx: pynng.Context) -> None:
        while True:
            try:
                got = await ctx.arecv_msg()
            except asyncio.CancelledError:
                raise
            except pynng.Closed:
                return
            except pynng.NNGException as e:
                log.debug("rpc receive: %s", e)
                continue
            try:
                reply = await self._answer(got.bytes, self._callers.of(got.pipe))
            except asyncio.CancelledError:
                raise
            except Exception:  # a bad frame must not end this context's loop
                log.exception("rpc frame dropped")
                reply = None
            if reply is None:
                # Dropped: Rep0 needs a send before the next receive on this context, and a
                # silent peer is what a bad frame deserves. A fresh context resets it.
                with contextlib.suppress(Exception):
                    ctx.close()
                ctx = self.sock.new_context()
                continue
            try:
                await ctx.asend(reply)
            except asyncio.CancelledError:
                raise
            except pynng.NNGException as e:
                log.debug("rpc send: %s", e)

    async def _answer(self, frame: bytes, caller: Caller | None) -> bytes | None:
        try:
            env, msg = self.codec.decode(frame, check_replay=False)
        except FrameError as e:
            log.debug("rpc frame dropped: %s", e)
            if e.reason == "unauthorized":
                return self.codec.refusal(frame, str(e))
            if e.reason == "stale" and e.env is not None:
                # Correctly signed, only the clocks disagree: say so rather than time out.
                if self.codec.should_log_skew(e.env.sender):
                    log.warning("clock skew: a call from %s: %s", e.env.sender,
                                self.codec.skew_message(e))
                return self.codec.skew_answer(frame, e)
            return None
        if not isinstance(msg, Request):
            self.codec.dropped["unexpected"] = self.codec.dropped.get("unexpected", 0) + 1
            return None
        if caller is None:  # revoked since it connected: its pipe is being closed
            count_drop(self.codec, "unauthorized")
            return None
        if caller.verified and env.sender != caller.name:
            count_drop(self.codec, "sender_mismatch")
            log.warning("a call from %s in the name of %s dropped", caller.name, env.sender)
            return None
        replayed = self.codec.key is not None and self.codec.seen(env.nonce)
        known = self._answers.get(msg.call_id)
        if isinstance(known, asyncio.Future):  # a re-send of a call still running
            return self.codec.encode(await asyncio.shield(known))
        if isinstance(known, bytes):  # a re-send of a call answered: the same answer again
            return self.codec.encode(msgspec.msgpack.decode(known, type=Response))
        if known is None:
            if replayed:
                self.codec.dropped["replay"] = self.codec.dropped.get("replay", 0) + 1
                return None
            if self.codec.key is not None:
                self.codec._remember(env.nonce, env.ts)
        # A new call, or the re-send of one whose answer was too big to keep: run it (again).
        fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._answers.begin(msg.call_id, fut, time.monotonic())
        kept: bytes | None = None
        try:
            try:
                resp = await self.handler(msg, env, caller)
            except Exception as e:  # a handler bug must not take the agent down
                log.exception("rpc handler %s.%s failed", msg.actor, msg.method)
                resp = Response(msg.call_id, False,
                                error=Error("internal", f"{type(e).__name__}: {e}"))
            resp, reply = self._fit(msg, resp)
            fut.set_result(resp)
            # Too big to keep: finish() keeps only the RERUN mark for it.
            kept = msgspec.msgpack.encode(resp) if len(reply) <= self._answers.max_entry else reply
            return reply
        finally:
            if not fut.done():
                fut.cancel()
            self._answers.finish(msg.call_id, kept, time.monotonic())

    def _fit(self, req: Request, resp: Response) -> tuple[Response, bytes]:
        """The answer and its frame; an answer too big for a frame becomes `too_large` (and
        is counted as `oversize`): the peer would drop it and take the node for dead."""
        frame = self.codec.encode(resp)
        if len(frame) <= MAX_FRAME:
            return resp, frame
        self.codec.dropped["oversize"] = self.codec.dropped.get("oversize", 0) + 1
        log.warning("answer to %s.%s is %d bytes, over the frame limit: answered too_large",
                    req.actor, req.method, len(frame))
        resp = Response(resp.call_id, False, error=Error(
            "too_large", f"answer of {len(frame)} bytes exceeds {_frame_limit()}; "
                         "ask for a smaller page"))
        return resp, self.codec.encode(resp)

    async def close(self) -> None:
        await cancel_and_wait(self._tasks)
        for c in self._ctxs:
            with contextlib.suppress(Exception):
                c.close()
        self.sock.close()
        await cancel_and_wait(self._tasks)


# --- RPC clients ------------------------------------------------------------------------------


def _request(codec: Codec, actor: str, method: str, args: dict[str, Any]) -> tuple[str, bytes]:
    call_id = uuid.uuid4().hex
    frame = codec.encode(Request(call_id, actor, method, args))
    if len(frame) > MAX_FRAME:  # the node would drop it unanswered: say why, send nothing
        raise RpcError("too_large", f"{actor}.{method}: request of {len(frame)} bytes exceeds "
                                    f"{_frame_limit()}; send less at once")
    return call_id, frame


def _reply(codec: Codec, call_id: str, frame: bytes, tls: bool = False) -> Any:
    try:
        _, msg = codec.decode(frame, check_replay=False)
    except FrameError as e:
        if e.reason == "stale" and e.env is not None:
            raise RpcError("clock_skew", _skew_words(codec, e, call_id)) from None
        if e.reason == "unauthorized":
            # Usually the node's own unsigned refusal of our frame: its words say more.
            said = codec.read_refusal(frame, call_id)
            raise RpcError(
                "unauthorized",
                "the node and this client do not share the same flock key "
                f"(check --key-file / FLOCK_KEY_FILE / --insecure): {said or e}",
            ) from None
        raise RpcError("bad_response", str(e)) from None
    if not isinstance(msg, Response) or msg.call_id != call_id:
        raise RpcError("bad_response", "answer does not match the call")
    if not msg.ok:
        err = msg.error or Error("internal", "no error given")
        if err.code == "unauthorized" and not tls:  # the node refused our frame: which key?
            raise RpcError(err.code, "the node and this client do not share the same flock key "
                           f"(check --key-file / FLOCK_KEY_FILE / --insecure): {err.message}")
        raise RpcError(err.code, err.message)
    return msg.result


def _skew_words(codec: Codec, e: FrameError, call_id: str) -> str:
    """A stale answer: the node's own words if it answered `clock_skew` to our call (the
    signature was checked), else ours, from the answer's timestamp."""
    assert e.env is not None
    try:
        msg = msgspec.msgpack.decode(e.env.body, type=Response)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
        msg = None
    if (msg is not None and msg.call_id == call_id and msg.error is not None
            and msg.error.code == "clock_skew"):
        return msg.error.message
    way = "behind" if e.skew > 0 else "ahead of"
    return (f"your clock is {abs(e.skew):.1f} s {way} {e.env.sender}'s; "
            f"flock accepts ±{codec.window:g} s")


def _check_reachable(addr: str) -> None:
    path = ipc_path(addr)
    if path is not None and not os.path.exists(path):
        raise RpcError("unreachable", f"no agent listening at {addr}")


def _no_connection(addr: str, timeout: float, tls: TlsIdentity | None) -> RpcError:
    hint = (" (on TLS also: a certificate from another CA, expired or revoked is refused at "
            "the handshake; check --tls-dir)" if tls is not None and is_tls(addr) else "")
    return RpcError("unreachable", f"cannot connect to {addr} within {timeout:g}s{hint}")


class SyncRpc:
    """Blocking Req0 client: one socket per address, one context per call (thread-safe)."""

    def __init__(self, codec: Codec, timeout: float = 5.0, tls: TlsIdentity | None = None):
        self.codec = codec
        self.tls = tls
        self.timeout = timeout
        self._socks: dict[tuple[str, float], pynng.Req0] = {}
        self._lock = threading.Lock()

    def _sock(self, addr: str, timeout: float) -> pynng.Req0:
        key = (addr, timeout)
        local = ipc_path(addr) is not None
        with self._lock:
            s = self._socks.get(key)
            if s is not None and local and not s.pipes:
                # The local node went away (kill -9, restart): dial afresh, below.
                self._socks.pop(key).close()
                s = None
            if s is None:
                s = pynng.Req0(recv_max_size=MAX_FRAME)
                # Timeouts before contexts: a context copies them when it is created.
                s.recv_timeout = int(timeout * 1000)
                s.send_timeout = int(timeout * 1000)
                s.resend_time = int(max(timeout, 1.0) * 1000)
                guard_pipes(s, self.tls, nodes_only=True)
                if local:
                    # A blocking ipc dial fails at once when nobody listens (a socket file
                    # left by kill -9), instead of the call waiting out its timeout.
                    try:
                        s.dial(addr, block=True)
                    except pynng.NNGException as e:
                        s.close()
                        raise RpcError("unreachable", f"no agent listening at {addr} ({e})") from None
                else:
                    dial(s, addr, self.tls)
                self._socks[key] = s
            return s

    def call(self, addr: str, actor: str, method: str, args: dict[str, Any] | None = None,
             timeout: float | None = None) -> Any:
        timeout = self.timeout if timeout is None else timeout
        _check_reachable(addr)
        sock = self._sock(addr, timeout)
        call_id, frame = _request(self.codec, actor, method, args or {})
        ctx = sock.new_context()
        try:
            ctx.send(frame)
            reply = ctx.recv_msg().bytes
        except pynng.Timeout:
            if not sock.pipes:
                raise _no_connection(addr, timeout, self.tls) from None
            raise RpcError("timeout", f"no answer from {addr} within {timeout:g}s") from None
        except pynng.NNGException as e:
            raise RpcError("unreachable", f"{addr}: {e}") from None
        finally:
            # forget() may have closed the socket under this call (its node went down): the
            # context went with it, and that must not turn "unreachable" into a crash.
            with contextlib.suppress(pynng.NNGException):
                ctx.close()
        return _reply(self.codec, call_id, reply, self.tls is not None)

    def close(self) -> None:
        with self._lock:
            for s in self._socks.values():
                s.close()
            self._socks.clear()


class AsyncRpc:
    """Asyncio Req0 client for the agent and the console.

    A socket forgotten (its node went down) while calls are in flight on it is closed when the
    last of them ends: closing it under them would turn an ordinary "unreachable" into an
    exception from deep inside pynng."""

    def __init__(self, codec: Codec, timeout: float = 5.0, tls: TlsIdentity | None = None):
        self.codec = codec
        self.tls = tls
        self.timeout = timeout
        self._socks: dict[str, pynng.Req0] = {}
        self._inflight: dict[int, int] = {}  # id(socket) → calls in flight
        self._retired: dict[int, pynng.Req0] = {}  # forgotten, closed when idle

    def _sock(self, addr: str) -> pynng.Req0:
        s = self._socks.get(addr)
        if s is None:
            s = pynng.Req0(recv_max_size=MAX_FRAME)
            s.recv_timeout = 600_000
            s.send_timeout = 600_000
            s.resend_time = 5000
            guard_pipes(s, self.tls, nodes_only=True)
            dial(s, addr, self.tls)
            self._socks[addr] = s
        return s

    async def call(self, addr: str, actor: str, method: str, args: dict[str, Any] | None = None,
                   timeout: float | None = None) -> Any:
        timeout = self.timeout if timeout is None else timeout
        _check_reachable(addr)
        try:
            sock = self._sock(addr)
        except pynng.NNGException as e:
            raise RpcError("unreachable", f"{addr}: {e}") from None
        call_id, frame = _request(self.codec, actor, method, args or {})
        key = id(sock)
        self._inflight[key] = self._inflight.get(key, 0) + 1
        ctx = None
        try:
            ctx = sock.new_context()
            async with asyncio.timeout(timeout):
                await ctx.asend(frame)
                reply = await ctx.arecv()
        except TimeoutError:
            if not sock.pipes:
                raise _no_connection(addr, timeout, self.tls) from None
            raise RpcError("timeout", f"no answer from {addr} within {timeout:g}s") from None
        except pynng.NNGException as e:  # Closed included: the node went while we asked
            raise RpcError("unreachable", f"{addr}: {e}") from None
        finally:
            if ctx is not None:
                with contextlib.suppress(Exception):
                    ctx.close()
            self._release(key)
        return _reply(self.codec, call_id, reply, self.tls is not None)

    def _release(self, key: int) -> None:
        n = self._inflight.get(key, 0) - 1
        if n > 0:
            self._inflight[key] = n
            return
        self._inflight.pop(key, None)
        s = self._retired.pop(key, None)
        if s is not None:
            with contextlib.suppress(Exception):
                s.close()

    def close_revoked(self) -> int:
        """Close our connections to identities revoked since we dialed them."""
        if self.tls is None:
            return 0
        return sum(close_revoked(s, self.tls) for s in list(self._socks.values()))

    def forget(self, addr: str) -> None:
        """Drop the socket to `addr` (a fresh one next time); closed once no call uses it."""
        s = self._socks.pop(addr, None)
        if s is None:
            return
        if self._inflight.get(id(s)):
            self._retired[id(s)] = s
        else:
            with contextlib.suppress(Exception):
                s.close()

    def close(self) -> None:
        for s in [*self._socks.values(), *self._retired.values()]:
            with contextlib.suppress(Exception):
                s.close()
        self._socks.clear()
        self._retired.clear()
