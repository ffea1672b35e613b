"""SWIM wire messages: msgspec Structs in one tagged union, decoded in one place.

Every message names its `sender` (the driver checks it against the connection's verified
identity) and every update names the node it is about, so "a node is believed only about
itself" is checkable: an `Alive` is its node's own statement (`sig` is where the driver puts
that node's signature), while a `Suspect` or `Dead` may come from anyone and its node refutes.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

ALIVE, SUSPECT, DOWN, LEFT = "alive", "suspect", "down", "left"
FORGOTTEN = "forgotten"  # a change only: a down or left member reaped, no longer listed

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=253)]
Count = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


class Alive(msgspec.Struct, frozen=True, array_like=True, tag="a", dict=True):
    """`node` lives at `incarnation`; `record` (the console's facts) at `version`.

    An instance may hold facts computed from its fields in `__dict__` (the simulator keeps
    its digest hash and encoded size there): never encoded, and a frozen Struct's fields
    never change under them."""

    node: Name
    incarnation: Count
    instance: str  # the process behind the name: a restart is another instance
    addr: str
    version: Count = 0
    record: dict[str, Any] | None = None
    sig: bytes = b""


class Suspect(msgspec.Struct, frozen=True, array_like=True, tag="s"):
    """`by` failed to reach `node` at `incarnation`."""

    node: Name
    incarnation: Count
    by: Name


class Dead(msgspec.Struct, frozen=True, array_like=True, tag="d"):
    """`node` is down at `incarnation` (by == node: it left, announced)."""

    node: Name
    incarnation: Count
    by: Name


Update = Alive | Suspect | Dead


class Mark(msgspec.Struct, frozen=True, array_like=True, tag="m", dict=True):
    """A member table entry that is not plainly alive: suspect, down or left (computed facts
    in `__dict__`, as for `Alive`)."""

    node: Name
    state: str
    incarnation: Count
    by: Name
    alive: Alive


Entry = Alive | Mark  # one member as a node sees it; a plain Alive is shared as received


class Ping(msgspec.Struct, frozen=True, array_like=True, tag="ping"):
    sender: Name
    seq: Count
    target: Name  # a restarted or renamed process at that address ignores it
    reply_to: str
    gossip: list[Update] = []


class Ack(msgspec.Struct, frozen=True, array_like=True, tag="ack"):
    sender: Name
    seq: Count
    gossip: list[Update] = []


class Nack(msgspec.Struct, frozen=True, array_like=True, tag="nack"):
    """Lifeguard: the relay is alive but the target did not answer it either."""

    sender: Name
    seq: Count
    gossip: list[Update] = []


class PingReq(msgspec.Struct, frozen=True, array_like=True, tag="preq"):
    sender: Name
    seq: Count
    target: Name
    addr: str  # the target's
    reply_to: str
    gossip: list[Update] = []


class Gossip(msgspec.Struct, frozen=True, array_like=True, tag="g"):
    """Updates alone: a leave is pushed this way, not left to the next probe."""

    sender: Name
    gossip: list[Update] = []


class PushPull(msgspec.Struct, frozen=True, array_like=True, tag="pp"):
    """Anti-entropy: entries of the sender's table (all of it, a page of it, or the buckets
    that differ) and/or its table's `digest`; `reply` is an answer; `summary` lists the
    sender's entries in the buckets that differ (name key and hash each), `want` the name
    keys whose entries the sender asks for (see antientropy.py); `epochs` the digest per
    range of start times of a catch-up exchange (epochs.py)."""

    sender: Name
    reply_to: str
    join: bool
    reply: bool
    states: list[Entry] = []
    digest: Annotated[bytes, msgspec.Meta(max_length=8192)] = b""
    summary: Annotated[bytes, msgspec.Meta(max_length=1 << 20)] = b""
    want: Annotated[bytes, msgspec.Meta(max_length=1 << 20)] = b""
    epochs: Annotated[bytes, msgspec.Meta(max_length=1 << 20)] = b""


Message = Ping | Ack | Nack | PingReq | Gossip | PushPull

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


class BadMessage(ValueError):
    """Bytes that are not one SWIM message."""


def encode(msg: Message | Update | Entry | list[Entry]) -> bytes:
    """Wire bytes of a message (or of updates or entries, to measure them)."""
    return _encoder.encode(msg)


def decode(data: bytes) -> Message:
    """One message from wire bytes; anything else is one `BadMessage`."""
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, RecursionError, OverflowError) as e:
        raise BadMessage(str(e)) from None
