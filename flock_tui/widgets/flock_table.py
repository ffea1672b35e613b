"""The flock table: one row per member, updated by diff (`update_cell` on rows keyed by node
name inside `batch_update`), never clear-and-refill; narrower columns on a narrow terminal so
OUTBOX (pending and dead letters) stays on screen."""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import Any, ClassVar

from rich.text import Text
from textual.binding import Binding
from textual.coordinate import Coordinate
from textual.widgets import DataTable

from flock_tui.model import (
    COLUMNS,
    SORTABLE,
    FlockView,
    Styles,
    matches,
    row_cells,
    sort_key,
)
from flock_tui.widgets.tables import cursor_key

WIDE = {"mark": 1, "state": 7, "activity": 32, "last": 28}
NARROW = {"mark": 1, "state": 7, "activity": 14, "last": 24}
NARROW_BELOW = 120
# Below this, no ADDRESS column: at 80 columns it was cut to `ipc:…/ru` and pushed TAGS off
# screen. TAGS says what a node is for (and what `tag:` targets); the address stays in the
# filter and on the node screen.
ADDRESS_BELOW = 100
ROWS_PER_FLUSH = 40  # rows redrawn by one flush (2 a second), those on screen first


def column_widths(width: int) -> dict[str, int]:
    """Fixed column widths for a terminal `width` wide (the others size to their content)."""
    return NARROW if width < NARROW_BELOW else WIDE


def shown_columns(width: int) -> list[tuple[str, str]]:
    """The columns (key, label) a terminal `width` wide shows."""
    return [c for c in COLUMNS if c[0] != "address" or width >= ADDRESS_BELOW]


def next_sort_column(current: str, width: int) -> str:
    """The column `S` sorts by after `current`: only columns on screen (below 100 columns
    ADDRESS is hidden, and sorting by a column nobody sees looks like a sort doing nothing)."""
    shown = {key for key, _ in shown_columns(width)}
    keys = [k for k in SORTABLE if k in shown]
    at = keys.index(current) if current in keys else -1
    return keys[(at + 1) % len(keys)]


def short_address(t: Text) -> Text:
    """`ipc:///very/long/runtime/dir/a.rpc` → `ipc:…/dir/a.rpc`."""
    s = t.plain
    if s.startswith("ipc://"):
        parts = s[6:].rstrip("/").split("/")
        return Text("ipc:…/" + "/".join(parts[-2:]), style=t.style)
    return t


def budget(dirty: set[str], on_screen: set[str], most: int,
           after: str = "") -> tuple[set[str], set[str]]:
    """(rows to update now, rows left dirty): the rows on screen always, then others up to
    `most` in all, in name order from the first after `after` (round robin: every row gets
    its turn however often the others change). A poll of a thousand changed nodes is drawn
    over a few flushes instead of one long stall that keys would wait behind."""
    now = set(on_screen)
    room = most - len(now)
    rest = dirty - now
    if room <= 0:
        return now, rest
    if len(rest) <= room:
        return now | rest, set()
    names = sorted(rest)
    start = bisect.bisect_right(names, after)
    take = set((names[start:] + names[:start])[:room])
    return now | take, rest - take


