"""The real `flockctl` console in a real terminal (tmux at 80x24), and the README's macro
example run against the demo flock: what a person gets, not what a pilot sees."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from debian import ensure_tool

from flock_tui.demo import DemoFlock
from flock_tui.main import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = Path(tmp_path_factory.mktemp("tui-term", numbered=True))
    with DemoFlock(3, root=root) as d:
        yield d


def readme_macro_toml() -> str:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```toml\n(.*?)```", text, re.S)
    assert block, "the README shows a console.toml"
    return block.group(1)


def test_the_readme_macro_runs_to_the_end_on_the_demo_flock(demo, tmp_path, monkeypatch,
                                                             capsys):
    cfg = tmp_path / "config"
    cfg.mkdir()
    (cfg / "console.toml").write_text(readme_macro_toml())
    monkeypatch.setenv("FLOCK_CONFIG_DIR", str(cfg))
    name = re.search(r'name = "([^"]+)"', readme_macro_toml()).group(1)
    code = main(["--runtime-dir", str(demo.runtime_dir), "--insecure", "macro", name,
                 "--node", "bender1"])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    assert "no node" not in out.err


class Tmux:
    """One private tmux server (its own socket), one window of a fixed size."""

    def __init__(self, width: int, height: int):
        self.sock = f"flock-test-{uuid.uuid4().hex[:8]}"
        self.size = (width, height)

    def run(self, *a: str) -> str:
        return subprocess.run(["tmux", "-L", self.sock, *a], check=True, capture_output=True,
                              text=True, timeout=10).stdout

    def start(self, cmd: list[str], env: dict[str, str]) -> None:
        exports = " ".join(f"{k}={v}" for k, v in env.items())
        line = f"env {exports} " + " ".join(cmd)
        self.run("new-session", "-d", "-s", "t", "-x", str(self.size[0]), "-y",
                 str(self.size[1]), line)

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", "t", *keys)

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "t")

    def wait(self, cond, timeout: float = 15.0, what: str = "the screen") -> str:
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.screen()
            if cond(text):
                return text
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; screen:\n{text}")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.sock, "kill-server"], capture_output=True, timeout=10)


def test_the_console_in_an_80x24_terminal(demo, tmp_path):
    assert ensure_tool("tmux"), "tmux is missing and apt-get could not install it"
    tmux = Tmux(80, 24)
    flockctl = Path(sys.executable).parent / "flockctl"
    env = {"FLOCK_CONFIG_DIR": str(tmp_path / "config"), "TERM": "xterm-256color",
           "PATH": os.environ.get("PATH", "")}
    tmux.start([str(flockctl), "--runtime-dir", str(demo.runtime_dir), "--insecure"], env)
    try:
        tmux.keys("D")  # typed before the console is up
        text = tmux.wait(lambda s: "bender2" in s and "OUTBOX" in s, 20, "the flock table")
        assert "filter" not in text.splitlines()[0], text
        assert "no node matches" not in text
        head = next(ln for ln in text.splitlines() if "OUTBOX" in ln)
        assert head.rstrip().endswith("TAGS") and "ADDRESS" not in head, text
        footer = text.rstrip("\n").splitlines()[-1]
        assert "? Help" in footer and "q Quit" in footer, text
        tmux.keys("?")
        tmux.wait(lambda s: "BINDING ID" in s, 5, "the help screen")
        tmux.keys("Escape")
        tmux.wait(lambda s: "BINDING ID" not in s, 5, "help closed")
        tmux.keys("Enter")  # the node screen of the cursor node (bender0)
        text = tmux.wait(lambda s: "Resources" in s and "file[" in s, 10, "the node screen")
        assert "bender0.rpc" in text, text  # the address the table has no room for
        tmux.keys("Escape")
        tmux.wait(lambda s: "OUTBOX" in s, 5, "back on the table")
        # The rolling form, keys sent in one burst as a terminal read gives them: a refused 0,
        # then a corrected 2 starts the roll (once, a late backspace ate the 2).
        tmux.keys("a", "l")
        tmux.wait(lambda s: "Rolling run on 3 node(s)" in s, 5, "the rolling form")
        tmux.keys("BSpace", "0", "Enter")
        tmux.wait(lambda s: "max parallel: at least 1 (got 0)" in s, 5, "the form's error")
        tmux.keys("BSpace", "2", "Enter")
        tmux.wait(lambda s: "at most 2 at once" in s, 5, "the roll")
        tmux.wait(lambda s: "3 ok, 0 failed" in s, 30, "the roll's end")
        tmux.keys("Escape")
        tmux.wait(lambda s: "OUTBOX" in s and "Rolling" not in s, 5, "back on the table")
        tmux.keys("q")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if "bender" not in tmux.screen():
                    break
            except subprocess.CalledProcessError:
                break  # the session ended with the console
            time.sleep(0.1)
    finally:
        tmux.close()
