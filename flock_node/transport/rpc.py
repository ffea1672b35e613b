"""`AsyncRpc` / `SyncRpc`: Req0 clients with deadlines; errors come back as `RpcError`."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import msgspec
import pynng

from flock_node import trace
from flock_node.protocol import (
    MAX_FRAME,
    Codec,
    Error,
    FrameError,
    Request,
    Response,
)
from flock_node.transport.base import RpcError, ipc_path
from flock_node.transport.pool import Pool
from flock_node.transport.server import _frame_limit
from flock_node.transport.tls import (
    close_revoked,
    dial,
    guard_pipes,
    is_tls,
    peer_cn,
)
from flock_node.trust.identity import NODE, parse_cn
from flock_node.trust.tls import TlsIdentity

log = logging.getLogger("flock.transport")

NOT_SENT = "not_sent"  # call_now: nothing was sent (no connection yet), the loop sends it


# Call ids: a random prefix per process and a counter. Unique across restarts (the prefix),
# and no os.urandom per call: that syscall lets the GIL go, and winning it back from a busy
# thread cost 60-90 µs a call on the agent's loop.
_CALL_IDS = itertools.count()
_CALL_PREFIX = uuid.uuid4().hex[:16]


def call_id() -> str:
    """A fresh call id, unique across processes and restarts."""
    return f"{_CALL_PREFIX}{next(_CALL_IDS):x}"


def _request(codec: Codec, actor: str, method: str, args: dict[str, Any],
             to: str | None = None) -> tuple[str, bytes]:
    """A fresh call id and the signed frame of the call, naming the node `to` when known."""
    call_id_ = call_id()
    frame = codec.encode(Request(call_id_, actor, method, args, to=to or ""))
    if len(frame) > MAX_FRAME:  # the node would drop it unanswered: say why, send nothing
        raise RpcError("too_large", f"{actor}.{method}: request of {len(frame)} bytes exceeds "
                                    f"{_frame_limit()}; send less at once")
    return call_id_, frame


def _check_peer(tls: TlsIdentity | None, pipe: Any, addr: str, expect: str | None) -> None:
    """On TLS, the answer must come from the node we meant to ask: any node's certificate
    passes the handshake, so an address that points at another node (a stale or forged
    member entry) would otherwise answer in that node's name."""
    if tls is None or expect is None or not is_tls(addr):
        return
    who = parse_cn(peer_cn(pipe) or "") if pipe is not None else None
    if who is None or who.role != NODE or who.name != expect:
        said = "no verified identity" if who is None else (
            f"node:{who.name}" if who.role == NODE else who.name)
        raise RpcError("wrong_node", f"{addr} answered as {said}, not as node {expect}; "
                                     "its answer was dropped")


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
    """Blocking Req0 client: one socket per address, one context per call (thread-safe);
    at most `max_connections` sockets (FLOCK_RPC_CONNECTIONS, 64), least recently used
    closed first."""

    def __init__(self, codec: Codec, timeout: float = 5.0, tls: TlsIdentity | None = None,
                 max_connections: int | None = None):
        self.codec = codec
        self.tls = tls
        self.timeout = timeout
        self._socks: Pool[tuple[str, float], pynng.Req0] = Pool(max_connections)
        self._lock = threading.Lock()

    def connections(self) -> int:
        """Sockets open (each holds one connection to its node once dialled)."""
        return len(self._socks)

    def _sock(self, addr: str, timeout: float) -> pynng.Req0:
        key = (addr, timeout)
        local = ipc_path(addr) is not None
        with self._lock:
            s = self._socks.get(key)
            if s is not None and local and not s.pipes:
                # The local node went away (kill -9, restart): dial afresh, below.
                self._socks.forget(key)
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
                self._socks.add(key, s)
            self._socks.use(s)  # before the lock goes: not closed by another thread's add
            return s

    def call(self, addr: str, actor: str, method: str, args: dict[str, Any] | None = None,
             timeout: float | None = None, expect: str | None = None) -> Any:
        """Call `actor.method` at `addr`; `expect` is the node meant: the call names it, and
        on TLS it must be the node that answers."""
        timeout = self.timeout if timeout is None else timeout
        _check_reachable(addr)
        sock = self._sock(addr, timeout)
        ctx = None
        try:
            call_id, frame = _request(self.codec, actor, method, args or {}, expect)
            ctx = sock.new_context()
            ctx.send(frame)
            answer = ctx.recv_msg()
            reply, pipe = answer.bytes, answer.pipe
        except pynng.Timeout:
            if not sock.pipes:
                raise _no_connection(addr, timeout, self.tls) from None
            raise RpcError("timeout", f"no answer from {addr} within {timeout:g}s") from None
        except pynng.NNGException as e:
            raise RpcError("unreachable", f"{addr}: {e}") from None
        finally:
            # forget() may have closed the socket under this call (its node went down): the
            # context went with it, and that must not turn "unreachable" into a crash.
            if ctx is not None:
                with contextlib.suppress(pynng.NNGException):
                    ctx.close()
            self._socks.done(sock)
        _check_peer(self.tls, pipe, addr, expect)
        return _reply(self.codec, call_id, reply, self.tls is not None)

    def close(self) -> None:
        with self._lock:
            self._socks.close()


