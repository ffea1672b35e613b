"""A yes/no question whose body scrolls inside the dialog, so it fits any terminal."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static


class ConfirmScreen(ModalScreen[bool]):
    """Yes/no question; `y`/`enter` confirm, `n`/`escape` cancel."""

    BINDINGS: ClassVar = [
        Binding("y,enter", "answer(True)", "Yes", id="confirm.yes"),
        Binding("n,escape", "answer(False)", "No", id="confirm.no"),
    ]

    def __init__(self, title: str, body: Text | str, yes: str = "Yes"):
        super().__init__()
        self.title_text, self.body, self.yes = title, body, yes

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="dialog"):
            yield Label(Text(self.title_text, style="bold"), classes="dialog-title")
            with VerticalScroll(id="confirm-scroll"):
                yield Static(self.body if isinstance(self.body, Text) else Text(self.body),
                             id="confirm-body")
            yield Label(Text.assemble(("y", "bold"), f"/enter {self.yes}   ",
                                      ("n", "bold"), "/esc cancel"), classes="hint")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)
