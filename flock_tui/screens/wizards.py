"""Wizards: pick one value per step (fuzzy filter as you type), confirm, perform. The
notification and subscription wizards are built here from the flock's live data."""

from __future__ import annotations

import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.fuzzy import Matcher
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from flock_tui.context import Console, console_of, err_text
from flock_tui.widgets.ordered_input import OrderedInput


@dataclass
class Step:
    """One choice of a wizard: its key in the choices, its prompt, and where options come
    from."""

    key: str
    prompt: str
    options: Callable[[dict[str, str]], Awaitable[list[tuple[str, str]]]]
    """Given the choices so far: (value, label) pairs."""


class Wizard(ModalScreen[dict[str, Any] | None]):
    """Pick one value per step (fuzzy filter as you type), then confirm and perform."""

    # Each step focuses what it needs; the confirmation focuses nothing, so `y` is not typed
    # into the hidden filter.
    AUTO_FOCUS = ""

    BINDINGS: ClassVar = [
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
            yield OrderedInput(placeholder="type to filter", id="wizard-filter")
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
            self.set_focus(None)  # keys go to the screen: y, enter, escape
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
            console_of(self.app).log_error(f"{self.title_text}: {err_text(e)}")
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
            console_of(self.app).log_error(f"{self.title_text}: {err_text(e)}")
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


def _resources_step(c: Console, node: str, cache: dict[str, Any], prompt: str,
                    key: str = "resource") -> Step:
    async def options(_choices: dict[str, str]) -> list[tuple[str, str]]:
        assert c.flock is not None
        rs = await c.flock[node].resource_manager.resources()
        cache[node] = {r["id"]: r for r in rs}
        return [(r["id"], f"{r['id']}   [{', '.join(r.get('actions', []))}]"
                 f"   last: {r.get('last_result') or '-'}") for r in rs]

    return Step(key, prompt, options)


def notify_wizard(c: Console, node: str) -> Wizard:
    """Send `node` a notification: resource, then action; the console is the sender."""
    cache: dict[str, Any] = {}

    async def actions(choices: dict[str, str]) -> list[tuple[str, str]]:
        r = cache.get(node, {}).get(choices["resource"], {})
        return [(a, a) for a in r.get("actions", [])]

    def summary(ch: dict[str, str]) -> Text:
        t = Text(f"{node} runs {ch['action']} on {ch['resource']} now, out of band.\n\n")
        t.append("$ flockctl notify " + " ".join(shlex.quote(x) for x in (
            node, ch["resource"], ch["action"])), style="bold")
        return t

    async def perform(ch: dict[str, str]) -> Any:
        assert c.flock is not None
        r = await c.flock[node].resource_manager.notify(
            resource=ch["resource"], action=ch["action"], sender="flock-console")
        c.log_line(Text(f"{node}: {ch['action']} on {ch['resource']} queued "
                        f"(notification {r.get('id')})"), node)
        return r

    return Wizard(f"Notify {node}", [
        _resources_step(c, node, cache, f"resource of {node}"),
        Step("action", "action", actions),
    ], summary, perform)


def subscribe_wizard(c: Console, node: str, done: Callable[[str, str], None]) -> Wizard:
    """Wire a remote subscription: local resource, remote node, remote resource, action.
    `done(node, remote node)` runs once it is registered."""
    cache: dict[str, Any] = {}

    async def remote_nodes(_c: dict[str, str]) -> list[tuple[str, str]]:
        return [(m["name"], f"{m['name']}   {m.get('state')}   {','.join(m.get('tags') or [])}")
                for m in sorted(c.view.members.values(), key=lambda m: m["name"])
                if m["name"] != node]

    async def remote_resources(ch: dict[str, str]) -> list[tuple[str, str]]:
        assert c.flock is not None
        rs = await c.flock[ch["node"]].resource_manager.resources()
        return [(r["id"], f"{r['id']}   last: {r.get('last_result') or '-'}") for r in rs]

    async def actions(ch: dict[str, str]) -> list[tuple[str, str]]:
        r = cache.get(node, {}).get(ch["resource"], {})
        return [(a, a) for a in r.get("actions", []) if a != "nothing"] or [
            (a, a) for a in r.get("actions", [])]

    def summary(ch: dict[str, str]) -> Text:
        t = Text("Whenever ")
        t.append(f"{ch['node']}'s {ch['remote_resource']}", style="bold")
        t.append(" is updated,\n")
        t.append(f"{node}", style="bold")
        t.append(f" runs {ch['action']} on {ch['resource']}.\n\n")
        t.append("$ flockctl subscribe " + " ".join(shlex.quote(x) for x in (
            node, ch["resource"], ch["action"])) + " --to " + " ".join(
            shlex.quote(x) for x in (ch["node"], ch["remote_resource"])), style="bold")
        return t

    async def perform(ch: dict[str, str]) -> Any:
        assert c.flock is not None
        r = await c.flock[node].resource_manager.subscribe_to(
            resource=ch["resource"], action=ch["action"], node=ch["node"],
            remote_resource=ch["remote_resource"])
        how = "registered on both nodes" if r.get("state") == "registered" else (
            f"{r.get('state')} ({r.get('error')})")
        msg = (f"{node}: {ch['resource']} runs {ch['action']} when {ch['node']}'s "
               f"{ch['remote_resource']} is updated — subscription {r.get('id')} {how}")
        c.log_line(Text(msg, style=c.styles_.success), node)
        done(node, ch["node"])
        return r

    return Wizard(f"Subscribe {node} to a remote resource", [
        _resources_step(c, node, cache, f"local resource of {node} (reacts)"),
        Step("node", "remote node (fuzzy)", remote_nodes),
        Step("remote_resource", "remote resource (watched)", remote_resources),
        Step("action", "action to run on the local resource", actions),
    ], summary, perform)
