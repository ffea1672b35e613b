"""The converge engine: compile, then bring each resource to its action, recording each
result (with its remote notifications, in one store transaction) as it goes.

Rules:
- A failing resource ends the main phase; the resources after it are not recorded. Delayed
  local notifications already queued still run, then the run ends failed.
- ctx.stop (SIGTERM) is checked between resources: the one in progress finishes (a wait or a
  retry delay is cut short), then the run ends failed "stopped"; pending delayed notifications
  are then recorded `skipped` rather than run.
- ctx.kill (the agent's stop timeout ran out) kills the action in progress (its process group,
  or an exception raised in its Python thread): that resource fails with an error starting
  INTERRUPTED and the run ends failed "interrupted: ...".
- Guards run at most `guard_timeout` seconds, python_block at most its `timeout`.
- A run's `total` is the number of results it recorded (notified actions included).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from flock_node.engine.ansible_session import ansible_session
from flock_node.engine.errors import RecipeError, ResourceFailure, UnknownAction, UnknownResource
from flock_node.engine.limits import CallTimedOut, Interrupted, Kill, call_with_limit, killable
from flock_node.engine.notifications import DelayedQueue
from flock_node.engine.recipe import Compiled, compile_recipes, restore
from flock_node.engine.resources import CALLABLE, RUN_ENV, Resource, Wait, command_env
from flock_node.engine.shell import CommandTimedOut, run_guard
from flock_node.store import INTERRUPTED, STOPPED_BEFORE_ACTION, OutboxItem, ResourceRow, Store

log = logging.getLogger("flock.engine")

MAX_NOTIFY_DEPTH = 32  # immediate notifications nested deeper than this are a loop
MAX_DELAYED = 10_000  # delayed notifications run per run, against notification loops
BATCH_LIMIT = 512  # up-to-date results buffered before one store transaction


class Hooks(Protocol):
    def resolve_targets(self, node: str | None, tag: str | None) -> list[str]: ...

    def outbox_changed(self) -> None: ...

    # Optional: `outbox_added(items)` is told the rows just committed (immediate ones become
    # pending at once), so the agent can send them without reading them back; hooks without
    # it get `outbox_changed()`.


@dataclass
class RunContext:
    """What the agent tells one run: its id, why it runs, and how to report and stop it."""

    run_id: str
    kind: str = "converge"  # converge | reaction
    cause: dict[str, Any] | None = None  # reactions: {"node", "run", "resource", "notification"}
    hops: int = 0
    progress: Callable[[int, int, str], None] | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    kill: Kill = field(default_factory=Kill)  # fired when a stop must not wait any longer
    opened: bool = False  # the caller already committed the run row (start_run)


def derived_id(key: str) -> str:
    """A notification id that is a pure function of `key`."""
    return "n-" + uuid.uuid5(uuid.NAMESPACE_URL, "flock-notification:" + key).hex


def chain_origin(cause: dict[str, Any] | None) -> str | None:
    """The id of the first notification of the chain a reaction belongs to."""
    if not cause:
        return None
    return cause.get("origin") or cause.get("notification")


def reaction_env(ctx: RunContext) -> dict[str, str]:
    """What a reaction's commands see about why they run: FLOCK_RUN_ID always; for a
    reaction FLOCK_NOTIFICATION (the notification applied), FLOCK_ORIGIN (the first
    notification of its chain), FLOCK_SENDER and FLOCK_ATTEMPT (2 or more when an earlier
    attempt was cut by a crash or a stop: the command may check whether its effect is there)."""
    env = {"FLOCK_RUN_ID": ctx.run_id}
    cause = ctx.cause or {}
    if ctx.kind == "reaction" and cause.get("notification"):
        env["FLOCK_NOTIFICATION"] = str(cause["notification"])
        env["FLOCK_ORIGIN"] = str(chain_origin(cause))
        if cause.get("node"):
            env["FLOCK_SENDER"] = str(cause["node"])
        env["FLOCK_ATTEMPT"] = str(cause.get("attempt") or 1)
    return env


class _Recorder:
    """Writes results to the store; quiet up-to-date results are batched into one transaction.

    Any result carrying information (updated, failed, outbox rows) first flushes the batch, so
    the store always sees results in seq order.
    """

    def __init__(self, store: Store, run_id: str):
        self.store = store
        self.run_id = run_id
        self.batch: list[tuple[Any, ...]] = []

    def record(self, seq: int, rid: str, action: str, result: str, duration: float,
               error: str | None, output: str | None, outbox: list[OutboxItem]) -> None:
        if result == "up_to_date" and not outbox and not error:
            self.batch.append((seq, rid, action, result, duration, error, output))
            if len(self.batch) >= BATCH_LIMIT:
                self.flush()
            return
        self.flush()
        self.store.runs.record_result(
            self.run_id, seq, rid, action, result, duration, error, output, outbox=outbox
        )

    def flush(self) -> None:
        if not self.batch:
            return
        batch, self.batch = self.batch, []
        self.store.runs.record_results(self.run_id, batch)


class _Run:
    """One run in progress: applies actions, records results, fires notifications."""

    def __init__(self, engine: Engine, ctx: RunContext, lookup: Callable[[str], Resource | None]):
        self.engine = engine
        self.ctx = ctx
        self.lookup = lookup
        self.rec = _Recorder(engine.store, ctx.run_id)
        self.seq = 0
        self.updated = 0
        self.error: str | None = None
        self.stopped = False
        self.interrupted: str | None = None  # the run's error once the kill cut an action
        self.delayed = DelayedQueue()
        self.held_remote = False
        self.sent_keys: dict[str, int] = {}

    # -- one resource, one action --------------------------------------------------------------
    def apply(self, res: Resource, action: str, depth: int = 0) -> bool:
        """Run `action` on `res` and its immediate notifications; False ends the run."""
        t0 = time.perf_counter()
        result, error, output = self._attempt(res, action)
        items: list[OutboxItem] = []
        if result == "updated":
            self.updated += 1
            items, notes = self._remote_items(res, action)
            if notes:
                output = (output + "\n" if output else "") + "\n".join(notes)
        self.seq += 1
        self.rec.record(
            self.seq, res.id, action, result, time.perf_counter() - t0, error, output or None, items
        )
        if items:
            self.held_remote |= any(i.timing == "delayed" for i in items)
            self.engine._outbox_changed(items)
        if result == "failed":
            log.warning("%s %s failed: %s", res.id, action, error)
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
                return self._fail_notify(res, f"notifies unknown resource {n.target}")
            if depth >= MAX_NOTIFY_DEPTH:
                return self._fail_notify(
                    res, f"immediate notifications nested deeper than {MAX_NOTIFY_DEPTH} (a loop?)"
                )
            if not self.apply(target, n.action, depth + 1):
                return False
        return True

    def _fail_notify(self, res: Resource, msg: str) -> bool:
        if self.error is None:
            self.error = f"{res.id}: {msg}"
        return False

    def _attempt(self, res: Resource, action: str) -> tuple[str, str | None, str]:
        """(result, error, output) of one action, with guards, waits and retries."""
        if action == "nothing":
            return "up_to_date", None, ""
        props = res.props
        for guard, want in (("only_if", True), ("not_if", False)):
            cond = props.get(guard)
            if cond is None:
                continue
            try:
                value = self._guard(res, cond, guard)
            except ResourceFailure as e:  # interrupted, or timed out
                return "failed", str(e), ""
            except Exception as e:
                return "failed", f"{guard} raised {type(e).__name__}: {e}", ""
            if value != want:
                what = cond if isinstance(cond, str) else "callable"
                return "skipped", None, f"skipped: {guard} {what!s} was {str(value).lower()}"
        for w in res.waits:
            err = self._wait(w)
            if err:
                return "failed", err, ""
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

    def _guard(self, res: Resource, cond: Any, guard: str = "guard") -> bool:
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

    def _wait(self, w: Wait) -> str | None:
        """None once the condition holds, else why the resource fails."""
        if w.cond is None:
            return (
                f"{w.kind} cannot be evaluated: the recipe does not compile and the condition "
                f"({w.text}) was restored from the store"
            )
        deadline = time.monotonic() + w.timeout
        last_error = None
        while True:
            try:
                # Bounded too: a condition that never returns must not outlast the wait (by
                # more than a second, so that a last poll near the deadline may still answer).
                limit = max(deadline - time.monotonic(), 0.0) + 1.0
                value = bool(call_with_limit(w.cond, limit))
                if value == (w.kind == "wait_until"):
                    return None
            except CallTimedOut as e:
                how = "" if e.stopped else ", and goes on in the background"
                return (
                    f"{w.kind} timed out after {w.timeout:g} s: {w.text} "
                    f"(the condition did not return{how})"
                )
            except Interrupted as e:  # the action never ran: like a stop during the wait
                self.stopped = True
                return str(e)
            except Exception as e:  # an unreachable node is "not yet", not a crash
                last_error = f"{type(e).__name__}: {e}"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                msg = f"{w.kind} timed out after {w.timeout:g} s: {w.text}"
                return msg + (f" (last error: {last_error})" if last_error else "")
            if self.ctx.stop.wait(min(w.interval, remaining)):
                self.stopped = True
                return f"{STOPPED_BEFORE_ACTION} {w.kind}: {w.text}"

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
            nid = self._item_id(res.id, action, row["subscriber"], row["subscriber_resource"],
                                row["action"], row["id"])
            items.append(
                OutboxItem(
                    row["subscriber"],
                    row["subscriber_resource"],
                    row["action"],
                    ctx.hops + 1,
                    {**cause, "subscription": row["id"]},
                    "immediately",
                    **nid,
                )
            )
        return items, notes

    def _item_id(self, *parts: str) -> dict[str, str]:
        """A reaction's downstream notification gets an id derived from the notification that
        caused it, so the same reaction run again after a crash sends the same ids and the next
        hop de-duplicates them. A converge's get fresh ones (each converge is a new cause)."""
        parent = (self.ctx.cause or {}).get("notification") if self.ctx.kind == "reaction" else None
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
                self.rec.record(
                    self.seq,
                    target_id,
                    action,
                    "skipped",
                    0.0,
                    f"delayed notification not run: {why}",
                    None,
                    [],
                )
                continue
            target = self.lookup(target_id)
            if target is None:
                self._fail_notify_id(target_id, "delayed notification of an unknown resource")
                continue
            # A failed delayed action fails the run but the others still run: each is the
            # reaction to a change that already happened.
            self.apply(target, action)

    def _fail_notify_id(self, rid: str, msg: str) -> None:
        if self.error is None:
            self.error = f"{rid}: {msg}"


