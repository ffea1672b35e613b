"""What an 80x24 terminal shows: the flock table keeps TAGS on screen (ADDRESS goes below 100
columns instead of being cut to `ipc:…/ru`), and the node screen's audit pane keeps OUTCOME
whole, shortening CALLER and CALL instead."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from tui_support import aio, members, offline_args, screen_text, until

from flock_tui.app import FlockApp
from flock_tui.macros import ConsoleConfig
from flock_tui.model import SORTABLE

NOW = 1_700_000_000.0


def _offline() -> FlockApp:
    return FlockApp(offline_args(), clock=lambda: NOW, config=ConsoleConfig(), connect=False)


async def _with_members(pilot, app: FlockApp) -> None:
    """Mounted, showing the test flock."""
    await until(pilot, lambda: app.ready, 3, "mounted")
    app.apply_members(members(NOW))
    app.flush()


@contextlib.asynccontextmanager
async def _showing(size: tuple[int, int]) -> AsyncIterator[tuple[FlockApp, Any]]:
    """The console offline at `size`, mounted and showing the test flock."""
    app = _offline()
    async with app.run_test(size=size) as pilot:
        await _with_members(pilot, app)
        yield app, pilot


def table_lines(app: FlockApp) -> list[str]:
    """The header and the rows of db1 and web1, as the terminal shows them."""
    lines = screen_text(app).splitlines()
    return [next(ln for ln in lines if ln.split()[:1] == [w]) for w in ("NAME", "db1", "web1")]


@pytest.mark.parametrize("size", [(80, 24), (100, 30), (160, 45)])
@aio
async def test_the_flock_table_keeps_tags_on_screen(size):
    async with _showing(size) as (app, pilot):
        await pilot.pause(0.1)
        head, db1, web1 = table_lines(app)
        assert "OUTBOX" in head and "TAGS" in head, head
        assert db1.rstrip().endswith(" db") and web1.rstrip().endswith(" web"), (db1, web1)
        if size[0] >= 100:
            assert "ADDRESS" in head and "tcp://10.0.0.3:7601" in db1, (head, db1)
        else:
            assert "ADDRESS" not in head and "tcp:" not in db1, (head, db1)


AUDIT = [{"seq": 3, "at": NOW - 5, "caller": "client-18774", "via": "local", "verified": False,
          "role": "operator", "call": "resource_manager.notify", "outcome": "unknown_resource",
          "detail": "bender0 has no resource execute[nope]; it has: file[/etc/a.conf]"},
         {"seq": 2, "at": NOW - 9, "caller": "observer:bob", "verified": True,
          "role": "observer", "call": "flock_api.run_chef", "outcome": "refused",
          "detail": "the default for role observer"},
         {"seq": 1, "at": NOW - 60, "caller": "client-18774", "via": "local", "verified": False,
          "role": "operator", "call": "resource_manager.subscribe", "outcome": "ok"}]


@pytest.mark.parametrize("size", [(80, 24), (160, 45)])
@aio
async def test_the_audit_pane_keeps_outcome_whole(size):
    from flock_tui.screens.node import NodeScreen
    from flock_tui.widgets.audit import AuditPane

    async with _showing(size) as (app, pilot):
        scr = NodeScreen("db1")
        app.push_screen(scr)
        await until(pilot, lambda: scr.ready, 3, "the node screen")
        pane = scr.query_one(AuditPane)
        pane.rows = AUDIT  # the trail arrives while another pane is shown
        pane.refill()
        if scr.compact:
            while scr.pane != "audit":
                await pilot.press("tab")
        await pilot.pause(0.2)
        # Fitted to the pane as shown, not to the width it had while hidden.
        assert [c.width for c in pane.table.ordered_columns] == pane._widths()
        lines = screen_text(app).splitlines()
        head = next(ln for ln in lines if "OUTCOME" in ln)
        assert "DETAIL" in head, head
        rows = [next(ln for ln in lines if f" {age} ago" in ln) for age in ("5s", "9s", "1m")]
        for line, outcome in zip(rows, ("unknown_resource", "refused", "ok"), strict=True):
            assert f" {outcome} " in line, line
        assert "bender0" in rows[0], rows[0]  # DETAIL starts on screen
        for line, method in zip(rows, (".notify", ".run_chef", ".subscribe"), strict=True):
            assert method in line, "\n".join(lines)  # a shortened call keeps its method


def test_audit_widths_give_way_in_caller_and_call_first():
    from flock_tui.widgets.audit import CALL_MIN, CALLER_MIN, audit_widths, short_call

    assert audit_widths(AUDIT, 200) == [7, 20, 8, 26, 16]  # room: each fits its longest
    age, caller, role, call, outcome = audit_widths(AUDIT, 62)  # an 80-column pane
    assert (age, role, outcome) == (7, 8, 16) and (caller, call) == (CALLER_MIN, CALL_MIN)
    assert short_call("resource_manager.subscribe", 13) == "re….subscribe"
    assert short_call("flock_api.run_chef", 14) == "floc….run_chef"
    assert short_call("flock_api.run_chef", 18) == "flock_api.run_chef"
    assert short_call("a.very_long_method_name", 10) == "a.ver…name"  # no room: the middle


@pytest.mark.parametrize("size", [(80, 24), (160, 45)])
@aio
async def test_sorting_cycles_through_the_columns_on_screen_only(size):
    async with _showing(size) as (app, pilot):
        seen = []
        for _ in range(len(SORTABLE)):
            await pilot.press("S")
            seen.append(app.sort_column)
            if app.sort_column == "name":
                break
        # Back to NAME after each column shown was used once; ADDRESS only when it is shown.
        assert seen[-1] == "name" and len(seen) == len(set(seen)), seen
        assert ("address" in seen) == (size[0] >= 100), seen
        assert set(seen) == set(SORTABLE) - ({"address"} if size[0] < 100 else set()), seen
