"""Tell a refused certificate from an unreachable node after a TLS call failed.

nng reports neither: a dialer whose certificate the node refuses (another CA, expired, or
revoked: the node closes the connection right after the handshake) just never gets a
connection, exactly as when nobody listens. So, after the fact, flockctl looks once: a plain
TCP connect tells whether the node is there; a TLS dial with our certificate then tells
whether it keeps us (checked here: another CA fails at the handshake, a revoked certificate
gets a connection the node closes within milliseconds).
"""

from __future__ import annotations

import re
import socket
import threading
import time
from urllib.parse import urlsplit

import pynng

from flock_node.transport.tls import dial
from flock_node.trust.tls import TlsIdentity

# The address in the transport's "cannot connect to X within" / "no answer from X within".
_TLS_ADDR = re.compile(r"(tls\+tcp://[^\s)]+?)(?= within|[\s)]|$)")
HANDSHAKE_WAIT = 1.0  # for the TLS connection, once TCP connected
KEPT_FOR = 0.3  # a refused identity's connection is closed well within this


def tls_address(message: str) -> str | None:
    """The tls+tcp:// address an unreachable/timeout message names, if any."""
    m = _TLS_ADDR.search(message)
    return m.group(1) if m else None


def tcp_open(addr: str, timeout: float = 1.0) -> bool:
    """Does anything accept a TCP connection at `addr`'s host and port?"""
    u = urlsplit(addr)
    if u.hostname is None or u.port is None:
        return False
    try:
        with socket.create_connection((u.hostname, u.port), timeout=timeout):
            return True
    except OSError:
        return False


def certificate_refused(addr: str, tls: TlsIdentity) -> bool:
    """True if the node at `addr` is there but does not keep a TLS connection with our
    certificate (refused at or right after the handshake); False if it is unreachable or
    keeps us (then the first error stands)."""
    if not tcp_open(addr):
        return False
    up, down = threading.Event(), threading.Event()
    with pynng.Req0() as s:
        # Callbacks run on nng threads: they only set events.
        s.add_post_pipe_connect_cb(lambda _p: up.set())
        s.add_post_pipe_remove_cb(lambda _p: down.set())
        try:
            dial(s, addr, tls, block=False)
        except pynng.NNGException:
            return False
        if not up.wait(HANDSHAKE_WAIT):
            return True  # TCP is open but no TLS connection: the handshake failed
        deadline = time.monotonic() + KEPT_FOR
        while time.monotonic() < deadline:
            if down.is_set() or not s.pipes:
                return True
            time.sleep(0.02)
        return False
