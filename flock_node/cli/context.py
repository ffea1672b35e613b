"""What a command runs with: the parsed args, the flock client, output, target selection."""

from __future__ import annotations

import argparse
import json
import sys
from fnmatch import fnmatchcase
from typing import Any, TextIO

import msgspec

from flock_node.api import Member, State
from flock_node.cli.args import FAILED, REFUSED, UNREACHABLE, CliError
from flock_node.client import Flock
from flock_node.transport import RpcError

_UNREACHABLE_CODES = {"unreachable", "timeout", "unknown_node"}


def is_group(target: str) -> bool:
    """A TARGET naming several nodes: a glob (`web-*`) or a tag (`tag:web`)."""
    return target.startswith("tag:") or any(ch in target for ch in "*?[")


def select(nodes: list[Member], target: str) -> list[str]:
    """Names of `nodes` a group TARGET matches."""
    if target.startswith("tag:"):
        tag = target[len("tag:"):]
        return [n.name for n in nodes if tag in n.tags]
    return [n.name for n in nodes if fnmatchcase(n.name, target)]


def as_members(rows: list[dict[str, Any]]) -> list[Member]:
    """The flock's member list as the typed view the CLI formats (the wire's maps, checked
    against the contract in one step)."""
    try:
        return msgspec.convert(rows, list[Member])
    except msgspec.ValidationError as e:
        raise CliError(f"a node described the flock in a form this flockctl cannot read ({e}); "
                       "is it another version of flock?", FAILED) from None


def gone(m: Member) -> bool:
    """Left or down: not a node a command can reach now."""
    return m.state in (State.LEFT, State.DOWN)


class Ctx:
    def __init__(self, args: argparse.Namespace, out: TextIO | None = None) -> None:
        self.args = args
        self.out = out or sys.stdout
        self._flock: Flock | None = None

    @property
    def flock(self) -> Flock:
        if self._flock is None:
            try:
                self._flock = Flock.connect(
                    seeds=self.args.seed, runtime_dir=self.args.runtime_dir,
                    key_file=self.args.key_file, insecure=self.args.insecure,
                    timeout=self.args.connect_timeout, tls_dir=getattr(self.args, "tls_dir", None),
                )
            except RpcError as e:
                raise _cli_error(e) from None
        return self._flock

    def print(self, *a: Any) -> None:
        print(*a, file=self.out, flush=True)

    def emit_json(self, obj: Any) -> None:
        if getattr(self.args, "json_lines", False):  # a macro's steps: one document a line
            self.print(json.dumps(obj, sort_keys=True, default=str))
        else:
            self.print(json.dumps(obj, indent=2, sort_keys=True, default=str))

    def emitted(self, obj: Any) -> bool:
        """With --json: print `obj` as the answer and say so (the command is done)."""
        if self.args.json:
            self.emit_json(obj)
        return bool(self.args.json)

    def call(self, node: str, actor: str, method: str, /, **kw: Any) -> Any:
        try:
            return self.flock.call(node, actor, method, kw)
        except RpcError as e:
            raise _cli_error(e, node) from None

    def members(self) -> list[Member]:
        """Every known node, as `api.Member`s."""
        return as_members(self.flock.nodes())

    def targets(self, pattern: str) -> list[str]:
        nodes = self.members()
        if is_group(pattern):
            names = select([n for n in nodes if not gone(n)], pattern)
            if not names:
                raise CliError(f"no live node matches {pattern!r}", UNREACHABLE)
            return names
        if not any(n.name == pattern for n in nodes):
            raise CliError(f"node {pattern!r} could not be reached: not in the flock "
                           f"(known: {', '.join(n.name for n in nodes) or 'none'})",
                           UNREACHABLE)
        return [pattern]

    def close(self) -> None:
        if self._flock is not None:
            self._flock.close()


def _cli_error(e: RpcError, node: str | None = None) -> CliError:
    where = f"{node}: " if node else ""
    if e.code in _UNREACHABLE_CODES:
        return CliError(f"{where}could not be reached ({e.message})", UNREACHABLE)
    if e.code == "unauthorized":
        # A key that does not match is a connection problem (3); a refusal by role or
        # policy is 4.
        key = "flock key" in e.message
        return CliError(f"{where}{'' if key else 'unauthorized: '}{e.message}",
                        UNREACHABLE if key else REFUSED)
    return CliError(f"{where}{e.code}: {e.message}", FAILED)
