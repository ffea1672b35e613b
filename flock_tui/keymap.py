"""Bindings: the main screen's (built-ins and macros, merged at class creation), the ids a
[keymap] may remap, and the rows of the help screen."""

from __future__ import annotations

from typing import Any

from textual.binding import Binding
from textual.screen import Screen

from flock_node import paths
from flock_tui.keys import BUILTIN_BINDINGS, CHANGING
from flock_tui.macros import ConfigError, ConsoleConfig, Macro
from flock_tui.screens.confirm import ConfirmScreen, RunConfirmScreen
from flock_tui.screens.help import HelpScreen
from flock_tui.screens.main import MainScreen
from flock_tui.screens.node import NodeScreen
from flock_tui.screens.rolling import RollForm, RollScreen
from flock_tui.screens.whyrun import WhyRunScreen
from flock_tui.screens.wizards import Wizard
from flock_tui.widgets.flock_table import FlockTable

SCREENS = (MainScreen, NodeScreen, Wizard, ConfirmScreen, RunConfirmScreen, HelpScreen,
           WhyRunScreen, RollForm, RollScreen, FlockTable)
NODE_HELP = [("esc", "Node screen: back", "node.back"),
             ("r", "Node screen: run chef", "node.run_chef"),
             ("w", "Node screen: why-run (nothing runs)", "node.why_run"),
             ("d", "Node screen: remove the selected subscription", "node.unsubscribe"),
             ("t", "Node screen: retry dead notifications", "node.retry"),
             ("tab", "Node screen: next pane", "node.next_pane")]


def binding_ids() -> set[str]:
    """Every binding id a [keymap] may remap: the console's own and its screens'."""
    ids = {b.id for b in BUILTIN_BINDINGS if b.id}
    for cls in SCREENS:
        for b in getattr(cls, "BINDINGS", []):
            if isinstance(b, Binding) and b.id:
                ids.add(b.id)
    return ids


def check_keymap(config: ConsoleConfig) -> None:
    """A [keymap] entry naming no binding is an error that names its line."""
    known = binding_ids() | {m.binding_id for m in config.macros}
    for bid in config.keymap:
        if bid not in known:
            path = paths.console_config()
            try:
                text = path.read_text(encoding="utf-8")
                line = next((i + 1 for i, ln in enumerate(text.splitlines())
                             if bid in ln and "=" in ln), 1)
            except OSError:
                line = 1
            raise ConfigError(f"{path}:{line}: keymap: unknown binding id {bid!r}; "
                              f"known ids: {', '.join(sorted(known))}")


def make_main_screen(macro_list: list[Macro], read_only: bool) -> type[MainScreen]:
    """BINDINGS are merged at class creation: macros become bindings of a fresh subclass."""
    overridden = {m.key for m in macro_list if m.override}
    builtins = [b for b in BUILTIN_BINDINGS
                if b.key not in overridden and not (read_only and b.id in CHANGING)]
    # The footer shows "macros: D deploy-web  p probe" (FlockFooter); the description is the
    # tooltip and `?` lists the steps.
    extra = [Binding(m.key, f"macro({m.name!r})", m.name, id=m.binding_id,
                     tooltip=m.description or " ; ".join(m.steps))
             for m in macro_list if not (read_only and m.changes_things)]
    return type("FlockMainScreen", (MainScreen,), {"BINDINGS": builtins + extra})


def action_and_params(action: str) -> tuple[str, tuple[object, ...]]:
    """`macro('deploy')` → (`macro`, (`deploy`,))."""
    if "(" in action and action.endswith(")"):
        name, _, rest = action.partition("(")
        inner = rest[:-1].strip().strip("'\"")
        return name, (inner,) if inner else ()
    return action, ()


def active_bindings(screen: Screen[Any]) -> list[tuple[str, Binding]]:
    """The flock table's and the screen's bindings, once each, in order."""
    out = []
    seen = set()
    for node in [screen.query_one(FlockTable), screen]:
        for key, bindings in node._bindings.key_to_bindings.items():
            for b in bindings:
                if b.id and b.id not in seen:
                    seen.add(b.id)
                    out.append((key, b))
    return out


def help_rows(app: Any, main: MainScreen, macros: dict[str, Macro],
              read_only: bool) -> list[tuple[str, str, str]]:
    """KEY, WHAT, BINDING ID for every key the operator may use now."""
    rows: list[tuple[str, str, str]] = []
    for _key, binding in active_bindings(main):
        action, params = action_and_params(binding.action)
        if app.allowed(action, params) is False:
            continue
        key = binding.key_display or app.get_key_display(binding)
        if action == "macro":
            m = macros.get(str(params[0])) if params else None
            desc = f"Macro {binding.description}" + (
                f": {m.description}" if m and m.description else "")
            rows.append((key, desc, binding.id or ""))
            continue
        rows.append((key, binding.description or binding.action, binding.id or ""))
    rows.append(("ctrl+p", "Command palette: every command", "app.command_palette"))
    rows += [r for r in NODE_HELP if not (read_only and r[2] in CHANGING)]
    return rows
