"""Pages of long answers (`resources`, `history`, `outbox`, `members`): every page fits one frame.

A call given an `offset` answers one page, `{"items": [...], "next_offset": N | None}`; the
node fills it until the items' encoded size nears `PAGE_BUDGET`, and `next_offset` says where
the next page starts (None: the answer is complete, up to `limit` items if one was given).
The Python client and the `flockctl` CLI ask page after page and hand back the whole list. A call without `offset` keeps its old shape,
the whole list, which the RPC server answers with `too_large` when it does not fit a frame.

`members` pages by name: a page also says `next_after`, the last name it holds, and the next
call passes it as `after`, so pages taken while members join and leave neither skip nor
repeat a member that stayed (an index would shift with every change before it).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Awaitable, Callable, Generator, Iterable, Sequence
from typing import Any, Generic, TypeVar

import msgspec

from flock_node.blocking import run_now
from flock_node.protocol import MAX_FRAME

# Encoded bytes of one page's items: half a frame leaves room for the envelope, the response
# around the items, and the estimate (items are measured one by one).
PAGE_BUDGET = MAX_FRAME // 2
PAGED = {("resource_manager", "resources"), ("flock_api", "history"), ("flock_api", "outbox"),
         ("flock_api", "run"), ("flock_api", "members")}
HISTORY_LIMIT = 20  # runs a `history()` without `limit` answers
OUTBOX_LIMIT = 100  # notifications an `outbox()` without `limit` answers
# The client pages up to the same default, not to the end, when no `limit` is given.
DEFAULT_LIMITS = {"history": HISTORY_LIMIT, "outbox": OUTBOX_LIMIT}

_enc = msgspec.msgpack.Encoder()
T = TypeVar("T")
R = TypeVar("R")


def count_arg(value: Any, name: str) -> int:
    """An `offset`/`limit` argument: a non-negative integer (ValueError answers bad_request)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be 0 or more, got {value}")
    if value >= 1 << 63:  # SQLite's integers are 64-bit: refused the same with or without paging
        raise ValueError(f"{name} is too large: {value}")
    return value


class Page(msgspec.Struct, Generic[T]):
    """One page of a long answer: `next_offset` is where the next starts (None: complete)."""

    items: list[T]
    next_offset: int | None


class NamePage(Page[T]):
    """A page of rows in name order: `next_after` is the name to pass as `after` next."""

    next_after: str | None = None


class RunPage(msgspec.Struct, Generic[R, T]):
    """A run (without its resources) and one page of its resources."""

    run: R
    items: list[T]
    next_offset: int | None


def fill_page(rows: Iterable[T], offset: int, more: bool,
              budget: int = PAGE_BUDGET) -> Page[T]:
    """The first of `rows` (row 0 is number `offset`) whose encoded size fits `budget`, as a
    page. `more`: rows exist after the last of `rows`. A page holds at least one row, so
    paging always advances; a single row too big for a frame is answered `too_large`. Rows
    are taken one at a time: a generator's rows past the page are never made."""
    items: list[T] = []
    used = 0
    full = False
    for r in rows:
        size = len(_enc.encode(r))
        if items and used + size > budget:
            full = True
            break
        items.append(r)
        used += size
    return Page(items, offset + len(items) if more or full else None)


def name_start(names: Sequence[str], offset: int, after: str | None) -> int:
    """Where a page of rows in name order starts in `names` (sorted): just past `after`
    when given (the name the last page ended on), else at `offset`."""
    return bisect_right(names, after) if after is not None else offset


def by_name(page: Page[T], name: Callable[[T], str]) -> NamePage[T]:
    """A page of rows in name order, with `next_after`: the name to pass as `after` for the
    next page (None when the answer is complete)."""
    more = page.next_offset is not None and page.items
    return NamePage(page.items, page.next_offset, name(page.items[-1]) if more else None)


