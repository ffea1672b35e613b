"""Pages of long answers (`resources`, `history`, `outbox`): every page fits one frame.

A call given an `offset` answers one page, `{"items": [...], "next_offset": N | None}`; the
node fills it until the items' encoded size nears `PAGE_BUDGET`, and `next_offset` says where
the next page starts (None: the answer is complete, up to `limit` items if one was given).
The Python client and the `flock` CLI ask page after page and hand back the whole list. A call without `offset` keeps its old shape,
the whole list, which the RPC server answers with `too_large` when it does not fit a frame.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec

from flock_node.protocol import MAX_FRAME

# Encoded bytes of one page's items: half a frame leaves room for the envelope, the response
# around the items, and the estimate (items are measured one by one).
PAGE_BUDGET = MAX_FRAME // 2
PAGED = {("resource_manager", "resources"), ("flock_api", "history"), ("flock_api", "outbox")}
HISTORY_LIMIT = 20  # runs a `history()` without `limit` answers
OUTBOX_LIMIT = 100  # notifications an `outbox()` without `limit` answers
# The client pages up to the same default, not to the end, when no `limit` is given.
DEFAULT_LIMITS = {"history": HISTORY_LIMIT, "outbox": OUTBOX_LIMIT}

_enc = msgspec.msgpack.Encoder()


def count_arg(value: Any, name: str) -> int:
    """An `offset`/`limit` argument: a non-negative integer (ValueError answers bad_request)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be 0 or more, got {value}")
    if value >= 1 << 63:  # SQLite's integers are 64-bit: refused the same with or without paging
        raise ValueError(f"{name} is too large: {value}")
    return value


def fill_page(rows: Sequence[Any], offset: int, more: bool,
              budget: int = PAGE_BUDGET) -> dict[str, Any]:
    """The first of `rows` (row 0 is number `offset`) whose encoded size fits `budget`, as a
    page. `more`: rows exist after the last of `rows`. A page holds at least one row, so
    paging always advances; a single row too big for a frame is answered `too_large`."""
    items: list[Any] = []
    used = 0
    for r in rows:
        size = len(_enc.encode(r))
        if items and used + size > budget:
            break
        items.append(r)
        used += size
    rest = more or len(items) < len(rows)
    return {"items": items, "next_offset": offset + len(items) if rest else None}


def _next(args: dict[str, Any], got: list[Any], page: Any) -> dict[str, Any] | None:
    """The arguments of the page after `page`, or None when `got` is complete."""
    got.extend(page["items"])
    nxt = page.get("next_offset")
    want = args.get("limit")
    if nxt is None or not page["items"] or (want is not None and len(got) >= want):
        return None
    a = {**args, "offset": nxt}
    if want is not None:
        a["limit"] = want - len(got)
    return a


def _old_node(e: Exception) -> bool:
    # A node from before paging refuses the unknown argument: ask it the old way.
    return getattr(e, "code", None) == "bad_request" and "'offset'" in str(e)


def _first(method: str, args: dict[str, Any]) -> dict[str, Any]:
    a = {**args, "offset": args.get("offset", 0)}
    if "limit" not in a and method in DEFAULT_LIMITS:
        a["limit"] = DEFAULT_LIMITS[method]
    return a


def collect(call: Callable[[dict[str, Any]], Any], method: str,
            args: dict[str, Any]) -> list[Any]:
    """Every item of a paged method from `args.get("offset", 0)` on (at most `limit`)."""
    first = _first(method, args)
    a: dict[str, Any] | None = first
    got: list[Any] = []
    while a is not None:
        try:
            page = call(a)
        except Exception as e:
            if _old_node(e) and not got:
                return call(args)
            raise
        if isinstance(page, list):
            return page
        a = _next(first, got, page)
    return got


async def acollect(call: Callable[[dict[str, Any]], Awaitable[Any]], method: str,
                   args: dict[str, Any]) -> list[Any]:
    """`collect` for the asyncio client."""
    first = _first(method, args)
    a: dict[str, Any] | None = first
    got: list[Any] = []
    while a is not None:
        try:
            page = await call(a)
        except Exception as e:
            if _old_node(e) and not got:
                return await call(args)
            raise
        if isinstance(page, list):
            return page
        a = _next(first, got, page)
    return got
