"""A yes/no question whose body scrolls inside the dialog, so it fits any terminal."""

from __future__ import annotations

from collections.abc import Callable
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

    # More keys for the hint line, (key, what) - a subclass's own bindings.
    MORE: ClassVar[list[tuple[str, str]]] = []

    def __init__(self, title: str, body: Text | str, yes: str = "Yes"):
        super().__init__()
        self.title_text, self.body, self.yes = title, body, yes

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="dialog"):
            yield Label(Text(self.title_text, style="bold"), classes="dialog-title")
            with VerticalScroll(id="confirm-scroll"):
                yield Static(self.body if isinstance(self.body, Text) else Text(self.body),
                             id="confirm-body")
            hint = Text.assemble(("y", "bold"), f"/enter {self.yes}   ")
            for key, what in self.MORE:
                hint.append_text(Text.assemble((key, "bold"), f" {what}   "))
            hint.append_text(Text.assemble(("n", "bold"), "/esc cancel"))
            yield Label(hint, classes="hint")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class RunConfirmScreen(ConfirmScreen):
    """The confirmation of a converge on several nodes: `w` shows what it would do first
    (why-run, nothing runs), `l` rolls it through them a few at a time instead."""

    BINDINGS: ClassVar = [
        Binding("w", "why_run", "Why-run", id="confirm.why_run"),
        Binding("l", "rolling", "Rolling run", id="confirm.rolling"),
    ]
    MORE: ClassVar[list[tuple[str, str]]] = [("w", "why-run"), ("l", "rolling…")]

    def __init__(self, title: str, body: Text | str, yes: str,
                 why_run: Callable[[], object], rolling: Callable[[], object]):
        super().__init__(title, body, yes)
        self.why_run, self.rolling = why_run, rolling

    def action_why_run(self) -> None:
        self.why_run()  # over this dialog: escape comes back here

    def action_rolling(self) -> None:
        self.dismiss(False)
        self.rolling()
