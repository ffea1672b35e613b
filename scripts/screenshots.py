"""Write the README screenshots: drive the console against a demo flock (`make screenshots`)."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flock_node.cli import build_parser  # noqa: E402
from flock_tui.app import FlockApp  # noqa: E402
from flock_tui.demo import DemoFlock  # noqa: E402
from flock_tui.macros import ConsoleConfig, Macro  # noqa: E402
from flock_tui.screens import NodeScreen, Wizard  # noqa: E402
from flock_tui.screens.confirm import RunConfirmScreen  # noqa: E402
from flock_tui.screens.rolling import RollForm, RollScreen  # noqa: E402
from flock_tui.screens.whyrun import WhyRunScreen  # noqa: E402

OUT = ROOT / "screenshots"
SIZE = (140, 40)
MACROS = ConsoleConfig(macros=[
    Macro(name="deploy-web", key="D", description="converge the web nodes, wait until idle",
          steps=["run-chef bender1 --wait", "wait-until tag:web idle --timeout 600",
                 "run-chef bender2 --wait"]),
    Macro(name="probe", key="p", description="is the cursor node busy?",
          steps=["active {node}"]),
])


async def until(pilot, cond, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except Exception:  # noqa: BLE001 - not yet
            pass
        await pilot.pause(0.05)
    raise RuntimeError("screenshot script: timed out waiting for the console")


async def shoot(demo: DemoFlock) -> None:
    args = build_parser().parse_args(["--runtime-dir", str(demo.runtime_dir), "--insecure"])
    app = FlockApp(args, config=MACROS)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: len(app.shown) == len(demo.names))
        await until(pilot, lambda: not any(m.get("active") for m in app.view.members.values()))
        await pilot.pause(0.5)
        t = app.table
        t.move_cursor(row=t.get_row_index("bender1"))
        await pilot.press("space")
        t.move_cursor(row=t.get_row_index("bender0"))
        await pilot.pause(0.3)
        app.save_screenshot(str(OUT / "flock-table.svg"))

        # bender0: its converge notifies bender1 (the run detail shows what became of it) and
        # bender1 subscribes to its schema file (an incoming subscription).
        t.move_cursor(row=t.get_row_index("bender0"))
        await pilot.pause(0.1)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, NodeScreen))
        scr = app.screen
        await until(pilot, lambda: any(h.get("notifications") for h in scr.history.values())
                    and any(k.startswith("in:") for k in scr.subs))
        runs = scr.query_one("#node-runs")
        runs.move_cursor(row=next(i for i, k in enumerate(runs.rows)
                                  if scr.history[k.value].get("notifications")))
        await pilot.pause(1.0)
        app.save_screenshot(str(OUT / "node-screen.svg"))
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, NodeScreen))

        t.move_cursor(row=t.get_row_index("bender2"))
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, Wizard) and app.screen.all_options)
        wiz = app.screen
        await pilot.press(*"gated", "enter")
        await until(pilot, lambda: wiz.index == 1 and wiz.all_options)
        await pilot.press(*"bndr0")
        await pilot.pause(0.3)
        app.save_screenshot(str(OUT / "subscription-wizard.svg"))
        await pilot.press("escape", "escape")
        await until(pilot, lambda: not isinstance(app.screen, Wizard))

        await shoot_plans(pilot, app, demo)

        await pilot.press("D")
        await until(pilot, lambda: app.macro_state is not None and app.macro_state[1] >= 1)
        await pilot.pause(1.0)
        app.save_screenshot(str(OUT / "macro-running.svg"))
        await pilot.press("escape")
        await until(pilot, lambda: app.macro_state is None)


async def shoot_plans(pilot, app: FlockApp, demo: DemoFlock) -> None:
    """Why-run and a rolling run on every node, from the run confirmation."""
    # bender0's fubar gone: its plan would re-create it and notify bender1.
    (demo.root / "files" / "bender0" / "fubar").unlink(missing_ok=True)
    if app.marks:
        await pilot.press("a")  # unmark
    await pilot.press("a")  # mark all
    await pilot.press("r")
    await until(pilot, lambda: isinstance(app.screen, RunConfirmScreen))
    await pilot.press("w")
    await until(pilot, lambda: isinstance(app.screen, WhyRunScreen) and app.screen.done)
    await pilot.pause(0.3)
    app.save_screenshot(str(OUT / "why-run.svg"))
    await pilot.press("escape")
    await until(pilot, lambda: isinstance(app.screen, RunConfirmScreen))
    await pilot.press("l")
    await until(pilot, lambda: isinstance(app.screen, RollForm))
    await pilot.press("backspace", "2")
    await pilot.pause(0.3)
    app.save_screenshot(str(OUT / "rolling-form.svg"))
    await pilot.press("enter")
    await until(pilot, lambda: isinstance(app.screen, RollScreen))
    roll = app.screen
    await until(pilot, lambda: roll.roll.done, 60)
    await pilot.pause(0.3)
    app.save_screenshot(str(OUT / "rolling-run.svg"))
    await pilot.press("escape")
    await until(pilot, lambda: not isinstance(app.screen, RollScreen))
    await pilot.press("a")  # unmark


async def shoot_small(demo: DemoFlock) -> None:
    """An 80x24 terminal (ssh on a laptop): the table keeps OUTBOX and TAGS, the node screen
    shows one pane at a time (the audit pane too)."""
    args = build_parser().parse_args(["--runtime-dir", str(demo.runtime_dir), "--insecure"])
    app = FlockApp(args, config=MACROS)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: len(app.shown) == len(demo.names))
        await until(pilot, lambda: not any(m.get("active") for m in app.view.members.values()))
        await pilot.pause(0.5)
        app.save_screenshot(str(OUT / "console-80x24.svg"))
        t = app.table
        t.move_cursor(row=t.get_row_index("bender0"))
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, NodeScreen))
        scr = app.screen
        await until(pilot, lambda: scr.query_one("#node-resources").row_count >= 3)
        await pilot.pause(0.5)
        app.save_screenshot(str(OUT / "node-screen-80x24.svg"))
        while scr.pane != "audit":
            await pilot.press("tab")
        await until(pilot, lambda: scr.query_one("#node-audit").row_count >= 2)
        await pilot.pause(0.5)
        app.save_screenshot(str(OUT / "node-audit-80x24.svg"))


def main() -> int:
    OUT.mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="flock-shots-"))
    os.environ["FLOCK_CONFIG_DIR"] = str(root / "config")
    with DemoFlock(3, root=root) as demo:
        asyncio.run(shoot(demo))
        asyncio.run(shoot_small(demo))
    for name in ("flock-table", "node-screen", "subscription-wizard", "why-run",
                 "rolling-form", "rolling-run", "macro-running", "console-80x24",
                 "node-screen-80x24", "node-audit-80x24"):
        print(f"wrote {OUT / name}.svg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
