"""The node screen's audit pane: the node's audit trail (`trust.audit`, as `flockctl audit
NODE` shows it): who called what, in which role, and how it ended; refusals stand out."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Label

from flock_node.cli import ago
from flock_node.store.audit import caller_label
from flock_node.transport import RpcError
from flock_tui.context import console_of, err_text
from flock_tui.model import Styles
from flock_tui.widgets.tables import flex_width, refill, update_column

AUDIT_LIMIT = 100
Row = tuple[str, list[Text]]


def caller_text(r: dict[str, Any]) -> str:
    """The caller as verified (a certificate), or as claimed, with how it was known."""
    return caller_label(r)


def audit_rows(rows: list[dict[str, Any]], now: float, width: int, st: Styles) -> list[Row]:
    """AGE, CALLER, ROLE, CALL, OUTCOME, DETAIL: a refusal is red and bold, other failures
    red, the rest plain."""
    out: list[Row] = []
    for r in rows:
        outcome = str(r.get("outcome") or "?")
        refused = outcome in ("refused", "unauthorized")
        style = f"bold {st.error}" if refused else ""
        detail = str(r.get("detail") or "")
        out.append((str(r.get("seq", len(out))), [
            Text(ago(r.get("at"), now), style=style or st.muted),
            Text(caller_text(r), style=style),
            Text(str(r.get("role") or ""), style=style),
            Text(str(r.get("call") or ""), style=style),
            Text(outcome, style=style or (st.success if outcome == "ok" else st.error)),
            Text(detail if len(detail) <= width else detail[:width - 1] + "…",
                 style=style or st.muted),
        ]))
    return out


class AuditPane(Vertical):
    """The audit trail of `node`, newest first; reloaded with the node screen."""

    def __init__(self, node: str, **kw: Any):
        super().__init__(**kw)
        self.node = node
        self.rows: list[dict[str, Any]] | None = None
        self.problem = ""

    def compose(self) -> ComposeResult:
        yield Label(Text.assemble("Audit  ", ("changes and refusals, newest first", "dim")),
                    classes="pane-title")
        yield DataTable(id="node-audit", cursor_type="row", zebra_stripes=True)

    @property
    def table(self) -> DataTable[Any]:
        return self.query_one("#node-audit", DataTable)

    @work(exclusive=True, group="node-audit", exit_on_error=False)
    async def reload(self) -> None:
        """Ask the node for its audit trail; a node that cannot answer says why in the pane."""
        c = console_of(self.app)
        if c.flock is None:
            return
        try:
            rows = await c.flock.call(self.node, "trust", "audit", {"limit": AUDIT_LIMIT})
            self.rows, self.problem = list(rows or []), ""
        except RpcError as e:
            self.rows, self.problem = [], f"no audit trail: {err_text(e)}"
        self.refill()

    def _widths(self) -> list[int]:
        """AGE, CALLER, ROLE, CALL, OUTCOME fit their longest value (within reason); DETAIL
        takes the rest."""
        rows = self.rows or []
        caller = min(24, max([6, *(len(caller_text(r)) for r in rows)]))
        call = min(28, max([4, *(len(str(r.get("call") or "")) for r in rows)]))
        fixed = [7, caller, 8, call, 12]
        return [*fixed, flex_width(self.table, fixed)]

    def _rows(self) -> list[Row]:
        c = console_of(self.app)
        return audit_rows(self.rows or [], c.clock(), self._widths()[-1], c.styles_)

    def refill(self) -> None:
        if self.rows is None or not self.is_attached:
            return
        empty = self.problem or f"nothing audited on {self.node} yet"
        names = ("AGE", "CALLER", "ROLE", "CALL", "OUTCOME", "DETAIL")
        refill(self.table, list(zip(names, self._widths(), strict=True)), self._rows(), empty,
               console_of(self.app).styles_.muted)

    def tick(self) -> None:
        """Ages move with the clock."""
        if self.rows:
            update_column(self.table, self._rows(), 0)
