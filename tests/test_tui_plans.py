"""Why-run and rolling runs from the console (issue 12), against three real agents: the
confirmation's `w` shows each node's plan and runs nothing; `l` (or the palette) opens the
rolling form, and the roll goes node by node with its summary. Pilot at 80x24 and 160x45."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from conftest import FlockEnv, wait_for
from tui_support import aio, screen_text, until

from flock_node.cli import build_parser
from flock_tui.app import FlockApp
from flock_tui.macros import ConsoleConfig
from flock_tui.screens.confirm import RunConfirmScreen
from flock_tui.screens.rolling import RollForm, RollScreen
from flock_tui.screens.whyrun import WhyRunScreen

NODES = ("r0", "r1", "r2")
RECIPE = """\
from pathlib import Path
from flock_node.dsl import execute, file

root = Path({root!r})
ctl = root / "{name}.mode"
mode = ctl.read_text().strip() if ctl.exists() else "ok"
conf = file(str(root / "{name}.conf"), content=mode)
conf.notifies("run", "execute[reload {name}]")
if "{name}" != "r0":
    conf.remote_notifies("run", "execute[reload r0]", node="r0")
execute("reload {name}", command="true", action="nothing")
if mode == "fail":
    execute("boom", command="echo doomed >&2; exit 7")
"""


class Three:
    def __init__(self, env: FlockEnv):
        self.env = env

    def mode(self, **modes: str) -> None:
        for n in NODES:
            (self.env.root / f"{n}.mode").write_text(modes.get(n, "ok"))

    def runs(self, node: str, since: float) -> list[dict[str, Any]]:
        with self.env.flock() as f:
            return [h for h in f[node].flock_api.history() if h["started"] >= since]

    def app(self) -> FlockApp:
        args = build_parser().parse_args(["--runtime-dir", str(self.env.runtime_dir)])
        return FlockApp(args, config=ConsoleConfig())


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    env = FlockEnv(Path(tmp_path_factory.mktemp("p", numbered=True)))
    procs = []
    for n in NODES:
        recipe = env.root / f"{n}.py"
        recipe.write_text(RECIPE.format(root=str(env.root), name=n))
        procs.append(env.start(n, recipes=[recipe], wait=False))
    try:
        for p in procs:
            env.wait_up(p)
        with env.flock() as f:
            wait_for(lambda: sorted(m["name"] for m in f["r0"].flock_api.members()
                                    if m["state"] == "alive") == list(NODES), 15,
                     what="three agents alive")
        r = env.cli("run-chef", "r*", "--wait")  # a first converge: the files exist
        assert r.returncode == 0, r.stderr
        yield Three(env)
    finally:
        env.stop_all()


async def table_up(pilot: Any, app: FlockApp) -> None:
    await until(pilot, lambda: all(n in app.shown for n in NODES), 15, "the three nodes")
    await pilot.pause(0.2)


async def mark(pilot: Any, app: FlockApp, *names: str) -> None:
    for n in names:
        app.table.move_cursor(row=app.table.get_row_index(n))
        await pilot.press("space")
    assert app.marks == set(names)


@pytest.mark.parametrize("size", [(160, 45), (80, 24)])
@aio
async def test_why_run_on_the_run_confirmation_shows_plans_and_runs_nothing(three, size):
    three.mode(r1="changed")
    t0 = time.time()
    app = three.app()
    async with app.run_test(size=size) as pilot:
        await table_up(pilot, app)
        await mark(pilot, app, "r1", "r2")
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, RunConfirmScreen), 3, "confirm")
        assert "w why-run" in screen_text(app)
        await pilot.press("w")
        await until(pilot, lambda: isinstance(app.screen, WhyRunScreen), 3, "why-run screen")
        scr = app.screen
        await until(pilot, lambda: scr.done, 30, "both plans")
        body = scr.query_one("#whyrun-body").content.plain
        assert "r1  would update 2 of 3" in body and "r2  would update 0 of 2" in body, body
        assert f"file[{three.env.root}/r1.conf] create: would update" in body, body
        assert "content differs" in body, body
        assert "notifies run execute[reload r1]" in body, body
        assert "would send run execute[reload r0] → r0" in body, body
        assert "nothing was changed, nothing was sent" in body, body
        box = scr.query_one("#whyrun")
        assert app.screen.region.contains_region(box.region), box.region
        assert "flockctl run-chef r1 --why-run" in screen_text(app)
        await pilot.press("escape")  # back to the confirmation, then no
        await until(pilot, lambda: isinstance(app.screen, RunConfirmScreen), 3, "confirm")
        await pilot.press("n")
        await until(pilot, lambda: app.screen is app.main, 3, "the table")
        # `w` on the table: the cursor node's plan
        app.marks.clear()
        app.table.move_cursor(row=app.table.get_row_index("r0"))
        await pilot.press("w")
        await until(pilot, lambda: isinstance(app.screen, WhyRunScreen), 3, "why-run screen")
        await until(pilot, lambda: app.screen.done, 30, "r0's plan")
        assert "r0  would update 0 of" in app.screen.query_one("#whyrun-body").content.plain
    kinds = {n: [h["kind"] for h in three.runs(n, t0)] for n in NODES}
    assert kinds == {"r0": ["why-run"], "r1": ["why-run"], "r2": ["why-run"]}, kinds


@pytest.mark.parametrize("size", [(80, 24), (160, 45)])
@aio
async def test_a_rolling_run_from_the_console_stops_at_the_first_failure(three, size):
    three.mode(r1="fail")
    t0 = time.time()
    app = three.app()
    async with app.run_test(size=size) as pilot:
        await table_up(pilot, app)
        await pilot.press("a")  # mark all
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, RunConfirmScreen), 3, "confirm")
        await pilot.press("l")
        await until(pilot, lambda: isinstance(app.screen, RollForm), 3, "the rolling form")
        form = app.screen
        assert "--max-parallel 1 --max-fail 1 --wait" in screen_text(app)
        await pilot.press("backspace", "0", "enter")  # max parallel 0: said, not started
        await until(pilot, lambda: "at least 1" in screen_text(app), 3, "the form's error")
        assert app.screen is form
        await pilot.press("backspace", "1", "enter")
        await until(pilot, lambda: isinstance(app.screen, RollScreen), 3, "the roll")
        roll = app.screen
        await until(pilot, lambda: roll.roll.done, 60, "the roll to end")
        assert roll.outcomes() == {"r0": "ok", "r1": "failed", "r2": "skipped"}
        await pilot.pause(0.2)
        text = screen_text(app)
        assert "1 ok, 1 failed, 1 skipped, 0 unreachable" in text, text
        assert "flockctl run-chef '*' --max-parallel 1 --max-fail 1 --wait" in text, text
        box = roll.query_one("#roll")
        assert app.screen.region.contains_region(box.region), box.region
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is app.main, 3, "closed")
    conv = {n: [h["status"] for h in three.runs(n, t0) if h["kind"] == "converge"]
            for n in NODES}
    assert conv == {"r0": ["ok"], "r1": ["failed"], "r2": []}, conv
