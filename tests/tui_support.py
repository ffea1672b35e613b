"""Helpers shared by the console tests: an async runner, deadline waits, the screen as text."""

from __future__ import annotations

import asyncio
import functools
import io
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

from flock_node.cli import build_parser
from flock_node.client import Flock
from flock_tui.demo import DemoFlock


def aio(fn: Any) -> Any:
    """Run an async test on a fresh loop (no asyncio pytest plugin needed)."""

    @functools.wraps(fn)
    def run(*a: Any, **kw: Any) -> Any:
        return asyncio.run(fn(*a, **kw))

    return run


@contextmanager
def quiet_demo(root: Path, nodes: int = 3) -> Iterator[DemoFlock]:
    """A demo flock whose first converges are over, so its rows are quiet."""
    with DemoFlock(nodes, root=root) as d:
        with Flock.connect(runtime_dir=d.runtime_dir, insecure=True) as f:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if all(f[n].flock_api.status()["last_run"] for n in d.names) and not any(
                        f[n].flock_api.active() for n in d.names):
                    break
                time.sleep(0.2)
        yield d


async def until(pilot: Any, cond: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll `cond` between pilot pauses until it is truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            v = cond()
        except Exception:  # noqa: BLE001 - "not yet"
            v = None
        if v:
            return v
        await pilot.pause(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def offline_args(*extra: str) -> Any:
    """Console arguments for an app that does not connect (synthetic members)."""
    return build_parser().parse_args(["--insecure", *extra])


def screen_text(app: Any) -> str:
    """What the terminal shows, as plain text lines (the screenshot without its styles)."""
    w, h = app.size
    c = Console(width=w, height=h, file=io.StringIO(), force_terminal=True, record=True,
                legacy_windows=False, safe_box=False)
    c.print(app.screen._compositor.render_update(full=True))
    return c.export_text()


def members(now: float) -> list[dict[str, Any]]:
    """Synthetic members: a node with dead letters, one converging, one suspect, one gone."""

    def m(name: str, state: str, **kw: Any) -> dict[str, Any]:
        d = {"name": name, "state": state, "address": f"tcp://10.0.0.{len(name)}:7601",
             "bus": "", "rpc": "", "incarnation": 1, "active": False, "run": None,
             "last_run": None, "pending": 0, "dead_letters": 0, "tags": [],
             "version": "0.1.0", "age": 0.0}
        d.update(kw)
        return d

    return [
        m("db1", "alive", pending=0, dead_letters=2, tags=["db"],
          last_run={"id": "r1", "status": "ok", "kind": "converge", "started": now - 42,
                    "duration": 3.25, "updated": 2}),
        m("web1", "alive", active=True, pending=3, tags=["web"],
          run={"id": "r2", "kind": "converge", "resource": "file[/etc/app.conf]", "k": 3,
               "n": 7}),
        m("web2", "suspect", tags=["web"],
          last_run={"id": "r3", "status": "failed", "kind": "converge",
                    "started": now - 7200, "duration": 61.0, "updated": 0}),
    ]
