"""The macro bar: which macro runs, its step and progress; hidden when none runs."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import ProgressBar, Static

from flock_tui.model import Styles


class MacroBar(Horizontal):
    """`▶ macro deploy-web  step 2/3  flockctl run-chef tag:web --wait   (esc cancels)`."""

    DEFAULT_CSS = """
    MacroBar { display: none; height: 1; background: $boost; padding: 0 1; }
    MacroBar.shown { display: block; }
    MacroBar #macro-label { width: 1fr; }
    MacroBar #macro-progress { width: 40; }
    """

    def __init__(self) -> None:
        super().__init__(id="macro-bar")
        self.state: tuple[str, int, int, str] | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="macro-label")
        yield ProgressBar(id="macro-progress", show_eta=False)

    def progress(self, name: str, i: int, n: int, step: str, st: Styles) -> None:
        """Step `i` of `n` started."""
        self.state = (name, i, n, step)
        self.query_one(ProgressBar).update(total=n, progress=i - 1)
        self.note(None, st)

    def note(self, note: str | None, st: Styles) -> None:
        """Show the bar, with `note` (e.g. "cancelling…") after the step."""
        if self.state is None:
            return
        name, i, n, step = self.state
        t = Text()
        t.append("▶ macro ", style="bold")
        t.append(name, style=f"bold {st.accent}")
        t.append(f"  step {i}/{n}  ")
        t.append(f"flockctl {step}", style="bold")
        t.append(f"   {note}" if note else "   (esc cancels)", style=st.muted)
        self.query_one("#macro-label", Static).update(t)
        self.add_class("shown")

    def finished(self) -> None:
        self.state = None
        self.remove_class("shown")
