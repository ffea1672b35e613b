"""systemd's readiness protocol (sd_notify): one datagram of `KEY=value` lines to the
AF_UNIX socket named by `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace).

No libsystemd: the protocol is a plain datagram. Outside systemd there is no socket and every
call is a no-op. `take_socket()` reads the variable once and removes it from the environment,
so the commands a recipe runs do not inherit it (only the agent speaks for the service).
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("flock.sdnotify")

_socket: str | None = None
_taken = False


def address(value: str | None) -> str | None:
    """The socket address for a `$NOTIFY_SOCKET` value: `@name` is abstract (a leading NUL);
    anything but an absolute path or `@name` is not ours to use."""
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def take_socket() -> None:
    """Read `$NOTIFY_SOCKET` once and unset it, before any child process is started."""
    global _socket, _taken
    _socket = address(os.environ.pop("NOTIFY_SOCKET", None))
    _taken = True


def enabled() -> bool:
    """Is there a socket to tell (we run under systemd with Type=notify)?"""
    return (_socket if _taken else address(os.environ.get("NOTIFY_SOCKET"))) is not None


def notify(*fields: str) -> bool:
    """Send `fields` (e.g. "READY=1", "STATUS=...") to systemd; False when not under systemd
    or when the send failed (logged: readiness must never stop the agent)."""
    addr = _socket if _taken else address(os.environ.get("NOTIFY_SOCKET"))
    if addr is None:
        return False
    msg = "\n".join(f.replace("\n", " ") for f in fields).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(msg, addr)
    except OSError as e:
        log.warning("cannot notify systemd at %s: %s", addr.replace("\0", "@"), e)
        return False
    return True
