"""The console as an operator meets it (issue 12): small terminals, read-only, ages that move,
health, what a confirmation says. Synthetic members at fixed sizes, the pilot driving keys."""

from __future__ import annotations

from typing import Any

import pytest
from rich.text import Text
from tui_support import aio, members, offline_args, screen_text, until

from flock_tui.app import FlockApp
from flock_tui.macros import ConsoleConfig, Macro
from flock_tui.screens import ConfirmScreen, NodeScreen, Step, Wizard

NOW = 1_700_000_000.0
SIZES = [(80, 24), (160, 45)]


async def offline(pilot: Any, app: FlockApp, rows: list[dict[str, Any]] | None = None) -> None:
    await until(pilot, lambda: app.ready, 3, "mounted")
    app.apply_members(rows if rows is not None else members(NOW))
    app.flush()
    name = (rows or members(NOW))[0]["name"]

    def drawn() -> bool:
        lines = screen_text(app).splitlines()
        return (any(f" {name} " in ln and "STATE" in lines[i - 1] for i, ln in enumerate(lines))
                and bool(lines[-1].strip()))

    await until(pilot, drawn, 3, "the table and the footer on screen")


def row_line(text: str, name: str) -> str:
    return next(ln for ln in text.splitlines() if f" {name} " in ln)


@pytest.mark.parametrize("size", SIZES)
@aio
async def test_the_flock_table_keeps_outbox_and_the_footer_keeps_help_and_quit(size):
    cfg = ConsoleConfig(macros=[Macro(name="deploy-web", key="D", steps=["nodes"])])
    app = FlockApp(offline_args(), clock=lambda: NOW, config=cfg, connect=False)
    async with app.run_test(size=size) as pilot:
        await offline(pilot, app)
        text = screen_text(app)
        lines = text.splitlines()
        header = next(ln for ln in lines if "NAME" in ln)
        assert "OUTBOX" in header, text
        footer = lines[-1]
        assert "? Help" in footer and "q Quit" in footer, footer
        # The dead count is the one number that says something was lost: never cut.
        assert "2 dead" in row_line(text, "db1"), text
        assert app.shown["db1"]["pending"].plain == "0 (2 dead)"


async def node_screen(pilot: Any, app: FlockApp, data: Any, node: str = "db1") -> NodeScreen:
    scr = NodeScreen(node)
    app.push_screen(scr)
    await until(pilot, lambda: scr.ready, 3, "node screen")
    scr.data = data
    scr.refill()
    await until(pilot, lambda: "Back" in screen_text(app).splitlines()[-1], 3, "the footer")
    return scr


def resources(n: int, **kw: Any) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        r = {"id": f"file[/srv/app/conf.d/part{i:02}.conf]", "default_action": "create",
             "actions": ["create", "touch", "delete"], "last_result": "up_to_date",
             "last_action": "create", "last_at": NOW - 30}
        r.update(kw)
        out.append(r)
    return out


def history(n: int, **kw: Any) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        h = {"id": f"20261124-2131{i:02}-aaaa{i:02}", "kind": "converge", "status": "ok",
             "started": NOW - 60 * (i + 1), "duration": 1.5, "updated": 1, "cause": None,
             "resources": [], "notifications": []}
        h.update(kw)
        out.append(h)
    return out


SUBS = {"outgoing": [{"id": "sub-1", "node": "web1", "remote_resource": "file[/x/schema.sql]",
                      "resource": "file[/srv/app.conf]", "action": "touch",
                      "state": "registered"}], "incoming": []}


@aio
async def test_the_node_screen_at_80x24_shows_several_resource_rows():
    app = FlockApp(offline_args(), clock=lambda: NOW, config=ConsoleConfig(), connect=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await offline(pilot, app)
        await node_screen(pilot, app, (resources(12), history(5), SUBS))
        text = screen_text(app)
        assert sum("part" in ln for ln in text.splitlines()) >= 6, text
        assert "? Help" in text.splitlines()[-1] or "esc Back" in text.splitlines()[-1]
        # tab reaches the other panes (runs), which then show their rows
        await pilot.press("tab")
        await pilot.pause(0.1)
        text = screen_text(app)
        assert sum("aaaa0" in ln for ln in text.splitlines()) >= 4, text


@aio
async def test_confirmations_and_wizards_fit_an_80x24_terminal():
    app = FlockApp(offline_args(), clock=lambda: NOW, config=ConsoleConfig(), connect=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await offline(pilot, app)
        body = Text("\n".join(f"line {i}" for i in range(40)))
        app.push_screen(ConfirmScreen("Run chef?", body, "Run"))
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), 3, "confirm")
        await pilot.pause(0.1)
        dialog = app.screen.query_one("#dialog")
        assert app.screen.region.contains_region(dialog.region), dialog.region
        assert "y/enter Run" in screen_text(app)
        app.screen.dismiss(False)

        async def opts(_c: dict[str, str]) -> list[tuple[str, str]]:
            return [(f"o{i}", f"option {i} " + "x" * 90) for i in range(40)]

        async def perform(_c: dict[str, str]) -> None:
            return None

        wiz = Wizard("Subscribe", [Step(k, k, opts) for k in "abcde"], lambda c: Text("ok"),
                     perform, preset={"a": "o1", "b": "o2", "c": "o3", "d": "o4"})
        app.push_screen(wiz)
        await until(pilot, lambda: wiz.all_options, 3, "options")
        await pilot.pause(0.1)
        box = wiz.query_one("#wizard")
        assert app.screen.region.contains_region(box.region), box.region
        text = screen_text(app)
        assert "enter select" in text and "5/5" in text, text


