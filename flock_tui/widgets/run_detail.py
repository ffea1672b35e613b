"""The node screen's run detail: one run in full, then its cause chain walked node by node
(each cause names the run that sent it), fetched in a worker."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import work
from textual.widgets import Static

from flock_node.client import AsyncFlock
from flock_node.transport import RpcError
from flock_tui.context import err_text
from flock_tui.model import Styles
from flock_tui.screens.node_text import cause_step, run_detail

MAX_HOPS = 17


class RunDetail(Static):
    """A run's resources, errors and notifications, and what caused it."""

    def width(self) -> int:
        return max(40, self.size.width or 60)

    def show(self, h: dict[str, Any], st: Styles, flock: AsyncFlock | None) -> None:
        """Show run `h`, then walk its causes (when it has any)."""
        t = run_detail(h, self.width(), st)
        self.update(t)
        if h.get("cause") and not h["cause"].get("scheduled"):
            self.show_cause_chain(h, t, st, flock)

    @work(exclusive=True, group="node-cause", exit_on_error=False)
    async def show_cause_chain(self, h: dict[str, Any], base: Text, st: Styles,
                               flock: AsyncFlock | None) -> None:
        """Walk the cause chain node by node: each cause names the run that sent it."""
        width = self.width()
        t = base.copy()
        t.append("caused by:\n", style="bold")
        cause = h.get("cause")
        depth = 0
        while cause and depth < MAX_HOPS:
            cause_step(t, cause, depth, width, st)
            depth += 1
            if flock is None or not cause.get("node") or not cause.get("run"):
                break
            try:
                parent = await flock[cause["node"]].flock_api.run(cause["run"], timeout=2.0)
            except RpcError as e:
                t.append(f"{'  ' * depth}  ({err_text(e)})\n", style=st.muted)
                break
            cause = (parent or {}).get("cause")
        if self.is_attached:
            self.update(t)
