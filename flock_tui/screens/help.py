"""The key bindings and macros, with the binding ids a [keymap] can remap."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label, Static


class HelpScreen(ModalScreen[None]):
    """Every key of the flock table and the node screen, then the macros and their steps."""

    BINDINGS: ClassVar = [Binding("escape,q,question_mark", "dismiss", "Close",
                                  id="help.close")]

    def __init__(self, rows: list[tuple[str, str, str]], macros: list[Any]):
        super().__init__()
        self.rows, self.macros = rows, macros

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help", classes="dialog"):
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