@contextlib.contextmanager
def _run_env(ctx: RunContext) -> Iterator[None]:
    token = RUN_ENV.set(reaction_env(ctx))
    try:
        with ansible_session():  # one Ansible worker per run, started on first use
            yield
    finally:
        RUN_ENV.reset(token)


class Engine:
    """Compiles a node's recipes and converges them; the agent calls this from a worker thread."""

    def __init__(
        self,
        node: str,
        recipes: list[Path],
        store: Store,
        hooks: Hooks | None = None,
    ):
        self.node = node
        self.recipes = [Path(p) for p in recipes]
        self.store = store
        self.hooks = hooks
        self._compiled: Compiled | None = None
        self._saved_rows: list[ResourceRow] | None = None
        self._lock = threading.Lock()  # one run at a time

    # -- hooks -----------------------------------------------------------------------------------
    def _resolve(self, node: str | None, tag: str | None) -> list[str]:
        if self.hooks is None:
            return [node] if node else []
        return list(self.hooks.resolve_targets(node, tag))

    def _outbox_changed(self, items: list[OutboxItem] | None = None) -> None:
        if self.hooks is None:
            return
        try:
            added = getattr(self.hooks, "outbox_added", None)
            if items is not None and added is not None:
                added(items)
            else:
                self.hooks.outbox_changed()
        except Exception:
            log.exception("outbox_changed hook failed")

    # -- compile ---------------------------------------------------------------------------------
    def compile(self) -> list[ResourceRow]:
        """Compile all recipes in order and persist the resources; RecipeError on failure."""
        compiled = compile_recipes(self.recipes)
        rows = [
            ResourceRow(
                id=r.id,
                type=r.type,
                name=r.name,
                seq=r.seq,
                actions=list(r.actions),
                default_action=r.action,
                properties=r.properties(),
                source=r.source,
            )
            for r in compiled.resources
        ]
        # An unchanged recipe compiles to the rows this engine already persisted: rewriting
        # them is most of the cost of an up-to-date converge, so only write what changed.
        if rows != self._saved_rows:
            self.store.resources.save(rows)
            self._saved_rows = rows
        # Every compile: the recipe is the truth for the subscriptions it declares, so one
        # removed by hand comes back at the next converge, as it would after a restart.
        self.store.wanted.set_recipe(compiled.wanted)
        self._compiled = compiled
        return rows

    def resource_ids(self) -> list[str]:
        """Ids from the last successful compile (the persisted ones before any compile)."""
        if self._compiled is not None:
            return [r.id for r in self._compiled.resources]
        return [r.id for r in self.store.resources.all()]

    def _lookup_fn(self) -> Callable[[str], Resource | None]:
        compiled = self._compiled
        if compiled is not None:
            return compiled.by_id.get
        restored: dict[str, Resource] = {}

        def lookup(rid: str) -> Resource | None:
            if rid not in restored:
                row = self.store.resources.get(rid)
                if row is None:
                    return None
                try:
                    restored[rid] = restore(row)
                except RecipeError:
                    return None
            return restored[rid]

        return lookup

    # -- runs ------------------------------------------------------------------------------------
    def converge(self, ctx: RunContext) -> dict[str, Any]:
        """Compile, then converge every resource in order; never raises for a failed run."""
        with self._lock, _run_env(ctx), killable(ctx.kill):
            self.store.runs.start(ctx.run_id, ctx.kind, ctx.cause)
            try:
                self.compile()
            except RecipeError as e:
                return self._finish(ctx, None, str(e))
            except Exception as e:
                log.exception("compile crashed")
                return self._finish(ctx, None, f"compile failed: {type(e).__name__}: {e}")
            run = _Run(self, ctx, self._lookup_fn())
            try:
                resources = self._compiled.resources if self._compiled else []
                n = len(resources)
                for k, res in enumerate(resources, 1):
                    if ctx.stop.is_set():
                        run.stopped = True
                        break
                    self._progress(ctx, k, n, res.id)
                    if not run.apply(res, res.action):
                        break
                run.run_delayed()
            except Exception as e:
                log.exception("converge crashed")
                run.error = run.error or f"internal error: {type(e).__name__}: {e}"
            return self._finish(ctx, run)

    def run_action(self, resource_id: str, action: str, ctx: RunContext) -> dict[str, Any]:
        """Run `action` on a persisted resource out of band (a remote notification, a CLI call)."""
        with self._lock, _run_env(ctx), killable(ctx.kill):
            lookup = self._lookup_fn()
            res = lookup(resource_id)
            if res is None:
                raise UnknownResource(resource_id)
            if action not in res.actions:
                raise UnknownAction(resource_id, action, list(res.actions))
            if not ctx.opened:
                self.store.runs.start(ctx.run_id, ctx.kind, ctx.cause)
            run = _Run(self, ctx, lookup)
            try:
                self._progress(ctx, 1, 1, res.id)
                run.apply(res, action)
                run.run_delayed()
            except Exception as e:
                log.exception("run_action crashed")
                run.error = run.error or f"internal error: {type(e).__name__}: {e}"
            return self._finish(ctx, run)

    @staticmethod
    def _progress(ctx: RunContext, k: int, n: int, rid: str) -> None:
        if ctx.progress is not None:
            try:
                ctx.progress(k, n, rid)
            except Exception:
                log.exception("progress callback failed")

    def _finish(
        self, ctx: RunContext, run: _Run | None, error: str | None = None
    ) -> dict[str, Any]:
        updated = total = 0
        if run is not None:
            run.rec.flush()
            updated, total = run.updated, run.seq
            error = run.error
            if run.interrupted:
                error = run.interrupted
            elif run.stopped and error is None:
                error = "stopped"
            elif run.stopped:
                error = f"stopped ({error})"
        self.store.runs.finish(ctx.run_id, error is None, error, total)
        if run is not None and run.held_remote:
            self._outbox_changed()  # finish_run released the delayed remote notifications
        return {
            "id": ctx.run_id,
            "status": "ok" if error is None else "failed",
            "error": error,
            "updated": updated,
            "total": total,
        }
