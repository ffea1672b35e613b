"""The footer: Textual's own, with the macro keys after a "macros:" label, and on a narrow
terminal compact, with short descriptions and `?`, `q` and `^p` first, so they are never cut
(the stock `^p palette` is docked right, where it covers the last key of a full footer: here
it is in the flow, before the macros).

The only module that imports Textual's private footer parts (FooterKey, FooterLabel)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widgets import Footer
from textual.widgets._footer import FooterKey, FooterLabel

NARROW = 120
SHORT = {"Run chef": "Run", "Why-run": "Why", "Subscribe": "Sub", "Mark": "Mark", "Filter": "Find",
         "Notify": "Notify", "Remove sub": "Unsub", "Retry outbox": "Retry"}
FIRST = ("help", "quit", "app.pop_screen")

__all__ = ["FlockFooter", "FooterKey", "FooterLabel"]


class FlockFooter(Footer):
    """`? Help  q Quit` always visible; macros shown as `│ macros: D deploy-web`."""

    DEFAULT_CSS = """
    FlockFooter FooterLabel.macros { color: $text-muted; margin: 0 1; }
    """

    def __init__(self) -> None:
        super().__init__()
        self._narrow: bool | None = None

    def compose(self) -> ComposeResult:
        narrow = self.app.size.width < NARROW
        self._narrow = narrow
        self.compact = narrow
        keys = list(super().compose())
        for w in keys:  # in the flow, never docked over the last key
            if w.has_class("-command-palette"):
                w.remove_class("-command-palette")
                w.add_class("palette")

        def is_macro(w: object) -> bool:
            return isinstance(w, FooterKey) and str(w.action).startswith("macro(")

        if not narrow:  # after the built-in keys, before the macros
            keys.sort(key=lambda w: 2 if is_macro(w) else 1 if w.has_class("palette") else 0)
        else:
            keys.sort(key=lambda w: 0 if isinstance(w, FooterKey) and w.action in FIRST else
                      1 if w.has_class("palette") else 2)
            for w in keys:
                if isinstance(w, FooterKey):
                    w.description = SHORT.get(w.description, w.description)
                    if w.key == "space":
                        w.key_display = "␣"
        labelled = False
        for w in keys:
            if not labelled and is_macro(w):
                labelled = True
                yield FooterLabel("│ macros:", classes="macros")
            yield w

    def on_resize(self) -> None:
        if self._narrow is not None and (self.app.size.width < NARROW) != self._narrow:
            self.call_after_refresh(self.recompose)
