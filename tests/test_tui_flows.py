"""Console flows against real agents (a demo flock shared by the module): a notification sent
from the console and how its run reads, removing a subscription from the node screen, the
palette, health from history, a macro that stops, and the bus messages folded into the table."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from tui_support import aio, offline_args, quiet_demo, until

from flock_node.cli import build_parser
from flock_node.client import Flock
from flock_node.protocol import Event, Heartbeat, Leave
from flock_tui.app import FlockApp
from flock_tui.demo import DemoFlock
from flock_tui.macros import ConsoleConfig, Macro
from flock_tui.screens import ConfirmScreen, HelpScreen, NodeScreen, Wizard

SIZE = (160, 45)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = Path(tmp_path_factory.mktemp("tui-flows", numbered=True))
    with quiet_demo(root) as d:
        yield d


@pytest.fixture(autouse=True)
def config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOCK_CONFIG_DIR", str(tmp_path / "config"))


def args(demo: DemoFlock, *extra: str):
    return build_parser().parse_args(["--runtime-dir", str(demo.runtime_dir), "--insecure",
                                      *extra])


def log_of(app: FlockApp) -> str:
    return "\n".join(x.text for x in app.main.query_one("#log").lines)


async def open_node(pilot, app: FlockApp, name: str) -> NodeScreen:
    await until(pilot, lambda: len(app.shown) >= 3, 15, "the table")
    app.table.move_cursor(row=app.table.get_row_index(name))
    await until(pilot, lambda: app.cursor_node() == name, 3, "cursor")
    await pilot.press("enter")
    return await until(pilot, lambda: isinstance(app.screen, NodeScreen) and app.screen, 3,
                       "node screen")


@aio
async def test_a_notification_from_the_console_reads_as_the_operator_s(demo):
    app = FlockApp(args(demo), config=ConsoleConfig())
    async with app.run_test(size=SIZE) as pilot:
        scr = await open_node(pilot, app, "bender1")
        await pilot.press("n")
        wiz = await until(pilot, lambda: isinstance(app.screen, Wizard) and app.screen, 3,
                          "the wizard")
        await until(pilot, lambda: wiz.all_options, 10, "resources")
        await pilot.press(*"app.conf")
        await until(pilot, lambda: "app.conf" in str(wiz.query_one("#wizard-options")
                                                     .get_option_at_index(0).id), 5, "match")
        await pilot.press("enter")
        await until(pilot, lambda: wiz.index == 1 and wiz.all_options, 5, "actions")
        await pilot.press(*"touch", "enter")
        await until(pilot, lambda: wiz.confirming, 3, "confirmation")
        assert "$ flockctl notify bender1" in str(wiz.query_one("#wizard-confirm").content)
        await pilot.press("y")
        await until(pilot, lambda: app.screen is scr, 10, "back on the node screen")
        # The reaction's run: caused by the operator, not `← flock-console ?`.
        runs = scr.query_one("#node-runs")

        def reaction_row():
            for i in range(runs.row_count):
                cells = [c.plain for c in runs.get_row_at(i)]
                if "operator (console)" in cells[-1]:
                    return cells
            return None

        row = await until(pilot, reaction_row, 15, "the reaction in the runs pane")
        assert "?" not in row[-1]
        # The event log says it in the same words (it said `caused by flock-console:?`).
        await until(pilot, lambda: f"{row[0]} started" in log_of(app), 5, "its start")
        log = " ".join(log_of(app).split())  # long lines wrap
        assert f"{row[0]} started ← operator (console) " in log, log
        assert "flock-console" not in log, log
        # Health keeps the converge; the reaction is beside it (the agent here may not send
        # last_converge: the console keeps what it saw or asks the history).
        title = scr.query_one("#node-title")
        await until(pilot, lambda: "↺ ok" in str(title.content), 10, "the reaction beside it")
        assert "last converge: ok" in str(title.content)
        assert (app.view.members["bender1"].get("last_converge") or {}).get("kind") == "converge"


@aio
async def test_health_comes_from_history_when_the_last_run_is_a_reaction(demo):
    with Flock.connect(runtime_dir=demo.runtime_dir, insecure=True) as f:
        f["bender2"].resource_manager.notify(resource=next(
            r["id"] for r in f["bender2"].resource_manager.resources()
            if r["id"].startswith("file[")), action="touch", sender="flock-cli")

        def reacted():
            lr = f["bender2"].flock_api.status()["last_run"] or {}
            return lr.get("kind") == "reaction" and not f["bender2"].flock_api.active()

        deadline = time.monotonic() + 15
        while not reacted() and time.monotonic() < deadline:
            time.sleep(0.1)
    app = FlockApp(args(demo), config=ConsoleConfig())
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: len(app.shown) >= 3, 15, "the table")
        await until(pilot, lambda: (app.view.members["bender2"].get("last_converge") or {})
                    .get("kind") == "converge", 10, "the converge from history")
        await until(pilot, lambda: "↺" in app.shown["bender2"]["last"].plain, 5, "↺ beside")


@aio
async def test_removing_a_subscription_from_the_node_screen(demo):
    base = Path(demo.root) / "files"
    with Flock.connect(runtime_dir=demo.runtime_dir, insecure=True) as f:
        r = f["bender2"].resource_manager.subscribe_to(
            resource=f"file[{base}/bender2/gated]", action="touch", node="bender0",
            remote_resource=f"file[{base}/bender0/schema.sql]")
    app = FlockApp(args(demo), config=ConsoleConfig())
    async with app.run_test(size=SIZE) as pilot:
        scr = await open_node(pilot, app, "bender2")
        subs = scr.query_one("#node-subs")
        await until(pilot, lambda: f"out:{r['id']}" in scr.subs, 10, "the subscription")
        subs.focus()
        subs.move_cursor(row=subs.get_row_index(f"out:{r['id']}"))
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), 3, "confirm")
        body = app.screen.query_one("#confirm-body").content.plain
        assert f"flockctl unsubscribe bender2 {r['id']}" in body
        await pilot.press("y")
        await until(pilot, lambda: f"subscription {r['id']} removed" in log_of(app), 10,
                    "the answer in the log")
        await until(pilot, lambda: f"out:{r['id']}" not in scr.subs, 10, "the row gone")
        await pilot.press("f5")
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, NodeScreen), 3, "back")


@aio
async def test_palette_help_and_a_macro_that_stops(demo):
    cfg = ConsoleConfig(macros=[
        Macro(name="broken", key="x", steps=["active {node}", "wait-until ghost idle "
                                                              "--timeout 0.2"]),
        Macro(name="asks", key="z", confirm=True, description="asks first",
              steps=["active {node}"]),
    ])
    app = FlockApp(args(demo), config=cfg)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: len(app.shown) >= 3, 15, "the table")
        titles = {t: cb for t, _h, cb in app.palette_commands()}
        assert {"Run chef", "Macro: broken", "Quit"} <= set(titles)
        titles["Sort by next column"]()
        assert app.sort_column == "state"
        titles["Help: key bindings"]()
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), 3, "help")
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, HelpScreen), 3, "help closed")
        await pilot.press("x")
        await until(pilot, lambda: "macro broken stopped at step 2/2" in log_of(app), 15,
                    "the macro to stop")
        await until(pilot, lambda: not app.macro_worker.is_running, 5, "its worker to end")
        await pilot.press("z")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), 3, "confirm")
        await pilot.press("y")
        await until(pilot, lambda: "macro asks done" in log_of(app), 10, "the macro")


@aio
async def test_bus_messages_fold_into_the_table():
    now = time.time()
    app = FlockApp(offline_args(), config=ConsoleConfig(), connect=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.ready, 3, "mounted")
        env = SimpleNamespace(sender="n1")
        hb = Heartbeat(node="n1", incarnation=int(now * 1000), seq=1, bus="", rpc="ipc:///x",
                       pending=1, dead=3, tags=["web"])
        app.on_bus_message(env, hb, 0)
        app.on_bus_message(SimpleNamespace(sender="evil"), Heartbeat(
            node="n2", incarnation=1, seq=1, bus="", rpc=""), 0)  # speaks for another node
        await until(pilot, lambda: "n1" in app.shown, 3, "n1's row")
        assert "n2" not in app.view.members
        assert app.shown["n1"]["pending"].plain == "1 (3 dead)"
        app.on_bus_message(env, Event("n1", "run_started", now, {"run": "r1"}), 0)
        app.on_bus_message(env, Event("n1", "run_progress", now, {
            "run": "r1", "resource": "file[/a]", "k": 1, "n": 2}), 0)
        await until(pilot, lambda: "converging 1/2" in app.shown["n1"]["activity"].plain, 3,
                    "progress")
        app.on_bus_message(env, Leave(node="n1", incarnation=int(now * 1000)), 0)
        await until(pilot, lambda: app.shown["n1"]["state"].plain == "left", 3, "left")
        assert "n1 left the flock" in log_of(app)
