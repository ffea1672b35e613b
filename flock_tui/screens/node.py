"""The node screen: one node's resources, runs with their causes, subscriptions both ways and
live events, its audit trail. Five panes in a grid on a big terminal; on a small one (below
110x40) one pane at a time, `tab` switching, so each pane keeps enough rows to be useful."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Label, RichLog, Static

from flock_node.transport import RpcError
from flock_tui.context import Console, console_of, err_text
from flock_tui.messages import MembersUpdated, NodeEvent
from flock_tui.model import activity_text, last_run_text
from flock_tui.screens.node_changes import NodeChanges
from flock_tui.screens.node_text import (
    Row,
    action_width,
    problems_text,
    resource_rows,
    run_rows,
    sub_rows,
    tabs_text,
)
from flock_tui.widgets.audit import AuditPane
from flock_tui.widgets.footer import FlockFooter
from flock_tui.widgets.run_detail import RunDetail
from flock_tui.widgets.tables import cursor_key, flex_width, refill, update_column

PANES = [("resources", "Resources"), ("runs", "Runs"), ("subs", "Subscriptions"),
         ("detail", "Run detail"), ("audit", "Audit")]
RELOAD_ON = ("run_finished", "subscription_registered", "subscription_removed",
             "notification_received")


class NodeScreen(NodeChanges, Screen[None]):
    """One node: resources with last results, run history with causes, subscriptions both ways,
    and its live events."""

    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (40, "-tall")]  # five panes need 40 rows
    BINDINGS: ClassVar = [
        Binding("escape,backspace", "app.pop_screen", "Back", id="node.back"),
        Binding("r", "run_chef", "Run chef", id="node.run_chef"),
        Binding("w", "why_run", "Why-run", id="node.why_run"),
        Binding("n", "notify_node", "Notify", id="node.notify"),
        Binding("s", "subscribe", "Subscribe", id="node.subscribe"),
        Binding("d", "remove_subscription", "Remove sub", id="node.unsubscribe"),
        Binding("t", "retry_outbox", "Retry outbox", id="node.retry"),
        Binding("f5,ctrl+r", "reload", "Reload", id="node.reload"),
        Binding("tab", "next_pane(1)", "Next pane", show=False, id="node.next_pane"),
        Binding("shift+tab", "next_pane(-1)", "Previous pane", show=False,
                id="node.previous_pane"),
    ]

    def __init__(self, node: str):
        super().__init__()
        self.node = node
        self.history: dict[str, dict[str, Any]] = {}
        self.subs: dict[str, dict[str, Any]] = {}
        self.data: tuple[list[Any], list[Any], dict[str, Any]] | None = None
        self.problems = ""  # what the node's own status says is wrong (crashed loops...)
        self.ready = False  # composed and mounted: events may be written to it
        self.pane = "resources"  # the one shown on a small terminal

    @property
    def console(self) -> Console:
        return console_of(self.app)

    @property
    def compact(self) -> bool:
        """One pane at a time (a small terminal)."""
        return self.has_class("-narrow") or self.has_class("-short")

    def compose(self) -> ComposeResult:
        yield Static(id="node-title")
        yield Static(id="node-tabs")
        with Grid(id="node-panes"):
            for key, title in PANES[:-1]:
                with Vertical(classes="pane", id=f"pane-{key}"):
                    if key == "subs":
                        yield Label(Text.assemble(f"{title}  ", (
                            "→ this node reacts  ← others react  d removes", "dim")),
                            classes="pane-title")
                    else:
                        yield Label(title, classes="pane-title")
                    if key == "detail":
                        with VerticalScroll(id="node-detail-scroll"):
                            yield RunDetail(id="node-detail")
                    else:
                        yield DataTable(id=f"node-{key}", cursor_type="row", zebra_stripes=True)
            yield AuditPane(self.node, classes="pane", id="pane-audit")
        yield Label("Events", classes="pane-title", id="node-events-title")
        yield RichLog(id="node-events", markup=False, wrap=True, max_lines=500)
        yield FlockFooter()

    def on_mount(self) -> None:
        log = self.query_one("#node-events", RichLog)
        for line in self.console.node_events.get(self.node, []):
            log.write(line)
        self.ready = True
        self.update_title()
        self.query_one("#node-detail", Static).update(Text("loading…", style="dim"))
        self.call_after_refresh(self.apply_layout, True)
        self.reload()
        self.set_interval(1.0, self.tick)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # --read-only: neither shown in the footer nor run.
        return self.console.allowed(action, parameters)

    def on_resize(self) -> None:
        # Column widths follow the pane widths: refit once the new layout is known.
        self.call_after_refresh(self.apply_layout, False)

    def apply_layout(self, first: bool) -> None:
        """Show one pane (small terminal) or all four, then refit the columns."""
        for key, _ in PANES:
            self.query_one(f"#pane-{key}").set_class(key == self.pane, "-current")
        if self.compact:
            self.query_one("#node-tabs", Static).update(tabs_text(PANES, self.pane))
            self._focus_pane()
        elif first:
            self.query_one("#node-runs", DataTable).focus()
        self.refill()
        # A pane just shown has no width until the next layout: the audit pane sizes its
        # columns from it (CALLER and CALL give way on a narrow one), so it refits after.
        self.call_after_refresh(self.query_one(AuditPane).refill)

    def _focus_pane(self) -> None:
        target = "#node-detail-scroll" if self.pane == "detail" else f"#node-{self.pane}"
        self.query_one(target).focus()

    def action_next_pane(self, step: int) -> None:
        if not self.compact:
            self.focus_next() if step > 0 else self.focus_previous()
            return
        keys = [k for k, _ in PANES]
        self.pane = keys[(keys.index(self.pane) + step) % len(keys)]
        self.apply_layout(False)

    def update_title(self) -> None:
        if not self.ready:
            return
        c = self.console
        m = c.view.members.get(self.node)
        st = c.styles_
        t = Text()
        t.append(f" {self.node} ", style="bold reverse")
        if m:
            t.append("  ")
            t.append(str(m.get("state")), style=st.state(str(m.get("state"))))
            t.append("  ")
            t.append_text(activity_text(m, st))
            t.append("  last converge: ")
            t.append_text(last_run_text(m, c.clock(), st))
            t.append(f"  outbox {m.get('pending', 0)}", style=st.muted)
            if m.get("dead_letters"):
                t.append(f" ({m['dead_letters']} dead)", style=f"bold {st.error}")
            t.append(f"  {m.get('address', '')}", style=st.muted)
            tags = ",".join(m.get("tags") or [])
            if tags:
                t.append(f"  [{tags}]", style=st.muted)
        else:
            t.append("  not in the flock", style=st.error)
        if self.problems:
            t.append(f"  {self.problems}", style=f"bold {st.error}")
        self.query_one("#node-title", Static).update(t)

    def add_event(self, line: Text) -> None:
        if not self.ready:  # on_mount replays node_events, which already holds this line
            return
        self.query_one("#node-events", RichLog).write(line)

    @on(MembersUpdated)
    def _members(self, msg: MembersUpdated) -> None:
        if self.node in msg.names:
            self.update_title()

    @on(NodeEvent)
    def _event(self, msg: NodeEvent) -> None:
        ev = msg.event
        related = {ev.node, ev.data.get("target"), ev.data.get("sender"), ev.data.get("node")}
        if self.node in related:
            self.on_flock_event(ev.kind)

    def on_flock_event(self, kind: str) -> None:
        if not self.ready:
            return
        self.update_title()
        if kind in RELOAD_ON:
            self.reload()

    @work(exclusive=True, group="node-reload", exit_on_error=False)
    async def reload(self) -> None:
        flock = self.console.flock
        if flock is None:
            return
        self.query_one(AuditPane).reload()
        node = flock[self.node]
        try:
            resources = await node.resource_manager.resources()
            history = await node.flock_api.history(20)
            subs = await node.resource_manager.subscriptions()
            status = await node.flock_api.status()
        except RpcError as e:
            self.console.log_error(f"{self.node}: {err_text(e)}")
            if self.is_attached:
                self.query_one("#node-detail", Static).update(
                    Text(f"cannot reach {self.node}: {err_text(e)}",
                         style=f"bold {self.console.styles_.error}"))
            return
        if not self.is_attached:
            return
        self.data = (resources, history, subs)
        self.problems = problems_text(status)
        self.update_title()
        self.refill()

    def _rows(self) -> tuple[list[Row], list[Row], list[Row], list[int]]:
        assert self.data is not None
        resources, history, subs = self.data
        c = self.console
        now, st = c.clock(), c.styles_
        act_w = action_width(resources)
        res_w = flex_width(self.query_one("#node-resources", DataTable), [act_w, 10, 7])
        runs_t = self.query_one("#node-runs", DataTable)
        run_w = max([6, *(len(r[1][0].plain) for r in run_rows(history, now, 8, st))])
        cause_w = flex_width(runs_t, [run_w, 7, 7, 6, 3])
        sub_w = flex_width(self.query_one("#node-subs", DataTable), [1, 10], 2)
        self.history = {h["id"]: h for h in history}
        srows, self.subs = sub_rows(self.node, subs, sub_w, st)
        return (resource_rows(resources, now, res_w, st), run_rows(history, now, cause_w, st),
                srows, [res_w, act_w, run_w, cause_w, sub_w])

    def refill(self) -> None:
        if self.data is None or not self.is_attached:
            return
        res, runs, subs, (res_w, act_w, run_w, cause_w, sub_w) = self._rows()
        muted = self.console.styles_.muted
        refill(self.query_one("#node-resources", DataTable),
               [("RESOURCE", res_w), ("ACTION", act_w), ("RESULT", 10), ("WHEN", 7)], res,
               "no resources: the node has no recipe loaded", muted)
        t = self.query_one("#node-runs", DataTable)
        refill(t, [("RUN", run_w), ("STATUS", 7), ("STARTED", 7), ("TOOK", 6), ("UPD", 3),
                   ("CAUSE", cause_w)], runs, "no runs yet: r runs chef", muted)
        refill(self.query_one("#node-subs", DataTable),
               [("", 1), ("WHEN UPDATED", sub_w), ("RUNS", sub_w), ("STATE", 10)], subs,
               "no subscriptions: s wires one", muted)
        if runs:
            self.show_run(cursor_key(t))
        else:
            self.query_one("#node-detail", Static).update(
                Text("no runs yet: r starts a converge", style=muted))

    def fill_runs(self, history: list[dict[str, Any]]) -> None:
        """Show `history` (the runs pane and the detail of the cursor run)."""
        resources, _old, subs = self.data or ([], [], {})
        self.data = (resources, history, subs)
        self.refill()

    def tick(self) -> None:
        """Once a second: the title and every age ("5s ago") move with the clock."""
        self.update_title()
        if self.data is None or not self.is_attached:
            return
        self.query_one(AuditPane).tick()
        res, runs, _subs, _w = self._rows()
        update_column(self.query_one("#node-resources", DataTable), res, 3)
        update_column(self.query_one("#node-runs", DataTable), runs, 2)

    @on(DataTable.RowHighlighted, "#node-runs")
    def _run_highlighted(self, ev: DataTable.RowHighlighted) -> None:
        self.show_run(ev.row_key.value)

    def show_run(self, run_id: str | None) -> None:
        h = self.history.get(run_id or "")
        if h:
            self.query_one(RunDetail).show(h, self.console.styles_, self.console.flock)

    def action_run_chef(self) -> None:
        self.console.run_chef_on([self.node])

    def action_why_run(self) -> None:
        self.console.why_run_on([self.node])

    def action_notify_node(self) -> None:
        self.console.open_notify(self.node)

    def action_subscribe(self) -> None:
        self.console.open_subscribe(self.node)

    def action_reload(self) -> None:
        self.reload()
