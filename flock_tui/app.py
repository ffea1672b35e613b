"""The Flock console: a live table of the flock, driven from the keyboard.

Data flow: a poll of `nodes()` every second (one-shot, re-armed after each refresh, so polls
never overlap) gives membership states; the console also dials every node's bus and folds
heartbeats and events in as they arrive. Changes mark rows dirty; a flush 10 times a second
updates only the changed cells (`update_cell` inside `batch_update`), keyed by node name.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.color import Color
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.containers import Horizontal
from textual.coordinate import Coordinate
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, ProgressBar, RichLog, Static
from textual.widgets._footer import FooterKey, FooterLabel
from textual.worker import Worker, get_current_worker

from flock_node import paths
from flock_node.client import AsyncFlock, resolve_key
from flock_node.membership import admit
from flock_node.protocol import Codec, Event, Heartbeat, Leave
from flock_node.transport import Bus, RpcError
from flock_tui import macros as macros_mod
from flock_tui.keys import (  # noqa: F401 - re-exported: tests and macros use them here
    BUILTIN_BINDINGS,
    CHANGING,
    CHANGING_ACTIONS,
    TABLE_KEYS,
    builtin_keys,
)
from flock_tui.macros import ConfigError, ConsoleConfig, Macro, StepError
from flock_tui.model import (
    COLUMNS,
    SORTABLE,
    FlockView,
    Styles,
    change_text,
    event_text,
    matches,
    row_cells,
    sort_key,
)
from flock_tui.screens import (
    ConfirmScreen,
    HelpScreen,
    NodeScreen,
    Step,
    Wizard,
    cursor_key,
    err_text,
)

if TYPE_CHECKING:
    from flock_tui.model import Change

POLL_INTERVAL = 1.0
FLUSH_INTERVAL = 0.1



def binding_ids() -> set[str]:
    """Every binding id a [keymap] may remap: the console's own and its screens'."""
    import flock_tui.screens as screens_mod

    ids = {b.id for b in BUILTIN_BINDINGS if b.id}
    holders = [v for mod in (globals(), vars(screens_mod)) for v in mod.values()
               if isinstance(v, type)]
    for cls in holders:
        for b in getattr(cls, "BINDINGS", []):
            if isinstance(b, Binding) and b.id:
                ids.add(b.id)
    return ids


def _check_keymap(config: ConsoleConfig) -> None:
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


CSS = """
Screen { layers: base overlay; }
#title { height: 1; background: $panel; color: $foreground; padding: 0 1; }
#filter { display: none; height: 3; border: tall $accent; }
#filter.shown { display: block; }
#flock-table { height: auto; max-height: 70%; }
#empty { display: none; height: 2fr; content-align: center middle; color: $text-muted; }
#empty.shown { display: block; }
#macro-bar { display: none; height: 1; background: $boost; padding: 0 1; }
#macro-bar.shown { display: block; }
#macro-label { width: 1fr; }
#macro-progress { width: 40; }
#log { height: 1fr; min-height: 6; border-top: solid $primary; background: $surface;
       overflow-x: hidden; overflow-y: auto; }
.dialog { width: 90; height: auto; max-height: 90%; border: thick $primary;
          background: $surface; padding: 1 2; }
