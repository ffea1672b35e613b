"""The command palette (ctrl+p): every console command, searchable."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from textual.command import DiscoveryHit, Hit, Hits, Provider

Command = tuple[str, str, Callable[[], Any]]


def commands(app: Any, main: Any) -> list[Command]:
    """(title, help, callback) for each command the console allows now."""
    cmds: list[Command] = []

    def add(title: str, help_: str, action: str, *params: Any) -> None:
        if app.allowed(action, params) is False:
            return
        cmds.append((title, help_, partial(getattr(main, f"action_{action}"), *params)))

    add("Run chef", "run_chef on the marked nodes, or the cursor node", "run_chef")
    add("Why-run", "what a converge of the marked (or cursor) nodes would do; nothing runs",
        "why_run")
    add("Rolling run", "converge the marked nodes a few at a time (max parallel, max fail)",
        "rolling")
    add("Open node screen", "resources, runs, subscriptions, events of the cursor node",
        "open_node")
    add("Send notification", "run an action on a resource of the cursor node", "notify_node")
    add("Wire a subscription", "the cursor node reacts to a remote resource", "subscribe")
    add("Mark / unmark node", "toggle the mark on the cursor node", "mark")
    add("Mark all / unmark all", "", "mark_all")
    add("Filter nodes", "type words to match name, state, tags", "filter")
    add("Sort by next column", f"now: {main.table.sort_column}", "sort")
    add("Cancel macro / clear filter", "", "cancel")
    add("Help: key bindings", "", "help")
    add("Quit", "", "quit")
    for m in app.macros.values():
        add(f"Macro: {m.name}", f"[{m.key}] {m.description} — {' ; '.join(m.steps)}", "macro",
            m.name)
    return cmds


class FlockCommands(Provider):
    """Every console command in the palette (ctrl+p)."""

    def _commands(self) -> list[Command]:
        fn = getattr(self.app, "palette_commands", None)
        return fn() if fn is not None else []

    async def discover(self) -> Hits:
        for title, help_, cb in self._commands():
            yield DiscoveryHit(title, cb, help=help_)

    async def search(self, query: str) -> Hits:
        m = self.matcher(query)
        for title, help_, cb in self._commands():
            score = m.match(title)
            if score > 0:
                yield Hit(score, m.highlight(title), cb, help=help_)
