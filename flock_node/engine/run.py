"""One run in progress: brings resources to their actions in order, fires local notifications
(immediate ones at once, delayed ones at the end), queues remote ones, and records each result.

In why-run mode the same walk decides instead of converging: guards are evaluated (a shell
guard too, as Chef does), waits are not waited, no action is taken, and results go to a plan
instead of the store; remote notifications are resolved to their nodes but never queued.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flock_node import trace
from flock_node.engine.context import RunContext, chain_origin, derived_id
from flock_node.engine.errors import ResourceFailure
from flock_node.engine.guards import check_guards, wait
from flock_node.engine.notifications import DelayedQueue
from flock_node.engine.recording import PlanRecorder, Recorder
from flock_node.engine.resources import Resource
from flock_node.store import INTERRUPTED, OutboxItem

if TYPE_CHECKING:
    from flock_node.engine.runner import Engine

log = logging.getLogger("flock.engine")

MAX_NOTIFY_DEPTH = 32  # immediate notifications nested deeper than this are a loop
MAX_DELAYED = 10_000  # delayed notifications run per run, against notification loops

Outcome = tuple[str, str | None, str]  # (result, error, output)


class Run:
    """Applies actions, records results, fires notifications; `why_run`: only decides."""

    def __init__(self, engine: Engine, ctx: RunContext, lookup: Callable[[str], Resource | None],
                 why_run: bool = False):
        self.engine = engine
        self.ctx = ctx
        self.lookup = lookup
        self.why_run = why_run
        self.rec: Recorder | PlanRecorder = (
            PlanRecorder() if why_run else Recorder(engine.store, ctx.run_id))
        self.seq = 0
        self.updated = 0
        self.error: str | None = None
        self.stopped = False
        self.interrupted: str | None = None  # the run's error once the kill cut an action
        self.delayed = DelayedQueue()
        self.held_remote = False
        self.sent_keys: dict[str, int] = {}

    def walk(self, resources: list[Resource], progress: Callable[[int, int, str], None]) -> None:
        """Every resource in order until a failure or a stop, then the delayed notifications;
        a crash is the run's error, never raised (the worker thread must survive it)."""
        try:
            n = len(resources)
            for k, res in enumerate(resources, 1):
                if self.ctx.stop.is_set():
                    self.stopped = True
                    break
                progress(k, n, res.id)
                if not self.apply(res, res.action):
                    break
            self.run_delayed()
        except Exception as e:
            log.exception("%s crashed", self.ctx.kind)
            self.error = self.error or f"internal error: {type(e).__name__}: {e}"

    # -- one resource, one action --------------------------------------------------------------
    def apply(self, res: Resource, action: str, depth: int = 0) -> bool:
        """Run `action` on `res` and its immediate notifications; False ends the run."""
        t0 = time.perf_counter()
        result, error, output = self._attempt(res, action)
        items: list[OutboxItem] = []
        if result == "updated":
            self.updated += 1
            items, notes = self._remote_items(res, action)
            if notes and not self.why_run:  # a plan lists them with its remote notifications
                output = (output + "\n" if output else "") + "\n".join(notes)
        self.seq += 1
        early = self.engine._outbox_early(items) if items and self._derived_ids() else None
        try:
            self.rec.record(
                self.seq, res.id, action, result, time.perf_counter() - t0, error,
                output or None, items,
                [n for n in res.notifications if res.fires(n.on)] if result == "updated" else [],
            )
        except BaseException:
            self.engine._outbox_abandoned(early)
            raise
        if items and not self.why_run:
            trace.stamp("outbox_committed")
            self.held_remote |= any(i.timing == "delayed" for i in items)
            self.engine._outbox_changed(items, early)
        if result == "failed":
            log.warning("%s %s%s failed: %s", res.id, action,
                        " would have" if self.why_run else "", error)
            if error is not None and error.startswith(INTERRUPTED) and not self.interrupted:
                self.interrupted = f"{error} ({res.id})"
                self.stopped = True
            if self.stopped or not res.props.get("ignore_failure"):
                if self.error is None and not self.stopped:
                    self.error = f"{res.id}: {error}"
                return False
        if result != "updated":
            return True
        for n in res.notifications:
            if not res.fires(n.on):
                continue
            if n.timing == "delayed":
                self.delayed.add(n.target, n.action)
                continue
            target = self.lookup(n.target)
            if target is None:
                return self._fail_notify(res.id, f"notifies unknown resource {n.target}")
            if depth >= MAX_NOTIFY_DEPTH:
                return self._fail_notify(
                    res.id,
                    f"immediate notifications nested deeper than {MAX_NOTIFY_DEPTH} (a loop?)",
                )
            if not self.apply(target, n.action, depth + 1):
                return False
        return True

    def _fail_notify(self, rid: str, msg: str) -> bool:
        if self.error is None:
            self.error = f"{rid}: {msg}"
        return False

    def _attempt(self, res: Resource, action: str) -> Outcome:
        """(result, error, output) of one action, with guards, waits and retries."""
        if action == "nothing":
            return "up_to_date", None, ""
        ended = check_guards(res)
        if ended is not None:
            return ended
        if self.why_run:
            return self._decide(res, action)
        for w in res.waits:
            err, stopped = wait(w, self.ctx.stop)
            self.stopped |= stopped
            if err:
                return "failed", err, ""
        props = res.props
        attempts = 1 + props.get("retries", 0)
        notes: list[str] = []
        for attempt in range(1, attempts + 1):
            try:
                changed, output = res.act(action)
            except ResourceFailure as e:
                if attempt < attempts and not self.ctx.stop.is_set():
                    notes.append(f"attempt {attempt} failed: {e}")
                    if not self.ctx.stop.wait(props.get("retry_delay", 0.0)):
                        continue
                out = "\n".join([*notes, e.output]) if notes else e.output
                suffix = f" (after {attempt} attempts)" if attempt > 1 else ""
                return "failed", f"{e}{suffix}", out
            except Exception as e:  # a bug in an action must not kill the worker thread
                log.exception("%s %s crashed", res.id, action)
                return "failed", f"{type(e).__name__}: {e}", ""
            if notes:
                output = "\n".join([*notes, output])
            return ("updated" if changed else "up_to_date"), None, output
        raise AssertionError("unreachable")

    def _decide(self, res: Resource, action: str) -> Outcome:
        """Why-run: what the action would do, and why; nothing is changed."""
        waits = [f"would first {w.kind} {w.text}" for w in res.waits]
        try:
            d = res.decide(action)
        except ResourceFailure as e:
            return "failed", str(e), "\n".join(waits)
        except Exception as e:
            log.exception("%s %s crashed deciding", res.id, action)
            return "failed", f"{type(e).__name__}: {e}", ""
        why = "\n".join([*waits, d.why])
        return ("updated" if d.would_converge and d.updates else "up_to_date"), None, why

    # -- remote notifications ------------------------------------------------------------------
    def _remote_items(self, res: Resource, action: str) -> tuple[list[OutboxItem], list[str]]:
        eng, ctx = self.engine, self.ctx
        cause: dict[str, Any] = {
            "node": eng.node, "run": ctx.run_id, "resource": res.id, "action": action
        }
        origin = chain_origin(ctx.cause)
        if origin:
            cause["origin"] = origin
        items: list[OutboxItem] = []
        notes: list[str] = []
        for rn in res.remote_notifications:
            if not res.fires(rn.on):
                continue
            names = eng._resolve(rn.node, rn.tag)
            if not names:
                where = f"node={rn.node}" if rn.node is not None else f"tag={rn.tag}"
                why = f"no node matched {where}"
                notes.append(f"remote_notifies {rn.action} {rn.target} {where}: no node matched")
                items.append(OutboxItem(where, rn.target, rn.action, ctx.hops + 1, dict(cause),
                                        rn.timing, unmatched=why,
                                        **self._item_id(res.id, action, where, rn.target,
                                                        rn.action)))
            for name in names:
                nid = self._item_id(res.id, action, name, rn.target, rn.action)
                items.append(
                    OutboxItem(name, rn.target, rn.action, ctx.hops + 1, dict(cause), rn.timing,
                               **nid)
                )
        for row in eng.store.subscriptions.of(res.id):
            nid = self._item_id(res.id, action, row.subscriber, row.subscriber_resource,
                                row.action, row.id)
            items.append(
                OutboxItem(
                    row.subscriber,
                    row.subscriber_resource,
                    row.action,
                    ctx.hops + 1,
                    {**cause, "subscription": row.id},
                    "immediately",
                    **nid,
                )
            )
        return items, notes

    def _parent(self) -> str | None:
        """The notification a reaction runs for (None for a converge)."""
        if self.ctx.kind != "reaction":
            return None
        parent = (self.ctx.cause or {}).get("notification")
        return str(parent) if parent else None

    def _derived_ids(self) -> bool:
        """This run's remote notifications have ids derived from its cause: sending one twice
        (once before a crash, again when the reaction runs again) is kept once by the
        receiver."""
        return not self.why_run and self._parent() is not None

    def _item_id(self, *parts: str) -> dict[str, str]:
        """A reaction's downstream notification gets an id derived from the notification that
        caused it, so the same reaction run again after a crash sends the same ids and the next
        hop de-duplicates them. A converge's get fresh ones (each converge is a new cause)."""
        parent = self._parent()
        if not parent:
            return {}
        key = "\x1f".join((str(parent), *parts))
        # The same resource may send the same notification twice in one run (a local notify
        # loop): number the occurrences, deterministically.
        k = self.sent_keys[key] = self.sent_keys.get(key, 0) + 1
        return {"id": derived_id(f"{key}\x1f{k}")}

    # -- the end of a run ------------------------------------------------------------------------
    def run_delayed(self) -> None:
        """Run the delayed notifications; after a stop, record them skipped instead."""
        count = 0
        while (item := self.delayed.pop()) is not None:
            target_id, action = item
            count += 1
            if self.stopped or self.ctx.stop.is_set() or count > MAX_DELAYED:
                self.stopped = self.stopped or self.ctx.stop.is_set()
                why = (
                    "stopped" if self.stopped else f"more than {MAX_DELAYED} delayed notifications"
                )
                self.seq += 1
                self.rec.record(self.seq, target_id, action, "skipped", 0.0,
                                f"delayed notification not run: {why}", None, [], [])
                continue
            target = self.lookup(target_id)
            if target is None:
                self._fail_notify(target_id, "delayed notification of an unknown resource")
                continue
            # A failed delayed action fails the run but the others still run: each is the
            # reaction to a change that already happened.
            self.apply(target, action)
