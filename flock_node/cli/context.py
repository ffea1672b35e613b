"""What a command runs with: the parsed args, the flock client, output, target selection."""

from __future__ import annotations

import argparse
import json
import re
import sys
from fnmatch import fnmatchcase
from typing import Any, TextIO

import msgspec

from flock_node.api import Member, State
from flock_node.cli.args import FAILED, REFUSED, UNREACHABLE, USAGE, CliError
from flock_node.cli.probe import certificate_refused, tls_address
from flock_node.client import Flock, SetupError, env_seeds, resolve_tls
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

    def _connect(self) -> Flock:
        if self._flock is None:
            self._flock = Flock.connect(
                seeds=self.args.seed, runtime_dir=self.args.runtime_dir,
                key_file=self.args.key_file, insecure=self.args.insecure,
                timeout=self.args.connect_timeout, tls_dir=getattr(self.args, "tls_dir", None),
            )
        return self._flock

    @property
    def flock(self) -> Flock:
        try:
            return self._connect()
        except RpcError as e:
            raise self.error(e) from None

    def error(self, e: RpcError, node: str | None = None) -> CliError:
        """The CliError for a failed call (or a failed look for the flock, with `node` the
        one we meant to ask): setup mistakes are usage errors; a TLS node that is there but
        refuses our certificate is a refusal, not an unreachable node."""
        if isinstance(e, SetupError):
            return CliError(e.message, USAGE)
        if e.code in ("unreachable", "timeout"):
            refused = self._refused_certificate(e)
            if refused is not None:
                return CliError(f"{node + ': ' if node else ''}{refused}", REFUSED)
        return _cli_error(e, node)

    def _refused_certificate(self, e: RpcError) -> str | None:
        addr = tls_address(e.message)
        if addr is None:
            return None
        tls = self._flock._rpc.tls if self._flock is not None else None
        if tls is None:
            try:
                tls = resolve_tls(getattr(self.args, "tls_dir", None),
                                  self.args.seed or env_seeds())
            except RpcError:
                return None
        if tls is None or not certificate_refused(addr, tls):
            return None
        return (f"{addr} refused our certificate ({tls.me.cn}, {tls.dir}): the "
                "node is reachable but closes the TLS connection; the certificate is revoked, "
                "expired or from another CA (check --tls-dir)")

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
            # A failure to find the flock is told as the node asked (not an entry point's).
            return self._connect().call(node, actor, method, kw)
        except RpcError as e:
            raise self.error(e, node) from None

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


def node_line(node: str, text: object) -> str:
    """`text` about `node` with one `node: ` in front (an error may already carry it)."""
    s = str(text)
    return s if s.startswith(f"{node}: ") else f"{node}: {s}"


_KEY_HINT = re.compile(r"^the node and this client do not share the same flock key "
                       r"\(check [^)]*\): ")
_REFUSAL = re.compile(r"(\S+) refused our call: (?:\1: )?(?:unauthorized: )?")


def key_mismatch(node: str | None, message: str) -> str:
    """A refused flock key, said once: the node asked, then who refused and why."""
    detail = _REFUSAL.sub(r"\1 refused our call: ", _KEY_HINT.sub("", message))
    where = f"{node}: " if node else ""
    return (f"{where}the flock key does not match ({detail}); check --key-file / "
            "FLOCK_KEY_FILE / --insecure")


def _cli_error(e: RpcError, node: str | None = None) -> CliError:
    where = f"{node}: " if node else ""
    # The node's own words often start with its name: say it once.
    message = e.message
    while node and message.startswith(f"{node}: "):
        message = message[len(node) + 2:]
    if e.code in _UNREACHABLE_CODES:
        return CliError(f"{where}could not be reached ({message})", UNREACHABLE)
    if e.code == "unauthorized":
        # A key that does not match is a connection problem (3); a refusal by role or
        # policy is 4.
        if "flock key" in message:
            return CliError(key_mismatch(node, message), UNREACHABLE)
        return CliError(f"{where}unauthorized: {message}", REFUSED)
    return CliError(f"{where}{e.code}: {message}", FAILED)