ConfirmScreen, HelpScreen, Wizard { align: center middle; }
.dialog-title { width: 100%; content-align: center middle; margin-bottom: 1; }
.hint { color: $text-muted; margin-top: 1; }
#help { width: 100; }
#help-table { height: auto; max-height: 24; }
#help-macros { margin-top: 1; }
#wizard-options { height: auto; max-height: 14; }
#wizard-confirm { display: none; padding: 1; background: $boost; }
#wizard-error { color: $error; }
#node-title { height: 1; background: $panel; }
#node-top { height: 1fr; }
#node-bottom { height: 1fr; }
.pane { width: 1fr; border: round $primary 50%; }
.pane:focus-within { border: round $accent; }
.pane-title { color: $accent; text-style: bold; padding: 0 1; }
.pane DataTable { height: 1fr; }
#node-events { height: 8; border-top: solid $primary; overflow-x: hidden; overflow-y: auto; }
#node-detail-scroll { padding: 0 1; }
FooterLabel.macros { color: $text-muted; margin: 0 1; }
"""


class FlockTable(DataTable[Any]):
    """The flock table; `enter` opens the node screen instead of the DataTable default."""

    BINDINGS: ClassVar = [Binding("enter", "open_node", "Node", id="flock.node")]

    def action_open_node(self) -> None:
        self.screen.action_open_node()  # type: ignore[attr-defined]


class FlockFooter(Footer):
    """The stock footer, with the macro keys after a "macros:" label: `D deploy-web  p probe`."""

    def compose(self) -> ComposeResult:
        labelled = False
        for w in super().compose():
            if (not labelled and isinstance(w, FooterKey)
                    and str(getattr(w, "action", "")).startswith("macro(")):
                labelled = True
                yield FooterLabel("│ macros:", classes="macros")
            yield w


class FlockCommands(Provider):
    """Every console command in the palette (ctrl+p)."""

    def _commands(self) -> list[tuple[str, str, Callable[[], Any]]]:
        app = self.app
        return app.palette_commands() if isinstance(app, FlockApp) else []

    async def discover(self) -> Hits:
        for title, help_, cb in self._commands():
            yield DiscoveryHit(title, cb, help=help_)

    async def search(self, query: str) -> Hits:
        m = self.matcher(query)
        for title, help_, cb in self._commands():
            score = m.match(title)
            if score > 0:
                yield Hit(score, m.highlight(title), cb, help=help_)


class MainScreen(Screen[None]):
    """The flock table, the filter, the macro bar and the event log."""

    def compose(self) -> ComposeResult:
        yield Static(id="title")
        yield Input(placeholder="filter: words match name, state, tags, address (enter keeps, "
                                "esc clears)", id="filter")
        yield FlockTable(id="flock-table", cursor_type="row", zebra_stripes=True)
        yield Static(id="empty")
        with Horizontal(id="macro-bar"):
            yield Static(id="macro-label")
            yield ProgressBar(id="macro-progress", show_eta=False)
        yield RichLog(id="log", markup=False, wrap=True, max_lines=1000)
        yield FlockFooter()

    @property
    def flock_app(self) -> FlockApp:
        return self.app  # type: ignore[return-value]

    def on_mount(self) -> None:
        t = self.query_one(FlockTable)
        widths = {"mark": 1, "state": 7, "activity": 32, "last": 28, "pending": 6}
        for key, label in COLUMNS:
            t.add_column(label, key=key, width=widths.get(key))
        t.focus()
        self.flock_app.main_mounted()

    def on_unmount(self) -> None:
        self.flock_app.ready = False

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return self.flock_app.allowed(action, parameters)

    # actions: thin wrappers, the app does the work
    def action_run_chef(self) -> None:
        self.flock_app.run_chef_on(self.flock_app.targets())

    def action_open_node(self) -> None:
        node = self.flock_app.cursor_node()
        if node:
            self.flock_app.push_screen(NodeScreen(node))

    def action_notify_node(self) -> None:
        node = self.flock_app.cursor_node()
        if node:
            self.flock_app.open_notify(node)

    def action_subscribe(self) -> None:
        node = self.flock_app.cursor_node()
        if node:
            self.flock_app.open_subscribe(node)

    def action_mark(self) -> None:
        self.flock_app.toggle_mark()

    def action_mark_all(self) -> None:
        self.flock_app.mark_all()

    def action_filter(self) -> None:
        f = self.query_one("#filter", Input)
        f.add_class("shown")
        f.focus()

    def action_sort(self) -> None:
        self.flock_app.cycle_sort()

    def action_cancel(self) -> None:
        self.flock_app.cancel()

    def action_help(self) -> None:
        self.flock_app.show_help()

    def action_quit(self) -> None:
        self.flock_app.exit(0)

    def action_macro(self, name: str) -> None:
        self.flock_app.start_macro(name)

    @on(Input.Changed, "#filter")
    def _filter_changed(self, ev: Input.Changed) -> None:
        self.flock_app.set_filter(ev.value)

    @on(Input.Submitted, "#filter")
    def _filter_done(self) -> None:
        self.query_one(FlockTable).focus()
        if not self.query_one("#filter", Input).value:
            self.query_one("#filter", Input).remove_class("shown")

    def key_escape(self) -> None:  # escape inside the filter input: clear it
        f = self.query_one("#filter", Input)
        if f.has_focus:
            f.value = ""
            f.remove_class("shown")
            self.query_one(FlockTable).focus()

    @on(DataTable.RowSelected, "#flock-table")
    def _row_selected(self) -> None:  # mouse click / select
        pass


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


class FlockApp(App[int]):
    """The console. `clock` is injectable so snapshot tests can freeze "5s ago"."""

    TITLE = "Flock"
    CSS = CSS
    COMMANDS = App.COMMANDS | {FlockCommands}
    BINDINGS: ClassVar = [Binding("ctrl+q", "quit", "Quit", show=False, id="app.quit")]

    def __init__(self, args: argparse.Namespace, *, clock: Callable[[], float] = time.time,
                 config: ConsoleConfig | None = None, connect: bool = True):
        super().__init__()
        self.args = args
        self.clock = clock
        self.read_only = bool(getattr(args, "read_only", False))
        self.connect_enabled = connect
        self.config_error: str | None = None
        self.config_from_file = config is None
        if config is None:
            try:
                config = macros_mod.load_config(builtin_keys=builtin_keys())
                _check_keymap(config)
            except ConfigError as e:
                self.config_error = str(e)
                config = ConsoleConfig()
        self.config = config
        self.macros: dict[str, Macro] = {m.name: m for m in config.macros}
        self.view = FlockView(clock)
        self.marks: set[str] = set()
        self.filter = ""
        self.sort_column = "name"
        self.shown: dict[str, dict[str, Text]] = {}  # rows in the table and their cells
        self.node_events: dict[str, deque[Text]] = {}
        self.flock: AsyncFlock | None = None
        self.bus: Bus | None = None
        self.status_line = "connecting…"
        self.last_error = ""
        self.first_poll = True
        self.macro_worker: Worker[Any] | None = None
        self.macro_state: tuple[str, int, int, str] | None = None
        self.styles_ = Styles()
        self.main: MainScreen | None = None
        self._resort = False
        self._force_all = False
        self._last_ago = 0.0
        self.ready = False
        self.pending_log: list[Text] = []

    def main_mounted(self) -> None:
        self.ready = True
        assert self.main is not None
        log = self.main.query_one("#log", RichLog)
        for line in self.pending_log:
            log.write(line)
        self.pending_log.clear()
        self.update_title()
        self.flush()

    # -- lifecycle ------------------------------------------------------------------------------
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
        self.set_interval(FLUSH_INTERVAL, self.flush)
        if self.connect_enabled:
            self.run_worker(self.poll_loop(), group="poll", exclusive=True, exit_on_error=False)
        self.update_title()

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
        self._force_all = True

    async def on_unmount(self) -> None:
        await self.close_connections()

    async def close_connections(self) -> None:
        # Cancel the receivers before closing their sockets (pynng #108).
        for w in list(self.workers):
            if w.group == "poll":
                w.cancel()
        await asyncio.sleep(0)
        if self.bus is not None:
            bus, self.bus = self.bus, None
            # asyncio.wait, not wait_for: on timeout it does not wait for the cancellation
            # to finish (a pynng receive may never acknowledge it) - shutdown stays bounded.
            closing = asyncio.ensure_future(bus.close())
            await asyncio.wait([closing], timeout=5.0)
            if closing.done() and not closing.cancelled():
                closing.exception()
        if self.flock is not None:
            flock, self.flock = self.flock, None
            flock.close()

    # -- connection and polling -----------------------------------------------------------------
    async def poll_loop(self) -> None:
        while True:
            try:
                await self.poll_once()
            except Exception as e:  # noqa: BLE001 - the console keeps going
                self.log_error(f"refresh failed: {err_text(e)}")
            await asyncio.sleep(POLL_INTERVAL)

    async def poll_once(self) -> None:
        a = self.args
        if self.flock is None:
            try:
                self.flock = await AsyncFlock.connect(
                    seeds=a.seed or [], runtime_dir=a.runtime_dir, key_file=a.key_file,
                    insecure=a.insecure, timeout=a.connect_timeout or 5.0,
                    tls_dir=getattr(a, "tls_dir", None))
                tls = self.flock.tls  # on TLS: our certificate, and no key
                key = None if tls else resolve_key(a.key_file, a.insecure)
                self.bus = Bus(Codec(key, tls.me.name if tls else f"console-{os.getpid()}"),
                               self.on_bus_message, tls=tls)
                self.bus.start()
            except RpcError as e:
                self.connection_problem(f"cannot connect: {err_text(e)}")
                return
        try:
            rows = await self.flock.nodes()
        except RpcError as e:
            self.connection_problem(f"cannot list nodes: {err_text(e)}")
            return
        self.apply_members(rows)

    def connection_problem(self, msg: str) -> None:
        if msg != self.last_error:
            self.log_error(msg)
        self.last_error = msg
        self.status_line = msg
        self.update_title()

    def apply_members(self, rows: list[dict[str, Any]]) -> None:
        """A fresh member list: log state changes, dial new buses, mark rows dirty."""
        changes = self.view.replace(rows)
        st = self.styles_
        if self.first_poll:
            self.first_poll = False
            if rows:
                t = Text()
                t.append(f"found {len(rows)} node(s): ", style=st.muted)
                t.append(", ".join(f"{r['name']} ({r['state']})" for r in rows))
                self.log_line(t)
        else:
            for c in changes:
                self.log_line(change_text(c, st), c.node)
        if self.bus is not None:
            for r in rows:
                if r.get("bus") and r.get("state") in ("alive", "suspect"):
                    self.bus.dial(r["bus"])
        self.last_error = ""
        self.status_line = ""
        self.update_title()

    def on_bus_message(self, env: Any, msg: Any, pipe: int) -> None:
        members = self.view.members
        # The console believes a node only about itself, as the agents do.
        if isinstance(msg, (Heartbeat, Leave)) and admit(msg, env.sender, time.time()):
            return
        if isinstance(msg, Event) and msg.node != env.sender:
            return
        if isinstance(msg, Heartbeat):
            from flock_tui.model import merge_heartbeat

            old = members.get(msg.node)
            before = old.get("state") if old else None
            snapshot = dict(old) if old else None
            m = merge_heartbeat(members, msg)
            if m != snapshot:  # idle nodes beat without changing anything
                self.view.dirty.add(msg.node)
            if before is None:
                self.log_line(change_text(_change(msg.node, None, "alive"), self.styles_),
                              msg.node)
            elif before in ("suspect", "down", "left"):
                self.log_line(change_text(_change(msg.node, before, "alive"), self.styles_),
                              msg.node)
        elif isinstance(msg, Leave):
            gone = members.get(msg.node)
            if (gone is not None and gone.get("state") != "left"
                    and msg.incarnation >= gone.get("incarnation", 0)
                    and (not msg.instance
                         or msg.instance == gone.get("instance", msg.instance))):
                old = gone.get("state")
                gone.update(state="left", active=False, run=None)
                self.view.dirty.add(msg.node)
                self.log_line(change_text(_change(msg.node, old, "left"), self.styles_),
                              msg.node)
        elif isinstance(msg, Event):
            self.on_flock_event(msg)

    def on_flock_event(self, ev: Event) -> None:
        from flock_tui.model import merge_event

        merge_event(self.view.members, ev)
        self.view.dirty.add(ev.node)
        line = event_text(ev, self.styles_)
        if line is not None:
            text, _level = line
            self.log_line(text, ev.node, at=ev.at)
            related = {ev.node, ev.data.get("target"), ev.data.get("sender"),
                       ev.data.get("node")}
            for scr in self.screen_stack:
                if isinstance(scr, NodeScreen) and scr.node in related:
                    scr.on_flock_event(ev.kind)
        elif ev.kind == "run_progress":
            for scr in self.screen_stack:
                if isinstance(scr, NodeScreen) and scr.node == ev.node:
                    scr.update_title()

    # -- the table ------------------------------------------------------------------------------
    @property
    def table(self) -> FlockTable:
        assert self.main is not None
        return self.main.query_one(FlockTable)

    def cursor_node(self) -> str | None:
        if not self.ready:
            return None
        try:
            return cursor_key(self.table)
        except NoMatches:  # shutting down
            return None

    def targets(self) -> list[str]:
        marked = [n for n in sorted(self.marks) if n in self.view.members]
        if marked:
            return marked
        n = self.cursor_node()
        return [n] if n else []

    def flush(self) -> None:
        """Apply what changed since the last flush: only changed cells are touched."""
        if not self.ready:
            return
        now = self.clock()
        names: Iterable[str]
        try:
            t = self.table
        except NoMatches:  # the app is shutting down: its widgets are already gone
            return
        if self._force_all:
            names = set(self.view.members) | set(self.shown)
            self._force_all = False
            self.view.dirty.clear()
        elif now - self._last_ago >= 1.0:
            # "5s ago" moves every second: revisit the rows on screen once a second.
            names = self.view.dirty | self._visible_rows(t)
            self._last_ago = now
            self.view.dirty = set()
        elif self.view.dirty:
            names = self.view.dirty
            self.view.dirty = set()
        else:
            return
        changed = False
        added = False
        was_empty = not self.shown
        st = self.styles_
        with self.batch_update():
            for name in names:
                m = self.view.members.get(name)
                present = name in self.shown
                if m is None or not matches(m, self.filter):
                    if present:
                        key = self.cursor_node()
                        t.remove_row(name)
                        del self.shown[name]
                        self._reanchor(key)
                    continue
                cells = row_cells(m, now, name in self.marks, st)
                cells["address"] = _short_address(cells["address"])
                if not present:
                    t.add_row(*(cells[c] for c, _ in COLUMNS), key=name)
                    added = True
                else:
                    old = self.shown[name]
                    for c, v in cells.items():
                        if old[c] != v:
                            t.update_cell(name, c, v)
                            changed = True
                self.shown[name] = cells
            if added or self._resort or (changed and self.sort_column != "name"):
                self.resort()
            if was_empty and self.shown:
                t.move_cursor(row=0)  # the first node in sort order, not the first to answer
        if added or changed or self._resort:
            self.update_title()
        self._resort = False
        assert self.main is not None
        self.main.query_one("#empty").set_class(not self.shown, "shown")
        t.display = bool(self.shown)
        if not self.shown:
            self.main.query_one("#empty", Static).update(self.empty_message())

    @staticmethod
    def _visible_rows(t: DataTable[Any]) -> set[str]:
        first = max(0, int(t.scroll_y) - 2)
        last = min(t.row_count, first + t.size.height + 4)
        out: set[str] = set()
        for i in range(first, last):
            try:
                key = t.coordinate_to_cell_key(Coordinate(i, 0)).row_key.value
                if key is not None:
                    out.add(key)
            except Exception:  # noqa: BLE001 - rows changed meanwhile
                break
        return out

    def empty_message(self) -> Text:
        if self.filter and self.view.members:
            return Text(f"no node matches the filter {self.filter!r} (esc clears it)")
        if self.status_line and self.status_line != "connecting…":
            return Text(self.status_line)
        rd = paths.runtime_dir(getattr(self.args, "runtime_dir", None))
        seeds = " ".join(getattr(self.args, "seed", None) or []) or "none"
        return Text(f"no nodes found; runtime dir {rd}, seeds: {seeds}\n\n"
                    "start one with `flock-node run NAME`, try `flockctl demo`, "
                    "or pass --seed tcp://HOST:PORT")

    def resort(self) -> None:
        t = self.table
        key = self.cursor_node()
        col = self.sort_column
        members = self.view.members
        t.sort("name", key=lambda cell: sort_key(col, members.get(cell.plain, {"name":
                                                                              cell.plain})))
        self._reanchor(key)

    def _reanchor(self, key: str | None) -> None:
        """sort()/remove_row keep the cursor index: put it back on the same node."""
        if key is None or key not in self.shown:
            return
        t = self.table
        try:
            idx = t.get_row_index(key)
        except Exception:  # noqa: BLE001
            return
        if idx != t.cursor_row:
            t.move_cursor(row=idx, animate=False)

    def set_filter(self, text: str) -> None:
        self.filter = text
        self._force_all = True
        self.flush()

    def cycle_sort(self) -> None:
        i = SORTABLE.index(self.sort_column)
        self.sort_column = SORTABLE[(i + 1) % len(SORTABLE)]
        self._resort = True
        self._force_all = True
        self.flush()
        self.update_title()

    def toggle_mark(self) -> None:
        n = self.cursor_node()
        if n is None:
            return
        self.marks.symmetric_difference_update({n})
        self.view.dirty.add(n)
        self.flush()
        t = self.table
        if t.cursor_row < t.row_count - 1:
            t.move_cursor(row=t.cursor_row + 1)
        self.update_title()

    def mark_all(self) -> None:
        if self.marks:
            self.view.dirty.update(self.marks)
            self.marks.clear()
        else:
            self.marks = set(self.shown)
            self.view.dirty.update(self.marks)
        self.flush()
        self.update_title()

    def update_title(self) -> None:
        if not self.ready:
            return
        ms = self.view.members.values()
        st = self.styles_
        t = Text()
        t.append("Flock", style=f"bold {st.accent}")
        t.append(f"  {len(self.view.members)} nodes")
        counts: dict[str, int] = {}
        for m in ms:
            counts[m.get("state", "?")] = counts.get(m.get("state", "?"), 0) + 1
        for s in ("alive", "suspect", "down", "left"):
            if counts.get(s):
                t.append(f" · {counts[s]} {s}", style=st.state(s))
        busy = sum(1 for m in ms if m.get("active"))
        if busy:
            t.append(f" · {busy} converging", style=st.accent)
        if self.marks:
            t.append(f" · {len(self.marks)} marked", style=f"bold {st.accent}")
        label = dict(COLUMNS).get(self.sort_column, self.sort_column).lower()
        t.append(f"   sort: {label}", style=st.muted)
        if self.filter:
            t.append(f"   filter: {self.filter}", style=st.warning)
        if self.read_only:
            t.append("   READ-ONLY", style=f"bold {st.warning}")
        if self.status_line:
            t.append(f"   {self.status_line}", style=st.error)
        if self.main is not None:
            self.main.query_one("#title", Static).update(t)

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
            except Exception:  # noqa: BLE001 - shutting down
                pass
        else:
            self.pending_log.append(line)

    def log_error(self, msg: str, node: str | None = None) -> None:
        self.log_line(Text(f"✗ {msg}", style=f"bold {self.styles_.error}"), node)
        self.notify(msg, severity="error", timeout=6, markup=False)

    # -- actions --------------------------------------------------------------------------------
    def allowed(self, action: str, parameters: tuple[object, ...]) -> bool:
        if self.read_only:
            if action in CHANGING_ACTIONS:
                return False
            if action == "macro" and parameters:
                m = self.macros.get(str(parameters[0]))
                return m is not None and not m.changes_things
        return True

    def run_chef_on(self, nodes: list[str]) -> None:
        if self.read_only or not nodes:
            return
        if len(nodes) == 1:
            self.do_run_chef(nodes)
            return
        body = Text(f"Start a converge on {len(nodes)} nodes:\n\n", style="bold")
        body.append(", ".join(nodes) + "\n\n")
        body.append("$ " + " && ".join(f"flockctl run-chef {shlex.quote(n)}" for n in nodes),
                    style=self.styles_.muted)

        def done(yes: bool | None) -> None:
            if yes:
                self.do_run_chef(nodes)

        self.push_screen(ConfirmScreen("Run chef?", body, "Run"), done)

    @work(group="run_chef", exit_on_error=False)
    async def do_run_chef(self, nodes: list[str]) -> None:
        if self.flock is None:
            self.log_error("not connected to the flock")
            return
        flock = self.flock

        async def one(n: str) -> None:
            try:
                r = await flock[n].flock_api.run_chef()
            except RpcError as e:
                self.log_error(f"{n}: run_chef: {err_text(e)}", n)
                return
            how = "joined the waiting run" if r.get("joined") else (
                "queued" if r.get("queued") else "started")
            self.log_line(Text(f"{n}: run_chef → run {r.get('run_id')} {how}"), n)

        await asyncio.gather(*(one(n) for n in nodes))

    def _resources_step(self, node: str, cache: dict[str, Any], prompt: str,
                        key: str = "resource") -> Step:
        async def options(_choices: dict[str, str]) -> list[tuple[str, str]]:
            assert self.flock is not None
            rs = await self.flock[node].resource_manager.resources()
            cache[node] = {r["id"]: r for r in rs}
            return [(r["id"], f"{r['id']}   [{', '.join(r.get('actions', []))}]"
                     f"   last: {r.get('last_result') or '-'}") for r in rs]

        return Step(key, prompt, options)

    def open_notify(self, node: str) -> None:
        if self.read_only or self.flock is None:
            return
        cache: dict[str, Any] = {}

        async def actions(choices: dict[str, str]) -> list[tuple[str, str]]:
            r = cache.get(node, {}).get(choices["resource"], {})
            return [(a, a) for a in r.get("actions", [])]

        def summary(c: dict[str, str]) -> Text:
            t = Text(f"{node} runs {c['action']} on {c['resource']} now, out of band.\n\n")
            t.append("$ flockctl notify " + " ".join(shlex.quote(x) for x in (
                node, c["resource"], c["action"])), style="bold")
            return t

        async def perform(c: dict[str, str]) -> Any:
            assert self.flock is not None
            r = await self.flock[node].resource_manager.notify(
                resource=c["resource"], action=c["action"], sender="flock-console")
            self.log_line(Text(f"{node}: {c['action']} on {c['resource']} queued "
                               f"(notification {r.get('id')})"), node)
            return r

        self.push_screen(Wizard(f"Notify {node}", [
            self._resources_step(node, cache, f"resource of {node}"),
            Step("action", "action", actions),
        ], summary, perform))

    def open_subscribe(self, node: str) -> None:
        if self.read_only or self.flock is None:
            return
        cache: dict[str, Any] = {}

        async def remote_nodes(_c: dict[str, str]) -> list[tuple[str, str]]:
            out = []
            for m in sorted(self.view.members.values(), key=lambda m: m["name"]):
                if m["name"] == node:
                    continue
                out.append((m["name"], f"{m['name']}   {m.get('state')}   "
                                       f"{','.join(m.get('tags') or [])}"))
            return out

        async def remote_resources(c: dict[str, str]) -> list[tuple[str, str]]:
            assert self.flock is not None
            rs = await self.flock[c["node"]].resource_manager.resources()
            return [(r["id"], f"{r['id']}   last: {r.get('last_result') or '-'}") for r in rs]

        async def actions(c: dict[str, str]) -> list[tuple[str, str]]:
            r = cache.get(node, {}).get(c["resource"], {})
            return [(a, a) for a in r.get("actions", []) if a != "nothing"] or [
                (a, a) for a in r.get("actions", [])]

        def summary(c: dict[str, str]) -> Text:
            t = Text("Whenever ")
            t.append(f"{c['node']}'s {c['remote_resource']}", style="bold")
            t.append(" is updated,\n")
            t.append(f"{node}", style="bold")
            t.append(f" runs {c['action']} on {c['resource']}.\n\n")
            t.append("$ flockctl subscribe " + " ".join(shlex.quote(x) for x in (
                node, c["resource"], c["action"])) + " --to " + " ".join(
                shlex.quote(x) for x in (c["node"], c["remote_resource"])), style="bold")
            return t

        async def perform(c: dict[str, str]) -> Any:
            assert self.flock is not None
            r = await self.flock[node].resource_manager.subscribe_to(
                resource=c["resource"], action=c["action"], node=c["node"],
                remote_resource=c["remote_resource"])
            how = "registered on both nodes" if r.get("state") == "registered" else (
                f"{r.get('state')} ({r.get('error')})")
            msg = (f"{node}: {c['resource']} runs {c['action']} when {c['node']}'s "
                   f"{c['remote_resource']} is updated — subscription {r.get('id')} {how}")
            self.log_line(Text(msg, style=self.styles_.success), node)
            self.notify(msg, title="Subscribed", markup=False)
            for scr in self.screen_stack:
                if isinstance(scr, NodeScreen) and scr.node in (node, c["node"]):
                    scr.reload()
            return r

        self.push_screen(Wizard(f"Subscribe {node} to a remote resource", [
            self._resources_step(node, cache, f"local resource of {node} (reacts)"),
            Step("node", "remote node (fuzzy)", remote_nodes),
            Step("remote_resource", "remote resource (watched)", remote_resources),
            Step("action", "action to run on the local resource", actions),
        ], summary, perform))

    def cancel(self) -> None:
        if self.macro_worker is not None and self.macro_worker.is_running:
            self.macro_worker.cancel()
            self.set_macro_bar("cancelling…")
            return
        if self.filter and self.main is not None:
            f = self.main.query_one("#filter", Input)
            f.value = ""
            f.remove_class("shown")

    def show_help(self) -> None:
        rows: list[tuple[str, str, str]] = []
        assert self.main is not None
        for _key, binding in _active_bindings(self.main):
            action, params = _action_and_params(binding.action)
            if self.allowed(action, params) is False:
                continue
            if action == "macro":
                m = self.macros.get(str(params[0])) if params else None
                desc = f"Macro {binding.description}" + (
                    f": {m.description}" if m and m.description else "")
                rows.append((binding.key_display or self.get_key_display(binding), desc,
                             binding.id or ""))
                continue
            rows.append((binding.key_display or self.get_key_display(binding), binding.description
                         or binding.action, binding.id or ""))
        rows.append(("ctrl+p", "Command palette: every command", "app.command_palette"))
        nb = [("esc", "Node screen: back", "node.back"), ("r", "Node screen: run chef",
                                                            "node.run_chef"),
              ("d", "Node screen: remove the selected subscription", "node.unsubscribe"),
              ("tab", "Node screen: next pane", "")]
        rows += [r for r in nb if not (self.read_only and r[2] in CHANGING)]
        shown = [m for m in self.macros.values() if not (self.read_only and m.changes_things)]
        self.push_screen(HelpScreen(rows, shown))

    def palette_commands(self) -> list[tuple[str, str, Callable[[], Any]]]:
        main = self.main
        if main is None:
            return []
        cmds: list[tuple[str, str, Callable[[], Any]]] = []

        def add(title: str, help_: str, action: str, *params: Any) -> None:
            if self.allowed(action, params) is False:
                return
            cmds.append((title, help_, partial(getattr(main, f"action_{action}"), *params)))

        add("Run chef", "run_chef on the marked nodes, or the cursor node", "run_chef")
        add("Open node screen", "resources, runs, subscriptions, events of the cursor node",
            "open_node")
        add("Send notification", "run an action on a resource of the cursor node",
            "notify_node")
        add("Wire a subscription", "the cursor node reacts to a remote resource", "subscribe")
        add("Mark / unmark node", "toggle the mark on the cursor node", "mark")
        add("Mark all / unmark all", "", "mark_all")
        add("Filter nodes", "type words to match name, state, tags", "filter")
        add("Sort by next column", f"now: {self.sort_column}", "sort")
        add("Cancel macro / clear filter", "", "cancel")
        add("Help: key bindings", "", "help")
        add("Quit", "", "quit")
        for m in self.macros.values():
            add(f"Macro: {m.name}", f"[{m.key}] {m.description} — "
                f"{' ; '.join(m.steps)}", "macro", m.name)
        return cmds

    # -- macros ---------------------------------------------------------------------------------
    def start_macro(self, name: str) -> None:
        m = self.macros.get(name)
        if m is None:
            return
        if self.macro_worker is not None and self.macro_worker.is_running:
            self.notify(f"macro {self.macro_state[0] if self.macro_state else ''} is running; "
                        "escape cancels it", severity="warning")
            return
        node = self.cursor_node()
        marked = self.targets()
        try:
            steps = macros_mod.expand(m.steps, node, marked)
        except StepError as e:
            self.log_error(f"macro {name}: {e}")
            return
        if m.confirm:
            body = Text(f"{m.description}\n\n" if m.description else "")
            for s in steps:
                body.append(f"$ flockctl {s}\n", style="bold")

            def done(yes: bool | None) -> None:
                if yes:
                    self.macro_worker = self.run_macro(m, steps)

            self.push_screen(ConfirmScreen(f"Run macro {name}?", body, "Run"), done)
            return
        self.macro_worker = self.run_macro(m, steps)

    @work(thread=True, exclusive=True, group="macro", exit_on_error=False)
    def run_macro(self, macro: Macro, steps: list[str]) -> int:
        """Each step runs as its `flockctl` command would; output lands in the log."""
        worker = get_current_worker()
        def cancelled() -> bool:
            return worker.is_cancelled
        g = macros_mod.global_args(self.args)
        code = 0
        call = self._from_thread
        st = self.styles_
        call(self.log_line, Text(f"▶ macro {macro.name}: {len(steps)} step(s)",
                                 style=f"bold {st.accent}"))
        try:
            for i, step in enumerate(steps, 1):
                if cancelled():
                    code = 130
                    break
                call(self.macro_progress, macro.name, i, len(steps), step)
                call(self.log_line, Text(f"$ flockctl {step}", style=f"bold {st.accent}"))
                try:
                    args = macros_mod.parse_step(step, g)
                except StepError as e:
                    call(self.log_error, f"macro {macro.name}: step {i} {step!r}: {e}")
                    code = 2
                    break
                out = macros_mod.LineWriter(lambda s: call(self.log_line, Text(s)))
                try:
                    code = macros_mod.run_step(
                        args, out, lambda s: call(self.log_error, s), cancelled)
                except macros_mod.MacroCancelled:
                    code = 130
                    break
                except Exception as e:  # noqa: BLE001 - never a traceback
                    call(self.log_error, f"macro {macro.name}: step {i}: {err_text(e)}")
                    code = 1
                    break
                if code != 0:
                    call(self.log_error, f"macro {macro.name} stopped at step {i}/{len(steps)}"
                                         f" (exit {code})")
                    break
            if code == 130:
                call(self.log_line, Text(f"■ macro {macro.name} cancelled",
                                         style=f"bold {st.warning}"))
            elif code == 0:
                call(self.log_line, Text(f"✓ macro {macro.name} done",
                                         style=f"bold {st.success}"))
        finally:
            call(self.macro_finished)
        return code

    def _from_thread(self, fn: Callable[..., Any], *a: Any) -> None:
        try:
            self.call_from_thread(fn, *a)
        except RuntimeError:  # the app is shutting down
            pass

    def macro_progress(self, name: str, i: int, n: int, step: str) -> None:
        self.macro_state = (name, i, n, step)
        assert self.main is not None
        bar = self.main.query_one("#macro-progress", ProgressBar)
        bar.update(total=n, progress=i - 1)
        self.set_macro_bar(None)

    def set_macro_bar(self, note: str | None) -> None:
        if self.main is None or self.macro_state is None:
            return
        name, i, n, step = self.macro_state
        t = Text()
        t.append("▶ macro ", style="bold")
        t.append(name, style=f"bold {self.styles_.accent}")
        t.append(f"  step {i}/{n}  ")
        t.append(f"flockctl {step}", style="bold")
        t.append(f"   {note}" if note else "   (esc cancels)", style=self.styles_.muted)
        self.main.query_one("#macro-label", Static).update(t)
        self.main.query_one("#macro-bar").add_class("shown")

    def macro_finished(self) -> None:
        self.macro_state = None
        if self.main is not None:
            self.main.query_one("#macro-bar").remove_class("shown")


def _change(node: str, old: str | None, new: str | None) -> Change:
    from flock_tui.model import Change

    return Change(node, old, new)


def _short_address(t: Text) -> Text:
    s = t.plain
    if s.startswith("ipc://"):
        parts = s[6:].rstrip("/").split("/")
        return Text("ipc:…/" + "/".join(parts[-2:]), style=t.style)
    return t


def _action_and_params(action: str) -> tuple[str, tuple[object, ...]]:
    if "(" in action and action.endswith(")"):
        name, _, rest = action.partition("(")
        inner = rest[:-1].strip().strip("'\"")
        return name, (inner,) if inner else ()
    return action, ()


def _active_bindings(screen: Screen[Any]) -> list[tuple[str, Binding]]:
    out = []
    seen = set()
    for node in [screen.query_one(FlockTable), screen]:
        for key, bindings in node._bindings.key_to_bindings.items():
            for b in bindings:
                if b.id and b.id not in seen:
                    seen.add(b.id)
                    out.append((key, b))
    return out


def run_console(args: argparse.Namespace) -> int:
    """Open the console; returns the exit code (errors show in the UI, not as tracebacks)."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        print("flock: the console needs a terminal; in scripts use a command "
              "(`flockctl nodes`, `flockctl run-chef ...`; see `flockctl --help`)", file=sys.stderr)
        return 2
    app = FlockApp(args)
    result = app.run()
    if app.config_error:
        print(f"flock: {app.config_error}", file=sys.stderr)
    return int(result or 0)
