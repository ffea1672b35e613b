"""What the console shows, computed without Textual: member rows, heartbeat merges, state diffs
and event lines. The app feeds it member dicts, heartbeats and events plus a clock."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from rich.text import Text

from flock_node.cli import ago
from flock_node.cli.text import OPERATORS, operator_text
from flock_node.protocol import Event, Heartbeat

COLUMNS: list[tuple[str, str]] = [
    ("mark", " "),
    ("name", "NAME"),
    ("state", "STATE"),
    ("activity", "ACTIVITY"),
    ("last", "LAST RUN"),
    ("pending", "OUTBOX"),
    ("address", "ADDRESS"),
    ("tags", "TAGS"),
]
SORTABLE = ["name", "state", "activity", "last", "pending", "address", "tags"]
STATE_ORDER = {"alive": 0, "suspect": 1, "down": 2, "left": 3}


@dataclass
class Styles:
    """Rich styles derived from the theme's variables ($success, $warning, $error, ...)."""

    success: str = "green"
    warning: str = "yellow"
    error: str = "red"
    accent: str = "cyan"
    muted: str = "grey50"

    def state(self, state: str) -> str:
        return {"alive": self.success, "suspect": self.warning, "down": self.error,
                "left": self.muted}.get(state, "")




def duration(d: float | None) -> str:
    if d is None:
        return "-"
    if d < 60:
        return f"{d:.1f}s"
    return f"{d // 60:.0f}m{d % 60:02.0f}s"


def activity_text(m: dict[str, Any], st: Styles) -> Text:
    if m.get("state") not in (None, "alive"):
        return Text("-", style=st.muted)
    run = m.get("run")
    if m.get("active"):
        what = "reacting" if run and run.get("kind") == "reaction" else "converging"
        t = Text()
        t.append(what, style=f"bold {st.accent}")
        if run and run.get("n"):
            t.append(f" {run.get('k', 0)}/{run.get('n', 0)} ", style=st.accent)
            t.append(str(run.get("resource") or ""))
        return t
    return Text("idle", style=st.muted)


def run_text(lr: dict[str, Any], now: float, st: Styles, narrow: bool = False) -> Text:
    """`ok 42s ago 3.2s 2 upd`: one run's outcome, age, duration (not when narrow) and
    updates."""
    ok = lr.get("status") == "ok"
    t = Text()
    t.append(str(lr.get("status", "?")), style=f"bold {st.success if ok else st.error}")
    t.append(f" {ago(lr.get('started'), now)}")
    if not narrow:
        t.append(f" {duration(lr.get('duration'))}", style=st.muted)
    t.append(f" {lr.get('updated', 0)} upd")
    return t


def last_run_text(m_or_lr: dict[str, Any] | None, now: float, st: Styles,
                  narrow: bool = False) -> Text:
    """A node's health: its last converge's outcome, and a later reaction's result beside it
    (`failed 1m ago 2.0s 0 upd ↺ ok`), never instead of it."""
    if not m_or_lr:
        return Text("never", style=st.muted)
    if "name" in m_or_lr:
        lr, conv = m_or_lr.get("last_run"), m_or_lr.get("last_converge")
    else:  # a bare run summary (older callers)
        lr = m_or_lr
        conv = lr if lr.get("kind") != "reaction" else None
    if conv:
        t = run_text(conv, now, st, narrow)
    elif lr:
        t = Text("no converge seen", style=st.muted)
    else:
        return Text("never", style=st.muted)
    if lr and lr.get("kind") == "reaction" and (not conv or lr.get("id") != conv.get("id")):
        ok = lr.get("status") == "ok"
        t.append(" ↺ ", style=st.muted)
        t.append(str(lr.get("status", "?")), style=st.success if ok else f"bold {st.error}")
        if not conv:
            t.append(f" {ago(lr.get('started'), now)}", style=st.muted)
    return t


def health(m: dict[str, Any]) -> dict[str, Any]:
    """The run that says whether a node is healthy: its last converge (else its last run)."""
    return m.get("last_converge") or m.get("last_run") or {}


def pending_text(m: dict[str, Any], st: Styles) -> Text:
    p, dead = int(m.get("pending") or 0), int(m.get("dead_letters") or 0)
    t = Text()
    t.append(str(p), style=st.warning if p else st.muted)
    if dead:  # the one number that says something was lost: the column fits it whole
        t.append(f" ({dead} dead)", style=f"bold {st.error}")
    return t


