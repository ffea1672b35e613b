"""What the node screen shows, computed without Textual: table rows for resources, runs and
subscriptions, a run's detail, causes in a few words. Ages are computed from `now`, so the
screen re-renders them with a timer."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from flock_node.cli import ago
from flock_node.cli.text import operator_text
from flock_tui.model import (
    Styles,
    duration,
    is_operator,
    short_resource,
    short_run_id,
)

Row = tuple[str, list[Text]]


def problems_text(status: dict[str, Any]) -> str:
    """What a node's status says is wrong, in a few words for the node screen's title."""
    out = []
    for lf in status.get("loop_failures") or ():
        out.append(f"⚠ {lf.get('loop')} loop crashed {lf.get('crashes')}x: "
                   f"{lf.get('last_error')}")
    if status.get("ready") is False:
        out.append("starting: recipe compiling")
    return "  ".join(out)


def cause_text(cause: dict[str, Any] | None, kind: str, width: int, st: Styles) -> Text:
    """The CAUSE cell: `← bender0 schema.sql`, `← operator (console)`, `scheduled`."""
    if cause and cause.get("scheduled"):
        return Text("scheduled", style=st.muted)
    if not cause:
        return Text(kind, style=st.muted)
    sender = str(cause.get("node") or "")
    if is_operator(cause):
        return Text(f"← {operator_text(sender)}", style=st.accent)
    return Text(short_resource(str(cause.get("resource", "?")), width, f"← {sender or '?'} "))


def resource_rows(resources: list[dict[str, Any]], now: float, width: int,
                  st: Styles) -> list[Row]:
    """RESOURCE, ACTION, RESULT, WHEN: the action shown is the one whose result it is."""
    rows = []
    for r in resources:
        res = r.get("last_result") or "-"
        style = {"updated": st.accent, "up_to_date": st.success, "failed": st.error,
                 "skipped": st.muted}.get(res, "")
        if r.get("last_result"):
            action = Text(str(r.get("last_action") or "?"))
        else:  # never run: what it would do, dimmed
            action = Text(str(r.get("default_action") or ""), style=st.muted)
        rows.append((r["id"], [Text(short_resource(r["id"], width)), action,
                               Text(res, style=style),
                               Text(ago(r.get("last_at"), now), style=st.muted)]))
    return rows


def action_width(resources: list[dict[str, Any]]) -> int:
    """Wide enough for every action shown in the ACTION column."""
    return max([6, *(len(str(r.get("last_action") or r.get("default_action") or ""))
                     for r in resources)])


def run_rows(history: list[dict[str, Any]], now: float, width: int, st: Styles) -> list[Row]:
    """RUN, STATUS, STARTED, TOOK, UPD, CAUSE."""
    rows = []
    for h in history:
        status = h.get("status", "?")
        style = {"ok": st.success, "failed": st.error}.get(status, st.accent)
        dead = any(n.get("status") in ("failed", "dead") for n in h.get("notifications") or [])
        rows.append((h["id"], [Text(short_run_id(h["id"])),
                               Text(status + (" ✗" if dead else ""), style=f"bold {style}"),
                               Text(ago(h.get("started"), now)),
                               Text(duration(h.get("duration"))),
                               Text(str(h.get("updated") or 0)),
                               cause_text(h.get("cause"), str(h.get("kind") or ""), width,
                                          st)]))
    return rows


def sub_rows(node: str, subs: dict[str, list[dict[str, Any]]], width: int,
             st: Styles) -> tuple[list[Row], dict[str, dict[str, Any]]]:
    """Subscriptions both ways, and the subscription behind each row key."""
    rows: list[Row] = []
    by_key: dict[str, dict[str, Any]] = {}
    for s in subs.get("outgoing", []):
        k = f"out:{s['id']}"
        by_key[k] = s
        state = str(s.get("state", ""))
        style = {"registered": st.success, "failed": st.error}.get(state, st.warning)
        rows.append((k, [Text("→", style=st.accent),
                         Text(short_resource(s["remote_resource"], width, f"{s['node']} ")),
                         Text(short_resource(s["resource"], width, f"{s['action']} ")),
                         Text(state, style=style)]))
    for s in subs.get("incoming", []):
        k = f"in:{s['id']}"
        by_key[k] = s
        rows.append((k, [Text("←", style=st.muted),
                         Text(short_resource(s["resource"], width, f"{node} ")),
                         Text(short_resource(s["subscriber_resource"], width,
                                             f"{s['subscriber']}: {s['action']} ")),
                         Text("held here", style=st.muted)]))
    return rows, by_key


def run_detail(h: dict[str, Any], width: int, st: Styles) -> Text:
    """A run in full: its resources, errors, and what became of each notification it sent."""
    t = Text()
    ok = h.get("status") == "ok"
    t.append(f"{h['id']}", style="bold")
    t.append(f"  {h.get('kind')}  ")
    t.append(str(h.get("status")), style=f"bold {st.success if ok else st.error}")
    t.append(f"  took {duration(h.get('duration'))}  {h.get('updated') or 0} updated\n",
             style="" if ok else st.muted)
    if h.get("error"):
        t.append(f"error: {h['error']}\n", style=st.error)
    for r in h.get("resources", []):
        res = r.get("result", "")
        style = {"updated": st.accent, "up_to_date": st.success, "failed": st.error}.get(
            res, st.muted)
        tail = f"  {r['action']} {r.get('duration') or 0:.2f}s"
        t.append(f"  {res:<10} ", style=style)
        t.append(short_resource(str(r["resource"]), width - 13 - len(tail)))
        t.append(tail + "\n", style=st.muted)
        if r.get("error"):
            t.append(f"{'':13}{r['error']}\n", style=st.error)
    notes = h.get("notifications") or []
    if notes:
        t.append("notifications sent:\n", style="bold")
    for n in notes:
        status = str(n.get("status", "?"))
        bad = status in ("failed", "dead")
        style = {"delivered": st.success, "pending": st.warning, "held": st.muted}.get(
            status, st.error if bad else "")
        attempts = int(n.get("attempts") or 0)
        tail = f": {status}" + (f" after {attempts} attempts" if attempts > 1 else "")
        head = f"  → {n.get('target', '?')} "
        room = width - len(head) - len(tail) - len(str(n.get("action", ""))) - 3
        t.append(head, style="bold")
        t.append(f"{short_resource(str(n.get('resource', '?')), room)} {n.get('action', '?')}")
        t.append(tail + "\n", style=f"bold {style}" if bad else style)
        if n.get("error") and status != "delivered":
            t.append(f"      {n['error']}\n", style=st.error if bad else st.muted)
    return t


def cause_step(t: Text, cause: dict[str, Any], depth: int, width: int, st: Styles) -> None:
    """One link of a run's cause chain, indented by its depth."""
    indent = "  " * (depth + 1)
    node = str(cause.get("node", "?"))
    if is_operator(cause):
        t.append(f"{indent}← {operator_text(node)}\n", style="bold")
        return
    t.append(f"{indent}← {node} ", style="bold")
    t.append(short_resource(str(cause.get("resource", "?")),
                            width - len(indent) - len(node) - 3) + "\n")
    t.append(f"{indent}  run {cause.get('run', '?')}  hop {cause.get('hops', '?')}\n",
             style=st.muted)


def tabs_text(panes: list[tuple[str, str]], current: str) -> Text:
    """The pane strip of a small terminal: the current pane reversed, then the key."""
    t = Text()
    for key, title in panes:
        t.append(f" {title} ", style="bold reverse" if key == current else "dim")
        t.append(" ")
    t.append("  tab: next pane", style="dim")
    return t


def unsubscribe_text(node: str, s: dict[str, Any], outgoing: bool) -> Text:
    """What removing subscription `s` does, and the equivalent command."""
    body = Text(f"$ flockctl unsubscribe {node} {s['id']}\n\n")
    if outgoing:
        body.append(f"{node} stops running {s['action']} on {s['resource']} when "
                    f"{s['node']}:{s['remote_resource']} is updated.")
    else:
        body.append(f"{s['subscriber']} stops being told when {node}:{s['resource']} "
                    "is updated.")
    return body
