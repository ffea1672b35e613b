"""The main screen: the flock table, the filter, the macro bar and the event log. It owns the
table's marks, filter and sort, and flushes what changed twice a second."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import DataTable, Input, RichLog, Static
from textual.worker import Worker, get_current_worker

from flock_node import paths
from flock_tui import macros as macros_mod
from flock_tui.macro_run import run_steps
from flock_tui.macros import Macro, StepError
from flock_tui.messages import MembersUpdated
from flock_tui.model import COLUMNS
from flock_tui.screens.confirm import ConfirmScreen
from flock_tui.screens.node import NodeScreen
from flock_tui.widgets.flock_table import FlockTable, next_sort_column
from flock_tui.widgets.footer import FlockFooter
from flock_tui.widgets.macro_bar import MacroBar
from flock_tui.widgets.ordered_input import OrderedInput

if TYPE_CHECKING:
    from flock_tui.app import FlockApp

FLUSH_INTERVAL = 0.5


class MainScreen(Screen[None]):
    """The flock table, the filter, the macro bar and the event log."""

    # Keys typed before the table is up must never land in the (hidden) filter.
    AUTO_FOCUS: ClassVar[str | None] = "#flock-table"

    def __init__(self) -> None:
        super().__init__()
        self.marks: set[str] = set()
        self.macro_worker: Worker[Any] | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="title")
        yield OrderedInput(placeholder="filter: words match name, state, tags, address "
                           "(enter keeps, esc clears)", id="filter", disabled=True)
        yield FlockTable(id="flock-table")
        yield Static(id="empty")
        yield MacroBar()
        yield RichLog(id="log", markup=False, wrap=True, max_lines=1000)
        yield FlockFooter()

    @property
    def console(self) -> FlockApp:
        return self.app  # type: ignore[return-value]

    @property
    def table(self) -> FlockTable:
        return self.query_one(FlockTable)

    def on_mount(self) -> None:
        self.table.setup_columns(self.app.size.width)
        self.table.focus()
        self.set_interval(FLUSH_INTERVAL, self.flush)
        self.console.main_mounted()

    def on_resize(self) -> None:
        self.table.setup_columns(self.app.size.width)
        self.flush()

    def on_unmount(self) -> None:
        self.console.ready = False

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return self.console.allowed(action, parameters)

    @on(MembersUpdated)
    def _members(self) -> None:
        self.flush()

    # -- the table ------------------------------------------------------------------------------
    def cursor_node(self) -> str | None:
        try:
            return self.table.cursor_node()
        except NoMatches:  # shutting down
            return None

    def targets(self) -> list[str]:
        """The marked nodes, else the cursor node."""
        marked = [n for n in sorted(self.marks) if n in self.console.view.members]
        if marked:
            return marked
        n = self.cursor_node()
        return [n] if n else []

    def flush(self) -> None:
        """Apply what changed since the last flush: only changed cells are touched."""
        c = self.console
        if not c.ready:
            return
        try:
            t = self.table
        except NoMatches:  # shutting down: the widgets are already gone
            return
        now = c.clock()
        names = t.due(c.view, now)
        if names is None:
            return
        with self.app.batch_update():
            if t.apply(c.view, names, self.marks, now, c.styles_):
                self.update_title()
        self.query_one("#empty").set_class(not t.shown, "shown")
        t.display = bool(t.shown)
        if not t.shown:
            self.query_one("#empty", Static).update(self.empty_message())

    def refilter(self, text: str) -> None:
        self.table.filter = text
        self.table.force_all = True
        self.flush()
        self.update_title()

    def update_title(self) -> None:
        c = self.console
        if not c.ready:
            return
        self.query_one("#title", Static).update(self.title_text())

    def title_text(self) -> Text:
        """The title line: counts by state, marks, sort, filter, problems."""
        c, table, marks = self.console, self.table, self.marks
        ms = c.view.members.values()
        st = c.styles_
        t = Text()
        t.append("Flock", style=f"bold {st.accent}")
        t.append(f"  {len(c.view.members)} nodes")
        counts: dict[str, int] = {}
        for m in ms:
            counts[m.get("state", "?")] = counts.get(m.get("state", "?"), 0) + 1
        for s in ("alive", "suspect", "down", "left"):
            if counts.get(s):
                t.append(f" · {counts[s]} {s}", style=st.state(s))
        busy = sum(1 for m in ms if m.get("active"))
        if busy:
            t.append(f" · {busy} converging", style=st.accent)
        if marks:
            t.append(f" · {len(marks)} marked", style=f"bold {st.accent}")
        label = dict(COLUMNS).get(table.sort_column, table.sort_column).lower()
        t.append(f"   sort: {label}", style=st.muted)
        if table.filter:
            t.append(f"   filter: {table.filter}", style=st.warning)
        t.append(f"   {c.identity.title()}", style=st.accent)
        if c.read_only:
            t.append("   READ-ONLY", style=f"bold {st.warning}")
        if c.status_line:
            t.append(f"   {c.status_line}", style=st.error)
        return t

    def empty_message(self) -> Text:
        c = self.console
        if self.table.filter and c.view.members:
            return Text(f"no node matches the filter {self.table.filter!r} (esc clears it)")
        if c.status_line and c.status_line != "connecting…":
            return Text(c.status_line)
        rd = paths.runtime_dir(getattr(c.args, "runtime_dir", None))
        seeds = " ".join(getattr(c.args, "seed", None) or []) or "none"
        return Text(f"no nodes found; runtime dir {rd}, seeds: {seeds}\n\n"
                    "start one with `flock-node run NAME`, try `flockctl demo`, "
                    "or pass --seed tcp://HOST:PORT")

    # -- actions --------------------------------------------------------------------------------
    def action_run_chef(self) -> None:
        self.console.run_chef_on(self.targets())

    def action_why_run(self) -> None:
        self.console.why_run_on(self.targets())

    def action_rolling(self) -> None:
        self.console.roll_on(self.targets())

    def action_open_node(self) -> None:
        node = self.cursor_node()
        if node:
            self.app.push_screen(NodeScreen(node))

    def action_notify_node(self) -> None:
        node = self.cursor_node()
        if node:
            self.console.open_notify(node)

    def action_subscribe(self) -> None:
        node = self.cursor_node()
        if node:
            self.console.open_subscribe(node)

    def action_mark(self) -> None:
        n = self.cursor_node()
        if n is None:
            return
        self.marks.symmetric_difference_update({n})
        c, t = self.console, self.table
        c.view.dirty.discard(n)  # only this row now: a key must not wait for a poll's thousand
        t.apply(c.view, [n], self.marks, c.clock(), c.styles_)
        if t.cursor_row < t.row_count - 1:
            t.move_cursor(row=t.cursor_row + 1)
        self.update_title()

    def action_mark_all(self) -> None:
        view = self.console.view
        if self.marks:
            view.dirty.update(self.marks)
            self.marks.clear()
        else:
            self.marks = set(self.table.shown)
            view.dirty.update(self.marks)
        self.flush()
        self.update_title()

    def action_filter(self) -> None:
        f = self.query_one("#filter", Input)
        f.disabled = False
        f.add_class("shown")
        f.focus()

    def _hide_filter(self) -> None:
        f = self.query_one("#filter", Input)
        f.remove_class("shown")
        f.disabled = True
        self.table.focus()

    def action_sort(self) -> None:
        t = self.table
        t.sort_column = next_sort_column(t.sort_column, self.app.size.width)
        t.resort_needed = True
        t.force_all = True
        self.flush()
        self.update_title()

    def action_cancel(self) -> None:
        if self.macro_worker is not None and self.macro_worker.is_running:
            self.macro_worker.cancel()
            self.set_macro_bar("cancelling…")
            return
        if self.table.filter:
            self.query_one("#filter", Input).value = ""
            self._hide_filter()

    def action_help(self) -> None:
        self.console.show_help()

    def action_quit(self) -> None:
        self.app.exit(0)

    def action_macro(self, name: str) -> None:
        self.start_macro(name)

    @on(Input.Changed, "#filter")
    def _filter_changed(self, ev: Input.Changed) -> None:
        self.refilter(ev.value)

    @on(Input.Submitted, "#filter")
    def _filter_done(self) -> None:
        if not self.query_one("#filter", Input).value:
            self._hide_filter()
        else:
            self.table.focus()

    def key_escape(self) -> None:  # escape inside the filter input: clear it
        f = self.query_one("#filter", Input)
        if f.has_focus:
            f.value = ""
            self._hide_filter()

    @on(DataTable.RowSelected, "#flock-table")
    def _row_selected(self) -> None:  # mouse click / select
        pass

    # -- macros ---------------------------------------------------------------------------------
    def start_macro(self, name: str) -> None:
        m = self.console.macros.get(name)
        if m is None:
            return
        if self.macro_worker is not None and self.macro_worker.is_running:
            self.notify(f"macro {self.macro_state[0] if self.macro_state else ''} is running; "
                        "escape cancels it", severity="warning")
            return
        try:
            steps = macros_mod.expand(m.steps, self.cursor_node(), self.targets())
        except StepError as e:
            self.console.log_error(f"macro {name}: {e}")
            return
        if not m.confirm:
            self.macro_worker = self.run_macro(m, steps)
            return
        body = Text(f"{m.description}\n\n" if m.description else "")
        for s in steps:
            body.append(f"$ flockctl {s}\n", style="bold")

        def done(yes: bool | None) -> None:
            if yes:
                self.macro_worker = self.run_macro(m, steps)

        self.app.push_screen(ConfirmScreen(f"Run macro {name}?", body, "Run"), done)

    @work(thread=True, exclusive=True, group="macro", exit_on_error=False)
    def run_macro(self, macro: Macro, steps: list[str]) -> int:
        """Each step runs as its `flockctl` command would; output lands in the log."""
        worker = get_current_worker()
        c = self.console
        call = c.from_thread
        try:
            return run_steps(macro, steps, macros_mod.global_args(c.args), c.styles_,
                             lambda t: call(c.log_line, t), lambda s: call(c.log_error, s),
                             lambda *a: call(self.macro_progress, *a),
                             lambda: worker.is_cancelled)
        finally:
            call(self.macro_finished)

    @property
    def macro_state(self) -> tuple[str, int, int, str] | None:
        return self.query_one(MacroBar).state

    def macro_progress(self, name: str, i: int, n: int, step: str) -> None:
        self.query_one(MacroBar).progress(name, i, n, step, self.console.styles_)

    def set_macro_bar(self, note: str | None) -> None:
        self.query_one(MacroBar).note(note, self.console.styles_)

    def macro_finished(self) -> None:
        self.query_one(MacroBar).finished()
