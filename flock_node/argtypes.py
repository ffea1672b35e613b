"""Value checks shared by `flock-node` and `flockctl`'s command lines.

Outside the `flock_node.cli` package on purpose: importing anything from that package runs
its `__init__`, which loads every flockctl command (the CA's among them, and with it
`cryptography`, 11 MB), none of which an agent needs.
"""

from __future__ import annotations

import argparse

from flock_node.transport import rpc_for_bus, tcp_addresses


def seed_url(text: str) -> str:
    """A --seed: the bus address of a node, tcp://HOST:PORT or ipc://PATH.bus."""
    try:
        if text.startswith(("tcp://", "tls+tcp://")):
            tcp_addresses(text)
        else:
            rpc_for_bus(text)
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a node's bus address (tcp://HOST:PORT, tls+tcp://HOST:PORT or "
            "ipc://PATH.bus)"
        ) from None
    return text


def positive_seconds(text: str) -> float:
    """A number of seconds above 0 (and finite)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive number of seconds")
    return v


def seconds_or_zero(text: str) -> float:
    """A number of seconds, 0 allowed (a splay)."""
    if text.strip() in ("0", "0.0"):
        return 0.0
    return positive_seconds(text)