class Sent(NamedTuple):
    """A call handed to nng by `AsyncRpc.send_now`, its answer still to come."""

    ctx: Any  # pynng.Context
    call_id: str
    addr: str
    timeout: float
    sock: Any = None  # its socket, busy in the fast path's pool until the answer


@contextlib.contextmanager
def _answer_of(sent: Sent) -> Iterator[None]:
    """Waiting for `sent`'s answer: a timeout or a closed socket is an RpcError naming the
    node; the call's context is closed either way."""
    try:
        yield
    except (pynng.Timeout, TimeoutError):
        raise RpcError("timeout", f"no answer from {sent.addr} within "
                                  f"{sent.timeout:g}s") from None
    except pynng.NNGException as e:  # Closed included: forgotten while we asked
        raise RpcError("unreachable", f"{sent.addr}: {e}") from None
    finally:
        with contextlib.suppress(Exception):
            sent.ctx.close()


class AsyncRpc:
    """Asyncio Req0 client for the agent and the console.

    A socket forgotten (its node went down) while calls are in flight on it is closed when the
    last of them ends: closing it under them would turn an ordinary "unreachable" into an
    exception from deep inside pynng. At most `max_connections` sockets are kept
    (FLOCK_RPC_CONNECTIONS, 64), the least recently used closed first (`pool.Pool`)."""

    def __init__(self, codec: Codec, timeout: float = 5.0, tls: TlsIdentity | None = None,
                 max_connections: int | None = None):
        self.codec = codec
        self.tls = tls
        self.timeout = timeout
        self._socks: Pool[str, pynng.Req0] = Pool(max_connections)
        # The worker's fast path (`call_now`): blocking sockets of its own, one per address,
        # bounded as the others.
        self._now: Pool[str, pynng.Req0] = Pool(max_connections)
        self._now_lock = threading.Lock()

    def _sock(self, addr: str) -> pynng.Req0:
        s = self._socks.get(addr)
        if s is None:
            s = pynng.Req0(recv_max_size=MAX_FRAME)
            s.recv_timeout = 600_000
            s.send_timeout = 600_000
            s.resend_time = 5000
            guard_pipes(s, self.tls, nodes_only=True)
            try:
                dial(s, addr, self.tls)
            except pynng.NNGException:
                s.close()
                raise
            self._socks.add(addr, s)
        return s

    def connections(self) -> int:
        """Sockets open for `call` (each holds one connection to its node once dialled)."""
        return len(self._socks)

    async def call(self, addr: str, actor: str, method: str, args: dict[str, Any] | None = None,
                   timeout: float | None = None, expect: str | None = None,
                   sent: Callable[[], None] | None = None) -> Any:
        """Call `actor.method` at `addr`; `expect` is the node meant: the call names it, and
        on TLS it must be the node that answers; `sent()` is called once the request is
        handed to nng."""
        timeout = self.timeout if timeout is None else timeout
        _check_reachable(addr)
        try:
            sock = self._sock(addr)
        except pynng.NNGException as e:
            raise RpcError("unreachable", f"{addr}: {e}") from None
        call_id, frame = _request(self.codec, actor, method, args or {}, expect)
        self._socks.use(sock)
        ctx = None
        try:
            ctx = sock.new_context()
            async with asyncio.timeout(timeout):
                trace.stamp("call_sending")
                if sent is not None:
                    # Runs as soon as this task yields inside asend, i.e. once nng has the
                    # request, without waiting for the send's completion to come back.
                    asyncio.get_running_loop().call_soon(sent)
                await ctx.asend(frame)
                trace.stamp("call_sent")
                answer = await ctx.arecv_msg()
                trace.stamp("call_answered")
                reply, pipe = answer.bytes, answer.pipe
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
            self._socks.done(sock)
        _check_peer(self.tls, pipe, addr, expect)
        return _reply(self.codec, call_id, reply, self.tls is not None)

    def send_now(self, addr: str, actor: str, method: str, args: dict[str, Any],
                 timeout: float, to: str | None = None) -> Sent:
        """Hand a call to nng from a thread that is not the loop's (the worker's fast path),
        on a socket kept for it, without waiting for the answer: `answer(sent)` awaits that
        on the loop. Raises RpcError NOT_SENT, with nothing sent, while that socket has no
        connection yet (it dials in the background), or when nng does not take the call.
        `to`: the node the call is for (named in the signed request)."""
        with self._now_lock:
            s = self._now.get(addr)
            if s is None:
                s = pynng.Req0(recv_max_size=MAX_FRAME)
                # Before contexts: a context copies them when it is created.
                s.recv_timeout = s.send_timeout = int(timeout * 1000)
                s.resend_time = 600_000  # the caller retries through the loop, not nng
                guard_pipes(s, self.tls, nodes_only=True)
                try:
                    dial(s, addr, self.tls)
                except pynng.NNGException as e:
                    s.close()
                    raise RpcError(NOT_SENT, f"{addr}: {e}") from None
                self._now.add(addr, s)
            self._now.use(s)  # until its answer: never closed under it by the bound
        ctx = None
        try:
            if not s.pipes:
                raise RpcError(NOT_SENT, f"no connection to {addr} yet")
            call_id_, frame = _request(self.codec, actor, method, args, to)
            ctx = s.new_context()
            trace.stamp("call_sending")
            ctx.send(frame)
        except pynng.NNGException as e:  # closed (forgotten) meanwhile, or no room
            if ctx is not None:
                with contextlib.suppress(Exception):
                    ctx.close()
            self._now.done(s)
            raise RpcError(NOT_SENT, f"{addr}: {e}") from None
        except RpcError:
            self._now.done(s)
            raise
        return Sent(ctx, call_id_, addr, timeout, s)

    def answer_now(self, sent: Sent, expect: str | None = None) -> Any:
        """The answer to a call handed over by `send_now`, waited for on this thread."""
        try:
            with _answer_of(sent):
                answer = sent.ctx.recv_msg()
        finally:
            self._now.done(sent.sock)
        return self._accept(sent, answer, expect)

    async def answer(self, sent: Sent, expect: str | None = None) -> Any:
        """The answer to a call handed over by `send_now` (on the loop)."""
        try:
            with _answer_of(sent):
                async with asyncio.timeout(sent.timeout):
                    answer = await sent.ctx.arecv_msg()
        finally:
            self._now.done(sent.sock)
        return self._accept(sent, answer, expect)

    def _accept(self, sent: Sent, answer: pynng.Message, expect: str | None) -> Any:
        trace.stamp("call_answered")
        _check_peer(self.tls, answer.pipe, sent.addr, expect)
        return _reply(self.codec, sent.call_id, answer.bytes, self.tls is not None)

    def close_revoked(self) -> int:
        """Close our connections to identities revoked since we dialed them."""
        if self.tls is None:
            return 0
        return sum(close_revoked(s, self.tls)
                   for s in [*self._socks.sockets(), *self._now.sockets()])

    def forget(self, addr: str) -> None:
        """Drop the socket to `addr` (a fresh one next time); closed once no call uses it."""
        with self._now_lock:
            now = self._now.pop(addr)
        if now is not None:  # a blocking call on it ends with "unreachable"
            with contextlib.suppress(Exception):
                now.close()
        self._socks.forget(addr)

    def close(self) -> None:
        self._now.close()
        self._socks.close()
