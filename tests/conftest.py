"""Shared fixtures: real agent processes on ipc:// in a temporary runtime dir, or on TCP
loopback. Every wait polls a condition with a deadline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from flock_node.client import Flock
from flock_node.transport.base import free_bus_port


def wait_for(cond: Callable[[], object], timeout: float = 10.0, interval: float = 0.05,
             what: str = "condition") -> object:
    """Poll `cond` until it returns something truthy; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            v = cond()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - "not yet"
            last_exc = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                         + (f" (last error: {last_exc!r})" if last_exc else ""))


free_port = free_bus_port  # P, P+1, P+2 free on loopback: bus, RPC and SWIM


class NodeProc:
    def __init__(self, name: str, proc: subprocess.Popen, log: Path, state_dir: Path,
                 args: list[str]):
        self.name, self.proc, self.log, self.state_dir, self.args = name, proc, log, state_dir, args

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)


class FlockEnv:
    """A private flock: its own runtime dir, config dir (key files) and state dirs."""

    def __init__(self, root: Path):
        self.root = root
        self.runtime_dir = root / "run"
        self.config_dir = root / "config"
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.nodes: dict[str, NodeProc] = {}
        self.env = dict(os.environ)
        self.env.update({
            "FLOCK_RUNTIME_DIR": str(self.runtime_dir),
            "FLOCK_CONFIG_DIR": str(self.config_dir),
            "PYTHONUNBUFFERED": "1",
        })
        self.env.pop("FLOCK_KEY_FILE", None)
        self.env.pop("FLOCK_STATE_DIR", None)
        self.env.pop("FLOCK_SEEDS", None)

    def start(self, name: str, *args: str, recipes: list[Path] | tuple = (), wait: bool = True,
              heartbeat: float | None = None, expect_rpc: str | None = None) -> NodeProc:
        state = self.root / "state" / name
        cmd = [sys.executable, "-m", "flock_node.cli_node", "run", name,
               "--state-dir", str(state)]
        for r in recipes:
            cmd += ["--recipe", str(r)]
        if heartbeat is not None:
            cmd += ["--heartbeat", str(heartbeat)]
        cmd += list(args)
        log = self.root / f"{name}.{len([n for n in self.nodes if n == name])}.log"
        n = 0
        while log.exists():
            n += 1
            log = self.root / f"{name}.{n}.log"
        fh = open(log, "wb")
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=self.env,
                                start_new_session=True)
        fh.close()
        node = NodeProc(name, proc, log, state, list(args))
        self.nodes[name] = node
        if wait:
            self.wait_up(node, expect_rpc)
        return node

    def wait_up(self, node: NodeProc, rpc: str | None = None, timeout: float = 20.0) -> None:
        def up() -> bool:
            if node.proc.poll() is not None:
                raise AssertionError(f"{node.name} exited {node.proc.returncode}:\n"
                                     + node.output())
            return "up (incarnation" in node.output()

        try:
            wait_for(up, timeout, what=f"{node.name} to start")
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- log ---\n{node.output()}") from None

    def restart(self, name: str, **kw) -> NodeProc:
        old = self.nodes[name]
        args = old.args
        recipes = kw.pop("recipes", ())
        return self.start(name, *args, recipes=recipes, **kw)

    def flock(self, **kw) -> Flock:
        return Flock.connect(runtime_dir=self.runtime_dir, timeout=kw.pop("timeout", 5.0), **kw)

    def cli(self, *args: str, timeout: float = 60.0, input: str | None = None
            ) -> subprocess.CompletedProcess:
        """Run the real `flockctl` command."""
        return subprocess.run([sys.executable, "-m", "flock_tui.main", *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout, input=input)

    def json(self, *args: str):
        """`flockctl --json ARGS`, which must succeed: its answer, decoded."""
        r = self.cli("--json", *args)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def start_moded(self, names: tuple[str, ...], recipe: str) -> None:
        """Start `names` on `recipe` (formatted with each node's mode file `ctl` and `name`),
        then wait until every one of them is up and sees all of them alive."""
        procs = []
        for n in names:
            path = self.root / f"{n}.py"
            path.write_text(recipe.format(ctl=str(self.root / f"{n}.mode"), name=n))
            procs.append(self.start(n, recipes=[path], wait=False))
        for p in procs:
            self.wait_up(p)
        with self.flock() as f:
            wait_for(lambda: all(
                sorted(m["name"] for m in f[n].flock_api.members() if m["state"] == "alive")
                == sorted(names) for n in names), 15, what=f"{len(names)} agents alive")

    def stop_all(self) -> None:
        for n in self.nodes.values():
            n.stop()


@pytest.fixture
def flock_env(tmp_path_factory) -> FlockEnv:
    # Short paths: unix socket paths are limited to ~107 bytes.
    root = Path(tmp_path_factory.mktemp("f", numbered=True))
    env = FlockEnv(root)
    yield env
    env.stop_all()


def on_a_terminal(args: list[str], env: dict[str, str], timeout: float = 60.0
                  ) -> tuple[int, str]:
    """Run the real `flockctl ARGS` on a pseudo-terminal: (exit code, all it drew)."""
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "flock_tui.main", *args], env=env,
                            stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    code = proc.wait(timeout)
    os.close(master)
    return code, b"".join(chunks).decode(errors="replace")


def write_recipe(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
