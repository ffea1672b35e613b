"""Human output: ages, activity, tables."""

from __future__ import annotations

import re
import time
from typing import Any

import msgspec

from flock_node.api import LastRun, Member, State

# Lines the engine adds to a resource's output: retries, unmatched targets, guards.
NOTE_RE = re.compile(r"attempt \d+ failed|remote_notifies .*: no node matched|skipped: ")


def ago(ts: float | None, now: float | None = None) -> str:
    if not ts:
        return "-"
    d = max(0.0, (now or time.time()) - ts)
    if d < 60:
        return f"{d:.0f}s ago"
    if d < 3600:
        return f"{d / 60:.0f}m ago"
    if d < 86400:
        return f"{d / 3600:.0f}h ago"
    return f"{d / 86400:.0f}d ago"


def activity(n: Member) -> str:
    if n.state != State.ALIVE:
        return "-"
    run = n.run
    if n.active and run:
        k, total = run.get("k", 0), run.get("n", 0)
        what = "reacting" if run.get("kind") == "reaction" else "converging"
        return f"{what} {k}/{total} {run.get('resource', '')}".rstrip()
    return "converging" if n.active else "idle"


def last_run_text(lr: LastRun | None, status: bool = True) -> str:
    if lr is None:
        return "never"
    d = f" in {lr.duration:.1f}s" if lr.duration is not None else ""
    s = f"{lr.status} " if status else ""
    return f"{s}{ago(lr.started)}{d}, {lr.updated} updated"


def last_runs(st: dict[str, Any]) -> tuple[LastRun | None, LastRun | None]:
    """A `status` answer's last converge and last run, as typed views; the last converge
    from `last_run` for agents that predate `last_converge`."""
    lr = msgspec.convert(st.get("last_run"), LastRun | None)
    if "last_converge" in st:
        return msgspec.convert(st["last_converge"], LastRun | None), lr
    return (lr if lr is not None and lr.kind == "converge" else None), lr


def health(lc: LastRun | None) -> str:
    """ok / failed from the last converge; `never` before the first one."""
    return lc.status if lc else "never"


def last_reaction(lr: LastRun | None, lc: LastRun | None) -> LastRun | None:
    """The last run when it is a reaction after the last converge (shown beside health)."""
    if lr is None or lr.kind != "reaction" or (lc is not None and lc.id == lr.id):
        return None
    return lr


def converge_text(n: Member) -> str:
    """The LAST CONVERGE cell: when, how long, what it updated; a later reaction beside it."""
    lc = n.last_converge
    text = "never"
    if lc:
        d = f" in {lc.duration:.1f}s" if lc.duration is not None else ""
        text = f"{ago(lc.started)}{d}, {lc.updated} updated"
    lr = last_reaction(n.last_run, lc)
    if lr:
        text += f" (reaction {lr.status} {ago(lr.started)})"
    return text


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=False)).rstrip()]
    for r in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)).rstrip())
    return "\n".join(lines)


def _outbox_text(n: Member) -> str:
    dead = n.dead_letters
    return f"{n.pending}" + (f" ({dead} dead)" if dead else "")


def output_excerpt(output: str | None, failed: bool, width: int = 160) -> list[str]:
    """What `--json` shows of a resource's output, shortened for a terminal: the engine's
    notes (retries, unmatched targets, guards), then the last lines of the rest (5 for a
    failed resource, 2 otherwise), each cut to `width`."""
    lines = [ln.rstrip() for ln in (output or "").splitlines() if ln.strip()]
    notes = [ln for ln in lines if NOTE_RE.match(ln)]
    rest = [ln for ln in lines if not NOTE_RE.match(ln)]
    keep = 5 if failed else 2
    out = notes[:5]
    if len(notes) > 5:
        out.append(f"… {len(notes) - 5} more note(s)")
    if len(rest) > keep:
        out.append(f"… {len(rest) - keep} earlier line(s); --json shows all")
        rest = rest[-keep:]
    out += rest
    return [ln if len(ln) <= width else ln[:width - 1] + "…" for ln in out]


# The sender names the operator tools put on an out-of-band notification.
OPERATORS = {"flockctl": "flockctl", "flock-cli": "flockctl", "flock-console": "console"}


def operator_text(sender: str) -> str:
    """Who sent an out-of-band notification, as the README says it: `operator (console)`."""
    return f"operator ({OPERATORS.get(sender, sender or '?')})"


def cause_text(cause: dict[str, Any] | None) -> str | None:
    """Why a run ran, for a person: a schedule, another node's update, or an out-of-band
    notification (`flockctl notify`, the console, a script) naming who sent it."""
    if not cause:
        return None
    if cause.get("scheduled"):
        return "scheduled (--interval)"
    who = cause.get("node") or "?"
    n = cause.get("notification")
    if cause.get("resource"):
        return (f"caused by {who}:{cause['resource']} (run {cause.get('run', '?')}, "
                f"notification {n}, hop {cause.get('hops', '?')})")
    if n:
        sent_by = operator_text(who) if who in OPERATORS else who
        return f"caused by {sent_by}, out of band (notification {n})"
    return f"requested by {who}"
