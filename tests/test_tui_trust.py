"""The console and trust (issue 10): the title names the identity in use, an observer's console
is read-only by itself, the node screen shows the audit trail. Real agents over tls+tcp with
certificates from a test CA; the pilot at 80x24 and 160x45."""

from __future__ import annotations

from typing import Any

import pytest
from test_trust import Tls
from tui_support import aio, screen_text, until

from flock_node.cli import build_parser
from flock_node.protocol import generate_key_file
from flock_tui.app import FlockApp
from flock_tui.identity import identity_of
from flock_tui.macros import ConsoleConfig
from flock_tui.screens import NodeScreen
from flock_tui.widgets.audit import AuditPane

RECIPE = """
    from flock_node.dsl import log
    log("a converged")
"""


@pytest.fixture
def tls(flock_env) -> Tls:
    t = Tls(flock_env)
    t.issue("alice", "operator")
    t.issue("bob", "observer")
    t.start("a", recipe=RECIPE)
    return t


def console(tls: Tls, who: str, *extra: str) -> FlockApp:
    args = build_parser().parse_args(
        ["--seed", tls.bus("a"), "--tls-dir", str(tls.dirs[who]), "--connect-timeout", "2",
         "--runtime-dir", str(tls.env.runtime_dir), *extra])
    return FlockApp(args, config=ConsoleConfig())


def converges(tls: Tls) -> int:
    with tls.flock("alice") as f:
        return sum(1 for h in f["a"].flock_api.history() if h["kind"] == "converge")


async def connected(pilot: Any, app: FlockApp) -> None:
    await until(pilot, lambda: "a" in app.shown and app.shown["a"]["state"].plain == "alive",
                15, "node a in the table")
    await pilot.pause(0.2)


@aio
async def test_the_title_names_the_identity_and_an_observer_s_console_is_read_only(tls):
    app = console(tls, "alice")
    async with app.run_test(size=(80, 24)) as pilot:
        await connected(pilot, app)
        lines = screen_text(app).splitlines()
        assert "operator:alice (operator)" in lines[0], lines[0]
        assert "READ-ONLY" not in lines[0] and "Run" in lines[-1], lines

    before = converges(tls)
    app = console(tls, "bob")
    assert app.read_only  # by itself, without --read-only
    async with app.run_test(size=(80, 24)) as pilot:
        await connected(pilot, app)
        lines = screen_text(app).splitlines()
        assert "observer:bob (observer)" in lines[0] and "READ-ONLY" in lines[0], lines[0]
        for word in ("Run", "Notify", "Sub", "Why"):
            assert f" {word}" not in lines[-1], lines[-1]
        titles = [t for t, _h, _cb in app.palette_commands()]
        assert "Run chef" not in titles and "Send notification" not in titles, titles
        await pilot.press("r", "n", "s", "w")
        await pilot.pause(0.3)
        assert app.screen is app.main
        await pilot.press("enter")  # the node screen: no change key shown or run either
        await until(pilot, lambda: isinstance(app.screen, NodeScreen), 5, "node screen")
        await pilot.press("r", "t")
        await pilot.pause(0.3)
        assert isinstance(app.screen, NodeScreen)
        assert "Run" not in screen_text(app).splitlines()[-1]
    assert converges(tls) == before


def test_the_identity_without_tls(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOCK_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("FLOCK_KEY_FILE", raising=False)
    monkeypatch.delenv("FLOCK_TLS_DIR", raising=False)
    p = build_parser()
    assert identity_of(p.parse_args([])).title() == "local"
    key = tmp_path / "flock.key"
    generate_key_file(key)
    assert identity_of(p.parse_args(["--key-file", str(key)])).title() == \
        "key holder (operator)"
    assert identity_of(p.parse_args(["--insecure", "--seed", "tcp://127.0.0.1:1"])).title() \
        == "insecure (operator)"
    broken = identity_of(p.parse_args(["--tls-dir", str(tmp_path / "nothing")]))
    assert broken.problem and broken.role is None


@pytest.mark.parametrize("size", [(160, 45), (80, 24)])
@aio
async def test_the_node_screen_shows_the_audit_trail_with_refusals_highlighted(tls, size):
    assert tls.cli("bob", "run-chef", "a").returncode == 4
    assert tls.cli("alice", "run-chef", "a").returncode == 0
    app = console(tls, "alice")
    async with app.run_test(size=size) as pilot:
        await connected(pilot, app)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, NodeScreen), 5, "node screen")
        scr = app.screen
        pane = scr.query_one(AuditPane)
        await until(pilot, lambda: pane.rows and len(pane.rows) >= 2, 10, "the audit rows")
        if scr.compact:
            while scr.pane != "audit":
                await pilot.press("tab")
        await pilot.pause(0.3)
        text = screen_text(app)
        refused = next(ln for ln in text.splitlines() if "observer:bob" in ln)
        assert "refused" in refused and "run_chef" in refused, refused
        ok = next(ln for ln in text.splitlines() if "operator:alice" in ln)
        assert " ok" in ok and "run_chef" in ok, ok
        t = pane.table
        row = t.get_row_index(next(str(r["seq"]) for r in pane.rows
                                   if r["caller"] == "observer:bob"))
        cells = t.get_row_at(row)
        assert all("bold" in str(c.style) for c in cells), cells
