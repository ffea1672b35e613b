"""An Input that applies keys in the order they were typed.

Textual 8 inserts a printable key in `Input._on_key` at once but runs the Input's bound keys
(backspace, enter, arrows...) only after the key has bubbled up to the app; keys that arrive in
one terminal read (fast typing, a paste, tmux send-keys) then apply out of order: backspace,
`2`, enter gave `2` then deleted it and submitted an empty field (textual issue 6605, fix
proposed in textual PR 6631). Running the Input's own bindings where the key arrives keeps the
order; the binding that runs is the one the app would have run (the focused widget comes first
in the binding chain), so nothing else changes.
"""

from __future__ import annotations

from textual import events
from textual.widgets import Input


class OrderedInput(Input):
    """`Input` whose own key bindings run in typing order (see the module docstring)."""

    async def _on_key(self, event: events.Key) -> None:
        if not event.is_printable:
            for binding in self._bindings.key_to_bindings.get(event.key, ()):
                if not binding.priority and await self.app.run_action(binding.action, self):
                    event.stop()
                    event.prevent_default()
                    return
        await super()._on_key(event)
