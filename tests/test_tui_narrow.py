"""What an 80x24 terminal shows: the flock table keeps TAGS on screen (ADDRESS goes below 100
columns instead of being cut to `ipc:…/ru`), and the node screen's audit pane keeps OUTCOME
whole, shortening CALLER and CALL instead."""

from __future__ import annotations

import pytest
from tui_support import aio, members, offline_args, screen_text, until

from flock_tui.app import FlockApp
from flock_tui.macros import ConsoleConfig

NOW = 1_700_000_000.0


def table_lines(app: FlockApp) -> list[str]:
    """The header and the rows of db1 and web1, as the terminal shows them."""
    lines = screen_text(app).splitlines()
    return [next(ln for ln in lines if ln.split()[:1] == [w]) for w in ("NAME", "db1", "web1")]


@pytest.mark.parametrize("size", [(80, 24), (100, 30), (160, 45)])
@aio
async def test_the_flock_table_keeps_tags_on_screen(size):
    app = FlockApp(offline_args(), clock=lambda: NOW, config=ConsoleConfig(), connect=False)
    async with app.run_test(size=size) as pilot:
        await until(pilot, lambda: app.ready, 3, "mounted")
        app.apply_members(members(NOW))
        app.flush()
        await pilot.pause(0.1)
        head, db1, web1 = table_lines(app)
        assert "OUTBOX" in head and "TAGS" in head, head
        assert db1.rstrip().endswith(" db") and web1.rstrip().endswith(" web"), (db1, web1)
        if size[0] >= 100:
            assert "ADDRESS" in head and "tcp://10.0.0.3:7601" in db1, (head, db1)
        else:
            assert "ADDRESS" not in head and "tcp:" not in db1, (head, db1)