def row_cells(m: dict[str, Any], now: float, marked: bool, st: Styles,
              narrow: bool = False) -> dict[str, Text]:
    """The cells of one member's row, keyed by column. Values are Text: never markup."""
    state = str(m.get("state", "?"))
    return {
        "mark": Text("●", style=f"bold {st.accent}") if marked else Text(" "),
        "name": Text(str(m.get("name", "?")), style="bold"),
        "state": Text(state, style=st.state(state)),
        "activity": activity_text(m, st),
        "last": last_run_text(m, now, st, narrow),
        "pending": pending_text(m, st),
        "address": Text(str(m.get("address") or ""), style=st.muted),
        "tags": Text(",".join(str(t) for t in m.get("tags") or [])),
    }


def sort_key(column: str, m: dict[str, Any]) -> Any:
    name = str(m.get("name", ""))
    if column == "state":
        return (STATE_ORDER.get(m.get("state", ""), 9), name)
    if column == "activity":
        return (0 if m.get("active") else 1, name)
    if column == "last":
        lr = health(m)
        return (0 if lr.get("status") == "failed" else 1, -(lr.get("started") or 0), name)
    if column == "pending":
        return (-(int(m.get("pending") or 0) + int(m.get("dead_letters") or 0)), name)
    if column == "address":
        return (str(m.get("address") or ""), name)
    if column == "tags":
        return (",".join(m.get("tags") or []), name)
    return name


def matches(m: dict[str, Any], query: str) -> bool:
    """Filter: every word of the query is a substring of name, state, address or tags."""
    if not query.strip():
        return True
    hay = " ".join([str(m.get("name", "")), str(m.get("state", "")),
                    str(m.get("address", "")), *map(str, m.get("tags") or [])]).lower()
    if m.get("active"):
        hay += " active converging"
    else:
        hay += " idle"
    lr = health(m)
    if lr.get("status"):
        hay += f" {lr['status']}"
    return all(w in hay for w in query.lower().split())


def merge_heartbeat(members: dict[str, dict[str, Any]], hb: Heartbeat) -> dict[str, Any]:
    """Fold a heartbeat into the member dict (a heartbeat means the node is alive now)."""
    m = members.get(hb.node)
    # A new process behind a name that is not alive replaces it whatever its incarnation (its
    # state was wiped); otherwise a lower incarnation is a late heartbeat from before a restart.
    restarted = (m is not None and bool(hb.instance) and hb.instance != m.get("instance")
                 and m.get("state") != "alive")
    if m is None or restarted or hb.incarnation >= m.get("incarnation", 0):
        if m is None:
            m = members[hb.node] = {"name": hb.node, "address": hb.rpc}
        m.update({
            "state": "alive", "bus": hb.bus, "rpc": hb.rpc, "address": m.get("address") or hb.rpc,
            "incarnation": hb.incarnation, "instance": hb.instance, "active": hb.active,
            "run": msgspec.to_builtins(hb.run) if hb.run else None,
            "last_run": msgspec.to_builtins(hb.last_run) if hb.last_run else None,
            "pending": hb.pending, "dead_letters": hb.dead, "tags": list(hb.tags),
            "version": hb.version, "age": 0.0,
        })
        remember_converge(m, getattr(hb, "last_converge", None))
    return m


def remember_converge(m: dict[str, Any], told: Any = None,
                      known: dict[str, Any] | None = None) -> None:
    """Fill `last_converge`: what the agent says (`last_converge`, newer agents), else its
    last run when that was a converge, else the converge the console saw before."""
    if told is not None:
        m["last_converge"] = told if isinstance(told, dict) else msgspec.to_builtins(told)
        return
    lr = m.get("last_run")
    if lr and lr.get("kind") != "reaction":
        m["last_converge"] = lr
    elif known and not m.get("last_converge"):
        m["last_converge"] = known


