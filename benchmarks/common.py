"""Helpers shared by the benchmarks: start real agents, poll with deadlines, clean up."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from flock_node.transport.base import free_bus_port

free_port = free_bus_port  # P, P+1, P+2 free on loopback: bus, RPC and SWIM


def wait_for(
    cond: Callable[[], object],
    timeout: float = 10.0,
    interval: float = 0.01,
    what: str = "condition",
) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            v = cond()
            if v:
                return v
        except Exception:  # noqa: BLE001 - "not yet"
            pass
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout}s waiting for {what}")


def stats(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {"p50": s[len(s) // 2], "p99": s[int(len(s) * 0.99)], "mean": statistics.fmean(s)}


class Agents:
    """Real `flock-node run` processes in a private runtime dir; stopped on exit."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="fb"))
        self.runtime_dir = self.root / "run"
        self.env = dict(
            os.environ,
            FLOCK_RUNTIME_DIR=str(self.runtime_dir),
            FLOCK_CONFIG_DIR=str(self.root / "config"),
            PYTHONUNBUFFERED="1",
            FLOCK_LOG_LEVEL="warning",
        )
        for k in ("FLOCK_KEY_FILE", "FLOCK_STATE_DIR", "FLOCK_SEEDS"):
            self.env.pop(k, None)
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "ab")
        p = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flock_node.cli_node",
                "run",
                name,
                "--state-dir",
                str(self.root / "state" / name),
                *args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        log.close()
        self.procs[name] = p
        return p

    def wait_listening(self, name: str, timeout: float = 30.0) -> None:
        from flock_node.transport import ipc_alive

        def up() -> bool:
            if self.procs[name].poll() is not None:
                raise SystemExit(f"{name} exited: {(self.root / f'{name}.log').read_text()}")
            return ipc_alive(str(self.runtime_dir / f"{name}.rpc"))

        wait_for(up, timeout, what=f"{name} to listen")

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        p = self.procs[name]
        if p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def close(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is None:
                with_cont = p.pid
                os.kill(with_cont, signal.SIGCONT)  # a SIGSTOPped one must be able to exit
                self.stop(name)

    def __enter__(self) -> Agents:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
