"""A why-run plan as the console shows it: the same lines as `flockctl run-chef NODE --why-run`
(`flock_node/cli/whyrun.py`), styled. Everything in a plan comes from the node: appended as
plain text, never parsed as markup."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from flock_tui.model import Styles

MARK = {"would_update": "~", "up_to_date": "=", "skipped": "-", "failed": "!"}


def result_style(result: str, st: Styles) -> str:
    """would_update stands out, failed is an error, up to date is calm."""
    return {"would_update": f"bold {st.accent}", "up_to_date": st.success,
            "skipped": st.muted, "failed": f"bold {st.error}"}.get(result, "")


def plan_text(node: str, plan: dict[str, Any], st: Styles) -> Text:
    """One node's plan: a head line, then each resource with why, and the notifications it
    would fire here and send to other nodes (named)."""
    res = plan.get("resources") or []
    t = Text()
    t.append(node, style="bold reverse")
    upd = int(plan.get("updated") or 0)
    t.append(f"  would update {upd} of {len(res)}",
             style=f"bold {st.accent}" if upd else st.success)
    if plan.get("error"):
        t.append(f"  would fail: {plan['error']}", style=f"bold {st.error}")
    t.append("\n")
    for r in res:
        result = str(r.get("result") or "?")
        style = result_style(result, st)
        t.append(f"  {MARK.get(result, '?')} ", style=style)
        t.append(str(r.get("resource", "?")), style="bold" if result == "would_update" else "")
        t.append(f" {r.get('action', '?')}: ", style=st.muted)
        t.append(result.replace("_", " ") + "\n", style=style)
        for why in str(r.get("why") or "").splitlines():
            t.append(f"      {why}\n", style=st.muted)
        if r.get("error"):
            t.append(f"      error: {r['error']}\n", style=st.error)
        for x in r.get("notifies") or []:
            t.append(f"      notifies {x.get('action')} {x.get('target')} ({x.get('timing')})\n")
        for x in r.get("remote") or []:
            t.append(f"      would send {x.get('action')} {x.get('resource')} ")
            if x.get("node") is None:
                t.append(f"to no node: {x.get('unmatched')}\n", style=st.warning)
                continue
            via = ", subscription" if x.get("via") == "subscription" else ""
            t.append("→ ")
            t.append(str(x["node"]), style=f"bold {st.accent}")
            t.append(f" ({x.get('timing')}{via})\n", style=st.muted)
    return t


def plans_text(nodes: list[str], plans: dict[str, dict[str, Any] | str | None],
               st: Styles) -> Text:
    """Every asked node in order: its plan, the error it answered, or that it is thinking."""
    t = Text()
    for n in nodes:
        p = plans.get(n)
        if p is None:
            t.append(n, style="bold reverse")
            t.append("  asking for its plan…\n", style=st.muted)
        elif isinstance(p, str):
            t.append(n, style="bold reverse")
            t.append(f"  {p}\n", style=f"bold {st.error}")
        else:
            t.append_text(plan_text(n, p, st))
        t.append("\n")
    done = sum(1 for n in nodes if plans.get(n) is not None)
    if done == len(nodes):
        t.append("why-run: nothing was changed, nothing was sent", style=st.muted)
    else:
        t.append(f"{done} of {len(nodes)} plans in", style=st.muted)
    return t
