"""The compile in progress: where DSL calls declare their resources.

The engine sets a collector for the compiling thread; `flock_node.dsl` declares into it and
refuses to work outside a compile. Every declaration remembers the recipe file:line it came
from, so errors found later (a dangling notification target) still point at the recipe.
"""

from __future__ import annotations

import sys
import threading
from types import FrameType
from typing import TYPE_CHECKING

from flock_node.engine.errors import RecipeError

if TYPE_CHECKING:
    from flock_node.engine.resources import Resource

_local = threading.local()


class Collector:
    """The resources declared so far by one compile, in order."""

    def __init__(self, files: set[str]):
        self.files = files
        self.resources: list[Resource] = []
        self.by_id: dict[str, Resource] = {}

    def add(self, res: Resource) -> None:
        prev = self.by_id.get(res.id)
        if prev is not None:
            raise RecipeError(
                f"{res.source}: {res.id}: duplicate resource (first declared at {prev.source})"
            )
        res.seq = len(self.resources)
        self.resources.append(res)
        self.by_id[res.id] = res


def current() -> Collector:
    """The collector of the compile running in this thread, or a clear error."""
    col: Collector | None = getattr(_local, "collector", None)
    if col is None:
        raise RecipeError(
            "flock_node.dsl resources can only be declared inside a recipe compiled by the "
            "engine (flock-node run NAME --recipe FILE)"
        )
    return col


def active() -> Collector | None:
    return getattr(_local, "collector", None)


def set_current(col: Collector | None) -> None:
    _local.collector = col


def caller_source() -> str:
    """file:line of the innermost recipe frame calling into the DSL."""
    col = active()
    files = col.files if col else set()
    first = sys._getframe(2)
    f: FrameType | None = first
    while f is not None:
        if f.f_code.co_filename in files:
            return f"{f.f_code.co_filename}:{f.f_lineno}"
        f = f.f_back
    return f"{first.f_code.co_filename}:{first.f_lineno}" if first else "<unknown>"
