"""Property checkers: each returns the normalised value or raises ValueError (the resource
turns it into a RecipeError naming the recipe line)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, cast


def _any(v: Any) -> Any:
    return v


def _of(kinds: type | tuple[type, ...], what: str,
        optional: bool = False) -> Callable[[Any], Any]:
    """A property check: a value of `kinds` (or None when `optional`), else why not."""

    def check(v: Any) -> Any:
        if (v is None and optional) or isinstance(v, kinds):
            return v
        raise ValueError(f"must be {what}, not {type(v).__name__}")

    return check


_opt_str = _of(str, "a string", optional=True)
_str = _of(str, "a string")
_content = _of((str, bytes), "a string or bytes", optional=True)


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"must be True or False, not {v!r}")
    return v


def _mode(v: Any) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool):
        raise ValueError(f"must be an octal mode like 0o644 or '0644', not {v!r}")
    if isinstance(v, int):
        n = v
    elif isinstance(v, str) and re.fullmatch(r"0?o?[0-7]{3,4}", v):
        n = int(v.replace("o", ""), 8)
    else:
        raise ValueError(f"must be an octal mode like 0o644 or '0644', not {v!r}")
    if not 0 <= n <= 0o7777:
        raise ValueError(f"must be between 0 and 0o7777, not {oct(n)}")
    return n


def _count(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"must be a non-negative integer, not {v!r}")
    return v


def _seconds(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
        raise ValueError(f"must be a non-negative number of seconds, not {v!r}")
    return float(v)


def _limit(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float("inf"):
        raise ValueError(f"must be a positive number of seconds, not {v!r}")
    return float(v)


def _opt_seconds(v: Any) -> float | None:
    return None if v is None else _seconds(v)


def _guard(v: Any) -> str | Callable[..., Any] | None:
    if v is None or isinstance(v, str) or callable(v):
        return cast("str | Callable[..., Any] | None", v)
    raise ValueError(f"must be a shell command string or a callable, not {type(v).__name__}")


def _callable(v: Any) -> Callable[..., Any] | None:
    if v is not None and not callable(v):
        raise ValueError(f"must be a callable, not {type(v).__name__}")
    return cast("Callable[..., Any] | None", v)


def _returns(v: Any) -> list[int]:
    vals = v if isinstance(v, (list, tuple)) else [v]
    for x in vals:
        if isinstance(x, bool) or not isinstance(x, int):
            raise ValueError(f"must be an exit status or a list of them, not {v!r}")
    return list(vals)


def _environment(v: Any) -> dict[str, str] | None:
    if v is None:
        return None
    if not isinstance(v, dict):
        raise ValueError(f"must be a dict of strings, not {type(v).__name__}")
    return {str(k): str(x) for k, x in v.items()}


_LEVELS = {"debug": 10, "info": 20, "warn": 30, "warning": 30, "error": 40, "fatal": 50}


def _level(v: Any) -> str:
    if not isinstance(v, str) or v.lower() not in _LEVELS:
        raise ValueError(f"must be one of {', '.join(_LEVELS)}, not {v!r}")
    return v.lower()


COMMON: dict[str, tuple[Callable[[Any], Any], Any]] = {
    "only_if": (_guard, None),
    "not_if": (_guard, None),
    "guard_timeout": (_limit, 300.0),  # a hung guard must not hold the node for ever
    "ignore_failure": (_bool, False),
    "retries": (_count, 0),
    "retry_delay": (_seconds, 2.0),
}

