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
from flock_tui.model import Styles, ellipsize
from flock_tui.widgets.tables import flex_width, refill, update_column

AUDIT_LIMIT = 100
# The least DETAIL, CALLER and CALL get on a narrow pane (80 columns: 8 + 10 + 13 fit).
DETAIL_MIN, CALLER_MIN, CALL_MIN = 8, 10, 13
Row = tuple[str, list[Text]]


def caller_text(r: dict[str, Any]) -> str:
    """The caller as verified (a certificate), or as claimed, with how it was known."""
    return caller_label(r)


def short_call(call: str, width: int) -> str:
    """`actor.method` in `width` cells: the method whole, the actor shortened first
    (`resour….notify`)."""
    actor, dot, method = call.rpartition(".")
    if len(call) <= width or not dot or len(method) + 3 > width:
        return ellipsize(call, width)
    return actor[:width - len(method) - 2] + "…." + method


def audit_widths(rows: list[dict[str, Any]], room: int) -> list[int]:
    """Widths of AGE, CALLER, ROLE, CALL, OUTCOME in `room` cells (padding excluded), with at
    least DETAIL_MIN left for DETAIL: each fits its longest value within reason; when the room
    is short CALL then CALLER give way (shortened with `…`) so that OUTCOME
    (`unknown_resource`) stays whole."""
    caller = min(24, max([6, *(len(caller_text(r)) for r in rows)]))
    call = min(28, max([4, *(len(str(r.get("call") or "")) for r in rows)]))
    outcome = min(20, max([7, *(len(str(r.get("outcome") or "?")) for r in rows)]))
    over = 7 + caller + 8 + call + outcome + DETAIL_MIN - room
    give = min(max(over, 0), call - CALL_MIN)  # CALL first: its method stays whole
    call -= give
    caller -= min(max(over - give, 0), caller - CALLER_MIN)
    return [7, caller, 8, call, outcome]


def audit_rows(rows: list[dict[str, Any]], now: float, width: int, st: Styles,
               caller_width: int = 24, call_width: int = 28) -> list[Row]:
    """AGE, CALLER, ROLE, CALL, OUTCOME, DETAIL: a refusal is red and bold, other failures
    red, the rest plain; CALLER and CALL shortened to their widths, DETAIL to `width`."""
    out: list[Row] = []
    for r in rows:
        outcome = str(r.get("outcome") or "?")
        refused = outcome in ("refused", "unauthorized")
        style = f"bold {st.error}" if refused else ""
        detail = str(r.get("detail") or "")
        out.append((str(r.get("seq", len(out))), [
            Text(ago(r.get("at"), now), style=style or st.muted),
            Text(ellipsize(caller_text(r), caller_width), style=style),
            Text(str(r.get("role") or ""), style=style),
            Text(short_call(str(r.get("call") or ""), call_width), style=style),
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
        t = self.table
        room = (t.size.width or 60) - 2 - 2 * t.cell_padding * 6  # as flex_width counts
        fixed = audit_widths(self.rows or [], room)
        return [*fixed, flex_width(t, fixed)]

    def _rows(self) -> list[Row]:
        c = console_of(self.app)
        w = self._widths()
        return audit_rows(self.rows or [], c.clock(), w[-1], c.styles_, w[1], w[3])

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
