"""What a node's name may be, and a pattern naming nodes (a recipe's `node=`)."""

from __future__ import annotations

import re

# A name fits a DNS label, a file name in the runtime dir and a certificate's common name.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
# The same characters plus fnmatch's (`*`, `?`, `[...]`, `[!...]`).
PATTERN_RE = re.compile(r"[A-Za-z0-9._*?\[\]!-]{1,63}\Z")


def is_name(name: str) -> bool:
    """A valid node name."""
    return bool(NAME_RE.match(name))


def is_pattern(pattern: str) -> bool:
    """A node name, or a glob over node names."""
    return bool(PATTERN_RE.match(pattern))
