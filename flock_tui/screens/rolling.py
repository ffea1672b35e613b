"""Rolling runs from the console: a small form (max parallel, max fail), then the roll itself,
a row per node moving pending → running → ok / failed / skipped / unreachable, and the summary
`flockctl run-chef ... --max-parallel N --max-fail K --wait` prints."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Input, Label, Static

from flock_node.cli.rolling import Outcome, Roll
from flock_tui.context import console_of
from flock_tui.model import Styles, duration
from flock_tui.roll import RollDriver, equivalent_command, parse_limits, stop_the_rest
from flock_tui.widgets.ordered_input import OrderedInput


def outcome_style(outcome: str, st: Styles) -> str:
    return {"ok": st.success, "failed": f"bold {st.error}", "unreachable": st.warning,
            "skipped": st.muted, "running": f"bold {st.accent}"}.get(outcome, st.muted)


def outcome_cells(o: Outcome, st: Styles) -> list[Text]:
    """NODE, OUTCOME, RUN, UPD, TOOK, WHY: node-provided text stays plain."""
    done = o.outcome in ("ok", "failed")
    return [Text(o.node, style="bold"), Text(o.outcome, style=outcome_style(o.outcome, st)),
            Text(o.run or "-", style=st.muted), Text(str(o.updated) if done else "-"),
            Text(duration(o.duration) if done else "-"),
            Text(o.error or "", style=st.error if o.outcome == "failed" else st.muted)]


def summary_text(roll: Roll, stopped: bool, st: Styles) -> Text:
    """`3 ok, 1 failed, 1 skipped, 0 unreachable` (and what is still going on)."""
    s = roll.summary()
    t = Text()
    for key, style in (("ok", st.success), ("failed", st.error), ("skipped", st.muted),
                       ("unreachable", st.warning)):
        t.append(f"{s[key]} {key}", style=f"bold {style}" if s[key] else st.muted)
        t.append(", " if key != "unreachable" else "")
    running = roll.count("running")
    if not roll.done:
        t.append(f"   {running} converging, {roll.count('pending')} waiting", style=st.accent)
        if stopped:
            t.append("   stopping: no new node starts", style=st.warning)
    else:
        t.append(f"   done ({len(roll.nodes)} nodes, at most {roll.max_parallel} at once, "
                 f"stop after {roll.max_fail} failed)", style=st.muted)
    return t


class RollForm(ModalScreen[tuple[int, int] | None]):
    """Max parallel and max fail for a rolling run on `nodes`; enter starts, esc cancels."""

    BINDINGS: ClassVar = [Binding("escape", "cancel", "Cancel", id="rolling.cancel")]

    def __init__(self, nodes: list[str], target: str | None):
        super().__init__()
        self.nodes, self.target = nodes, target

    def compose(self) -> ComposeResult:
        with Vertical(id="roll-form", classes="dialog"):
            yield Label(Text(f"Rolling run on {len(self.nodes)} node(s)", style="bold"),
                        classes="dialog-title")
            yield Static(Text(", ".join(self.nodes) + "\n\nin name order, never more than "
                              "max parallel at once; once max fail have failed no new node "
                              "starts (the rest are skipped)."), id="roll-nodes")
            with Horizontal(classes="roll-field"):
                yield Label("max parallel ")
                yield OrderedInput("1", id="roll-parallel", type="integer")
            with Horizontal(classes="roll-field"):
                yield Label("max fail     ")
                yield OrderedInput("1", id="roll-fail", type="integer")
            yield Static(id="roll-command")
            yield Static(id="roll-error")
            yield Label(Text.assemble(("enter", "bold"), " start   ", ("tab", "bold"),
                                      " next field   ", ("esc", "bold"), " cancel"),
                        classes="hint")

    def on_mount(self) -> None:
        self.query_one("#roll-parallel", Input).focus()
        self.update_command()

    def limits(self) -> tuple[int, int]:
        return parse_limits(self.query_one("#roll-parallel", Input).value,
                            self.query_one("#roll-fail", Input).value)

    @on(Input.Changed)
    def update_command(self) -> None:
        err = self.query_one("#roll-error", Static)
        try:
            n, k = self.limits()
        except ValueError as e:
            err.update(Text(str(e), style=f"bold {console_of(self.app).styles_.error}"))
            return
        err.update("")
        self.query_one("#roll-command", Static).update(
            Text(equivalent_command(self.target, n, k), style="dim"))

    @on(Input.Submitted)
    def start(self) -> None:
        try:
            self.dismiss(self.limits())
        except ValueError as e:
            # The message is shown already; the cursor stays on (or goes to) the wrong field.
            wrong = "#roll-fail" if str(e).startswith("max fail") else "#roll-parallel"
            self.query_one(wrong, Input).focus()

    def action_cancel(self) -> None:
        self.dismiss(None)


class RollScreen(ModalScreen[None]):
    """The roll as it goes: a row per node, the summary below. `escape` stops it (no new node
    starts; those converging finish), and closes it once done."""

    BINDINGS: ClassVar = [Binding("escape", "stop_or_close", "Stop / close",
                                  id="rolling.stop")]

    def __init__(self, nodes: list[str], target: str | None, max_parallel: int,
                 max_fail: int):
        super().__init__()
        self.target = target
        self.roll = Roll(nodes, max_parallel, max_fail)
        self.stopped = False

    def compose(self) -> ComposeResult:
        r = self.roll
        with Vertical(id="roll", classes="dialog"):
            yield Label(Text(f"Rolling run: {len(r.nodes)} node(s), at most {r.max_parallel} "
                             f"at once", style="bold"), classes="dialog-title")
            yield Label(Text(equivalent_command(self.target, r.max_parallel, r.max_fail),
                             style="dim"))
            yield DataTable(id="roll-table", cursor_type="row", zebra_stripes=True)
            yield Static(id="roll-summary")
            yield Label(id="roll-hint", classes="hint")

    def on_mount(self) -> None:
        t = self.query_one("#roll-table", DataTable)
        st = console_of(self.app).styles_
        for label in ("NODE", "OUTCOME", "RUN", "UPD", "TOOK", "WHY"):
            t.add_column(label, key=label)
        for o in self.roll.nodes.values():
            t.add_row(*outcome_cells(o, st), key=o.node)
        self.show()
        self.drive()

    def show(self, o: Outcome | None = None) -> None:
        if not self.is_attached:
            return
        st = console_of(self.app).styles_
        if o is not None:
            t = self.query_one("#roll-table", DataTable)
            for col, cell in zip(("NODE", "OUTCOME", "RUN", "UPD", "TOOK", "WHY"),
                                 outcome_cells(o, st), strict=True):
                t.update_cell(o.node, col, cell, update_width=True)
        self.query_one("#roll-summary", Static).update(summary_text(self.roll, self.stopped, st))
        hint = "esc close" if self.roll.done else "esc stop: no new node starts"
        self.query_one("#roll-hint", Label).update(Text(hint))

    @work(exclusive=True, group="rolling", exit_on_error=False)
    async def drive(self) -> None:
        c = console_of(self.app)
        if c.flock is None:
            c.log_error("not connected to the flock")
            self.stopped = True
            stop_the_rest(self.roll)  # nothing started: done, and esc closes
            self.show()
            return

        def report(o: Outcome) -> None:
            if o.outcome != "running" or o.run:
                c.log_line(Text(f"{o.node}: rolling run: {o.outcome}"
                                + (f" ({o.error})" if o.error else "")), o.node)
            self.show(o)

        await RollDriver(c.flock, self.roll, report, lambda: self.stopped).drive()
        s = self.roll.summary()
        c.log_line(Text(f"rolling run: {s['ok']} ok, {s['failed']} failed, {s['skipped']} "
                        f"skipped, {s['unreachable']} unreachable"))
        self.show()

    def action_stop_or_close(self) -> None:
        if self.roll.done:
            self.dismiss(None)
            return
        self.stopped = True
        self.show()

    def outcomes(self) -> dict[str, Any]:
        """Each node's outcome (tests, the log)."""
        return {n: o.outcome for n, o in self.roll.nodes.items()}
