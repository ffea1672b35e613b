"""An idle agent's memory: VmRSS of one `flock-node run` on loopback TCP with a flock key and
one on tls+tcp (a throw-away flock CA), each read from /proc/PID/status after it has been up
for SECONDS, and whether it loaded `cryptography` (its library mapped, /proc/PID/maps).

    .venv/bin/python benchmarks/bench_rss.py [--runs 3] [--seconds 8]

No recipe, no peer: what every agent of a flock carries before it does anything. Prints one
line per run and the median of each mode. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import free_port


def one(mode: str, seconds: float) -> tuple[int, bool]:
    """(VmRSS in kB, cryptography mapped) of an idle agent in `mode` (keyed or tls)."""
    root = Path(tempfile.mkdtemp(prefix="flock-rss-"))
    env = dict(os.environ, FLOCK_RUNTIME_DIR=str(root / "run"),
               FLOCK_CONFIG_DIR=str(root / "cfg"))
    port = free_port()
    if mode == "keyed":
        key = root / "flock.key"
        key.write_text(os.urandom(32).hex())
        key.chmod(0o600)
        flags = ["--listen", f"tcp://127.0.0.1:{port}", "--key-file", str(key)]
    else:
        from flock_node.trust import ca

        ca.init(root / "ca")
        ca.issue(root / "ca", "n1", "node", root / "certs")
        flags = ["--listen", f"tls+tcp://127.0.0.1:{port}", "--tls-dir", str(root / "certs")]
    proc = subprocess.Popen([sys.executable, "-m", "flock_node.cli_node", "run", "n1",
                             "--state-dir", str(root / "state"), *flags],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        time.sleep(seconds)  # idle is what is measured: nothing to wait for but time
        if proc.poll() is not None:
            raise SystemExit(f"the {mode} agent exited {proc.returncode}")
        status = Path(f"/proc/{proc.pid}/status").read_text()
        rss = next(int(line.split()[1]) for line in status.splitlines()
                   if line.startswith("VmRSS:"))
        mapped = "/cryptography/" in Path(f"/proc/{proc.pid}/maps").read_text()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    return rss, mapped


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8.0)
    a = ap.parse_args()
    for mode in ("keyed", "tls"):
        got = []
        for _ in range(a.runs):
            rss, mapped = one(mode, a.seconds)
            got.append(rss)
            print(f"{mode}: {rss / 1024:.1f} MB, cryptography loaded: {mapped}", flush=True)
        print(f"{mode} median: {statistics.median(got) / 1024:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
