"""Compiling recipes: run the recipe files in order into a fresh collector, then link.

Linking moves local `subscribes` onto their targets and checks every local notification
target exists and has the action; everything wrong becomes one RecipeError naming file:line.
"""

from __future__ import annotations

import builtins
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flock_node.engine import ansible_resources as _ansible_types  # noqa: F401 (registers)
from flock_node.engine import collector
from flock_node.engine.errors import RecipeError
from flock_node.engine.resources import TYPES, Notify, Resource
from flock_node.store.subscriptions import WantedSpec


@dataclass
class Compiled:
    """The result of one successful compile."""

    resources: list[Resource]
    by_id: dict[str, Resource]
    wanted: list[WantedSpec] = field(default_factory=list)


def declare(type_name: str, name: Any, props: dict[str, Any]) -> Resource:
    """Called by the DSL: build, validate and collect one resource."""
    col = collector.current()
    src = collector.caller_source()
    res = TYPES[type_name](name, dict(props), src)
    col.add(res)
    return res


def _recipe_line(exc: BaseException, path: str) -> int | None:
    line = None
    for fs in traceback.extract_tb(exc.__traceback__):
        if fs.filename == path:
            line = fs.lineno
    return line


def compile_recipes(paths: list[Path]) -> Compiled:
    """Run every recipe in order; raise RecipeError (file:line) on the first problem."""
    names = [str(p) for p in paths]
    col = collector.Collector(set(names))
    previous = collector.active()
    collector.set_current(col)
    try:
        for path in names:
            try:
                source = Path(path).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise RecipeError(
                    f"{path}: cannot read recipe: {getattr(e, 'strerror', None) or e}"
                ) from None
            try:
                code = compile(source, path, "exec")
            except SyntaxError as e:
                raise RecipeError(f"{path}:{e.lineno}: syntax error: {e.msg}") from None
            ns = {"__name__": "__flock_recipe__", "__file__": path, "__builtins__": builtins}
            try:
                exec(code, ns)
            except RecipeError:
                raise
            except (Exception, SystemExit) as e:
                line = _recipe_line(e, path)
                where = f"{path}:{line}" if line else path
                raise RecipeError(f"{where}: {type(e).__name__}: {e}") from e
    finally:
        collector.set_current(previous)
    return link(col.resources, col.by_id)


def link(resources: list[Resource], by_id: dict[str, Resource]) -> Compiled:
    errors: list[str] = []
    for res in resources:
        for sub in res.subscriptions:
            target = by_id.get(sub.target)
            if target is None:
                errors.append(
                    f"{sub.source}: {res.id}: subscribes to unknown resource {sub.target}"
                )
                continue
            target.notifications.append(Notify(sub.action, res.id, sub.timing, sub.source))
    for res in resources:
        for n in res.notifications:
            target = by_id.get(n.target)
            if target is None:
                errors.append(f"{n.source}: {res.id}: notifies unknown resource {n.target}")
            elif n.action not in target.actions:
                errors.append(
                    f"{n.source}: {res.id}: notifies unknown action {n.action!r} of {n.target} "
                    f"(allowed: {', '.join(target.actions)})"
                )
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise RecipeError(errors[0] + more)
    wanted = [
        WantedSpec(resource=res.id, action=s.action, node=s.node, remote_resource=s.target)
        for res in resources
        for s in res.remote_subscriptions
    ]
    return Compiled(resources, by_id, wanted)


def restore(row: Any) -> Resource:
    """Rebuild a resource from its persisted store row (type, name, properties, source)."""
    cls = TYPES.get(row.type)
    if cls is None:
        raise RecipeError(f"{row.source}: {row.id}: unknown resource type {row.type!r}")
    return cls.restore(row.name, row.properties, row.source)
