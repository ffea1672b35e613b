"""`run-chef TARGET --why-run`: each node's plan (what each resource would do and why, the
local notifications that would fire, the nodes remote ones would reach); nothing changes."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from flock_node.cli.args import FAILED, OK, CliError
from flock_node.cli.context import Ctx, _cli_error, node_line
from flock_node.transport import RpcError

_MARK = {"would_update": "~", "up_to_date": "=", "skipped": "-", "failed": "!"}


def plan_lines(node: str, plan: dict[str, Any]) -> list[str]:
    """A node's plan for a person: one line per resource, its reasons and notifications below."""
    n = len(plan.get("resources") or [])
    head = f"{node}: would update {plan.get('updated', 0)} of {n}"
    if plan.get("error"):
        head += f" - would fail: {plan['error']}"
    lines = [head]
    for r in plan.get("resources") or []:
        word = r["result"].replace("_", " ")
        lines.append(f"  {_MARK.get(r['result'], '?')} {r['resource']} {r['action']}: {word}")
        for why in (r.get("why") or "").splitlines():
            lines.append(f"      {why}")
        if r.get("error"):
            lines.append(f"      error: {r['error']}")
        for x in r.get("notifies") or []:
            lines.append(f"      notifies {x['action']} {x['target']} ({x['timing']})")
        for x in r.get("remote") or []:
            if x.get("node") is None:
                lines.append(f"      would send {x['action']} {x['resource']} to no node: "
                             f"{x.get('unmatched')}")
            else:
                via = ", subscription" if x.get("via") == "subscription" else ""
                lines.append(f"      would send {x['action']} {x['resource']} -> {x['node']} "
                             f"({x['timing']}{via})")
    return lines


def cmd_why_run(c: Ctx) -> int:
    """Ask every target node for its plan, in parallel; exit 1 if a plan would fail."""
    names = c.targets(c.args.target)
    plans: dict[str, dict[str, Any]] = {}
    errors: dict[str, CliError] = {}

    def ask(n: str) -> None:
        try:
            # A plan evaluates shell guards: give it the run's timeout, not a quick answer's.
            plans[n] = c.flock.call(n, "flock_api", "why_run", {}, timeout=c.args.timeout)
        except RpcError as e:
            errors[n] = _cli_error(e, n)

    with ThreadPoolExecutor(min(32, len(names))) as ex:
        list(ex.map(ask, names))
    if c.args.json:
        c.emit_json({"plans": plans, "errors": {n: str(e) for n, e in errors.items()}})
    else:
        for n in names:
            if n in plans:
                c.print("\n".join(plan_lines(n, plans[n])))
            else:
                c.print(node_line(n, errors[n]))
        c.print("why-run: nothing was changed, nothing was sent")
    code = FAILED if any(p.get("status") != "ok" for p in plans.values()) else OK
    if errors:
        code = max(code, *(e.code for e in errors.values()))
    return code
