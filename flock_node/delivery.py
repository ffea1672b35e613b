"""Outbox retry scheduling and notification rules, kept pure so they are tested without I/O."""

from __future__ import annotations

import random

MAX_HOPS = 16
BACKOFF_BASE = 0.25  # seconds before the first retry
BACKOFF_CAP = 30.0

# Codes that mean "the receiver looked at it and said no": retrying will not help.
FINAL_CODES = frozenset(
    {"unknown_resource", "unknown_action", "hop_limit", "bad_request", "unauthorized"}
)


def backoff(attempts: int, rng: random.Random | None = None) -> float:
    """Delay before attempt number `attempts + 1`: exponential, capped, with full jitter
    on the upper half so many senders retrying one node do not stampede together."""
    base = min(BACKOFF_CAP, BACKOFF_BASE * (2 ** max(0, attempts)))
    r = (rng or random).random()
    return base / 2 + r * base / 2


def is_final(code: str) -> bool:
    return code in FINAL_CODES


def hop_refusal(hops: int) -> str | None:
    """Why a notification with this hop count is refused, or None if it may run."""
    if hops > MAX_HOPS:
        return f"hop limit: this notification made {hops} hops (at most {MAX_HOPS}); a chain of notifications loops"
    return None
