"""`flockctl ca init|issue|list|revoke` (the flock CA) and `flockctl audit NODE`."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from flock_node import paths
from flock_node.cli.args import FAILED, OK, USAGE, CliError
from flock_node.cli.context import Ctx, gone
from flock_node.cli.text import table
from flock_node.store.audit import caller_label
from flock_node.transport import RpcError

# The CA's module loads `cryptography` (~35 ms, ~11 MB): imported by the CA commands that
# use it, so every other flockctl command and the console start without it.


def _ca_dir(c: Ctx) -> Path:
    return Path(c.args.ca_dir) if c.args.ca_dir else paths.config_dir() / "ca"


def cmd_ca(c: Ctx) -> int:
    """The flock CA: init, issue, list, revoke."""
    from flock_node.trust import ca

    try:
        return {"init": _init, "issue": _issue, "list": _list,
                "revoke": _revoke}[c.args.ca_command](c)
    except ca.CaError as e:
        raise CliError(str(e), FAILED) from None
    except BrokenPipeError:
        raise
    except OSError as e:
        raise CliError(f"{e.filename or ''}: {e.strerror or e}", FAILED) from None


def _init(c: Ctx) -> int:
    from flock_node.trust import ca

    d = ca.init(_ca_dir(c))
    c.print(f"flock CA made in {d} (ca.key is the secret: keep it off the nodes)\n"
            f"next: flockctl ca issue NAME --role node --out DIR")
    return OK


def _issue(c: Ctx) -> int:
    from flock_node.trust import ca
    from flock_node.trust.identity import common_name

    try:  # a name no certificate can carry is the command line's mistake
        common_name(c.args.role, c.args.name)
    except ValueError as e:
        raise CliError(f"ca issue: {e}", USAGE) from None
    out = Path(c.args.out) if c.args.out else Path.cwd() / c.args.name
    ca.issue(_ca_dir(c), c.args.name, c.args.role, out, days=c.args.days)
    if c.args.json:
        c.emit_json({"name": c.args.name, "role": c.args.role, "dir": str(out)})
    else:
        c.print(f"{c.args.role} certificate for {c.args.name} in {out} (ca.crt, identity.crt, "
                f"identity.key 0600): use it as --tls-dir")
    return OK


def _list(c: Ctx) -> int:
    from flock_node.trust import ca

    rows = ca.entries(_ca_dir(c))
    if c.emitted(rows):
        return OK
    if not rows:
        c.print("nothing issued yet")
        return OK
    c.print(table([[r["name"], r["role"], r["state"], time.strftime(
        "%Y-%m-%d", time.gmtime(r["not_after"])), r["serial"][:16]] for r in rows],
        ["NAME", "ROLE", "STATE", "EXPIRES", "SERIAL"]))
    return OK


def _revoke(c: Ctx) -> int:
    from flock_node.trust import ca

    blob = ca.revoke(_ca_dir(c), c.args.name)
    reached, missed = [], []
    try:
        nodes = [n.name for n in c.members() if not gone(n)]
    except CliError as e:
        nodes = []
        print(f"flockctl: no node reached to push the list to ({e})", file=sys.stderr)
    for node in nodes:
        try:
            c.flock.call(node, "trust", "install_crl", {"list": blob}, None)
            reached.append(node)
        except RpcError as e:
            missed.append(f"{node} ({e.code})")
    if c.emitted({"revoked": c.args.name, "pushed_to": reached, "missed": missed}):
        return OK
    c.print(f"revoked {c.args.name}; the signed list is in {_ca_dir(c) / ca.REVOKED}")
    c.print(f"pushed to {len(reached)} node(s){': ' + ', '.join(reached) if reached else ''}; "
            "nodes pass it on to each other with their heartbeats")
    if missed:
        c.print(f"not reached: {', '.join(missed)}")
    return OK


def cmd_audit(c: Ctx) -> int:
    """NODE's audit trail: changes and refusals, newest first."""
    rows = c.call(c.args.node, "trust", "audit", limit=c.args.limit)
    if c.emitted(rows):
        return OK
    if not rows:
        c.print(f"{c.args.node}: nothing audited yet")
        return OK
    c.print(table([[time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["at"])),
                    caller_label(r), r["role"], r["call"],
                    r["outcome"], (r.get("detail") or "")[:80]] for r in rows],
                  ["TIME", "CALLER", "ROLE", "CALL", "OUTCOME", "DETAIL"]))
    return OK
