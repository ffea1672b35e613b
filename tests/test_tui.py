"""The console under App.run_test + Pilot, against real local agents (one DemoFlock shared by
the module). Every wait polls a condition with a deadline."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from rich.text import Text
from tui_support import aio, quiet_demo, until

from flock_node.cli import build_parser
from flock_node.client import Flock
from flock_tui.app import FlockApp, FlockTable
from flock_tui.demo import DemoFlock
from flock_tui.macros import ConsoleConfig, Macro
from flock_tui.screens import ConfirmScreen, NodeScreen, Wizard

SIZE = (140, 40)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = Path(tmp_path_factory.mktemp("tui", numbered=True))
    with quiet_demo(root) as d:
        yield d


@pytest.fixture(autouse=True)
def config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOCK_CONFIG_DIR", str(tmp_path / "config"))
    return tmp_path / "config"


def make_args(demo: DemoFlock, *extra: str):
    return build_parser().parse_args(["--runtime-dir", str(demo.runtime_dir), "--insecure",
                                      *extra])


def client(demo: DemoFlock) -> Flock:
    return Flock.connect(runtime_dir=demo.runtime_dir, insecure=True)


async def ready(pilot, app: FlockApp, n: int = 3):
    await until(pilot, lambda: len(app.shown) >= n, 15, "the flock table rows")


def cursor(app: FlockApp) -> str | None:
    return app.cursor_node()


async def move_to(pilot, app: FlockApp, name: str):
    t = app.table
    t.move_cursor(row=t.get_row_index(name))
    await until(pilot, lambda: cursor(app) == name, 2, f"cursor on {name}")


@aio
async def test_cursor_marks_sort_filter_kept_across_updates(demo):
    app = FlockApp(make_args(demo), config=ConsoleConfig())
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await move_to(pilot, app, "bender1")
        # A converge on another node changes rows under the cursor: it stays on bender1.
        with client(demo) as f:
            run = f["bender0"].flock_api.run_chef()["run_id"]
        await until(pilot, lambda: (app.view.members["bender0"].get("last_run") or {}).get(
            "id") == run, 15, "bender0's run in the table")
        await pilot.pause(0.2)
        assert cursor(app) == "bender1"
        # Sorting by every column keeps the cursor on the node, not on the row index.
        for _ in range(7):
            await pilot.press("S")
            assert cursor(app) == "bender1", app.sort_column
        assert app.sort_column == "name"
        # space marks and moves down; the mark column shows it.
        await pilot.press("space")
        assert app.marks == {"bender1"}
        assert app.shown["bender1"]["mark"].plain == "●"
        assert cursor(app) == "bender2"
        assert app.targets() == ["bender1"]
        # Filter: only matching rows, cursor re-anchored; escape clears.
        await pilot.press("slash")
        await pilot.press(*"bender2")
        await until(pilot, lambda: set(app.shown) == {"bender2"}, 3, "filtered rows")
        await pilot.press("enter")
        assert isinstance(app.focused, FlockTable)
        assert cursor(app) == "bender2"
        await pilot.press("escape")
        await until(pilot, lambda: len(app.shown) == 3, 3, "filter cleared")
        assert cursor(app) == "bender2"
        assert app.marks == {"bender1"}


@aio
async def test_run_chef_from_the_table_reaches_the_node(demo):
    app = FlockApp(make_args(demo), config=ConsoleConfig())
    with client(demo) as f:
        before = {h["id"] for h in f["bender2"].flock_api.history(50)}
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await move_to(pilot, app, "bender2")
        await pilot.press("r")

        def new_run():
            with client(demo) as f:
                return [h for h in f["bender2"].flock_api.history(50) if h["id"] not in before]

        runs = await until(pilot, new_run, 10, "a new run on bender2")
        assert runs[0]["kind"] == "converge"
        # Two marked nodes: a confirmation first.
        await move_to(pilot, app, "bender0")
        await pilot.press("space", "space")
        assert app.marks == {"bender0", "bender1"}
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), 3, "confirm modal")
        await pilot.press("n")
        await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen), 3, "dismissed")


@aio
async def test_subscription_wizard_end_to_end(demo):
    app = FlockApp(make_args(demo), config=ConsoleConfig())
    base = Path(demo.root) / "files"
    local = f"file[{base}/bender2/gated]"
    remote = f"file[{base}/bender0/schema.sql]"
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await move_to(pilot, app, "bender2")
        await pilot.press("s")
        wiz = await until(pilot, lambda: isinstance(app.screen, Wizard) and app.screen, 3,
                          "the wizard")

        async def pick(query: str, expect: str):
            await until(pilot, lambda: wiz.all_options, 10, "options")
            await pilot.press(*query)
            await until(pilot, lambda: wiz.query_one("#wizard-options").highlighted == 0
                        and wiz.query_one("#wizard-options").get_option_at_index(0).id
                        == expect, 5, f"{expect} highlighted")
            wiz.all_options = []
            await pilot.press("enter")

        await pick("gated", local)
        await pick("bndr0", "bender0")  # fuzzy
        await pick("schema", remote)
        await pick("touch", "touch")
        await until(pilot, lambda: wiz.confirming, 3, "confirmation")
        text = str(wiz.query_one("#wizard-confirm").content)
        assert f"flockctl subscribe bender2 '{local}' touch --to bender0 '{remote}'" in text
        await pilot.press("enter")
        await until(pilot, lambda: not isinstance(app.screen, Wizard), 10, "wizard done")
        with client(demo) as f:
            out = f["bender2"].resource_manager.subscriptions()["outgoing"]
            mine = [s for s in out if s["resource"] == local and s["remote_resource"] == remote]
            assert mine and mine[0]["state"] == "registered"
            inc = f["bender0"].resource_manager.subscriptions()["incoming"]
            assert any(s["subscriber"] == "bender2" and s["subscriber_resource"] == local
                       for s in inc)
            f["bender2"].resource_manager.unsubscribe(id=mine[0]["id"])
        log = "\n".join(x.text for x in app.main.query_one("#log").lines)
        assert "registered on both nodes" in log


@aio
async def test_node_screen_shows_resources_runs_subscriptions(demo):
    app = FlockApp(make_args(demo), config=ConsoleConfig())
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await move_to(pilot, app, "bender1")
        await pilot.press("enter")
        scr = await until(pilot, lambda: isinstance(app.screen, NodeScreen) and app.screen, 3,
                          "node screen")
        await until(pilot, lambda: scr.query_one("#node-resources").row_count >= 3, 10,
                    "resources")
        await until(pilot, lambda: scr.query_one("#node-runs").row_count >= 1, 10, "runs")
        subs = scr.query_one("#node-subs")
        await until(pilot, lambda: subs.row_count >= 1, 10, "subscriptions")
        assert any(k.startswith("out:") for k in scr.subs)
        # A reaction caused by bender0 shows its cause.
        reactions = [h for h in scr.history.values() if h.get("cause")]
        assert reactions and reactions[0]["cause"]["node"] == "bender0"
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, NodeScreen), 3, "back")


@aio
async def test_node_screen_retries_the_outbox(demo):
    app = FlockApp(make_args(demo), config=ConsoleConfig())
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await move_to(pilot, app, "bender2")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, NodeScreen), 3, "node screen")
        await pilot.press("t")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), 3, "confirmation")
        assert "flockctl retry bender2" in str(app.screen.query_one("#confirm-body").content)
        await pilot.press("y")

        def log() -> str:
            return "\n".join(x.text for x in app.main.query_one("#log").lines)

        await until(pilot, lambda: "bender2: 0 notification(s) sent again" in log(), 10,
                    "the retry's answer in the log")


@aio
async def test_macro_runs_and_cancels(demo):
    cfg = ConsoleConfig(macros=[
        Macro(name="probe", key="x", description="is it busy", steps=["active {node}"]),
        Macro(name="hang", key="z", steps=["wait-until {node} down --timeout 60 --interval 0.1",
                                           "active {node}"]),
    ])
    app = FlockApp(make_args(demo), config=cfg)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await move_to(pilot, app, "bender0")
        ids = {b.id for bs in app.main._bindings.key_to_bindings.values() for b in bs}
        assert {"macro.probe", "macro.hang"} <= ids

        def log() -> str:
            return "\n".join(x.text for x in app.main.query_one("#log").lines)

        await pilot.press("x")
        await until(pilot, lambda: "macro probe done" in log(), 10, "macro done")
        assert "$ flockctl active bender0" in log()
        assert " false\n" in log() or " true\n" in log()
        await pilot.press("z")
        await until(pilot, lambda: app.macro_state and "wait-until" in app.macro_state[3], 5,
                    "macro running")
        assert app.main.query_one("#macro-bar").has_class("shown")
        t0 = time.monotonic()
        await pilot.press("escape")
        await until(pilot, lambda: "macro hang cancelled" in log(), 5, "macro cancelled")
        assert time.monotonic() - t0 < 3
        assert "flockctl active" not in log().split("macro hang")[-1]
        assert not app.main.query_one("#macro-bar").has_class("shown")


@aio
async def test_read_only_hides_what_changes(demo):
    cfg = ConsoleConfig(macros=[Macro(name="kick", key="x", steps=["run-chef {node}"]),
                                Macro(name="look", key="l", steps=["nodes"])])
    app = FlockApp(make_args(demo, "--read-only"), config=cfg)
    with client(demo) as f:
        before = len(f["bender0"].flock_api.history(50))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        ids = {b.id for bs in app.main._bindings.key_to_bindings.values() for b in bs}
        assert "flock.run_chef" not in ids and "flock.subscribe" not in ids
        assert "macro.kick" not in ids and "macro.look" in ids
        titles = [t for t, _, _ in app.palette_commands()]
        assert "Run chef" not in titles and "Macro: look" in titles
        await move_to(pilot, app, "bender0")
        await pilot.press("r", "s", "n", "x")
        await pilot.pause(0.5)
        assert not isinstance(app.screen, Wizard)
        assert app.macro_worker is None
    with client(demo) as f:
        assert len(f["bender0"].flock_api.history(50)) == before


@aio
async def test_no_nodes_message(tmp_path):
    args = build_parser().parse_args(["--runtime-dir", str(tmp_path / "empty"), "--insecure"])
    app = FlockApp(args, config=ConsoleConfig())
    async with app.run_test(size=SIZE) as pilot:
        empty = app.main.query_one("#empty")
        await until(pilot, lambda: "no nodes found" in str(empty.content), 5, "message")
        assert str(tmp_path / "empty") in str(empty.content)
        title = app.main.query_one("#title")
        await until(pilot, lambda: "connecting" not in str(title.content), 5, "connected")


def _members(now: float) -> list[dict]:
    def m(name, state, active=False, run=None, last=None, pending=0, tags=()):
        return {"name": name, "state": state, "address": f"tcp://10.0.0.{len(name)}:7601",
                "bus": "", "rpc": "", "incarnation": 1, "active": active, "run": run,
                "last_run": last, "pending": pending, "dead_letters": 0, "tags": list(tags),
                "version": "0.1.0", "age": 0.0}

    return [
        m("db1", "alive", last={"id": "r1", "status": "ok", "kind": "converge",
                                "started": now - 42, "duration": 3.25, "updated": 2},
          tags=["db"]),
        m("web1", "alive", active=True, run={"id": "r2", "kind": "converge",
                                             "resource": "file[/etc/[x]]", "k": 3, "n": 7},
          pending=2, tags=["web"]),
        m("web2", "suspect", last={"id": "r3", "status": "failed", "kind": "converge",
                                   "started": now - 7200, "duration": 61.0, "updated": 0},
          tags=["web"]),
        m("old", "left"),
    ]


@aio
async def test_snapshot_frozen_clock():
    """Fixed size, frozen clock, synthetic members: the exact cells and their order."""
    now = 1_700_000_000.0
    args = build_parser().parse_args(["--insecure"])
    app = FlockApp(args, clock=lambda: now, config=ConsoleConfig(), connect=False)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.ready, 3, "mounted")
        app.apply_members(_members(now))
        app.flush()
        await pilot.pause()
        t = app.table
        rows = [[c.plain for c in t.get_row_at(i)] for i in range(t.row_count)]
        assert rows == [
            [" ", "db1", "alive", "idle", "ok 42s ago 3.2s 2 upd", "0",
             "tcp://10.0.0.3:7601", "db"],
            [" ", "old", "left", "-", "never", "0", "tcp://10.0.0.3:7601", ""],
            [" ", "web1", "alive", "converging 3/7 file[/etc/[x]]", "never", "2",
             "tcp://10.0.0.4:7601", "web"],
            [" ", "web2", "suspect", "-", "failed 2h ago 1m01s 0 upd", "0",
             "tcp://10.0.0.4:7601", "web"],
        ]
        title = str(app.main.query_one("#title").content)
        assert title.startswith("Flock  4 nodes · 2 alive · 1 suspect · 1 left · 1 converging")
        svg = app.export_screenshot()
        assert "file[/etc/[x]]".replace(" ", "&#160;") in svg  # markup-like text survives
        # Sort by state: alive, alive, suspect, left; cursor stays on its node.
        await move_to(pilot, app, "web2")
        await pilot.press("S")
        assert app.sort_column == "state"
        assert [t.get_row_at(i)[1].plain for i in range(4)] == ["db1", "web1", "web2", "old"]
        assert cursor(app) == "web2"


def test_log_lines_from_events():
    from flock_node.protocol import Event
    from flock_tui.model import Styles, event_text

    st = Styles()
    text, level = event_text(Event("b0", "notification_dead", 0.0, {
        "target": "b1", "resource": "execute[x]", "action": "run", "error": "[red]boom"}), st)
    assert level == "error" and "[red]boom" in text.plain and "dead-lettered" in text.plain
    assert event_text(Event("b0", "run_progress", 0.0, {}), st) is None
    # An operator's notification reads as the README says (`caused by flock-console:?` once).
    for sender, who in (("flock-console", "console"), ("flockctl", "flockctl")):
        cause = {"node": sender, "notification": "n-1", "hops": 1}
        text, _ = event_text(Event("b0", "run_started", 0.0, {
            "kind": "reaction", "run": "r-1", "cause": cause}), st)
        assert text.plain == f"b0 reaction r-1 started ← operator ({who})", text.plain
        text, _ = event_text(Event("b0", "notification_received", 0.0, {
            "sender": sender, "resource": "file[/a]", "action": "touch"}), st)
        assert text.plain == f"b0 received touch file[/a] from operator ({who})", text.plain
    cause = {"node": "b1", "resource": "file[/s]", "run": "r-0", "hops": 2}
    text, _ = event_text(Event("b0", "run_started", 0.0, {
        "kind": "reaction", "run": "r-2", "cause": cause}), st)
    assert text.plain == "b0 reaction r-2 started caused by b1:file[/s] (hop 2)", text.plain



def test_short_ids_fit_their_column():
    from flock_tui.model import ellipsize, short_resource, short_run_id

    assert ellipsize("abcdefghij", 5) == "ab…ij" and ellipsize("abc", 5) == "abc"
    rid = "file[/tmp/flock-demo-x/files/bender0/schema.sql]"
    assert short_resource(rid, 60) == rid
    assert short_resource(rid, 20) == "file[…/schema.sql]"
    assert short_resource(rid, 20, "bender0 ") == "bender0 schema.sql"
    assert len(short_resource("execute[" + "x" * 50 + "]", 12)) == 12
    assert short_run_id("20261124-213140-12aa4a") == "12aa4a"
    assert short_run_id("custom-id") == "custom-id"


@aio
async def test_run_detail_shows_notifications_and_early_events_are_safe():
    """The run detail says what became of each remote notification; failed/dead ones in the
    theme's error colour. Events for a node screen not composed yet are dropped, not raised."""
    args = build_parser().parse_args(["--insecure"])
    app = FlockApp(args, config=ConsoleConfig(), connect=False)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.ready, 3, "mounted")
        scr = NodeScreen("b0")
        app.push_screen(scr)
        scr.add_event(Text("early"))  # not composed yet: must not raise NoMatches
        scr.on_flock_event("run_finished")
        await until(pilot, lambda: scr.ready, 3, "node screen mounted")
        notes = [
            {"id": "n-1", "target": "b1", "resource": "execute[kill all humans]",
             "action": "run", "status": "delivered", "attempts": 1, "error": None},
            {"id": "n-2", "target": "b2", "resource": "file[/x/app.conf]", "action": "touch",
             "status": "dead", "attempts": 5, "error": "[bold]unreachable"},
        ]
        scr.fill_runs([{"id": "20261124-213140-12aa4a", "kind": "converge", "status": "ok",
                        "started": 1.0, "duration": 1.0, "updated": 1, "cause": None,
                        "resources": [], "notifications": notes}])
        detail = scr.query_one("#node-detail").content
        plain = detail.plain
        assert "→ b1 execute[kill all humans] run: delivered" in plain
        assert "→ b2 file[/x/app.conf] touch: dead after 5 attempts" in plain
        assert "[bold]unreachable" in plain  # error text is not markup
        error = app.styles_.error
        dead_at = plain.index(": dead")
        assert any(error in str(sp.style) and sp.start <= dead_at < sp.end
                   for sp in detail.spans)
        assert scr.query_one("#node-runs").get_row_at(0)[0].plain == "12aa4a"


