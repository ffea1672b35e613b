"""Console parts driven without a flock: the wizard's error and back paths, the command
palette, macro steps that stop, a flock that cannot be reached, and the console refusing to
start without a terminal."""

from __future__ import annotations

import time

from rich.text import Text
from tui_support import aio, offline_args, until

from flock_node.cli import build_parser
from flock_node.transport import RpcError
from flock_tui import macro_run
from flock_tui.app import FlockApp, run_console
from flock_tui.macros import ConsoleConfig, Macro
from flock_tui.main import main
from flock_tui.model import Styles, run_target
from flock_tui.screens import Step, Wizard

SIZE = (120, 36)


@aio
async def test_the_wizard_shows_errors_moves_and_goes_back():
    app = FlockApp(offline_args(), config=ConsoleConfig(), connect=False)
    performed: list[dict[str, str]] = []

    async def broken(_c: dict[str, str]) -> list[tuple[str, str]]:
        raise RpcError("unreachable", "bender9 is gone")

    async def few(_c: dict[str, str]) -> list[tuple[str, str]]:
        return [(f"v{i}", f"value {i} [not markup]") for i in range(5)]

    async def fails(c: dict[str, str]) -> None:
        performed.append(dict(c))
        raise RpcError("busy", "try later")

    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.ready, 3, "mounted")
        wiz = Wizard("Test", [Step("a", "first", few), Step("b", "second", broken)],
                     lambda c: Text(f"do {c}"), fails)
        app.push_screen(wiz)
        await until(pilot, lambda: wiz.all_options, 3, "options")
        opts = wiz.query_one("#wizard-options")
        await pilot.press("down", "down", "pagedown", "up")
        assert opts.highlighted == 3
        await pilot.press("enter")
        assert wiz.choices == {"a": "v3"}
        await until(pilot, lambda: "bender9 is gone" in str(
            wiz.query_one("#wizard-error").content), 3, "the options' error")
        await until(pilot, lambda: "nothing to pick" in str(opts.get_option_at_index(0).prompt),
                    3, "nothing to pick")
        await pilot.press("escape")  # back to the first step
        await until(pilot, lambda: wiz.index == 0 and wiz.all_options, 3, "step 1 again")
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is not wiz, 3, "the wizard closed")
        # All chosen up front: straight to the confirmation; a failure keeps it open.
        wiz = Wizard("Test", [Step("a", "first", few)], lambda c: Text(f"do {c}"), fails,
                     preset={"a": "v1"})
        app.push_screen(wiz)
        await until(pilot, lambda: wiz.confirming and wiz.is_mounted, 3, "confirming")
        await pilot.press("y")
        await until(pilot, lambda: "try later" in str(wiz.query_one("#wizard-error").content),
                    3, "the perform error")
        assert performed == [{"a": "v1"}] and app.screen is wiz
        await pilot.press("escape", "escape")
        await until(pilot, lambda: app.screen is not wiz, 3, "the wizard closed")


@aio
async def test_the_command_palette_runs_console_commands():
    app = FlockApp(offline_args(), config=ConsoleConfig(), connect=False)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.ready, 3, "mounted")
        await pilot.press("ctrl+p")
        await pilot.pause(0.3)
        await pilot.press(*"sort by")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await until(pilot, lambda: app.sort_column == "state", 5, "sorted by state")
        app.theme = "textual-light"  # the table's colours follow the theme
        await until(pilot, lambda: app.styles_ != Styles() and app.table.force_all is False, 3,
                    "restyled")


def test_macro_steps_that_stop_say_why(monkeypatch):
    st = Styles()
    lines: list[str] = []
    errors: list[str] = []

    def run(steps: list[str], cancelled: bool = False) -> int:
        return macro_run.run_steps(Macro(name="m", key="x", steps=steps), steps,
                                   ["--insecure", "--runtime-dir", "/nonexistent"], st,
                                   lambda t: lines.append(t.plain), errors.append,
                                   lambda *a: None, lambda: cancelled)

    assert run(["nodes"], cancelled=True) == macro_run.CANCELLED
    assert lines[-1] == "■ macro m cancelled"
    assert run(["nodes --no-such-flag"]) == 2
    assert "step 1 'nodes --no-such-flag'" in errors[-1]

    def boom(*a, **kw):
        raise OSError("disk on fire")

    monkeypatch.setattr(macro_run.macros_mod, "run_step", boom)
    assert run(["nodes"]) == 1
    assert errors[-1] == "macro m: step 1: OSError: disk on fire"


@aio
async def test_a_flock_the_console_cannot_reach_is_named(tmp_path):
    args = build_parser().parse_args(["--runtime-dir", str(tmp_path / "run"), "--key-file",
                                      str(tmp_path / "no-such-key")])
    app = FlockApp(args, config=ConsoleConfig())
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.status_line.startswith("cannot connect"), 10,
                    "the problem")
        assert "no-such-key" in app.status_line
        empty = app.main.query_one("#empty")
        await until(pilot, lambda: "cannot connect" in str(empty.content), 3, "the message")
        assert "cannot connect" in str(app.main.query_one("#title").content)


