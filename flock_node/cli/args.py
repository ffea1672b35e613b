"""flockctl's command line: global flags, the commands and their arguments, value checks."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from flock_node import __version__

# The checks flock-node shares (flock_node.cli re-exports them from here).
from flock_node.argtypes import parsed
from flock_node.argtypes import positive_int as positive_int
from flock_node.argtypes import positive_seconds as positive_seconds
from flock_node.argtypes import seconds_or_zero as seconds_or_zero
from flock_node.argtypes import seed_url as seed_url

OK, FAILED, USAGE, UNREACHABLE, REFUSED = 0, 1, 2, 3, 4


STATES = ("active", "idle", "alive", "down")
DEMO_MAX_NODES = 100  # flock_tui.demo starts them all on this machine


class CliError(Exception):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


# Chef's `type[name]` as the engine reads it: a lowercase type, a name in brackets.
RESOURCE_RE = re.compile(r"[a-z_][a-z0-9_]*\[.+\]\Z", re.S)


def resource_id(text: str) -> str:
    """A RESOURCE on the command line, `type[name]`: checked before any call is made."""
    if not RESOURCE_RE.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a resource: write it type[name], e.g. 'execute[restart app]' "
            "or 'file[/etc/app.conf]'")
    return text


def count_between(least: int, most: int) -> Callable[[str], int]:
    """A checker of counts with an upper bound (`demo --nodes`): one usage error, JSON too."""

    def parse(text: str) -> int:
        v = parsed(text, int, "a whole number")
        if not least <= v <= most:
            raise argparse.ArgumentTypeError(f"{text!r}: give a number from {least} to {most}")
        return v

    return parse


def positive_days(text: str) -> float:
    """A certificate's lifetime in days, above 0 (fractions allowed)."""
    v = parsed(text, float, "a number of days")
    if not 0 < v < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive number of days")
    return v


def _global_flags(p: argparse.ArgumentParser, suppress: bool | None) -> None:
    """The flags every command takes. On the commands they default to SUPPRESS, so they may
    stand before or after the command (`flockctl --json nodes` = `flockctl nodes --json`)."""
    d = (lambda v: argparse.SUPPRESS) if suppress else (lambda v: v)
    p.add_argument("--seed", action="append", default=d([]), metavar="URL", type=seed_url,
                   help="bus address of a node (tcp://HOST:PORT); repeatable")
    p.add_argument("--runtime-dir", metavar="DIR", default=d(None),
                   help="where local nodes' sockets are")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--key-file", metavar="FILE", default=d(None),
                   help="the flock key (default: FLOCK_KEY_FILE, then the config dir's)")
    g.add_argument("--insecure", action="store_true", default=d(False),
                   help="no key: talk to nodes started with --insecure")
    p.add_argument("--tls-dir", metavar="DIR", default=d(None),
                   help="mutual TLS with this certificate (ca.crt, identity.crt, identity.key; "
                        "default for tls+tcp:// seeds: FLOCK_TLS_DIR, then <config dir>/tls)")
    p.add_argument("--json", action="store_true", default=d(False),
                   help="machine-readable output")
    p.add_argument("--connect-timeout", type=positive_seconds, default=d(5.0), metavar="S",
                   help="how long to wait for a node's answer (default 5)")
    p.add_argument("--read-only", action="store_true", default=d(False),
                   help="console: hide what changes anything")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flockctl",
        description="Watch and drive a flock of nodes. With no command, open the console.",
    )
    p.add_argument("--version", action="version", version=f"flockctl {__version__}")
    _global_flags(p, None)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    _global_flags(common, True)
    _add = sub.add_parser

    def add_parser(name: str, **kw: Any) -> argparse.ArgumentParser:
        return _add(name, parents=[common], **kw)

    sub.add_parser = add_parser  # type: ignore[method-assign]

    sub.add_parser("nodes", help="list the nodes of the flock")
    s = sub.add_parser("status", help="one node's status")
    s.add_argument("node")
    s = sub.add_parser("run-chef", help="start a converge on TARGET (name, glob or tag:TAG)")
    s.add_argument("target")
    s.add_argument("--wait", action="store_true", help="wait for the runs to finish")
    s.add_argument("--timeout", type=positive_seconds, default=3600.0, metavar="S")
    s.add_argument("--why-run", action="store_true",
                   help="change nothing, send nothing: say what each resource would do and why, "
                   "and which nodes its notifications would reach")
    s.add_argument("--max-parallel", type=positive_int, metavar="N",
                   help="a rolling run: nodes in name order, at most N converging at once")
    s.add_argument("--max-fail", type=positive_int, metavar="K",
                   help="with --max-parallel: start no new node once K have failed (default 1)")
    s = sub.add_parser("active", help="print true/false: is NODE converging")
    s.add_argument("node")
    s = sub.add_parser("resources", help="a node's persisted resources")
    s.add_argument("node")
    s = sub.add_parser("history", help="a node's recent runs")
    s.add_argument("node")
    s.add_argument("--limit", type=positive_int, default=10, metavar="N",
                   help="at most N runs, newest first (default 10)")
    s = sub.add_parser("outbox", help="NODE's remote notifications: pending, failed, dead")
    s.add_argument("node")
    s.add_argument("--status", choices=["held", "pending", "delivered", "failed", "dead"])
    s.add_argument("--limit", type=positive_int, default=50, metavar="N",
                   help="at most N notifications, newest first (default 50)")
    s = sub.add_parser("outbox-discard", help="written `outbox discard NODE (ID... | --dead | "
                       "--failed)`: forget dead-lettered or refused notifications")
    s.add_argument("node")
    s.add_argument("ids", nargs="*", metavar="ID")
    s.add_argument("--dead", action="store_true", help="all dead-lettered ones")
    s.add_argument("--failed", action="store_true", help="all refused ones")
    s = sub.add_parser("retry", help="send NODE's dead-lettered and refused notifications again")
    s.add_argument("node")
    s.add_argument("ids", nargs="*", metavar="ID", help="only these (default: all dead ones)")
    s = sub.add_parser("notify", help="run ACTION on RESOURCE (type[name]) of NODE, out of band")
    s.add_argument("node")
    s.add_argument("resource", type=resource_id)
    s.add_argument("action")
    s = sub.add_parser(
        "subscribe",
        help="NODE's RESOURCE runs ACTION whenever REMOTE_NODE's REMOTE_RESOURCE is updated",
    )
    s.add_argument("node")
    s.add_argument("resource", type=resource_id)
    s.add_argument("action")
    s.add_argument("--to", nargs=2, required=True, metavar=("REMOTE_NODE", "REMOTE_RESOURCE"))
    s = sub.add_parser("subscriptions", help="subscriptions of one node or of all")
    s.add_argument("node", nargs="?")
    s = sub.add_parser("unsubscribe", help="remove subscription ID from NODE")
    s.add_argument("node")
    s.add_argument("id")
    for name, what in (("wait-until", "until"), ("wait-while", "while")):
        s = sub.add_parser(name, help=f"wait {what} every node of TARGET is in STATE")
        s.add_argument("target")
        s.add_argument("state", choices=STATES)
        s.add_argument("--timeout", type=positive_seconds, default=300.0, metavar="S")
        s.add_argument("--interval", type=positive_seconds, default=0.25, metavar="S")
    s = sub.add_parser("macro", help="run a console macro headless")
    s.add_argument("name")
    s.add_argument("--node", help="value of {node} in the steps")
    s.add_argument("--marked", help="value of {marked} (comma-separated nodes)")
    s = sub.add_parser("keygen", help="write a new flock key (mode 0600)")
    s.add_argument("file", nargs="?")
    s.add_argument("--force", action="store_true", help="replace an existing key file")
    sub.add_parser("paths", help="where config, state and runtime files live")
    s = sub.add_parser("config", help="`config schema`: the JSON schema of console.toml")
    s.add_argument("what", choices=["schema"])
    s = sub.add_parser("audit", help="NODE's audit trail: changes and refusals, newest first")
    s.add_argument("node")
    s.add_argument("--limit", type=positive_int, default=50, metavar="N")
    _ca_parsers(sub.add_parser("ca", help="the flock CA: init, issue, list, revoke"))
    s = sub.add_parser("demo", help="start a local demo flock and open the console on it")
    s.add_argument("--nodes", type=count_between(1, DEMO_MAX_NODES), default=3, metavar="N",
                   help=f"how many demo nodes, 1 to {DEMO_MAX_NODES} (default 3)")
    s.add_argument("--no-console", action="store_true",
                   help="keep the demo flock running without opening the console")
    return p