class FlockTable(DataTable[Any]):
    """Rows keyed by node name; `enter` opens the node screen instead of the DataTable
    default. Keeps the cursor on its node across sorts, filters and removals."""

    BINDINGS: ClassVar = [Binding("enter", "open_node", "Node", id="flock.node")]
    DEFAULT_CSS = """
    FlockTable { height: auto; max-height: 70%; }
    """

    def __init__(self, **kw: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kw)
        self.shown: dict[str, dict[str, Text]] = {}  # rows in the table and their cells
        self.filter = ""
        self.sort_column = "name"
        self.widths: dict[str, int] = {}
        self.columns_shown: list[tuple[str, str]] = []
        self.force_all = False
        self.resort_needed = False
        self._last_ago = 0.0
        self._turn = ""  # the last row redrawn by a flush that hit ROWS_PER_FLUSH

    def action_open_node(self) -> None:
        self.screen.action_open_node()  # type: ignore[attr-defined]

    def setup_columns(self, width: int) -> None:
        """(Re)build the columns for a terminal `width` wide; rows are added back by the
        next refresh."""
        widths, columns = column_widths(width), shown_columns(width)
        if widths == self.widths and columns == self.columns_shown:
            return
        key = self.cursor_node()
        self.widths, self.columns_shown = widths, columns
        self.clear(columns=True)
        self.shown.clear()
        for k, label in columns:
            self.add_column(label, key=k, width=widths.get(k))
        self.force_all = True
        self._anchor = key

    def cursor_node(self) -> str | None:
        """The node under the cursor."""
        return cursor_key(self)

    def visible_rows(self) -> set[str]:
        """Names of the rows on screen (and a few around)."""
        return set(self.rows_on_screen())

    def rows_on_screen(self) -> list[str]:
        """Names of the rows on screen (and a few around), top to bottom."""
        first = max(0, int(self.scroll_y) - 2)
        last = min(self.row_count, first + self.size.height + 4)
        out: list[str] = []
        for i in range(first, last):
            try:
                key = self.coordinate_to_cell_key(Coordinate(i, 0)).row_key.value
                if key is not None:
                    out.append(key)
            except Exception:  # noqa: BLE001 - rows changed meanwhile
                break
        return out

    def due(self, view: FlockView, now: float) -> Iterable[str] | None:
        """The names to revisit now, None when nothing is due: the rows on screen, then
        rows to add or remove, at most `ROWS_PER_FLUSH` in all. A changed row off screen
        waits in `view.dirty` until it scrolls into view (any cell's update makes DataTable
        draw every visible cell again), unless a filter or a sort by its values needs it."""
        if self.force_all:
            self.force_all = False
            view.dirty.clear()
            return set(view.members) | set(self.shown)
        on_screen = self.visible_rows()
        tick = now - self._last_ago >= 1.0
        if tick:
            # "5s ago" moves every second: revisit the rows on screen once a second.
            self._last_ago = now
        elif not view.dirty:
            return None
        else:
            on_screen &= view.dirty
        if self.filter or self.sort_column != "name":
            needed = view.dirty
        else:
            needed = {n for n in view.dirty if n not in self.shown or n not in view.members}
        # The first answer fills the table at once: a flock of thousands is not drawn in turns.
        most = ROWS_PER_FLUSH if self.shown else len(needed)
        names, _ = budget(needed, on_screen, most, self._turn)
        view.dirty -= names
        return self._took(names) if names or tick else None

    def _took(self, names: set[str]) -> set[str]:
        if len(names) >= ROWS_PER_FLUSH:  # the next flush goes on from the last of these
            self._turn = max(names)
        return names

    def apply(self, view: FlockView, names: Iterable[str], marks: set[str], now: float,
              st: Styles) -> bool:
        """Update the rows of `names`; True if anything on screen changed."""
        changed = added = False
        was_empty = not self.shown
        for name in names:
            m = view.members.get(name)
            present = name in self.shown
            if m is None or not matches(m, self.filter):
                if present:
                    key = self.cursor_node()
                    self.remove_row(name)
                    del self.shown[name]
                    self.reanchor(key)
                    changed = True
                continue
            every = row_cells(m, now, name in marks, st, self.widths == NARROW)
            every["address"] = short_address(every["address"])
            cells = {c: every[c] for c, _ in self.columns_shown}
            if not present:
                self.add_row(*cells.values(), key=name)
                added = True
            else:
                old = self.shown[name]
                for c, v in cells.items():
                    if old[c] != v:
                        # OUTBOX sizes to its content: `0 (12 dead)` is never cut. Only
                        # when the width changes: a narrower cell makes DataTable measure
                        # the whole column, for each such cell (seconds at 1,000 rows).
                        self.update_cell(name, c, v, update_width=c == "pending"
                                         and v.cell_len != old[c].cell_len)
                        changed = True
            self.shown[name] = cells
        if added or self.resort_needed or (changed and self.sort_column != "name"):
            self.resort(view)
        self.resort_needed = False
        anchor = getattr(self, "_anchor", None)
        if anchor and anchor in self.shown:
            self.reanchor(anchor)
            self._anchor = None
        elif was_empty and self.shown:
            self.move_cursor(row=0)  # the first node in sort order, not the first to answer
        return added or changed

    def resort(self, view: FlockView) -> None:
        """Sort by the current column, keeping the cursor on its node."""
        key = self.cursor_node()
        col = self.sort_column
        members = view.members
        self.sort("name", key=lambda cell: sort_key(col, members.get(cell.plain,
                                                                     {"name": cell.plain})))
        self.reanchor(key)

    def reanchor(self, key: str | None) -> None:
        """sort()/remove_row keep the cursor index: put it back on the same node."""
        if key is None or key not in self.shown:
            return
        try:
            idx = self.get_row_index(key)
        except Exception:  # noqa: BLE001
            return
        if idx != self.cursor_row:
            self.move_cursor(row=idx, animate=False)
