"""Value checks shared by `flock-node` and `flockctl`'s command lines.

Outside the `flock_node.cli` package on purpose: importing anything from that package runs
its `__init__`, which loads every flockctl command (the CA's among them, and with it
`cryptography`, 11 MB), none of which an agent needs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

from flock_node.transport import rpc_for_bus, tcp_addresses

T = TypeVar("T")


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


def parsed(text: str, convert: Callable[[str], T], what: str) -> T:
    """`convert(text)`, or an argparse error saying the text is not `what`."""
    try:
        return convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None


def positive_seconds(text: str) -> float:
    """A number of seconds above 0 (and finite)."""
    v = parsed(text, float, "a number of seconds")
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive number of seconds")
    return v


def whole_number(least: int) -> Callable[[str], int]:
    """A checker of counts on the command line: whole numbers of at least `least`."""

    def parse(text: str) -> int:
        v = parsed(text, int, "a whole number")
        if v < least:
            raise argparse.ArgumentTypeError(f"{text!r}: give a number of at least {least}")
        return v

    return parse


positive_int = whole_number(1)  # --limit, --nodes, --max-parallel...


def seconds_or_zero(text: str) -> float:
    """A number of seconds, 0 allowed (a splay)."""
    if text.strip() in ("0", "0.0"):
        return 0.0
    return positive_seconds(text)