def _ca_parsers(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ca-dir", metavar="DIR", help="the CA (default <config dir>/ca)")
    ca = p.add_subparsers(dest="ca_command", metavar="CA_COMMAND", required=True)
    ca.add_parser("init", help="make a CA (ECDSA P-256, key 0600)")
    s = ca.add_parser("issue", help="a certificate for NAME: OUT/ca.crt, identity.crt, "
                      "identity.key (a ready --tls-dir)")
    s.add_argument("name")
    s.add_argument("--role", required=True, choices=["node", "operator", "observer"])
    s.add_argument("--out", metavar="DIR", help="default ./NAME")
    s.add_argument("--days", type=positive_days, default=365.0, metavar="N",
                   help="how long the certificate is valid, in days (default 365)")
    ca.add_parser("list", help="what was issued and revoked")
    s = ca.add_parser("revoke", help="revoke NAME and push the signed list to reachable nodes")
    s.add_argument("name")
    for sp in ca.choices.values():  # `flockctl ca issue x --ca-dir D --json` works too
        sp.add_argument("--ca-dir", metavar="DIR", default=argparse.SUPPRESS)
        sp.add_argument("--json", action="store_true", default=argparse.SUPPRESS)


def two_word_commands(argv: list[str]) -> list[str]:
    """`outbox discard NODE ...` is parsed as the command `outbox-discard`."""
    argv = list(argv)
    for i, word in enumerate(argv[:-1]):
        if word == "outbox" and argv[i + 1] == "discard":
            argv[i:i + 2] = ["outbox-discard"]
            break
    return argv


def all_parsers(p: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parser and its commands' parsers (each reports its own usage errors)."""
    out = [p]
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            out.extend(a.choices.values())
    return out


def _json_usage_error(p: argparse.ArgumentParser) -> Any:
    def error(message: str) -> NoReturn:
        # The human usage line on stderr as always; a script reading stdout gets JSON too.
        print(json.dumps({"error": message, "exit_code": USAGE}, indent=2), flush=True)
        p.print_usage(sys.stderr)
        p.exit(USAGE, f"{p.prog}: error: {message}\n")

    return error


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """flockctl's command line; with --json anywhere in it, usage errors are JSON on stdout."""
    words = two_word_commands(sys.argv[1:] if argv is None else argv)
    p = build_parser()
    if "--json" in words:
        for q in all_parsers(p):
            q.error = _json_usage_error(q)  # type: ignore[method-assign]
    return p.parse_args(words)
