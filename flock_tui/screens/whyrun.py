"""Why-run from the console: each node's plan (`flock_api.why_run()`, the same data as
`flockctl run-chef NODE --why-run`) in a scrollable dialog. Nothing runs and nothing is sent:
the nodes only decide."""

from __future__ import annotations

import asyncio
import shlex
from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from flock_node.transport import RpcError
from flock_tui.context import console_of, err_text
from flock_tui.plans import plans_text

# A plan evaluates shell guards: give it a run's time, not a quick answer's (as the CLI does).
WHY_RUN_TIMEOUT = 60.0


def would_fail(plan: dict[str, Any] | str | None) -> bool:
    """A plan that says its run would fail."""
    return isinstance(plan, dict) and plan.get("status", "ok") != "ok"


class WhyRunScreen(ModalScreen[None]):
    """The plans of `nodes`, filled in as they arrive; `escape` closes."""

    BINDINGS: ClassVar = [
        Binding("escape,q,w", "close", "Close", id="whyrun.close"),
    ]

    def __init__(self, nodes: list[str], target: str | None = None):
        super().__init__()
        self.nodes = nodes
        # One command when a TARGET names them all, else one per node.
        self.command = (f"$ flockctl run-chef {target} --why-run" if target else "$ " + " ; ".join(
            f"flockctl run-chef {shlex.quote(n)} --why-run" for n in nodes))
        self.plans: dict[str, dict[str, Any] | str | None] = {}

    def compose(self) -> ComposeResult:
        with Vertical(id="whyrun", classes="dialog"):
            yield Label(Text(f"Why-run: {len(self.nodes)} node(s), nothing runs",
                             style="bold"), classes="dialog-title")
            yield Label(Text(self.command, style="dim"))
            with VerticalScroll(id="whyrun-scroll"):
                yield Static(id="whyrun-body")
            yield Label(Text.assemble(("↑↓ pgup pgdn", "bold"), " scroll   ",
                                      ("esc", "bold"), " close"), classes="hint")

    def on_mount(self) -> None:
        self.show()
        self.query_one("#whyrun-scroll").focus()
        self.ask()

    def show(self) -> None:
        st = console_of(self.app).styles_
        self.query_one("#whyrun-body", Static).update(plans_text(self.nodes, self.plans, st))

    @property
    def done(self) -> bool:
        return all(self.plans.get(n) is not None for n in self.nodes)

    @work(exclusive=True, group="why-run", exit_on_error=False)
    async def ask(self) -> None:
        """Every node in parallel; each plan is shown as it comes."""
        c = console_of(self.app)
        if c.flock is None:
            self.plans = {n: "not connected to the flock" for n in self.nodes}
            self.show()
            return
        flock = c.flock

        async def one(n: str) -> None:
            try:
                self.plans[n] = await flock.call(n, "flock_api", "why_run", {},
                                                 timeout=WHY_RUN_TIMEOUT)
            except RpcError as e:
                self.plans[n] = err_text(e)
            if self.is_attached:
                self.show()

        await asyncio.gather(*(one(n) for n in self.nodes))
        failing = [n for n in self.nodes if would_fail(self.plans.get(n))]
        c.log_line(Text(f"why-run of {', '.join(self.nodes)}: nothing was changed"
                        + (f"; would fail on {', '.join(failing)}" if failing else "")))

    def action_close(self) -> None:
        self.dismiss(None)