def test_the_console_needs_a_terminal(capsys):
    assert run_console(offline_args()) == 2  # pytest's stdin is not a terminal
    assert "needs a terminal" in capsys.readouterr().err
    assert main(["demo", "--nodes", "0"]) == 2
    assert "from 1 to 100" in capsys.readouterr().err


def test_run_target_names_a_tag_or_everything():
    ms = {"a": {"tags": ["web"]}, "b": {"tags": ["web", "eu"]}, "c": {"tags": ["db"]}}
    assert run_target(["a", "b", "c"], ms) == "'*'"
    assert run_target(["a", "b"], ms) == "tag:web"
    assert run_target(["c"], ms) == "tag:db"
    assert run_target(["a", "c"], ms) is None


def test_time_moves():  # guard: the tests above rely on a real clock for ages
    assert time.time() > 1_700_000_000


def test_plans_rolls_and_audit_rows_as_text():
    import pytest

    from flock_tui.plans import plans_text
    from flock_tui.roll import equivalent_command, parse_limits
    from flock_tui.widgets.audit import audit_rows

    st = Styles()
    plan = {"status": "failed", "updated": 1, "error": "boom [bold]x[/bold]", "resources": [
        {"resource": "execute[[red]oops]", "action": "run", "result": "would_update",
         "why": "command would run: echo [b]", "notifies": [], "remote": [
             {"action": "run", "resource": "execute[x]", "node": None,
              "unmatched": "no node matched tag=web"},
             {"action": "run", "resource": "execute[y]", "node": "db1", "timing": "delayed",
              "via": "subscription"}]}]}
    t = plans_text(["a", "b", "c"], {"a": plan, "b": "unreachable: gone"}, st)
    body = t.plain
    assert "a  would update 1 of 1  would fail: boom [bold]x[/bold]" in body, body
    assert "~ execute[[red]oops] run: would update" in body  # node text stays literal
    assert "to no node: no node matched tag=web" in body
    assert "would send run execute[y] → db1 (delayed, subscription)" in body
    assert "b  unreachable: gone" in body and "c  asking for its plan…" in body
    assert body.endswith("2 of 3 plans in")
    assert parse_limits(" 2 ", "1") == (2, 1)
    for bad in (("0", "1"), ("x", "1"), ("1", "-1")):
        with pytest.raises(ValueError, match="max (parallel|fail)"):
            parse_limits(*bad)
    assert equivalent_command("tag:web", 2, 1) == \
        "$ flockctl run-chef tag:web --max-parallel 2 --max-fail 1 --wait"
    assert "no one flockctl TARGET" in equivalent_command(None, 2, 1)
    rows = audit_rows([{"seq": 2, "at": 90.0, "caller": "observer:bob", "role": "observer",
                        "verified": True, "call": "flock_api.run_chef", "outcome": "refused",
                        "detail": "the default for role observer " * 5},
                       {"seq": 1, "at": 80.0, "caller": "client-1", "role": "operator",
                        "verified": False, "via": "key", "call": "flock_api.retry",
                        "outcome": "ok"}],
                      100.0, 20, st)
    (k1, refused), (_k2, ok) = rows
    assert k1 == "2" and all("bold" in str(c.style) for c in refused)
    assert len(refused[5].plain) == 20 and refused[5].plain.endswith("…")
    assert ok[1].plain == "client-1 (key)" and ok[0].plain == "20s ago"


@aio
async def test_a_roll_without_a_flock_ends_at_once_and_closes():
    from flock_tui.screens.rolling import RollScreen

    app = FlockApp(offline_args(), config=ConsoleConfig(), connect=False)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.ready, 3, "mounted")
        scr = RollScreen(["a", "b"], None, 1, 1)
        app.push_screen(scr)
        await until(pilot, lambda: scr.roll.done, 3, "the roll to give up")
        assert scr.outcomes() == {"a": "skipped", "b": "skipped"}
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is app.main, 3, "closed")


def test_stop_agents_terminates_together_and_kills_the_stubborn():
    """The demo's (and the notify benchmark's) one way to stop the agents it started."""
    import signal
    import subprocess
    import sys
    import time

    from flock_tui.demo import stop_agents

    calm = [sys.executable, "-c", "import time; time.sleep(30)"]
    stubborn = [sys.executable, "-c", "import signal, sys, time\n"
                "signal.signal(signal.SIGTERM, signal.SIG_IGN); print(flush=True); "
                "time.sleep(30)"]
    procs = [subprocess.Popen(calm), subprocess.Popen(stubborn, stdout=subprocess.PIPE)]
    assert procs[1].stdout is not None and procs[1].stdout.readline()  # ignores SIGTERM now
    t0 = time.monotonic()
    stop_agents(procs, timeout=0.5)
    procs[1].wait(5)
    assert procs[0].returncode == -signal.SIGTERM and procs[1].returncode == -signal.SIGKILL
    assert time.monotonic() - t0 < 5
