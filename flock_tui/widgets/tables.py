"""Helpers for the node screen's small tables: cursor by row key, flexible widths, refills
that keep the cursor on the same row."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widgets import DataTable


def cursor_key(t: DataTable[Any]) -> str | None:
    """The row key under a table's cursor (None when the table is empty)."""
    if not t.row_count:
        return None
    try:
        return t.coordinate_to_cell_key(t.cursor_coordinate).row_key.value
    except Exception:  # noqa: BLE001 - the cursor can briefly point past a removed row
        return None


def flex_width(table: DataTable[Any], fixed: list[int], flexible: int = 1) -> int:
    """The width left for the flexible column(s) once the fixed ones and padding are in."""
    ncols = len(fixed) + flexible
    avail = (table.size.width or 60) - 2  # room for a vertical scrollbar
    left = avail - sum(fixed) - 2 * table.cell_padding * ncols
    return max(8, left // flexible)


def refill(table: DataTable[Any], columns: list[tuple[str, int]],
           rows: list[tuple[str, list[Text]]], empty: str, muted: str) -> None:
    """Small tables: replace the rows (and widths), keeping the cursor on the same key."""
    key = cursor_key(table)
    table.clear(columns=True)
    for label, width in columns:
        table.add_column(label, width=width, key=label)
    for k, cells in rows:
        table.add_row(*cells, key=k)
    if not rows:
        filler = [Text("")] * len(columns)
        filler[0] = Text(empty, style=muted)
        table.add_row(*filler, key="")
    if key is not None:
        try:
            table.move_cursor(row=table.get_row_index(key))
        except Exception:  # noqa: BLE001 - the row is gone
            pass


def update_column(table: DataTable[Any], rows: list[tuple[str, list[Text]]], col: int) -> None:
    """Update column `col` of the rows whose text changed (ages: "5s ago" → "6s ago")."""
    if col >= len(table.ordered_columns):
        return
    ckey = table.ordered_columns[col].key
    for key, cells in rows:
        try:
            if table.get_cell(key, ckey).plain != cells[col].plain:
                table.update_cell(key, ckey, cells[col])
        except Exception:  # noqa: BLE001 - the row is gone meanwhile
            continue
