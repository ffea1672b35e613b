"""Who may call what: built-in defaults per role, narrowed or widened by an optional policy
file. Pure: `decide` takes the caller, the call and its arguments and returns a `Decision`.

    # policy.toml (config dir, or --policy FILE); the first rule that matches decides
    [[rule]]
    name = "restarts of db come from web"   # optional; refusals name the rule
    effect = "allow"                        # allow | deny
    who = "web-*"                           # glob on the caller: a node's name, or
                                            # "operator:alice" (default "*")
    role = "node"                           # optional: node | operator | observer
    call = "notify"                         # glob on the method, or "actor.method"
    on = "db-*"                             # glob on the node answering (default "*")
    resource = "execute[restart*]"          # the resource named by the call: * and ?
                                            # only, brackets are literal

    [[rule]]
    effect = "deny"
    call = "notify"
    on = "db-*"
    resource = "execute[restart*]"
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal

import msgspec

from flock_node.trust.identity import NODE, OBSERVER, OPERATOR, Caller

# Calls that change nothing: observers may make them. `audit`, `crl` and `whoami` are the
# trust actor's; `run` and `outbox` read one run and the outbox.
READS = frozenset({"status", "active", "history", "run", "resources", "subscriptions",
                   "members", "outbox", "audit", "crl", "whoami"})
# What a node may do besides reading: what recipes and the agent itself call.
NODE_CALLS = frozenset({"run_chef", "notify", "notify_batch", "subscribe", "unsubscribe"})
# Calls that change something: audited.
CHANGES = frozenset({"run_chef", "notify", "notify_batch", "subscribe", "subscribe_to",
                     "unsubscribe", "retry", "discard", "install_crl"})


class PolicyError(ValueError):
    """A policy file that cannot be used; the message names the file and line."""


class Rule(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    effect: Literal["allow", "deny"]
    name: str = ""
    who: str = "*"
    role: Literal["node", "operator", "observer"] | None = None
    call: str = "*"
    on: str = "*"
    resource: str | None = None
    line: int = 0  # where it starts in the file (filled in by `load`, not written)


class PolicyFile(msgspec.Struct, forbid_unknown_fields=True):
    rule: list[Rule] = []


@dataclass(frozen=True)
class Decision:
    allowed: bool
    why: str  # the rule or default that decided, in words


@dataclass
class Policy:
    rules: list[Rule]
    source: str = ""  # the file, for the words of a refusal

    def decide(self, caller: Caller, node: str, actor: str, method: str,
               resource: str | None = None) -> Decision:
        """May `caller` call `actor.method` on `node` (about `resource`)?"""
        for i, r in enumerate(self.rules):
            if _matches(r, caller, node, actor, method, resource):
                label = (f"rule {r.name!r}" if r.name else f"rule {i + 1}") + (
                    f" ({self.source} line {r.line})" if self.source else "")
                return Decision(r.effect == "allow", label)
        return default_decision(caller, method)


def _matches(r: Rule, caller: Caller, node: str, actor: str, method: str,
             resource: str | None) -> bool:
    if r.role is not None and r.role != caller.role:
        return False
    if not fnmatchcase(caller.name, r.who):
        return False
    if not (fnmatchcase(method, r.call) or fnmatchcase(f"{actor}.{method}", r.call)):
        return False
    if not fnmatchcase(node, r.on):
        return False
    return r.resource is None or (resource is not None and resource_glob(resource, r.resource))


def resource_glob(resource: str, pattern: str) -> bool:
    """`*` and `?` only: brackets are part of resource ids (`execute[restart*]`), not a
    character class as in fnmatch."""
    rx = "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
    return re.fullmatch(rx, resource, re.DOTALL) is not None


_ALLOWED = {r: Decision(True, f"the default for role {r}") for r in (NODE, OPERATOR, OBSERVER)}


def default_decision(caller: Caller, method: str) -> Decision:
    """The built-in defaults: observer reads, node reads and does its own part, operator all."""
    if caller.role == OPERATOR or method in READS or (
            caller.role == NODE and method in NODE_CALLS):
        return _ALLOWED[caller.role]
    why = f"the default for role {caller.role}"
    if caller.role == OBSERVER:
        return Decision(False, f"{why} (observers only read)")
    return Decision(False, why)


DEFAULT = Policy([])


def load(path: Path) -> Policy:
    """Read and validate a policy file; PolicyError names the line of a mistake."""
    try:
        text = path.read_text()
    except OSError as e:
        raise PolicyError(f"cannot read policy file {path}: {e.strerror}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(f"{path}: {e}") from None
    starts = [i + 1 for i, ln in enumerate(text.splitlines())
              if re.match(r"\s*\[\[\s*rule\s*\]\]", ln)]
    try:
        parsed = msgspec.convert(raw, PolicyFile)
    except msgspec.ValidationError as e:
        m = re.search(r"\$\.rule\[(\d+)\]", str(e))
        where = ""
        if m and int(m.group(1)) < len(starts):
            n = int(m.group(1))
            where = f" line {starts[n]} (rule {n + 1})"
        raise PolicyError(f"{path}{where}: {e}") from None
    for i, r in enumerate(parsed.rule):
        r.line = starts[i] if i < len(starts) else 0
    return Policy(parsed.rule, str(path))


def resource_of(method: str, args: dict[str, Any]) -> str | None:
    """The resource a call is about, for rules that name one."""
    v = args.get("resource")
    return v if isinstance(v, str) else None
