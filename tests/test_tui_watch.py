"""Issue 11: the console's bus connections are bounded to the nodes it looks at (the pure
selection of `flock_tui.watch`: visible ∪ marked ∪ open node screen, a cap, least recently
looked at first out, a grace for rows scrolled away)."""

from __future__ import annotations

import asyncio

import pytest
from conftest import wait_for
from test_agent import start_many
from tui_support import until

from flock_node.cli import build_parser
from flock_tui.app import FlockApp
from flock_tui.macros import ConsoleConfig
from flock_tui.screens import NodeScreen
from flock_tui.watch import CAP, GRACE, Watch, dialable, limits


def buses(n: int) -> dict[str, str]:
    return {f"n{i:03d}": f"tcp://10.0.0.{i}:7600" for i in range(n)}


def test_only_the_nodes_looked_at_are_held_never_the_whole_flock():
    flock = buses(1000)
    w = Watch(cap=64, grace=5.0)
    visible = [f"n{i:03d}" for i in range(20)]
    dial, close = w.step(0.0, ["n005", *visible, "n900"], ["n500"], flock)
    assert set(w.held) == {*visible, "n900", "n500"} and close == []
    assert sorted(dial) == sorted(flock[n] for n in w.held)
    # Nothing changes: nothing to do.
    assert w.step(0.5, ["n005", *visible, "n900"], ["n500"], flock) == ([], [])


def test_the_cap_keeps_the_most_wanted_and_the_node_screen_beyond_it():
    flock = buses(300)
    w = Watch(cap=4, grace=5.0)
    looked = ["n010", "n001", "n002", "n003", "n004", "n005"]  # cursor first, then rows
    w.step(0.0, looked, ["n200"], flock)
    assert list(w.held) == ["n200", "n010", "n001", "n002", "n003"]
    assert len(w.held) == 4 + 1


def test_rows_scrolled_away_are_closed_after_the_grace_least_recent_first():
    flock = buses(100)
    w = Watch(cap=3, grace=2.0)
    w.step(0.0, ["n001", "n002"], [], flock)
    w.step(1.0, ["n003"], [], flock)  # scrolled: n001, n002 in grace, n003 looked at
    assert set(w.held) == {"n001", "n002", "n003"}
    dial, close = w.step(1.5, ["n004"], [], flock)  # the cap: the least recent goes first
    assert set(w.held) == {"n004", "n003", "n001"} or set(w.held) == {"n004", "n003", "n002"}
    assert len(close) == 1 and dial == [flock["n004"]]
    # Back within the grace: no redial.
    assert w.step(1.6, ["n003"], [], flock)[0] == []
    # Past the grace, only what is looked at stays.
    dial, close = w.step(5.0, ["n003"], [], flock)
    assert set(w.held) == {"n003"} and dial == [] and len(close) == 2


def test_a_node_that_moved_is_redialed_and_a_dead_one_closed():
    flock = buses(3)
    w = Watch(cap=8, grace=1.0)
    w.step(0.0, ["n000", "n001"], [], flock)
    moved = {**flock, "n000": "tcp://10.9.9.9:7600"}
    del moved["n001"]  # down: no longer dialable
    dial, close = w.step(0.1, ["n000", "n001"], [], moved)
    assert dial == ["tcp://10.9.9.9:7600"]
    assert sorted(close) == sorted([flock["n000"], flock["n001"]])
    assert w.held == {"n000": "tcp://10.9.9.9:7600"}


def test_dialable_and_limits():
    members = {"a": {"bus": "tcp://a", "state": "alive"}, "b": {"bus": "tcp://b", "state": "down"},
               "c": {"bus": "", "state": "alive"}, "d": {"bus": "tcp://d", "state": "suspect"}}
    assert dialable(members) == {"a": "tcp://a", "d": "tcp://d"}
    assert limits({}) == (CAP, GRACE)
    assert limits({"FLOCK_CONSOLE_CONNECTIONS": "4", "FLOCK_CONSOLE_GRACE": "0.5"}) == (4, 0.5)
    assert limits({"FLOCK_CONSOLE_CONNECTIONS": "lots", "FLOCK_CONSOLE_GRACE": "-1"}) == (CAP, 0.0)


