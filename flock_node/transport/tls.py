"""The TLS part of the transport: the one place that reads nng's TLS options.

Listeners and dialers get our TLS configuration before they start; each connection passes
the gate (a flock identity, not revoked) as it connects; the verified caller of a pipe is read
once from its certificate's common name (all nng exposes of it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import pynng

from flock_node.protocol import Codec, Envelope
from flock_node.trust.identity import NODE, UNVERIFIED, Caller, parse_cn
from flock_node.trust.tls import TlsIdentity

log = logging.getLogger("flock.transport")


def is_tls(addr: str) -> bool:
    """A `tls+tcp://` address."""
    return addr.startswith("tls+tcp://")



def need_tls(tls: TlsIdentity | None, addr: str) -> TlsIdentity:
    if tls is None:
        raise pynng.NNGException(f"{addr} needs a TLS identity (--tls-dir)", pynng.lib.NNG_EINVAL)
    return tls


def peer_cn(pipe: pynng.Pipe) -> str | None:
    """The verified certificate common name of a TLS connection's peer (None if not TLS or
    not verified). pynng has only private helpers for it: wrapped here, once."""
    from pynng.options import _getopt_bool, _getopt_string

    try:
        if not _getopt_bool(pipe, "tls-verified"):
            return None
        return str(_getopt_string(pipe, "tls-peer-cn"))
    except pynng.NNGException:
        return None


def tls_endpoint(sock: pynng.Socket, addr: str, tls: TlsIdentity, listen: bool,
                  block: bool = False) -> Any:
    """A listener or dialer with our TLS configuration, set before it starts (pynng's own
    listen/dial start at once, and a socket-wide configuration cannot be server and client)."""
    from pynng import ffi, lib
    from pynng.nng import Dialer, Listener, check_err, to_char

    if listen:
        lp = ffi.new("nng_listener *")
        check_err(lib.nng_listener_create(lp, sock.socket, to_char(addr)))
        ep: Any = Listener(lp, sock)
        ep.tls_config = tls.config(server=True)
        check_err(lib.nng_listener_start(lp[0], 0))
        sock._listeners[lib.nng_listener_id(lp[0])] = ep
    else:
        dp = ffi.new("nng_dialer *")
        check_err(lib.nng_dialer_create(dp, sock.socket, to_char(addr)))
        ep = Dialer(dp, sock)
        ep.tls_config = tls.config(server=False)
        check_err(lib.nng_dialer_start(dp[0], 0 if block else lib.NNG_FLAG_NONBLOCK))
        sock._dialers[lib.nng_dialer_id(dp[0])] = ep
    return ep


def dial(sock: pynng.Socket, addr: str, tls: TlsIdentity | None = None,
         block: bool = False) -> Any:
    """Dial `addr` (with our TLS identity for `tls+tcp://`)."""
    if is_tls(addr):
        return tls_endpoint(sock, addr, need_tls(tls, addr), listen=False, block=block)
    return sock.dial(addr, block=block)


def guard_pipes(sock: pynng.Socket, tls: TlsIdentity | None, nodes_only: bool = False) -> None:
    """Refuse, as they connect, TLS peers that are no flock identity or are revoked (and,
    for `nodes_only`, anyone but a node: a client must be answered by a node)."""
    if tls is None:
        return

    def check(pipe: pynng.Pipe) -> None:
        cn = peer_cn(pipe)
        who = parse_cn(cn) if cn else None
        if not tls.gate.allows(cn) or who is None or (nodes_only and who.role != NODE):
            log.warning("refused a connection from %s", cn or "a peer without a certificate")
            # Closing in the pre-connect callback is how nng rejects a pipe.
            with contextlib.suppress(pynng.NNGException):
                pipe.close()

    sock.add_pre_pipe_connect_cb(check)


def close_revoked(sock: pynng.Socket, tls: TlsIdentity) -> int:
    """Close the connections of peers the gate no longer allows; how many. Called on the
    loop, never from an nng callback (nng #1247)."""
    n = 0
    for pipe in list(sock.pipes):
        cn = peer_cn(pipe)
        if cn is not None and not tls.gate.allows(cn):
            with contextlib.suppress(pynng.NNGException):
                pipe.close()
            n += 1
    return n


class Callers:
    """The verified caller of each pipe, read once per pipe; None where no TLS is used."""

    def __init__(self, tls: TlsIdentity | None):
        self.tls = tls
        self._by_pipe: dict[int, tuple[Caller, str] | None] = {}

    def of(self, pipe: pynng.Pipe | None) -> Caller | None:
        if self.tls is None:
            return UNVERIFIED
        if pipe is None:
            return None
        try:
            got = self._by_pipe[pipe.id]
        except KeyError:
            cn = peer_cn(pipe)
            who = parse_cn(cn) if cn and self.tls.gate.allows(cn) else None
            got = (who, cn) if who is not None and cn else None
            if len(self._by_pipe) > 4096:
                self._by_pipe.clear()
            self._by_pipe[pipe.id] = got
        if got is None or got[1] in self.tls.gate.revoked:  # revoked since it connected
            return None
        return got[0]

    def forget(self, pipe_id: int) -> None:
        self._by_pipe.pop(pipe_id, None)


class VerifiedListener:
    """A listening socket whose frames `codec` decodes and whose callers are read from their
    certificates once per pipe (the RPC server and the SWIM datagrams)."""

    def __init__(self, codec: Codec, tls: TlsIdentity | None, sock: pynng.Socket) -> None:
        self.codec = codec
        self.tls = tls
        self.sock = sock
        self._callers = Callers(tls)

    def forget_closed_pipes(self, loop: asyncio.AbstractEventLoop) -> None:
        """Drop a pipe's caller when nng removes the pipe (on TLS only: else none is kept)."""
        if self.tls is None:
            return

        def removed(pipe: pynng.Pipe) -> None:  # an nng thread: never touch sockets here
            if not loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(self._callers.forget, pipe.id)

        self.sock.add_post_pipe_remove_cb(removed)


def count_drop(codec: Codec, reason: str) -> None:
    codec.dropped[reason] = codec.dropped.get(reason, 0) + 1


def spoke_for_itself(callers: Callers, codec: Codec, env: Envelope,
                     pipe: pynng.Pipe | None) -> bool:
    """On TLS, only a node speaks on the bus or in SWIM, and only in its own name: anything
    else is dropped and counted."""
    caller = callers.of(pipe)
    if caller is None or caller.role != NODE:
        count_drop(codec, "not_a_node" if caller is not None else "unauthorized")
        return False
    if env.sender != caller.name:
        count_drop(codec, "sender_mismatch")
        log.debug("frame from %s in the name of %s dropped", caller.name, env.sender)
        return False
    return True
