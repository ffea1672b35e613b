"""The local notification queue of one run, kept free of I/O so its rules test alone.

Chef semantics: `delayed` notifications are de-duplicated by (target, action) among those still
pending, and run at the end of the converge in the order first queued.
"""

from __future__ import annotations

from collections import OrderedDict


class DelayedQueue:
    """Pending delayed notifications, de-duplicated, first-queued first-run."""

    def __init__(self) -> None:
        self._pending: OrderedDict[tuple[str, str], None] = OrderedDict()

    def add(self, target: str, action: str) -> bool:
        """Queue (target, action); False if it was already pending."""
        key = (target, action)
        if key in self._pending:
            return False
        self._pending[key] = None
        return True

    def pop(self) -> tuple[str, str] | None:
        """The next notification to run, or None."""
        if not self._pending:
            return None
        return self._pending.popitem(last=False)[0]

    def __len__(self) -> int:
        return len(self._pending)

    def __bool__(self) -> bool:
        return bool(self._pending)
