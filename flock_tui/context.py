"""What the screens may ask of the console: a narrow protocol, so a screen is given its
collaborators' shape instead of importing the app (no import cycle, testable alone)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from rich.text import Text

from flock_node.client import AsyncFlock
from flock_node.transport import RpcError
from flock_tui.model import FlockView, Styles


class Console(Protocol):
    """The console app as the screens see it."""

    styles_: Styles
    clock: Callable[[], float]
    read_only: bool
    view: FlockView
    node_events: dict[str, deque[Text]]

    @property
    def flock(self) -> AsyncFlock | None:
        """The flock client (None until connected)."""

    def log_line(self, text: Text, node: str | None = None, at: float | None = None) -> None:
        """Add a line to the event log (and to `node`'s screen)."""

    def log_error(self, msg: str, node: str | None = None) -> None:
        """Log an error and show it as a notification."""

    def allowed(self, action: str, parameters: tuple[object, ...]) -> bool:
        """False for what --read-only forbids."""

    def run_chef_on(self, nodes: list[str]) -> None:
        """Start a converge on `nodes` (asks first when there are several)."""

    def why_run_on(self, nodes: list[str]) -> None:
        """Show each node's why-run plan (nothing runs)."""

    def open_notify(self, node: str) -> None:
        """The notification wizard for `node`."""

    def open_subscribe(self, node: str) -> None:
        """The subscription wizard for `node`."""


def err_text(e: BaseException) -> str:
    """An error in a few words: `code: message` for a flock error."""
    if isinstance(e, RpcError):
        return f"{e.code}: {e.message}"
    return f"{type(e).__name__}: {e}"


def console_of(app: Any) -> Console:
    """The running app as a Console (the screens' only way to it)."""
    return app  # type: ignore[no-any-return]
