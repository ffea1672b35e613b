"""The console's secondary screens: confirm, help, the step-by-step picker (subscription wizard,
notification), and the node screen."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.fuzzy import Matcher
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Footer, Input, Label, OptionList, RichLog, Static
from textual.widgets.option_list import Option

from flock_node.cli import ago
from flock_node.transport import RpcError
from flock_tui.model import duration, short_resource, short_run_id


def cursor_key(t: DataTable[Any]) -> str | None:
    """The row key under a table's cursor (None when the table is empty)."""
    if not t.row_count:
        return None
    try:
        return t.coordinate_to_cell_key(t.cursor_coordinate).row_key.value
    except Exception:  # noqa: BLE001 - the cursor can briefly point past a removed row
        return None

if TYPE_CHECKING:
    from flock_tui.app import FlockApp


def err_text(e: BaseException) -> str:
    if isinstance(e, RpcError):
        return f"{e.code}: {e.message}"
    return f"{type(e).__name__}: {e}"


# --- confirm ---------------------------------------------------------------------------------


class ConfirmScreen(ModalScreen[bool]):
    """Yes/no question; `y`/`enter` confirm, `n`/`escape` cancel."""

    BINDINGS = [
        Binding("y,enter", "answer(True)", "Yes", id="confirm.yes"),
        Binding("n,escape", "answer(False)", "No", id="confirm.no"),
    ]

    def __init__(self, title: str, body: Text | str, yes: str = "Yes"):
        super().__init__()
        self.title_text, self.body, self.yes = title, body, yes

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="dialog"):
            yield Label(Text(self.title_text, style="bold"), classes="dialog-title")
            yield Static(self.body if isinstance(self.body, Text) else Text(self.body),
                         id="confirm-body")
            yield Label(Text.assemble(("y", "bold"), f"/enter {self.yes}   ",
                                      ("n", "bold"), "/esc cancel"), classes="hint")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


# --- help ------------------------------------------------------------------------------------


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close", id="help.close")]

    def __init__(self, rows: list[tuple[str, str, str]], macros: list[Any]):
        super().__init__()
        self.rows, self.macros = rows, macros

    def compose(self) -> ComposeResult:
        with Vertical(id="help", classes="dialog"):
            yield Label(Text("Flock console — keys", style="bold"), classes="dialog-title")
            t: DataTable[Any] = DataTable(id="help-table", cursor_type="row", zebra_stripes=True)
            t.add_columns("KEY", "WHAT", "BINDING ID")
            for key, desc, bid in self.rows:
                t.add_row(Text(key, style="bold"), Text(desc), Text(bid, style="dim"))
            yield t
            if self.macros:
                lines = Text()
                for m in self.macros:
                    lines.append(f"{m.key:>8}  ", style="bold")
                    lines.append(f"{m.name}", style="bold")
                    lines.append(f"  {m.description}\n")
                    for s in m.steps:
                        lines.append(f"{'':10}$ flockctl {s}\n", style="dim")
                yield Static(lines, id="help-macros")
            yield Label(Text("Remap any binding by id in console.toml: [keymap] "
                             "\"flock.run_chef\" = \"R\"   ·   esc closes"), classes="hint")


# --- step-by-step picker ---------------------------------------------------------------------


@dataclass
class Step:
    key: str
    prompt: str
    options: Callable[[dict[str, str]], Awaitable[list[tuple[str, str]]]]
    """Given the choices so far: (value, label) pairs."""


