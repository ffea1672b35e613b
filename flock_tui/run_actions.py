"""The console's runs: a converge on the nodes (asking first when there are several), each
node's why-run plan, and a rolling run. Mixed into the app, which owns the flock and the view."""

from __future__ import annotations

import asyncio
import shlex
from typing import TYPE_CHECKING

from rich.text import Text
from textual import work

from flock_node.transport import RpcError
from flock_tui.context import err_text
from flock_tui.model import FlockView, Styles, run_target
from flock_tui.screens.confirm import RunConfirmScreen
from flock_tui.screens.rolling import RollForm, RollScreen
from flock_tui.screens.whyrun import WhyRunScreen

if TYPE_CHECKING:
    from textual.app import App

    from flock_node.client import AsyncFlock

    _Base = App[int]
else:
    _Base = object


class RunActions(_Base):
    """Converge, why-run and roll the nodes the screens name."""

    read_only: bool
    view: FlockView
    styles_: Styles

    @property
    def flock(self) -> AsyncFlock | None:
        raise NotImplementedError

    def log_line(self, text: Text, node: str | None = None, at: float | None = None) -> None:
        raise NotImplementedError

    def log_error(self, msg: str, node: str | None = None) -> None:
        raise NotImplementedError

    def run_chef_on(self, nodes: list[str]) -> None:
        if self.read_only or not nodes:
            return
        if len(nodes) == 1:
            self.do_run_chef(nodes)
            return
        st = self.styles_
        body = Text(f"Start a converge on {len(nodes)} nodes: one run_chef call per node, all "
                    "in parallel, as `flockctl run-chef` does for a glob or a tag.\n\n")
        body.append(", ".join(nodes) + "\n\n", style="bold")
        target = run_target(nodes, self.view.members)
        if target:
            body.append(f"$ flockctl run-chef {target}", style=st.muted)
        else:
            body.append("$ " + " & ".join(f"flockctl run-chef {shlex.quote(n)}" for n in nodes)
                        + " & wait", style=st.muted)

        def done(yes: bool | None) -> None:
            if yes:
                self.do_run_chef(nodes)

        self.push_screen(RunConfirmScreen("Run chef?", body, "Run", lambda: self.why_run_on(nodes),
                                          lambda: self.roll_on(nodes)), done)

    def target_of(self, nodes: list[str]) -> str | None:
        """The one `flockctl` TARGET naming `nodes` (a name, `tag:TAG`, `'*'`), if any."""
        return shlex.quote(nodes[0]) if len(nodes) == 1 else run_target(nodes, self.view.members)

    def why_run_on(self, nodes: list[str]) -> None:
        """Each node's plan, nothing runs (`flockctl run-chef NODE --why-run`)."""
        if self.read_only or not nodes:
            return
        self.push_screen(WhyRunScreen(nodes, self.target_of(nodes)))

    def roll_on(self, nodes: list[str]) -> None:
        """The rolling-run form, then the roll (`flockctl run-chef ... --max-parallel N`)."""
        if self.read_only or not nodes:
            return
        target = self.target_of(nodes)

        def start(limits: tuple[int, int] | None) -> None:
            if limits is not None:
                self.push_screen(RollScreen(nodes, target, *limits))

        self.push_screen(RollForm(nodes, target), start)

    @work(group="run_chef", exit_on_error=False)
    async def do_run_chef(self, nodes: list[str]) -> None:
        flock = self.flock
        if flock is None:
            self.log_error("not connected to the flock")
            return

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
