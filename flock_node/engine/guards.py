"""Guards (only_if / not_if) and waits (wait_until / wait_while) of one resource: evaluated
before its action, each bounded in time. A why-run evaluates guards too (as Chef does: a
guard only looks), but never waits."""

from __future__ import annotations

import threading
import time
from typing import Any

from flock_node.engine.errors import ResourceFailure
from flock_node.engine.limits import CallTimedOut, Interrupted, call_with_limit
from flock_node.engine.resources import CALLABLE, Resource, Wait, command_env
from flock_node.engine.shell import CommandTimedOut, run_guard
from flock_node.store import STOPPED_BEFORE_ACTION

GUARDS = (("only_if", True), ("not_if", False))


def check_guards(res: Resource) -> tuple[str, str | None, str] | None:
    """None when the action may go on, else the (result, error, output) it ends with:
    skipped (a guard said no) or failed (a guard raised or ran out of time)."""
    for guard, want in GUARDS:
        cond = res.props.get(guard)
        if cond is None:
            continue
        try:
            value = eval_guard(res, cond, guard)
        except ResourceFailure as e:  # interrupted, or timed out
            return "failed", str(e), ""
        except Exception as e:
            return "failed", f"{guard} raised {type(e).__name__}: {e}", ""
        if value != want:
            what = cond if isinstance(cond, str) else "callable"
            return "skipped", None, f"skipped: {guard} {what!s} was {str(value).lower()}"
    return None


def eval_guard(res: Resource, cond: Any, guard: str = "guard") -> bool:
    """The guard's value; ResourceFailure naming the guard when it runs out of time."""
    if cond == CALLABLE:
        raise RuntimeError("the guard is a callable and the recipe does not compile")
    p = res.props
    limit = p.get("guard_timeout") or 300.0
    if callable(cond):
        try:
            return bool(call_with_limit(cond, limit))
        except CallTimedOut as e:
            how = "stopped" if e.stopped else "did not stop: it goes on in the background"
            raise ResourceFailure(
                f"{guard} timed out after {limit:g} s (callable, {how})"
            ) from None
    try:
        return run_guard(cond, cwd=p.get("cwd"), env=command_env(p.get("environment")),
                         timeout=limit)
    except CommandTimedOut:
        raise ResourceFailure(
            f"{guard} timed out after {limit:g} s: {cond!r} (process group killed)"
        ) from None


def wait(w: Wait, stop: threading.Event) -> tuple[str | None, bool]:
    """(None once the condition holds, else why the resource fails; whether a stop cut it)."""
    if w.cond is None:
        return (
            f"{w.kind} cannot be evaluated: the recipe does not compile and the condition "
            f"({w.text}) was restored from the store"
        ), False
    deadline = time.monotonic() + w.timeout
    last_error = None
    while True:
        try:
            # Bounded too: a condition that never returns must not outlast the wait (by
            # more than a second, so that a last poll near the deadline may still answer).
            limit = max(deadline - time.monotonic(), 0.0) + 1.0
            value = bool(call_with_limit(w.cond, limit))
            if value == (w.kind == "wait_until"):
                return None, False
        except CallTimedOut as e:
            how = "" if e.stopped else ", and goes on in the background"
            return (
                f"{w.kind} timed out after {w.timeout:g} s: {w.text} "
                f"(the condition did not return{how})"
            ), False
        except Interrupted as e:  # the action never ran: like a stop during the wait
            return str(e), True
        except Exception as e:  # an unreachable node is "not yet", not a crash
            last_error = f"{type(e).__name__}: {e}"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            msg = f"{w.kind} timed out after {w.timeout:g} s: {w.text}"
            return msg + (f" (last error: {last_error})" if last_error else ""), False
        if stop.wait(min(w.interval, remaining)):
            return f"{STOPPED_BEFORE_ACTION} {w.kind}: {w.text}", True
