"""Who is calling: an identity is read from a certificate's common name alone, because nng
exposes nothing else of the peer's certificate (no serial, no extension).

CN `node:web-1` is the node web-1; `operator:alice` and `observer:bob` are people or tools.
Node names cannot contain `:`, so an operator can never pass for a node.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NODE, OPERATOR, OBSERVER = "node", "operator", "observer"
ROLES = (NODE, OPERATOR, OBSERVER)
SHARED_SAN = "node.flock"
NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")  # as `flock-node run NAME`  # on every certificate; dialers check it, not the address


@dataclass(frozen=True)
class Caller:
    """The verified party behind a connection: `name` is what it must put as sender
    (a node's name, or the whole CN for anyone else)."""

    role: str
    name: str
    verified: bool = True

    @property
    def cn(self) -> str:
        """The certificate common name this caller was read from."""
        who = self.name.split(":", 1)[1] if self.role != NODE else self.name
        return f"{self.role}:{who}"

    @property
    def node(self) -> str | None:
        """The node this caller is, if it is one."""
        return self.name if self.role == NODE else None


# A caller whose identity nobody checked: shared-key and open modes (every key holder is an
# operator there, as the README says).
UNVERIFIED = Caller(OPERATOR, "", verified=False)


def common_name(role: str, name: str) -> str:
    """The CN of a certificate for `name` in `role`."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    if ":" in name or not name:
        raise ValueError(f"invalid name {name!r}: a name cannot be empty or contain ':'")
    if role == NODE and not NODE_NAME.match(name):
        raise ValueError(f"invalid node name {name!r}: use letters, digits, '.', '_', '-' "
                         "(at most 63, starting with a letter or digit)")
    return f"{role}:{name}"


def parse_cn(cn: str) -> Caller | None:
    """The caller a certificate CN names, or None if it is no flock identity."""
    role, sep, who = cn.partition(":")
    if not sep or role not in ROLES or not who or ":" in who:
        return None
    return Caller(role, who if role == NODE else cn)
