"""Who the console speaks as: the identity and role its calls carry, read from the same
flags the connection uses (a TLS certificate, a flock key, or neither). Known before the first
call, so an observer's console is read-only from its first frame."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flock_node.client import resolve_key, resolve_tls
from flock_node.transport import RpcError
from flock_node.trust.identity import OBSERVER, OPERATOR


@dataclass(frozen=True)
class Identity:
    """`label` names the identity (`operator:alice`, `key holder`, `local`); `role` is what
    the nodes will let it do (None: no roles, local ipc)."""

    label: str
    role: str | None = None
    problem: str = ""  # why the identity could not be read (the connection reports it too)

    @property
    def observer(self) -> bool:
        """Observers only read: the console hides and refuses everything that changes."""
        return self.role == OBSERVER

    def title(self) -> str:
        """`operator:alice (operator)`, `key holder (operator)`, `local`."""
        return f"{self.label} ({self.role})" if self.role else self.label


def identity_of(args: Any) -> Identity:
    """The identity the console's calls will carry, from its flags (never raises)."""
    seeds = list(getattr(args, "seed", None) or [])
    try:
        tls = resolve_tls(getattr(args, "tls_dir", None), seeds)
    except RpcError as e:
        return Identity("no identity", problem=e.message)
    if tls is not None:
        return Identity(tls.me.cn, tls.me.role)
    try:
        key = resolve_key(getattr(args, "key_file", None), bool(getattr(args, "insecure", False)))
    except RpcError as e:
        return Identity("no key", problem=e.message)
    if key is not None:
        # A shared key has no roles: every key holder is an operator (README, Security).
        return Identity("key holder", OPERATOR)
    if any(s.startswith(("tcp://", "tcp4://", "tcp6://")) for s in seeds):
        return Identity("insecure", OPERATOR)
    return Identity("local")