class Wizard(ModalScreen[dict[str, Any] | None]):
    """Pick one value per step (fuzzy filter as you type), then confirm and perform."""

    BINDINGS = [
        Binding("escape", "back", "Back", id="wizard.back"),
        Binding("down", "move(1)", show=False),
        Binding("up", "move(-1)", show=False),
        Binding("pagedown", "move(10)", show=False),
        Binding("pageup", "move(-10)", show=False),
    ]

    def __init__(self, title: str, steps: list[Step],
                 summary: Callable[[dict[str, str]], Text],
                 perform: Callable[[dict[str, str]], Awaitable[Any]],
                 preset: dict[str, str] | None = None):
        super().__init__()
        self.title_text, self.steps, self.summary, self.perform = title, steps, summary, perform
        self.choices: dict[str, str] = dict(preset or {})
        self.index = 0
        self.all_options: list[tuple[str, str]] = []
        self.busy = False

    def compose(self) -> ComposeResult:
        with Vertical(id="wizard", classes="dialog"):
            yield Label(Text(self.title_text, style="bold"), classes="dialog-title")
            yield Static(id="wizard-crumbs")
            yield Label(id="wizard-prompt")
            yield Input(placeholder="type to filter", id="wizard-filter")
            yield OptionList(id="wizard-options")
            yield Static(id="wizard-confirm")
            yield Static(id="wizard-error")
            yield Label(id="wizard-hint", classes="hint")

    def on_mount(self) -> None:
        while self.index < len(self.steps) and self.steps[self.index].key in self.choices:
            self.index += 1
        self.show_step()

    @property
    def confirming(self) -> bool:
        return self.index >= len(self.steps)

    def _crumbs(self) -> Text:
        t = Text()
        for s in self.steps:
            if s.key in self.choices:
                t.append(f"{s.prompt}: ", style="dim")
                t.append(self.choices[s.key], style="bold")
                t.append("\n")
        return t

    def show_step(self) -> None:
        self.query_one("#wizard-crumbs", Static).update(self._crumbs())
        self.query_one("#wizard-error", Static).update("")
        opts = self.query_one("#wizard-options", OptionList)
        filt = self.query_one("#wizard-filter", Input)
        confirm = self.query_one("#wizard-confirm", Static)
        hint = self.query_one("#wizard-hint", Label)
        if self.confirming:
            self.query_one("#wizard-prompt", Label).update(Text("Confirm", style="bold"))
            opts.display = filt.display = False
            confirm.display = True
            confirm.update(self.summary(self.choices))
            hint.update("enter/y do it · esc back")
            self.focus()
            return
        step = self.steps[self.index]
        self.query_one("#wizard-prompt", Label).update(
            Text(f"{self.index + 1}/{len(self.steps)}  {step.prompt}", style="bold"))
        opts.display = filt.display = True
        confirm.display = False
        filt.value = ""
        opts.clear_options()
        opts.add_option(Option(Text("loading…", style="dim"), disabled=True))
        hint.update("type to filter · ↑↓ choose · enter select · esc back")
        filt.focus()
        self.load_options(self.index)

    @work(exclusive=True, group="wizard-options", exit_on_error=False)
    async def load_options(self, index: int) -> None:
        step = self.steps[index]
        try:
            options = await step.options(dict(self.choices))
        except Exception as e:  # noqa: BLE001 - shown, never a traceback
            options = []
            self.query_one("#wizard-error", Static).update(Text(err_text(e), style="bold"))
            self.app.log_error(f"{self.title_text}: {err_text(e)}")  # type: ignore[attr-defined]
        if index != self.index or not self.is_attached:
            return
        self.all_options = options
        self.apply_filter(self.query_one("#wizard-filter", Input).value)
        if not options:
            opts = self.query_one("#wizard-options", OptionList)
            opts.clear_options()
            opts.add_option(Option(Text("nothing to pick", style="dim"), disabled=True))

    def apply_filter(self, query: str) -> None:
        opts = self.query_one("#wizard-options", OptionList)
        opts.clear_options()
        if query.strip():
            m = Matcher(query)
            scored = [(m.match(label), v, label) for v, label in self.all_options]
            hits = sorted((s for s in scored if s[0] > 0), key=lambda s: -s[0])
            opts.add_options([Option(_highlight(m, query, label), id=v)
                              for _, v, label in hits])
        else:
            opts.add_options([Option(Text(label), id=v) for v, label in self.all_options])
        if opts.option_count:
            opts.highlighted = 0

    @on(Input.Changed, "#wizard-filter")
    def _filter(self, ev: Input.Changed) -> None:
        self.apply_filter(ev.value)

    def action_move(self, n: int) -> None:
        opts = self.query_one("#wizard-options", OptionList)
        if not opts.option_count:
            return
        cur = opts.highlighted if opts.highlighted is not None else -1
        opts.highlighted = max(0, min(opts.option_count - 1, cur + n))

    @on(Input.Submitted, "#wizard-filter")
    def _submit(self) -> None:
        opts = self.query_one("#wizard-options", OptionList)
        if opts.highlighted is None:
            return
        opt = opts.get_option_at_index(opts.highlighted)
        if opt.disabled or opt.id is None:
            return
        self.choose(opt.id)

    @on(OptionList.OptionSelected, "#wizard-options")
    def _selected(self, ev: OptionList.OptionSelected) -> None:
        if ev.option.id is not None:
            self.choose(ev.option.id)

    def choose(self, value: str) -> None:
        self.choices[self.steps[self.index].key] = value
        self.index += 1
        self.show_step()

    def key_y(self) -> None:
        if self.confirming:
            self.do_it()

    def key_enter(self) -> None:
        if self.confirming:
            self.do_it()

    def action_back(self) -> None:
        if self.busy:
            return
        if self.index == 0:
            self.dismiss(None)
            return
        self.index -= 1
        self.choices.pop(self.steps[self.index].key, None)
        self.show_step()

    @work(exclusive=True, group="wizard-perform", exit_on_error=False)
    async def do_it(self) -> None:
        if self.busy:
            return
        self.busy = True
        self.query_one("#wizard-hint", Label).update("working…")
        try:
            result = await self.perform(dict(self.choices))
        except Exception as e:  # noqa: BLE001
            self.busy = False
            self.query_one("#wizard-error", Static).update(Text(err_text(e), style="bold"))
            self.query_one("#wizard-hint", Label).update("enter/y retry · esc back")
            self.app.log_error(f"{self.title_text}: {err_text(e)}")  # type: ignore[attr-defined]
            return
        self.dismiss({**self.choices, "result": result})


