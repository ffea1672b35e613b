"""`flockctl demo [--nodes N]`: a local demo flock from the recipes in flock_tui/examples/ (package
data, so an installed Flock has them too), with the console on it."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NoReturn

from flock_node.client import Flock
from flock_node.transport import RpcError

EXAMPLES = Path(__file__).resolve().parent / "examples"
TAGS = {"bender0": ["db"], "bender1": ["web"], "bender2": ["web"]}


def recipe_for(name: str) -> Path:
    own = EXAMPLES / f"{name}.py"
    return own if own.exists() else EXAMPLES / "worker.py"


def stop_agents(procs: list[subprocess.Popen[bytes]], timeout: float = 15.0) -> None:
    """Stop agent processes: SIGTERM to all first, so they stop together rather than one
    after another; one still running after `timeout` is killed."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()


class DemoFlock:
    """N agents in a temporary runtime dir; stopped (SIGTERM) and cleaned on exit."""

    def __init__(self, nodes: int = 3, root: Path | None = None):
        if not EXAMPLES.is_dir():
            raise FileNotFoundError(f"demo recipes not found at {EXAMPLES}: the installation "
                                    "is incomplete; reinstall Flock")
        self.root = root or Path(tempfile.mkdtemp(prefix="flock-demo-"))
        self.own_root = root is None
        self.runtime_dir = self.root / "run"
        self.names = [f"bender{i}" for i in range(nodes)]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.env = dict(os.environ, FLOCK_RUNTIME_DIR=str(self.runtime_dir),
                        FLOCK_DEMO_DIR=str(self.root / "files"))
        self.env.pop("FLOCK_KEY_FILE", None)

    def start(self, timeout: float = 30.0) -> None:
        (self.root / "files").mkdir(parents=True, exist_ok=True)
        for name in self.names:
            cmd = [sys.executable, "-m", "flock_node.cli_node", "run", name,
                   "--recipe", str(recipe_for(name)), "--state-dir", str(self.root / "state" / name),
                   "--runtime-dir", str(self.runtime_dir), "--insecure", "--log-level", "warning"]
            for t in TAGS.get(name, ["worker"]):
                cmd += ["--tag", t]
            log = open(self.root / f"{name}.log", "ab")
            self.procs.append(subprocess.Popen(cmd, env=self.env, stdout=log,
                                               stderr=subprocess.STDOUT, start_new_session=True))
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [p for p in self.procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"a demo node exited early; see logs in {self.root}")
            try:
                with Flock.connect(runtime_dir=self.runtime_dir, insecure=True, timeout=1) as f:
                    if sum(m["state"] == "alive" for m in f.nodes()) >= len(self.names) and (
                        self._subscribed(f) or time.monotonic() > deadline - timeout / 2
                    ):
                        for n in self.names:  # a first converge, so there is something to see
                            f[n].flock_api.run_chef()
                        return
            except RpcError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"demo nodes did not come up within {timeout:g}s; logs in {self.root}")

    def _subscribed(self, f: Flock) -> bool:
        """bender1's remote subscription has reached bender0, so bender0's first converge
        shows it firing (it registers right after bender1 compiles, in the background)."""
        if not {"bender0", "bender1"} <= set(self.names):
            return True
        return bool(f["bender0"].resource_manager.subscriptions()["incoming"])

    def stop(self) -> None:
        stop_agents(self.procs)
        if self.own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> DemoFlock:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_demo(args: argparse.Namespace) -> int:
    if not 1 <= args.nodes <= 100:
        print("flockctl: --nodes must be between 1 and 100", file=sys.stderr)
        return 2
    demo = DemoFlock(args.nodes)

    def _exit(signum: int, frame: object) -> NoReturn:  # SIGTERM/SIGHUP: stop our agents
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGHUP, _exit)
    try:
        print(f"starting {args.nodes} demo nodes in {demo.root} ...", flush=True)
        demo.start()
        os.environ["FLOCK_RUNTIME_DIR"] = str(demo.runtime_dir)
        args.runtime_dir = str(demo.runtime_dir)
        args.insecure = True
        if args.no_console:
            print(f"demo flock up: export FLOCK_RUNTIME_DIR={demo.runtime_dir}\n"
                  "then try `flockctl nodes`; Ctrl-C stops it", flush=True)
            try:
                signal.pause()
            except KeyboardInterrupt:
                pass
            return 0
        from flock_tui.app import run_console

        return run_console(args)
    except (RuntimeError, FileNotFoundError) as e:
        print(f"flockctl: demo: {e}", file=sys.stderr)
        return 1
    finally:
        demo.stop()
