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
- A why-run (`why_run`) compiles without persisting, walks the same way deciding instead of
  converging (see run.py), and is recorded in history as kind `why-run`, nothing else.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flock_node.engine.context import Hooks, RunContext, run_env
from flock_node.engine.errors import RecipeError, UnknownAction, UnknownResource
from flock_node.engine.limits import killable
from flock_node.engine.recipe import Compiled, compile_recipes, restore
from flock_node.engine.recording import PlanRecorder
from flock_node.engine.resources import Resource
from flock_node.engine.run import Run
from flock_node.store import OutboxItem, ResourceRow, Store

__all__ = ["Engine", "Hooks", "RunContext"]

log = logging.getLogger("flock.engine")


def failure_text(e: Exception) -> str:
    """Why a compile failed, in words: the recipe's own message, or the crash."""
    if isinstance(e, RecipeError):
        return str(e)
    return f"compile failed: {type(e).__name__}: {e}"


def compile_failure(e: Exception) -> str:
    """A failed compile as the run's error (a crash is logged with its traceback)."""
    if not isinstance(e, RecipeError):
        log.error("compile crashed", exc_info=e)
    return failure_text(e)


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
        # Why the last compile failed (None: it did): the node then answers `not_ready` for
        # a resource it does not know, since the recipe that may declare it is broken.
        self.compile_error: str | None = None
        self._lock = threading.Lock()  # one run at a time
        # One why-run at a time, beside a converge: it changes nothing, so it need not wait.
        self._why_lock = threading.Lock()

    # -- hooks -----------------------------------------------------------------------------------
    def _resolve(self, node: str | None, tag: str | None) -> list[str]:
        if self.hooks is None:
            return [node] if node else []
        return list(self.hooks.resolve_targets(node, tag))

    def _outbox_changed(self, items: list[OutboxItem] | None = None, early: Any = None) -> None:
        if self.hooks is None:
            return
        try:
            added = getattr(self.hooks, "outbox_added", None)
            if items is not None and added is not None:
                added(items, early) if early is not None else added(items)
            else:
                self.hooks.outbox_changed()
        except Exception:
            log.exception("outbox_changed hook failed")

    def _outbox_early(self, items: list[OutboxItem]) -> Any:
        """Hand a reaction's rows to the agent before their commit (see Hooks); None: not."""
        early = getattr(self.hooks, "outbox_early", None)
        if early is None:
            return None
        try:
            return early(items)
        except Exception:
            log.exception("outbox_early hook failed")
            return None

    def _outbox_abandoned(self, early: Any) -> None:
        if early is not None and self.hooks is not None:
            try:
                self.hooks.outbox_abandoned(early)  # type: ignore[attr-defined]
            except Exception:
                log.exception("outbox_abandoned hook failed")

    # -- compile ---------------------------------------------------------------------------------
    def compile(self) -> list[ResourceRow]:
        """Compile all recipes in order and persist the resources; RecipeError on failure."""
        try:
            compiled = compile_recipes(self.recipes)
        except Exception as e:
            self.compile_error = failure_text(e)
            raise
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
        self.compile_error = None
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
        with self._lock, run_env(ctx), killable(ctx.kill):
            self.store.runs.start(ctx.run_id, ctx.kind, ctx.cause)
            try:
                self.compile()
            except Exception as e:
                return self._finish(ctx, None, compile_failure(e))
            run = Run(self, ctx, self._lookup_fn())
            run.walk(self._compiled.resources if self._compiled else [],
                     lambda k, n, rid: self._progress(ctx, k, n, rid))
            return self._finish(ctx, run)

    def run_action(self, resource_id: str, action: str, ctx: RunContext) -> dict[str, Any]:
        """Run `action` on a persisted resource out of band (a remote notification, a CLI call)."""
        with self._lock, run_env(ctx), killable(ctx.kill):
            lookup = self._lookup_fn()
            res = lookup(resource_id)
            if res is None:
                raise UnknownResource(resource_id)
            if action not in res.actions:
                raise UnknownAction(resource_id, action, list(res.actions))
            if not ctx.opened:
                self.store.runs.start(ctx.run_id, ctx.kind, ctx.cause)
            run = Run(self, ctx, lookup)
            try:
                self._progress(ctx, 1, 1, res.id)
                run.apply(res, action)
                run.run_delayed()
            except Exception as e:
                log.exception("run_action crashed")
                run.error = run.error or f"internal error: {type(e).__name__}: {e}"
            return self._finish(ctx, run)

    def why_run(self, ctx: RunContext) -> dict[str, Any]:
        """Compile and decide, changing nothing and sending nothing: each resource's would-be
        result and why, the notifications it would fire and the nodes they would reach. The
        plan is recorded in history as kind `why-run`; resources, outbox and subscriptions
        are not touched."""
        ctx.kind = "why-run"
        with self._why_lock, run_env(ctx):
            self.store.runs.start(ctx.run_id, "why-run", ctx.cause)
            try:
                compiled = compile_recipes(self.recipes)  # not persisted
            except Exception as e:
                return self._finish(ctx, None, compile_failure(e))
            run = Run(self, ctx, compiled.by_id.get, why_run=True)
            run.walk(compiled.resources, lambda k, n, rid: None)
            return self._finish(ctx, run)

    @staticmethod
    def _progress(ctx: RunContext, k: int, n: int, rid: str) -> None:
        if ctx.progress is not None:
            try:
                ctx.progress(k, n, rid)
            except Exception:
                log.exception("progress callback failed")

    def _finish(
        self, ctx: RunContext, run: Run | None, error: str | None = None
    ) -> dict[str, Any]:
        updated = total = 0
        plan = run.rec if run is not None and isinstance(run.rec, PlanRecorder) else None
        if plan is not None:
            self.store.runs.record_why_run(ctx.run_id, plan.history_rows(), run.updated if run else 0)
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
        out: dict[str, Any] = {
            "id": ctx.run_id,
            "status": "ok" if error is None else "failed",
            "error": error,
            "updated": updated,
            "total": total,
        }
        if ctx.kind == "why-run":
            out.update(kind="why-run", node=self.node, resources=plan.rows if plan else [])
        return out