def merge_event(members: dict[str, dict[str, Any]], ev: Event) -> None:
    """Events arrive before the next heartbeat: show progress at once."""
    m = members.get(ev.node)
    if m is None:
        return
    d = ev.data
    if ev.kind == "run_started":
        m["active"] = True
        m["run"] = {"id": d.get("run"), "kind": d.get("kind", "converge"), "resource": "",
                    "k": 0, "n": 0, "started": ev.at}
    elif ev.kind == "run_progress":
        m["active"] = True
        run = dict(m.get("run") or {"id": d.get("run"), "kind": "converge", "started": ev.at})
        run.update(resource=d.get("resource", ""), k=d.get("k", 0), n=d.get("n", 0))
        m["run"] = run
    elif ev.kind == "run_finished":
        started = (m.get("run") or {}).get("started") or ev.at
        m["active"] = False
        m["run"] = None
        m["last_run"] = {"id": d.get("run"), "status": d.get("status") or "failed",
                         "kind": d.get("kind", "converge"), "started": started,
                         "duration": max(0.0, ev.at - started), "updated": d.get("updated", 0),
                         "error": d.get("error")}
        remember_converge(m)


def run_target(nodes: list[str], members: dict[str, dict[str, Any]]) -> str | None:
    """The one `flockctl run-chef TARGET` that names exactly `nodes`: `'*'` or `tag:TAG`;
    None when no glob or tag says it (then the nodes are listed)."""
    want = set(nodes)
    if want == set(members):
        return "'*'"
    tags = sorted({t for m in members.values() for t in m.get("tags") or []})
    for tag in tags:
        if want == {n for n, m in members.items() if tag in (m.get("tags") or [])}:
            return f"tag:{tag}"
    return None


@dataclass
class Change:
    node: str
    old: str | None
    new: str | None


def diff_states(old: dict[str, dict[str, Any]], new: Iterable[dict[str, Any]]) -> list[Change]:
    """Membership changes between two polls: joins, state changes and disappearances."""
    out: list[Change] = []
    seen = set()
    for m in new:
        seen.add(m["name"])
        before = old.get(m["name"])
        was = before.get("state") if before else None
        if was != m.get("state"):
            out.append(Change(m["name"], was, m.get("state")))
    for name, m in old.items():
        if name not in seen and m.get("state") != "gone":
            out.append(Change(name, m.get("state"), None))
    return out


def change_text(c: Change, st: Styles) -> Text:
    t = Text()
    t.append(c.node, style="bold")
    if c.old is None:
        t.append(" joined", style=st.success)
        if c.new and c.new != "alive":
            t.append(f" ({c.new})", style=st.state(c.new))
    elif c.new is None:
        t.append(" is gone from the flock", style=st.muted)
    elif c.new == "alive":
        t.append(" is alive again" if c.old in ("suspect", "down") else " is alive",
                 style=st.success)
    elif c.new == "left":
        t.append(" left the flock", style=st.muted)
    else:
        t.append(f" is {c.new}", style=f"bold {st.state(c.new)}")
        t.append(f" (was {c.old})", style=st.muted)
    return t


# Senders that are people, not nodes: `flockctl notify` and the console.
def is_operator(cause: dict[str, Any]) -> bool:
    """A notification sent by a person (console, flockctl): no resource, no run behind it."""
    return not cause.get("resource") and not cause.get("run")


def _cause_text(cause: dict[str, Any] | None) -> str:
    if not cause:
        return ""
    if is_operator(cause):
        return f" ← {operator_text(str(cause.get('node') or ''))}"
    return (f" caused by {cause.get('node', '?')}:{cause.get('resource', '?')}"
            f" (hop {cause.get('hops', '?')})")


