"""The Flock console: a live table of the flock, driven from the keyboard.

The connection (`connection.py`) polls `nodes()` and folds the nodes' heartbeats and events
into the view, then posts messages (`messages.py`); the app logs them and hands each screen
its copy. The main screen flushes changed cells twice a second; the node screen reloads
on the events that concern its node. Styles live in `console.tcss`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar

from rich.text import Text
from textual import on
from textual.app import App
from textual.binding import Binding
from textual.color import Color
from textual.css.query import NoMatches
from textual.widgets import RichLog

from flock_node import paths
from flock_node.client import AsyncFlock
from flock_node.protocol import Event
from flock_tui import macros as macros_mod
from flock_tui.connection import Connection
from flock_tui.identity import identity_of
from flock_tui.keymap import check_keymap, help_rows, make_main_screen
from flock_tui.keys import CHANGING_ACTIONS, builtin_keys
from flock_tui.macros import ConfigError, ConsoleConfig, Macro
from flock_tui.messages import ConnectionProblem, MembersUpdated, NodeEvent
from flock_tui.model import FlockView, Styles, event_text
from flock_tui.palette import FlockCommands, commands
from flock_tui.run_actions import RunActions
from flock_tui.screens.help import HelpScreen
from flock_tui.screens.main import MainScreen
from flock_tui.screens.node import NodeScreen
from flock_tui.screens.wizards import notify_wizard, subscribe_wizard
from flock_tui.widgets.flock_table import FlockTable

WATCH_INTERVAL = 0.25  # how soon a row scrolled into view gets its node's live events

__all__ = ["FlockApp", "FlockTable", "builtin_keys", "run_console"]


class FlockApp(RunActions, App[int]):
    """The console. `clock` is injectable so snapshot tests can freeze "5s ago"."""

    TITLE = "Flock"
    CSS_PATH = "console.tcss"
    COMMANDS = App.COMMANDS | {FlockCommands}
    BINDINGS: ClassVar = [Binding("ctrl+q", "quit", "Quit", show=False, id="app.quit")]
    # Every screen gets -narrow/-wide and -short/-tall: console.tcss fits them to the terminal.
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (34, "-tall")]

    def __init__(self, args: argparse.Namespace, *, clock: Callable[[], float] = time.time,
                 config: ConsoleConfig | None = None, connect: bool = True):
        super().__init__()
        self.args = args
        self.clock = clock
        self.identity = identity_of(args)
        # An observer may only read: its console is read-only by itself, as --read-only.
        self.read_only = bool(getattr(args, "read_only", False)) or self.identity.observer
        self.sub_title = self.identity.title()
        self.connect_enabled = connect
        self.config_error: str | None = None
        self.config_from_file = config is None
        if config is None:
            try:
                config = macros_mod.load_config(builtin_keys=builtin_keys())
                check_keymap(config)
            except ConfigError as e:
                self.config_error = str(e)
                config = ConsoleConfig()
        self.config = config
        self.macros: dict[str, Macro] = {m.name: m for m in config.macros}
        self.view = FlockView(clock)
        self.node_events: dict[str, deque[Text]] = {}
        self.styles_ = Styles()
        self.connection = Connection(args, self.view, self.post_message, self.log_line,
                                     lambda: self.styles_)
        self.status_line = "connecting…"
        self.main: MainScreen | None = None
        self.ready = False
        self.pending_log: list[Text] = []

    # -- what tests, scripts and the screens reach --------------------------------------------
    @property
    def flock(self) -> AsyncFlock | None:
        return self.connection.flock

    @property
    def table(self) -> FlockTable:
        assert self.main is not None
        return self.main.table

    @property
    def shown(self) -> dict[str, dict[str, Text]]:
        return self.table.shown

    @property
    def marks(self) -> set[str]:
        return self.main.marks if self.main is not None else set()

    @property
    def sort_column(self) -> str:
        return self.table.sort_column

    @property
    def macro_state(self) -> tuple[str, int, int, str] | None:
        return self.main.macro_state if self.main is not None else None

    @property
    def macro_worker(self) -> Any:
        return self.main.macro_worker if self.main is not None else None

    def cursor_node(self) -> str | None:
        return self.main.cursor_node() if self.ready and self.main is not None else None

    def targets(self) -> list[str]:
        return self.main.targets() if self.main is not None else []

    def flush(self) -> None:
        if self.main is not None:
            self.main.flush()

    def looked_at(self) -> tuple[list[str], list[str]]:
        """The nodes the operator looks at (cursor, visible rows, marked ones) and the open
        node screens': the connection holds bus connections to those only."""
        pinned = [s.node for s in self.screen_stack if isinstance(s, NodeScreen)]
        if not self.ready or self.main is None:
            return [], pinned
        try:
            rows = self.table.rows_on_screen()
        except NoMatches:  # shutting down
            return [], pinned
        cursor = self.cursor_node()
        return [*([cursor] if cursor else []), *rows, *sorted(self.marks)], pinned

    def watch_nodes(self) -> None:
        looked, pinned = self.looked_at()
        self.connection.look(looked, pinned, time.monotonic())

    def apply_members(self, rows: list[dict[str, Any]]) -> None:
        self.connection.apply_members(rows)

    def on_bus_message(self, env: Any, msg: Any, pipe: int) -> None:
        self.connection.on_bus_message(env, msg, pipe)

    def on_flock_event(self, ev: Event) -> None:
        self.connection.on_event(ev)

    def palette_commands(self) -> list[tuple[str, str, Callable[[], Any]]]:
        return commands(self, self.main) if self.main is not None else []

    # -- lifecycle ------------------------------------------------------------------------------
    def main_mounted(self) -> None:
        self.ready = True
        assert self.main is not None
        log = self.main.query_one("#log", RichLog)
        for line in self.pending_log:
            log.write(line)
        self.pending_log.clear()
        self.main.update_title()
        self.main.flush()

    def on_mount(self) -> None:
        self.styles_ = self.theme_styles()
        self.theme_changed_signal.subscribe(self, self._theme_changed)
        if self.config.keymap:
            self.set_keymap(self.config.keymap)
        self.main = make_main_screen(list(self.macros.values()), self.read_only)()
        self.push_screen(self.main)
        if self.config_error:
            self.log_error(f"console.toml: {self.config_error} (macros disabled)")
        elif self.macros and self.config_from_file:
            self.log_line(Text(f"{len(self.macros)} macro(s) from {paths.console_config()}",
                               style=self.styles_.muted))
        if self.connect_enabled:
            self.run_worker(self.connection.poll_loop(), group="poll", exclusive=True,
                            exit_on_error=False)
            self.set_interval(WATCH_INTERVAL, self.watch_nodes)

    def theme_styles(self) -> Styles:
        v = self.get_css_variables()
        bg = Color.parse(v.get("background", "#000000"))

        def col(name: str, default: str) -> str:
            try:
                c = Color.parse(v.get(name, default))
                if c.a < 1:
                    c = bg.blend(c.with_alpha(1.0), c.a)
                return c.hex6
            except Exception:  # noqa: BLE001
                return default

        return Styles(success=col("success", "green"), warning=col("warning", "yellow"),
                      error=col("error", "red"), accent=col("primary-lighten-2", "cyan"),
                      muted=col("foreground-muted", "grey50"))

    def _theme_changed(self, _theme: Any) -> None:
        self.styles_ = self.theme_styles()
        if self.main is not None:
            self.main.table.force_all = True

    async def on_unmount(self) -> None:
        # Cancel the receivers before closing their sockets (pynng #108).
        for w in list(self.workers):
            if w.group == "poll":
                w.cancel()
        await self.connection.close()

    # -- messages from the connection: logged here, each screen gets its copy ------------------
    @on(MembersUpdated)
    def _members_updated(self, msg: MembersUpdated) -> None:
        if self.status_line == "connecting…":  # the first answer, even an empty flock
            self.status_line = ""
            if self.main is not None:
                self.main.update_title()
        for scr in self.screen_stack:
            scr.post_message(MembersUpdated(msg.names))

    @on(NodeEvent)
    def _flock_event(self, msg: NodeEvent) -> None:
        ev = msg.event
        line = event_text(ev, self.styles_)
        if line is not None:
            self.log_line(line[0], ev.node, at=ev.at)
        for scr in self.screen_stack:
            scr.post_message(NodeEvent(ev))

    @on(ConnectionProblem)
    def _problem(self, msg: ConnectionProblem) -> None:
        if msg.problem:
            self.log_error(msg.problem)
        self.status_line = msg.problem
        if self.main is not None:
            self.main.update_title()

    # -- log ------------------------------------------------------------------------------------
    def log_line(self, text: Text, node: str | None = None, at: float | None = None) -> None:
        stamp = time.strftime("%H:%M:%S ", time.localtime(at or self.clock()))
        line = Text(stamp, style=self.styles_.muted) + text
        if node:
            self.node_events.setdefault(node, deque(maxlen=200)).append(line)
            for scr in self.screen_stack:
                if isinstance(scr, NodeScreen) and scr.node == node:
                    scr.add_event(line)
        if self.ready and self.main is not None:
            try:
                self.main.query_one("#log", RichLog).write(line)
            except NoMatches:  # shutting down
                pass
        else:
            self.pending_log.append(line)

    def log_error(self, msg: str, node: str | None = None) -> None:
        self.log_line(Text(f"✗ {msg}", style=f"bold {self.styles_.error}"), node)
        self.notify(msg, severity="error", timeout=6, markup=False)

    def from_thread(self, fn: Callable[..., Any], *a: Any) -> None:
        """Call `fn` on the app's loop from a worker thread; nothing once it is closing."""
        try:
            self.call_from_thread(fn, *a)
        except RuntimeError:  # the app is shutting down
            pass

    # -- actions the screens ask for ------------------------------------------------------------
    def allowed(self, action: str, parameters: tuple[object, ...]) -> bool:
        if self.read_only:
            if action in CHANGING_ACTIONS:
                return False
            if action == "macro" and parameters:
                m = self.macros.get(str(parameters[0]))
                return m is not None and not m.changes_things
        return True

    def open_notify(self, node: str) -> None:
        if self.read_only or self.flock is None:
            return
        self.push_screen(notify_wizard(self, node))

    def open_subscribe(self, node: str) -> None:
        if self.read_only or self.flock is None:
            return

        def done(local: str, remote: str) -> None:
            self.notify(f"{local} now reacts to {remote}", title="Subscribed", markup=False)
            for scr in self.screen_stack:
                if isinstance(scr, NodeScreen) and scr.node in (local, remote):
                    scr.reload()

        self.push_screen(subscribe_wizard(self, node, done))

    def show_help(self) -> None:
        assert self.main is not None
        rows = help_rows(self, self.main, self.macros, self.read_only)
        shown = [m for m in self.macros.values() if not (self.read_only and m.changes_things)]
        self.push_screen(HelpScreen(rows, shown))

    def cancel(self) -> None:
        if self.main is not None:
            self.main.action_cancel()


def run_console(args: argparse.Namespace) -> int:
    """Open the console; returns the exit code (errors show in the UI, not as tracebacks)."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        print("flockctl: the console needs a terminal; in scripts use a command "
              "(`flockctl nodes`, `flockctl run-chef ...`; see `flockctl --help`)",
              file=sys.stderr)
        return 2
    app = FlockApp(args)
    result = app.run()
    if app.config_error:
        print(f"flockctl: {app.config_error}", file=sys.stderr)
    return int(result or 0)
