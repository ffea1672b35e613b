"""Human output: ages, activity, tables."""

from __future__ import annotations

import re
import time
from typing import Any

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


def activity(n: dict[str, Any]) -> str:
    if n.get("state") not in (None, "alive"):
        return "-"
    run = n.get("run")
    if n.get("active") and run:
        k, total = run.get("k", 0), run.get("n", 0)
        what = "reacting" if run.get("kind") == "reaction" else "converging"
        return f"{what} {k}/{total} {run.get('resource', '')}".rstrip()
    return "converging" if n.get("active") else "idle"


def last_run_text(lr: dict[str, Any] | None, status: bool = True) -> str:
    if not lr:
        return "never"
    dur = lr.get("duration")
    d = f" in {dur:.1f}s" if isinstance(dur, int | float) else ""
    s = f"{lr['status']} " if status else ""
    return f"{s}{ago(lr.get('started'))}{d}, {lr.get('updated', 0)} updated"


def converge_of(n: dict[str, Any]) -> dict[str, Any] | None:
    """A node's last converge; from `last_run` for agents that predate `last_converge`."""
    if "last_converge" in n:
        lc: dict[str, Any] | None = n["last_converge"]
        return lc
    lr = n.get("last_run")
    return lr if lr and lr.get("kind", "converge") == "converge" else None


def health(n: dict[str, Any]) -> str:
    """ok / failed from the last converge; `never` before the first one."""
    lc = converge_of(n)
    return lc["status"] if lc else "never"


def last_reaction(n: dict[str, Any]) -> dict[str, Any] | None:
    """The last run when it is a reaction after the last converge (shown beside health)."""
    lr: dict[str, Any] | None = n.get("last_run")
    lc = converge_of(n)
    if not lr or lr.get("kind") != "reaction" or (lc and lc.get("id") == lr.get("id")):
        return None
    return lr


def converge_text(n: dict[str, Any]) -> str:
    """The LAST CONVERGE cell: when, how long, what it updated; a later reaction beside it."""
    lc = converge_of(n)
    text = "never"
    if lc:
        dur = lc.get("duration")
        d = f" in {dur:.1f}s" if isinstance(dur, int | float) else ""
        text = f"{ago(lc.get('started'))}{d}, {lc.get('updated', 0)} updated"
    lr = last_reaction(n)
    if lr:
        text += f" (reaction {lr['status']} {ago(lr.get('started'))})"
    return text


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=False)).rstrip()]
    for r in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)).rstrip())
    return "\n".join(lines)


def _outbox_text(n: dict[str, Any]) -> str:
    dead = n.get("dead_letters", 0)
    return f"{n.get('pending', 0)}" + (f" ({dead} dead)" if dead else "")


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
