"""Keys that arrive together (a fast typist, a paste, tmux send-keys) are applied in the order
typed: Textual runs an Input's bound keys (backspace, enter) only after they bubble to the app,
so a printable key right behind them used to be inserted first (textual issue 6605)."""

from __future__ import annotations

from textual import events
from tui_support import aio, offline_args, until

from flock_tui.app import FlockApp
from flock_tui.macros import ConsoleConfig
from flock_tui.screens.rolling import RollForm


def burst(app: FlockApp, *keys: str) -> None:
    """Post keys at once, as a terminal read of several bytes does (the pilot waits between)."""
    chars = {"enter": "\r", "backspace": "\x7f"}
    for k in keys:
        app.post_message(events.Key(k, chars.get(k, k)))


@aio
async def test_a_corrected_rolling_form_starts_when_keys_come_together():
    app = FlockApp(offline_args(), config=ConsoleConfig(), connect=False)
    got: list[tuple[int, int] | None] = []
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.ready, 3, "mounted")
        form = RollForm(["a", "b", "c"], "'*'")
        app.push_screen(form, got.append)
        await until(pilot, lambda: form.query_one("#roll-parallel").has_focus, 3, "the form")
        burst(app, "backspace", "0", "enter")  # 0: refused, the form stays
        await until(pilot, lambda: "at least 1 (got 0)" in str(
            form.query_one("#roll-error").content), 3, "the form's error")
        assert app.screen is form and not got
        burst(app, "backspace", "2", "enter")
        await until(pilot, lambda: got, 3, "the roll to start")
        assert got == [(2, 1)]


@aio
async def test_the_filter_takes_a_burst_of_keys_in_order():
    from tui_support import members

    now = 1_700_000_000.0
    app = FlockApp(offline_args(), clock=lambda: now, config=ConsoleConfig(), connect=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.ready, 3, "mounted")
        app.apply_members(members(now))
        app.flush()
        await pilot.press("slash")
        box = app.main.query_one("#filter")
        await until(pilot, lambda: box.has_focus, 3, "the filter")
        burst(app, "w", "x", "backspace", "e", "b", "1", "enter")
        await until(pilot, lambda: set(app.shown) == {"web1"}, 3, "web1 alone")
        assert box.value == "web1"
