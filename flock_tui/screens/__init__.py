"""The console's screens: main (the flock table), node, wizards, confirm, help."""

from flock_tui.context import err_text
from flock_tui.screens.confirm import ConfirmScreen
from flock_tui.screens.help import HelpScreen
from flock_tui.screens.node import NodeScreen
from flock_tui.screens.node_text import problems_text
from flock_tui.screens.wizards import Step, Wizard
from flock_tui.widgets.tables import cursor_key

__all__ = ["ConfirmScreen", "HelpScreen", "NodeScreen", "Step", "Wizard", "cursor_key",
           "err_text", "problems_text"]