def event_text(ev: Event, st: Styles) -> tuple[Text, str] | None:
    """One log line for an event, and its level (info, ok, warning, error); None to skip."""
    d = ev.data
    t = Text()
    t.append(ev.node, style="bold")
    k = ev.kind
    if k == "run_progress":
        return None
    if k == "run_started":
        t.append(f" {d.get('kind', 'converge')} {d.get('run', '')} started", style=st.accent)
        t.append(_cause_text(d.get("cause")), style=st.muted)
        return t, "info"
    if k == "run_finished":
        ok = d.get("status") == "ok"
        t.append(f" {d.get('kind', 'converge')} {d.get('run', '')} ")
        t.append(str(d.get("status")), style=f"bold {st.success if ok else st.error}")
        t.append(f", {d.get('updated', 0)} updated")
        if d.get("error"):
            t.append(f": {d['error']}", style=st.error)
        return t, "ok" if ok else "error"
    what = f"{d.get('action', '?')} {d.get('resource', '?')}"
    if k == "notification_received":
        sender = str(d.get("sender") or "?")
        t.append(f" received {what} from "
                 f"{operator_text(sender) if sender in OPERATORS else sender}")
        return t, "info"
    if k == "notification_delivered":
        t.append(f" → {d.get('target', '?')}: {what} delivered", style=st.success)
        return t, "ok"
    if k in ("notification_failed", "notification_dead", "notification_refused"):
        word = {"notification_failed": "failed", "notification_dead": "dead-lettered",
                "notification_refused": "refused"}[k]
        peer = d.get("target") or d.get("sender") or "?"
        t.append(f" ✗ {peer}: {what} {word}", style=f"bold {st.error}")
        if d.get("error"):
            t.append(f": {d['error']}", style=st.error)
        return t, "error"
    if k == "subscription_registered":
        t.append(f" subscribed to {d.get('node', '?')}:{d.get('resource', '?')}"
                 f" ({d.get('id', '')})")
        return t, "info"
    if k == "subscription_removed":
        t.append(f" unsubscribed from {d.get('node', '?')} ({d.get('id', '')})")
        return t, "info"
    t.append(f" {k} {d}")
    return t, "info"


@dataclass
class FlockView:
    """The members the console knows, and which of them changed since the last flush."""

    clock: Callable[[], float]
    members: dict[str, dict[str, Any]] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)

    def replace(self, rows: list[dict[str, Any]]) -> list[Change]:
        changes = diff_states(self.members, rows)
        fresh = {}
        for r in rows:
            old = self.members.get(r["name"]) or {}
            remember_converge(r, r.get("last_converge"), old.get("last_converge"))
            if r.get("active") and not r.get("run") and old.get("active") and old.get("run"):
                # SWIM gossips that a node is busy, not its progress: that came in its events.
                r["run"] = old["run"]
            fresh[r["name"]] = r
        for name in set(self.members) | set(fresh):
            if not same_row(self.members.get(name), fresh.get(name)):
                self.dirty.add(name)
        self.members = fresh
        return changes


def same_row(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Whether two answers about a node show the same: `age` moves with every poll and is
    not shown in the table, so a flock of thousands does not redraw every row each second."""
    if a is None or b is None:
        return a is b
    return a.keys() == b.keys() and all(a[k] == b[k] for k in a if k != "age")


def ellipsize(s: str, width: int) -> str:
    """Fit `s` in `width` cells with `…` in the middle: both ends of an id say the most."""
    if len(s) <= width:
        return s
    if width <= 1:
        return "…"[:max(width, 0)]
    tail = (width - 1) // 2
    head = width - 1 - tail
    return s[:head] + "…" + (s[-tail:] if tail else "")


def short_resource(rid: str, width: int, prefix: str = "") -> str:
    """`prefix` + the resource id in `width` cells: `file[/srv/a/app.conf]`, else
    `file[…/app.conf]`, else `app.conf`, else cut with `…` in the middle."""
    if len(prefix) + len(rid) <= width:
        return prefix + rid
    kind, sep, name = rid.partition("[")
    if sep and name.endswith("]"):
        base = name[:-1].rstrip("/").rsplit("/", 1)[-1] or name[:-1]
        for c in (f"{kind}[…/{base}]" if "/" in name[:-1].rstrip("/") else "", base):
            if c and len(prefix) + len(c) <= width:
                return prefix + c
        rid = base
    return ellipsize(prefix + rid, width)


def resource_name(rid: str) -> str:
    """The short human name of a resource id: `file[/a/b/app.conf]` → `app.conf`."""
    kind, sep, name = rid.partition("[")
    if not sep or not name.endswith("]"):
        return rid
    name = name[:-1].rstrip("/")
    return name.rsplit("/", 1)[-1] or rid


def short_run_id(run_id: str) -> str:
    """`20261124-213140-12aa4a` → `12aa4a`: the date is in STARTED, the full id in the detail."""
    parts = run_id.split("-")
    if len(parts) == 3 and len(parts[0]) == 8 and parts[0].isdigit():
        return parts[2]
    return run_id