@pytest.mark.timeout(120)
def test_the_console_holds_a_bounded_set_of_connections_to_real_swim_agents(flock_env,
                                                                             monkeypatch):
    """12 real SWIM agents, a cap of 3: the console never holds more than 3 bus connections
    (+1 for the node screen), counted as dialled addresses and as nng pipes, follows the
    cursor, and the live events of a node it holds still reach its log."""
    cap = 3
    monkeypatch.setenv("FLOCK_CONSOLE_CONNECTIONS", str(cap))
    monkeypatch.setenv("FLOCK_CONSOLE_GRACE", "0.3")
    monkeypatch.setenv("FLOCK_CONFIG_DIR", str(flock_env.config_dir))
    flock_env.env["FLOCK_MEMBERSHIP"] = "swim"
    names = [f"w{i:02d}" for i in range(12)]
    start_many(flock_env, names)
    f = flock_env.flock()
    wait_for(lambda: sum(m["state"] == "alive" for m in f["w00"].flock_api.members()) == 12,
             30, what="12 alive")

    async def go() -> None:
        args = build_parser().parse_args(["--runtime-dir", str(flock_env.runtime_dir)])
        app = FlockApp(args, config=ConsoleConfig())
        most = [0, 0]  # dialled, pipes

        async def sample() -> None:
            while True:
                c = app.connection
                most[0] = max(most[0], c.connections())
                if c.bus is not None:
                    most[1] = max(most[1], len(c.bus.sock.pipes))
                await asyncio.sleep(0.02)

        sampler = asyncio.create_task(sample())
        try:
            async with app.run_test(size=(100, 24)) as pilot:
                await until(pilot, lambda: len(app.shown) == 12, 20, "12 rows")
                await until(pilot, lambda: app.connection.connections() == cap, 5, "held")
                first = set(app.connection.watch.held)
                assert app.cursor_node() in first
                await until(pilot, lambda: len(app.connection.bus.sock.pipes) == cap, 5,
                            "pipes up")
                # The cursor goes to the last row: its node is held, the cap still holds.
                app.table.move_cursor(row=11)
                await until(pilot, lambda: "w11" in app.connection.watch.held, 5, "w11 held")
                # Its live events come through that connection.
                f["w11"].flock_api.run_chef()
                await until(pilot, lambda: any("started" in t.plain for t in
                                               app.node_events.get("w11", [])), 10,
                            "w11's run_started event")
                # The node screen is held beyond the cap.
                await pilot.press("enter")
                await until(pilot, lambda: isinstance(app.screen, NodeScreen), 5, "node screen")
                app.connection.watch.cap = 0  # nothing but the node screen
                await until(pilot, lambda: list(app.connection.watch.held) == ["w11"], 5,
                            "only the node screen held")
                await until(pilot, lambda: len(app.connection.bus.sock.pipes) == 1, 5,
                            "one pipe left")
        finally:
            sampler.cancel()
        assert 0 < most[0] <= cap + 1 and 0 < most[1] <= cap + 1, most

    try:
        asyncio.run(go())
    finally:
        f.close()


def test_budget_draws_the_rows_on_screen_first_then_the_others_in_turn():
    from flock_tui.widgets.flock_table import budget

    dirty = {f"n{i:03d}" for i in range(10)}
    now, rest = budget(dirty, {"n009"}, 4)
    assert now == {"n009", "n000", "n001", "n002"} and rest == dirty - now
    # The next flush goes on after the last one drawn, wrapping around.
    now, _ = budget(rest, set(), 4, after="n002")
    assert now == {"n003", "n004", "n005", "n006"}
    now, _ = budget({"n000", "n001", "n008"}, set(), 2, after="n005")
    assert now == {"n008", "n000"}
    # The rows on screen are drawn even past the budget.
    assert budget(dirty, {"n001", "n002", "n003"}, 2) == ({"n001", "n002", "n003"},
                                                          dirty - {"n001", "n002", "n003"})


def test_a_row_off_screen_is_drawn_when_it_scrolls_into_view():
    from tui_support import aio, offline_args

    def rows(active: bool) -> list[dict]:
        return [{"name": f"n{i:03d}", "state": "alive", "address": "", "bus": "", "rpc": "",
                 "incarnation": 1, "active": active and i == 150, "run": None,
                 "last_run": None, "pending": 0, "dead_letters": 0, "tags": [],
                 "version": "0.1.0", "age": 0.0} for i in range(200)]

    @aio
    async def go() -> None:
        app = FlockApp(offline_args(), config=ConsoleConfig(), connect=False)
        async with app.run_test(size=(100, 24)) as pilot:
            await until(pilot, lambda: app.ready, 5, "ready")
            app.apply_members(rows(False))
            await until(pilot, lambda: len(app.shown) == 200, 5, "200 rows")
            app.apply_members(rows(True))
            app.flush()
            await pilot.pause(0.3)
            # Off screen: not drawn yet, still waiting in the view.
            assert app.shown["n150"]["activity"].plain == "idle"
            assert "n150" in app.view.dirty
            app.table.move_cursor(row=150)
            await until(pilot, lambda: app.shown["n150"]["activity"].plain == "converging",
                        5, "n150 drawn once on screen")

    go()