@aio
async def test_the_read_only_node_screen_neither_shows_nor_runs_changes():
    app = FlockApp(offline_args("--read-only"), clock=lambda: NOW, config=ConsoleConfig(),
                   connect=False)
    async with app.run_test(size=(160, 45)) as pilot:
        await offline(pilot, app)
        scr = await node_screen(pilot, app, (resources(3), history(2), SUBS))
        footer = screen_text(app).splitlines()[-1]
        for word in ("Run chef", "Notify", "Subscribe", "Remove sub", "Retry"):
            assert word not in footer, footer
        scr.query_one("#node-subs").focus()
        await pilot.press("d", "r", "n", "s", "t")
        await pilot.pause(0.2)
        assert app.screen is scr


@aio
async def test_the_multi_node_confirmation_says_what_the_console_does():
    app = FlockApp(offline_args(), clock=lambda: NOW, config=ConsoleConfig(), connect=False)
    async with app.run_test(size=(160, 45)) as pilot:
        await offline(pilot, app)
        await pilot.press("a")  # mark all
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), 3, "confirm")
        body = app.screen.query_one("#confirm-body").content.plain
        assert "&&" not in body, body
        assert "in parallel" in body and "db1, web1, web2" in body, body
        await pilot.press("n")
        # marks that are exactly a tag: the equivalent command names the tag
        await pilot.press("a")
        for name in ("web1", "web2"):
            app.table.move_cursor(row=app.table.get_row_index(name))
            await pilot.press("space")
        assert app.marks == {"web1", "web2"}
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), 3, "confirm")
        body = app.screen.query_one("#confirm-body").content.plain
        assert "$ flockctl run-chef tag:web" in body, body


@aio
async def test_node_screen_ages_move_and_each_result_shows_its_own_action():
    clock = [NOW]
    app = FlockApp(offline_args(), clock=lambda: clock[0], config=ConsoleConfig(),
                   connect=False)
    async with app.run_test(size=(160, 45)) as pilot:
        await offline(pilot, app)
        rs = resources(1, last_result="updated", last_action="touch")
        console_cause = {"node": "flock-console", "notification": "n-1", "hops": 1}
        hs = history(1, kind="reaction", cause=console_cause)
        scr = await node_screen(pilot, app, (rs, hs, SUBS))
        row = [c.plain for c in scr.query_one("#node-resources").get_row_at(0)]
        assert row[1:3] == ["touch", "updated"], row  # not the declared `create`
        cause = scr.query_one("#node-runs").get_row_at(0)[-1].plain
        assert "?" not in cause and "console" in cause, cause
        assert row[3] == "30s ago"
        clock[0] += 600
        await until(pilot, lambda: scr.query_one("#node-resources").get_row_at(0)[3].plain
                    == "10m ago", 3, "the age to move")
        assert scr.query_one("#node-runs").get_row_at(0)[2].plain == "11m ago"


@aio
async def test_health_is_the_last_converge_with_a_later_reaction_beside_it():
    app = FlockApp(offline_args(), clock=lambda: NOW, config=ConsoleConfig(), connect=False)
    async with app.run_test(size=(160, 45)) as pilot:
        failed = {"id": "r1", "status": "failed", "kind": "converge", "started": NOW - 60,
                  "duration": 2.0, "updated": 0}
        reaction = {"id": "r2", "status": "ok", "kind": "reaction", "started": NOW - 10,
                    "duration": 0.5, "updated": 1}
        rows = members(NOW)
        rows[0].update(last_run=reaction, last_converge=failed)  # the agent says so
        await offline(pilot, app, rows)
        cell = app.shown["db1"]["last"].plain
        assert cell.startswith("failed 1m ago"), cell
        assert "↺ ok" in cell, cell
        # An agent without `last_converge`: the console keeps the converge it saw.
        from flock_node.protocol import Event

        rows = members(NOW)
        app.apply_members(rows)
        app.on_flock_event(Event("web1", "run_finished", NOW - 5,
                                 {"run": "r9", "status": "failed", "kind": "converge"}))
        app.on_flock_event(Event("web1", "run_started", NOW - 4,
                                 {"run": "r10", "kind": "reaction"}))
        app.on_flock_event(Event("web1", "run_finished", NOW - 3,
                                 {"run": "r10", "status": "ok", "kind": "reaction"}))
        rows = members(NOW)
        rows[1].update(active=False, run=None, last_run={
            "id": "r10", "status": "ok", "kind": "reaction", "started": NOW - 4,
            "duration": 1.0, "updated": 1})
        app.apply_members(rows)  # a poll without last_converge does not forget it
        app.flush()
        cell = app.shown["web1"]["last"].plain
        assert cell.startswith("failed"), cell
        assert "↺ ok" in cell, cell


@pytest.mark.parametrize("size", [*SIZES, (140, 40)])
@aio
async def test_the_palette_key_never_overlaps_another_footer_key(size):
    from flock_tui.widgets.footer import FlockFooter, FooterKey

    cfg = ConsoleConfig(macros=[Macro(name="deploy-web", key="D", steps=["nodes"]),
                                Macro(name="probe", key="p", steps=["active {node}"])])
    app = FlockApp(offline_args(), clock=lambda: NOW, config=cfg, connect=False)
    async with app.run_test(size=size) as pilot:
        await offline(pilot, app)
        for scr in (None, "node"):
            if scr == "node":
                await node_screen(pilot, app, (resources(3), history(2), SUBS))
            await pilot.pause(0.2)
            footer = app.screen.query_one(FlockFooter)
            keys = [k for k in footer.query(FooterKey) if k.region.width]
            assert any(k.key == "ctrl+p" for k in keys), [k.key for k in keys]
            for i, a in enumerate(keys):
                for b in keys[i + 1:]:
                    assert not a.region.overlaps(b.region), (a.key, a.region, b.key, b.region)
            assert "palette" in screen_text(app).splitlines()[-1]
