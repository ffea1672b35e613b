"""Addresses (ipc, tcp, tls+tcp), the runtime dir's name locks, listening, and `RpcError`."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import random
import socket as _socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pynng

from flock_node.protocol import (
    Envelope,
    Request,
    Response,
)
from flock_node.transport.tls import (
    is_tls,
    need_tls,
    tls_endpoint,
)
from flock_node.trust.identity import Caller
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


def ipc_addresses(runtime_dir: Path, node: str) -> tuple[str, str]:
    return f"ipc://{runtime_dir / (node + '.bus')}", f"ipc://{runtime_dir / (node + '.rpc')}"


def swim_for_bus(bus: str) -> str:
    """The SWIM address that goes with a bus address: PORT+2 on tcp, NAME.swim on ipc."""
    return _beside(bus, ".swim", 2, "SWIM")


def tcp_addresses(listen: str) -> tuple[str, str]:
    """`tcp://HOST:PORT` (or `tls+tcp://`) → bus on PORT, RPC on PORT+1 (SWIM takes PORT+2)."""
    scheme, sep, hostport = listen.partition("://")
    if not sep or scheme not in ("tcp", "tls+tcp"):
        raise ValueError(f"--listen must look like tcp://HOST:PORT or tls+tcp://HOST:PORT, "
                         f"got {listen!r}")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"--listen must look like {scheme}://HOST:PORT, got {listen!r}")
    p = int(port)
    if not 0 < p < 65534:  # PORT+2 is SWIM's
        raise ValueError(f"port out of range in {listen!r}")
    return f"{scheme}://{host}:{p}", f"{scheme}://{host}:{p + 1}"


def rpc_for_bus(bus: str) -> str:
    """The RPC address that goes with a bus address (seeds name only the bus)."""
    return _beside(bus, ".rpc", 1, "RPC")


def _beside(bus: str, suffix: str, offset: int, what: str) -> str:
    """The address listening beside a bus address: NAME`suffix` on ipc, PORT+`offset` on tcp."""
    if bus.startswith("ipc://") and bus.endswith(".bus"):
        return bus[: -len(".bus")] + suffix
    if bus.startswith(("tcp://", "tls+tcp://")):
        scheme, _, hostport = bus.partition("://")
        host, _, port = hostport.rpartition(":")
        return f"{scheme}://{host}:{int(port) + offset}"
    raise ValueError(f"cannot tell the {what} address for {bus!r}")


def free_bus_port(host: str = "127.0.0.1") -> int:
    """A port P free on `host` with the RPC and SWIM ports beside it (P+1, P+2) free too: for
    `--listen tcp://HOST:P` in tests, benchmarks and throw-away flocks.

    Drawn below the kernel's ephemeral range when there is room: a port the kernel hands out
    could go to any outgoing connection between this check and the agent's bind (in a busy
    test run one took a P+2 so). Never three ports that overlap ones handed out before in
    this process (an agent given them may not listen yet)."""
    lo = _ephemeral_start()
    for _ in range(200):
        if lo > _LOW + 3000:
            p = _rng.randrange(_LOW, lo - 3)
        else:  # no room below: a port the kernel picks, as it picks them
            with _socket.socket() as s:
                s.bind((host, 0))
                p = int(s.getsockname()[1])
        if p >= 65533 or not _handed.isdisjoint(range(p - 2, p + 3)):
            continue
        try:
            with _socket.socket() as s0, _socket.socket() as s1, _socket.socket() as s2:
                s0.bind((host, p))
                s1.bind((host, p + 1))
                s2.bind((host, p + 2))
        except OSError:
            continue
        _handed.add(p)
        return p
    raise RuntimeError(f"no three free ports in a row on {host}")


_LOW = 20000  # below: ports services commonly listen on
_handed: set[int] = set()
_rng = random.Random()


def _ephemeral_start() -> int:
    """Where the kernel's range of ports for outgoing connections starts (Linux), else 65536."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 65536


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
            for suffix in (".bus", ".rpc", ".swim"):
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


# What each of an agent's listeners is, and its port's place after --listen's PORT.
LISTENERS = {"bus": ("bus", 0), "rpc": ("RPC", 1), "swim": ("SWIM membership", 2)}


def in_use(addr: str, what: str) -> str:
    """The one line saying that `addr`, which our `what` listener needs, is taken."""
    label, k = LISTENERS.get(what, (what, 0))
    where = f" ({label}, PORT{f'+{k}' if k else ''} of --listen)" if what else ""
    return (f"cannot listen on {addr}{where}: the address is already in use by another agent "
            "or program; choose another --listen port (an agent listens on PORT, PORT+1 and "
            "PORT+2)")


def _listen(sock: pynng.Socket, addr: str, tls: TlsIdentity | None = None,
            what: str = "") -> None:
    """Listen on `addr`; `what` (a key of LISTENERS) names the listener in errors."""
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
        raise AddressInUse(errno.EADDRINUSE, in_use(addr, what)) from None
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


Handler = Callable[[Request, Envelope, Caller], Awaitable[Response]]


async def receive(src: Any, what: str) -> pynng.Message | None:
    """The next message from a socket or context, None once it is closed; nng's passing
    errors are logged and skipped."""
    while True:
        try:
            msg: pynng.Message = await src.arecv_msg()
            return msg
        except pynng.Closed:
            return None
        except pynng.NNGException as e:
            log.debug("%s receive: %s", what, e)