def _highlight(m: Matcher, query: str, label: str) -> Text:
    """Matcher.highlight parses markup, and labels hold `[`...`]`: highlight plain Text."""
    t = Text(label)
    try:
        _score, offsets = m.fuzzy_search.match(query, label)
    except Exception:  # noqa: BLE001 - no highlight then
        return t
    for o in offsets:
        t.stylize("bold reverse", o, o + 1)
    return t


# --- node screen -----------------------------------------------------------------------------


class NodeScreen(Screen[None]):
    """One node: resources with last results, run history with causes, subscriptions both ways,
    and its live events."""

    BINDINGS = [
        Binding("escape,backspace", "app.pop_screen", "Back", id="node.back"),
        Binding("r", "run_chef", "Run chef", id="node.run_chef"),
        Binding("n", "notify_node", "Notify", id="node.notify"),
        Binding("s", "subscribe", "Subscribe", id="node.subscribe"),
        Binding("d", "remove_subscription", "Remove sub", id="node.unsubscribe"),
        Binding("t", "retry_outbox", "Retry outbox", id="node.retry"),
        Binding("f5,ctrl+r", "reload", "Reload", id="node.reload"),
    ]

    def __init__(self, node: str):
        super().__init__()
        self.node = node
        self.history: dict[str, dict[str, Any]] = {}
        self.subs: dict[str, dict[str, Any]] = {}
        self.data: tuple[list[Any], list[Any], dict[str, Any]] | None = None
        self.problems = ""  # what the node's own status says is wrong (crashed loops...)
        self.ready = False  # composed and mounted: the app may push events to it

    @property
    def flock_app(self) -> FlockApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Static(id="node-title")
        with Horizontal(id="node-top"):
            with Vertical(classes="pane"):
                yield Label("Resources", classes="pane-title")
                yield DataTable(id="node-resources", cursor_type="row", zebra_stripes=True)
            with Vertical(classes="pane"):
                yield Label("Runs", classes="pane-title")
                yield DataTable(id="node-runs", cursor_type="row", zebra_stripes=True)
        with Horizontal(id="node-bottom"):
            with Vertical(classes="pane"):
                yield Label(Text.assemble("Subscriptions  ", ("→ this node reacts  ← others "
                                                              "react  d removes", "dim")),
                            classes="pane-title")
                yield DataTable(id="node-subs", cursor_type="row", zebra_stripes=True)
            with Vertical(classes="pane"):
                yield Label("Run detail", classes="pane-title")
                with VerticalScroll(id="node-detail-scroll"):
                    yield Static(id="node-detail")
        yield Label("Events", classes="pane-title")
        yield RichLog(id="node-events", markup=False, wrap=True, max_lines=500)
        yield Footer()

    def on_mount(self) -> None:
        log = self.query_one("#node-events", RichLog)
        for line in self.flock_app.node_events.get(self.node, []):
            log.write(line)
        self.ready = True
        self.update_title()
        self.query_one("#node-runs", DataTable).focus()
        self.query_one("#node-detail", Static).update(Text("loading…", style="dim"))
        self.reload()
        self.set_interval(1.0, self.update_title)

    def on_resize(self) -> None:
        # Column widths follow the pane widths: refit once the new layout is known.
        self.call_after_refresh(self.refill)

    def update_title(self) -> None:
        if not self.ready:
            return
        m = self.flock_app.view.members.get(self.node)
        st = self.flock_app.styles_
        t = Text()
        t.append(f" {self.node} ", style="bold reverse")
        if m:
            from flock_tui.model import activity_text, last_run_text

            t.append("  ")
            t.append(str(m.get("state")), style=st.state(str(m.get("state"))))
            t.append("  ")
            t.append_text(activity_text(m, st))
            t.append("  last run: ")
            t.append_text(last_run_text(m.get("last_run"), self.flock_app.clock(), st))
            t.append(f"  outbox {m.get('pending', 0)}", style=st.muted)
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

    def on_flock_event(self, kind: str) -> None:
        if not self.ready:
            return
        self.update_title()
        if kind in ("run_finished", "subscription_registered", "subscription_removed",
                    "notification_received"):
            self.reload()

    @work(exclusive=True, group="node-reload", exit_on_error=False)
    async def reload(self) -> None:
        flock = self.flock_app.flock
        if flock is None:
            return
        node = flock[self.node]
        try:
            resources = await node.resource_manager.resources()
            history = await node.flock_api.history(20)
            subs = await node.resource_manager.subscriptions()
            status = await node.flock_api.status()
        except RpcError as e:
            self.flock_app.log_error(f"{self.node}: {err_text(e)}")
            if not self.is_attached:
                return
            self.query_one("#node-detail", Static).update(
                Text(f"cannot reach {self.node}: {err_text(e)}",
                     style=f"bold {self.flock_app.styles_.error}"))
            return
        if not self.is_attached:
            return
        self.data = (resources, history, subs)
        self.problems = problems_text(status)
        self.update_title()
        self.refill()

    def refill(self) -> None:
        if self.data is None or not self.is_attached:
            return
        resources, history, subs = self.data
        self.fill_resources(resources)
        self.fill_runs(history)
        self.fill_subs(subs)

    @staticmethod
    def _flex(table: DataTable[Any], fixed: list[int], flexible: int = 1) -> int:
        """The width left for the flexible column(s) once the fixed ones and padding are in."""
        ncols = len(fixed) + flexible
        avail = (table.size.width or 60) - 2  # room for a vertical scrollbar
        left = avail - sum(fixed) - 2 * table.cell_padding * ncols
        return max(8, left // flexible)

    def _refill(self, table: DataTable[Any], columns: list[tuple[str, int]],
                rows: list[tuple[str, list[Any]]], empty: str) -> None:
        """Small tables: replace the rows (and widths), keeping the cursor on the same key."""
        key = self._cursor_key(table)
        table.clear(columns=True)
        for label, width in columns:
            table.add_column(label, width=width, key=label)
        for k, cells in rows:
            table.add_row(*cells, key=k)
        if not rows:
            filler = [Text("")] * len(columns)
            filler[0] = Text(empty, style=self.flock_app.styles_.muted)
            table.add_row(*filler, key="")
        if key is not None:
            try:
                table.move_cursor(row=table.get_row_index(key))
            except Exception:  # noqa: BLE001 - the row is gone
                pass

    def fill_resources(self, resources: list[dict[str, Any]]) -> None:
        now = self.flock_app.clock()
        st = self.flock_app.styles_
        t = self.query_one("#node-resources", DataTable)
        act_w = max([6, *(len(str(r.get("default_action") or "")) for r in resources)])
        fixed = [act_w, 10, 7]
        w = self._flex(t, fixed)
        rows = []
        for r in resources:
            res = r.get("last_result") or "-"
            style = {"updated": st.accent, "up_to_date": st.success, "failed": st.error,
                     "skipped": st.muted}.get(res, "")
            rows.append((r["id"], [Text(short_resource(r["id"], w)),
                                   Text(str(r.get("default_action") or "")),
                                   Text(res, style=style),
                                   Text(ago(r.get("last_at"), now), style=st.muted)]))
        cols = [("RESOURCE", w), ("ACTION", act_w), ("RESULT", 10), ("WHEN", 7)]
        self._refill(t, cols, rows, "no resources: the node has no recipe loaded")

    def fill_runs(self, history: list[dict[str, Any]]) -> None:
        now = self.flock_app.clock()
        st = self.flock_app.styles_
        self.history = {h["id"]: h for h in history}
        t = self.query_one("#node-runs", DataTable)
        run_w = max([6, *(len(short_run_id(h["id"])) for h in history)])
        fixed = [run_w, 7, 7, 6, 3]
        w = self._flex(t, fixed)
        rows = []
        for h in history:
            status = h.get("status", "?")
            style = {"ok": st.success, "failed": st.error}.get(status, st.accent)
            c = h.get("cause") or {}
            if c.get("scheduled"):
                cause = Text("scheduled", style=st.muted)
            elif c:
                cause = Text(short_resource(str(c.get("resource", "?")), w,
                                    f"← {c.get('node', '?')} "))
            else:
                cause = Text(str(h.get("kind") or ""), style=st.muted)
            dead = any(n.get("status") in ("failed", "dead")
                       for n in h.get("notifications") or [])
            rows.append((h["id"], [Text(short_run_id(h["id"])),
                                   Text(status + (" ✗" if dead else ""), style=f"bold {style}"),
                                   Text(ago(h.get("started"), now)),
                                   Text(duration(h.get("duration"))),
                                   Text(str(h.get("updated") or 0)), cause]))
        cols = [("RUN", run_w), ("STATUS", 7), ("STARTED", 7), ("TOOK", 6), ("UPD", 3),
                ("CAUSE", w)]
        self._refill(t, cols, rows, "no runs yet: r runs chef")
        if rows:
            self.show_run(self._cursor_key(t))
        else:
            self.query_one("#node-detail", Static).update(
                Text("no runs yet: r starts a converge", style=st.muted))

    def fill_subs(self, subs: dict[str, list[dict[str, Any]]]) -> None:
        st = self.flock_app.styles_
        t = self.query_one("#node-subs", DataTable)
        fixed = [1, 10]
        w = self._flex(t, fixed, 2)
        rows = []
        self.subs = {}
        for s in subs.get("outgoing", []):
            k = f"out:{s['id']}"
            self.subs[k] = s
            state = str(s.get("state", ""))
            style = {"registered": st.success, "failed": st.error}.get(state, st.warning)
            rows.append((k, [Text("→", style=st.accent),
                             Text(short_resource(s["remote_resource"], w, f"{s['node']} ")),
                             Text(short_resource(s["resource"], w, f"{s['action']} ")),
                             Text(state, style=style)]))
        for s in subs.get("incoming", []):
            k = f"in:{s['id']}"
            self.subs[k] = s
            rows.append((k, [Text("←", style=st.muted),
                             Text(short_resource(s["resource"], w, f"{self.node} ")),
                             Text(short_resource(s["subscriber_resource"], w,
                                                 f"{s['subscriber']}: {s['action']} ")),
                             Text("held here", style=st.muted)]))
        cols = [("", 1), ("WHEN UPDATED", w), ("RUNS", w), ("STATE", 10)]
        self._refill(t, cols, rows, "no subscriptions: s wires one")

    _cursor_key = staticmethod(cursor_key)

    @on(DataTable.RowHighlighted, "#node-runs")
    def _run_highlighted(self, ev: DataTable.RowHighlighted) -> None:
        self.show_run(ev.row_key.value)

    def show_run(self, run_id: str | None) -> None:
        h = self.history.get(run_id or "")
        if not h:
            return
        t = self.run_text(h)
        self.query_one("#node-detail", Static).update(t)
        if h.get("cause") and not h["cause"].get("scheduled"):
            self.show_cause_chain(h, t)

    def run_text(self, h: dict[str, Any]) -> Text:
        st = self.flock_app.styles_
        width = max(40, self.query_one("#node-detail", Static).size.width or 60)
        t = Text()
        ok = h.get("status") == "ok"
        t.append(f"{h['id']}", style="bold")
        t.append(f"  {h.get('kind')}  ")
        t.append(str(h.get("status")), style=f"bold {st.success if ok else st.error}")
        t.append(f"  took {duration(h.get('duration'))}  {h.get('updated') or 0} updated\n",
                 style="" if ok else st.muted)
        if h.get("error"):
            t.append(f"error: {h['error']}\n", style=st.error)
        for r in h.get("resources", []):
            res = r.get("result", "")
            style = {"updated": st.accent, "up_to_date": st.success, "failed": st.error}.get(
                res, st.muted)
            tail = f"  {r['action']} {r.get('duration') or 0:.2f}s"
            t.append(f"  {res:<10} ", style=style)
            t.append(short_resource(str(r["resource"]), width - 13 - len(tail)))
            t.append(tail + "\n", style=st.muted)
            if r.get("error"):
                t.append(f"{'':13}{r['error']}\n", style=st.error)
        notes = h.get("notifications") or []
        if notes:
            t.append("notifications sent:\n", style="bold")
        for n in notes:
            status = str(n.get("status", "?"))
            bad = status in ("failed", "dead")
            style = {"delivered": st.success, "pending": st.warning, "held": st.muted}.get(
                status, st.error if bad else "")
            attempts = int(n.get("attempts") or 0)
            tail = f": {status}" + (f" after {attempts} attempts" if attempts > 1 else "")
            head = f"  → {n.get('target', '?')} "
            room = width - len(head) - len(tail) - len(str(n.get("action", ""))) - 3
            t.append(head, style="bold")
            t.append(f"{short_resource(str(n.get('resource', '?')), room)} {n.get('action', '?')}")
            t.append(tail + "\n", style=f"bold {style}" if bad else style)
            if n.get("error") and status != "delivered":
                t.append(f"      {n['error']}\n", style=st.error if bad else st.muted)
        return t

    @work(exclusive=True, group="node-cause", exit_on_error=False)
    async def show_cause_chain(self, h: dict[str, Any], base: Text) -> None:
        """Walk the cause chain node by node: each cause names the run that sent it."""
        flock = self.flock_app.flock
        st = self.flock_app.styles_
        width = max(40, self.query_one("#node-detail", Static).size.width or 60)
        t = base.copy()
        t.append("caused by:\n", style="bold")
        cause = h.get("cause")
        depth = 0
        while cause and depth < 17:
            indent = "  " * (depth + 1)
            node = str(cause.get("node", "?"))
            t.append(f"{indent}← {node} ", style="bold")
            t.append(short_resource(str(cause.get("resource", "?")),
                                    width - len(indent) - len(node) - 3) + "\n")
            t.append(f"{indent}  run {cause.get('run', '?')}  hop {cause.get('hops', '?')}\n",
                     style=st.muted)
            depth += 1
            if flock is None or not cause.get("node") or not cause.get("run"):
                break
            try:
                parent = await flock[cause["node"]].flock_api.run(cause["run"], timeout=2.0)
            except RpcError as e:
                t.append(f"{indent}  ({err_text(e)})\n", style=st.muted)
                break
            cause = (parent or {}).get("cause")
        if self.is_attached:
            self.query_one("#node-detail", Static).update(t)

    def action_run_chef(self) -> None:
        self.flock_app.run_chef_on([self.node])

    def action_notify_node(self) -> None:
        self.flock_app.open_notify(self.node)

    def action_subscribe(self) -> None:
        self.flock_app.open_subscribe(self.node)

    def action_reload(self) -> None:
        self.reload()

    def action_remove_subscription(self) -> None:
        t = self.query_one("#node-subs", DataTable)
        key = self._cursor_key(t)
        s = self.subs.get(key or "")
        if s is None:
            self.flock_app.notify("no subscription selected", severity="warning")
            return
        body = Text(f"$ flockctl unsubscribe {self.node} {s['id']}\n\n")
        if key and key.startswith("out:"):
            body.append(f"{self.node} stops running {s['action']} on {s['resource']} when "
                        f"{s['node']}:{s['remote_resource']} is updated.")
        else:
            body.append(f"{s['subscriber']} stops being told when {self.node}:{s['resource']} "
                        "is updated.")

        def done(yes: bool | None) -> None:
            if yes:
                self.unsubscribe(str(s["id"]))

        self.app.push_screen(ConfirmScreen("Remove subscription?", body, "Remove"), done)

    def action_retry_outbox(self) -> None:
        if self.flock_app.read_only:
            self.flock_app.notify("read-only console", severity="warning")
            return
        body = Text(f"$ flockctl retry {self.node}\n\n")
        body.append(f"{self.node} sends its dead-lettered and refused notifications again, "
                    "with a fresh TTL.")

        def done(yes: bool | None) -> None:
            if yes:
                self.retry_outbox()

        self.app.push_screen(ConfirmScreen("Retry notifications?", body, "Retry"), done)

    @work(group="node-retry", exit_on_error=False)
    async def retry_outbox(self) -> None:
        flock = self.flock_app.flock
        if flock is None:
            return
        try:
            r = await flock[self.node].flock_api.retry()
        except (RpcError, TypeError) as e:
            self.flock_app.log_error(f"{self.node}: retry: {err_text(e)}")
            return
        n = len(r.get("retried") or [])
        self.flock_app.log_line(Text(f"{self.node}: {n} notification(s) sent again"), self.node)
        self.reload()

    @work(group="node-unsub", exit_on_error=False)
    async def unsubscribe(self, sid: str) -> None:
        flock = self.flock_app.flock
        if flock is None:
            return
        try:
            r = await flock[self.node].resource_manager.unsubscribe(id=sid)
        except (RpcError, TypeError) as e:
            self.flock_app.log_error(f"{self.node}: unsubscribe {sid}: {err_text(e)}")
            return
        self.flock_app.log_line(Text(f"{self.node}: subscription {sid} removed "
                                     f"({r.get('removed')})"), self.node)
        self.reload()


def problems_text(status: dict[str, Any]) -> str:
    """What a node's status says is wrong, in a few words for the node screen's title."""
    out = []
    for lf in status.get("loop_failures") or ():
        out.append(f"⚠ {lf.get('loop')} loop crashed {lf.get('crashes')}x: "
                   f"{lf.get('last_error')}")
    if status.get("ready") is False:
        out.append("starting: recipe compiling")
    return "  ".join(out)


def now() -> float:
    return time.time()