def crowds_a_page(row: Any, budget: int = PAGE_BUDGET) -> bool:
    """Whether a row alone would crowd a page (over half of it): a history run that does is
    sent without its resources, which the client fetches with `run(id)`."""
    return len(_enc.encode(row)) > budget // 2


def _next(args: dict[str, Any], got: list[Any], page: Any) -> dict[str, Any] | None:
    """The arguments of the page after `page`, or None when `got` is complete."""
    got.extend(page["items"])
    nxt = page.get("next_offset")
    want = args.get("limit")
    if nxt is None or not page["items"] or (want is not None and len(got) >= want):
        return None
    a = {**args, "offset": nxt}
    if page.get("next_after") is not None:
        a["after"] = page["next_after"]
    if want is not None:
        a["limit"] = want - len(got)
    return a


def _old_node(e: Exception) -> bool:
    # A node from before paging refuses the unknown argument (in the words of its keyword
    # arguments, or of its typed contract): ask it the old way.
    return getattr(e, "code", None) == "bad_request" and (
        "'offset'" in str(e) or "`offset`" in str(e))


def _first(method: str, args: dict[str, Any]) -> dict[str, Any]:
    a = {**args, "offset": args.get("offset", 0)}
    if "limit" not in a and method in DEFAULT_LIMITS:
        a["limit"] = DEFAULT_LIMITS[method]
    return a


# A plan asks for pages: it yields (method, args) calls, is sent each answer (or thrown its
# error) and returns the whole answer. One plan serves the blocking and the asyncio client.
Plan = Generator[tuple[str, dict[str, Any]], Any, Any]


def plan(method: str, args: dict[str, Any]) -> Plan:
    """The calls that fetch every page of `method(**args)`, and the whole answer."""
    if method == "run":
        return (yield from _run_plan(args))
    items = yield from _list_plan(method, args)
    if method == "history":
        for h in items:
            if h.get("resources_paged") is not None:  # a run too big for a page of runs
                full = yield from _run_plan({"id": h["id"]})
                if full is not None:
                    h["resources"] = full["resources"]
                    del h["resources_paged"]
    return items


def _list_plan(method: str, args: dict[str, Any]) -> Plan:
    first = _first(method, args)
    a: dict[str, Any] | None = first
    got: list[Any] = []
    while a is not None:
        try:
            page = yield method, a
        except Exception as e:
            if _old_node(e) and not got:
                return (yield method, args)
            raise
        if isinstance(page, list):
            return page
        a = _next(first, got, page)
    return got


def _run_plan(args: dict[str, Any]) -> Plan:
    """One run, its resources fetched page by page (a run may hold more than a frame)."""
    try:
        page = yield "run", {**args, "offset": 0}
    except Exception as e:
        if _old_node(e):
            return (yield "run", args)
        raise
    if not isinstance(page, dict) or "items" not in page:
        return page  # None: no such run
    run, resources = page["run"], list(page["items"])
    while page.get("next_offset") is not None and page["items"]:
        page = yield "run", {**args, "offset": page["next_offset"]}
        resources.extend(page["items"])
    run["resources"] = resources
    return run


async def acollect(call: Callable[[str, dict[str, Any]], Awaitable[Any]], method: str,
                   args: dict[str, Any]) -> Any:
    """Every page of a paged method (from `args.get("offset", 0)`, at most `limit` items)."""
    p = plan(method, args)
    try:
        req = next(p)
        while True:
            try:
                answer = await call(*req)
            except Exception as e:
                req = p.throw(e)
            else:
                req = p.send(answer)
    except StopIteration as done:
        return done.value


def collect(call: Callable[[str, dict[str, Any]], Any], method: str,
            args: dict[str, Any]) -> Any:
    """`acollect` for the blocking client: the same plan, driven without an event loop (a
    coroutine whose awaits never suspend runs to its end on the first send)."""

    async def now(m: str, a: dict[str, Any]) -> Any:
        return call(m, a)

    return run_now(acollect(now, method, args))
