"""`members` of a big flock, paged: one real agent taught N members, then `flockctl nodes`.

The agent learns the members as it learns any: push-pulls over its SWIM socket carrying
their own (signed) statements, with the facts a busy node gossips; their addresses lead
nowhere, so a few turn suspect while we measure (they are still listed). Figures per N: the
wall time of `flockctl --json nodes` (a fresh process: Python start, discovery, every page,
JSON out; median of --runs), of `Flock.nodes()` in a warm process (paged), of one unpaged
`members` call where it still fits a frame, the answer's bytes per member, and the pages.

    .venv/bin/python benchmarks/bench_members.py [--nodes 1000 5000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec  # noqa: E402
import pynng  # noqa: E402
from common import Agents, wait_for  # noqa: E402

from flock_node.client import Flock, resolve_key  # noqa: E402
from flock_node.membership.messages import Alive, PushPull, encode  # noqa: E402
from flock_node.membership.statements import Notary  # noqa: E402
from flock_node.protocol import Codec, SwimFrame  # noqa: E402
from flock_node.transport import RpcError  # noqa: E402
from flock_node.transport.base import swim_for_bus  # noqa: E402

BATCH = 1000  # statements a push-pull frame


def statement(i: int, nowhere: str, notary: Notary) -> Alive:
    """Member i's signed statement, with a last run and converge, tags, counts."""
    run = {"id": f"r{i:08x}", "status": "ok", "kind": "converge", "started": 1.7e9 + i,
           "duration": 12.5, "updated": i % 4}
    rec = {"tags": ["web" if i % 2 else "db", f"rack{i % 40}"], "active": False,
           "last_run": run, "last_converge": run, "pending": i % 3, "dead": 0,
           "bus": f"{nowhere}/m{i:05d}.bus", "rpc": f"{nowhere}/m{i:05d}.rpc",
           "version": "0.1.0", "started": 1.7e9 + i}
    return notary.sign(Alive(f"m{i:05d}", 1, f"i{i}", f"{nowhere}/m{i:05d}.swim", 1, rec))


def teach(flock: Flock, node: str, n: int, nowhere: str) -> None:
    """Push-pull n statements to `node` until it lists them all (Push0 may drop)."""
    key = resolve_key()
    notary, codec = Notary(key), Codec(key, "seeder")
    states = [statement(i, nowhere, notary) for i in range(n)]
    frames = [codec.encode(SwimFrame(encode(PushPull("seeder", "", False, False,
                                                     states[i:i + BATCH]))))
              for i in range(0, n, BATCH)]
    push = pynng.Push0(send_timeout=5000)
    push.dial(swim_for_bus(flock[node].flock_api.status()["bus"]), block=True)
    try:
        for _ in range(5):
            for f in frames:
                push.send(f)
            try:
                wait_for(lambda: len(flock[node].flock_api.members()) > n, 10)
                return
            except SystemExit:
                continue
        raise SystemExit(f"{node} did not learn {n} members")
    finally:
        push.close()


def measure(n: int, runs: int) -> dict[str, Any]:
    with Agents() as agents:
        agents.start("big0")
        agents.wait_listening("big0")
        with Flock.connect(runtime_dir=agents.runtime_dir, timeout=10.0) as f:
            teach(f, "big0", n, f"ipc://{agents.root}/nowhere")
            api = f["big0"].flock_api
            rows = api.members()
            per_member = len(msgspec.msgpack.encode(rows)) / len(rows)
            pages, page = 1, api.members(offset=0)
            while page["next_offset"] is not None:
                page = api.members(offset=page["next_offset"], after=page["next_after"])
                pages += 1
            warm = []
            for _ in range(runs):
                t = time.perf_counter()
                f.refresh()
                warm.append(time.perf_counter() - t)
            unpaged: float | str
            try:
                t = time.perf_counter()
                f._rpc.call(f._discovery.address("big0") or "", "flock_api", "members", {})
                unpaged = round(time.perf_counter() - t, 3)
            except RpcError as e:
                unpaged = e.code
        cli = []
        for _ in range(runs):
            t = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "flock_tui.main", "--json", "nodes"],
                               env=agents.env, capture_output=True, text=True, timeout=120)
            cli.append(time.perf_counter() - t)
            if r.returncode != 0 or len(json.loads(r.stdout)) != n + 1:
                raise SystemExit(f"flockctl nodes failed: {r.stderr[-500:]}")
    return {"members": n + 1, "bytes_per_member": round(per_member), "pages": pages,
            "flockctl_nodes_json_s": round(statistics.median(cli), 3),
            "flock_nodes_warm_s": round(statistics.median(warm), 3),
            "unpaged_members_s": unpaged}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[1000, 5000])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    for n in args.nodes:
        print(json.dumps(measure(n, args.runs)), flush=True)


if __name__ == "__main__":
    main()
