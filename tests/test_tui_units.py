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
    assert "at least 1" in capsys.readouterr().err


def test_run_target_names_a_tag_or_everything():
    ms = {"a": {"tags": ["web"]}, "b": {"tags": ["web", "eu"]}, "c": {"tags": ["db"]}}
    assert run_target(["a", "b", "c"], ms) == "'*'"
    assert run_target(["a", "b"], ms) == "tag:web"
    assert run_target(["c"], ms) == "tag:db"
    assert run_target(["a", "c"], ms) is None


def test_time_moves():  # guard: the tests above rely on a real clock for ages
    assert time.time() > 1_700_000_000