@aio
async def test_footer_shows_macros_with_their_names():
    cfg = ConsoleConfig(macros=[Macro(name="deploy-web", key="D", description="ship it",
                                      steps=["run-chef web-*"])])
    args = build_parser().parse_args(["--insecure"])
    app = FlockApp(args, config=cfg, connect=False)
    async with app.run_test(size=SIZE) as pilot:
        from textual.widgets._footer import FooterKey, FooterLabel

        await until(pilot, lambda: app.main.query("FooterLabel.macros"), 3, "macros label")
        keys = [k for k in app.main.query(FooterKey) if k.action.startswith("macro(")]
        assert [(k.key, k.description) for k in keys] == [("D", "deploy-web")]
        assert "macros" in str(app.main.query_one("FooterLabel.macros", FooterLabel).content)
        await pilot.press("question_mark")
        from flock_tui.screens import HelpScreen

        help_ = await until(pilot, lambda: isinstance(app.screen, HelpScreen) and app.screen,
                            3, "help")
        await until(pilot, lambda: help_.query_one("#help-table").row_count, 3, "help rows")
        t = help_.query_one("#help-table")
        rows = [[c.plain for c in t.get_row_at(i)] for i in range(t.row_count)]
        assert ["D", "Macro deploy-web: ship it", "macro.deploy-web"] in rows
