"""RPC round trip of `flock_api.active()` through the Python client vs. raw pynng.

    .venv/bin/python benchmarks/bench_rpc.py [--n 3000]

Baseline: a sync pynng Req0 client and an asyncio Rep0 server in another process, exchanging
frames of the same sizes as the client's request and the agent's answer, over the same
transport. Target: the client within 2x of the baseline (p50), on ipc and on tcp loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time

import pynng

sys.path.insert(0, __import__("os").path.dirname(__file__))
from common import Agents, free_port, stats, wait_for  # noqa: E402

from flock_node.client import Flock  # noqa: E402
from flock_node.protocol import Codec, Request, Response  # noqa: E402


def serve_raw(addr: str, reply_size: int) -> None:
    """The baseline server: asyncio Rep0, one context, a fixed-size answer."""

    async def main() -> None:
        sock = pynng.Rep0(recv_max_size=1 << 20)
        sock.listen(addr)
        reply = b"r" * reply_size
        ctx = sock.new_context()
        print("ready", flush=True)
        while True:
            await ctx.arecv()
            await ctx.asend(reply)

    asyncio.run(main())


def frame_sizes(key: bytes | None) -> tuple[int, int]:
    c = Codec(key, f"client-{12345}")
    req = c.encode(Request("0" * 32, "flock_api", "active", {}))
    rep = Codec(key, "bench").encode(Response("0" * 32, True, result=False))
    return len(req), len(rep)


def bench_raw(addr: str, req_size: int, rep_size: int, n: int) -> list[float]:
    srv = subprocess.Popen(
        [sys.executable, __file__, "--serve", addr, str(rep_size)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert srv.stdout.readline().strip() == "ready"
        with pynng.Req0(recv_timeout=5000, send_timeout=5000) as s:
            s.dial(addr, block=True)
            frame = b"q" * req_size
            for _ in range(200):
                s.send(frame)
                s.recv()
            out = []
            for _ in range(n):
                t = time.perf_counter()
                s.send(frame)
                s.recv()
                out.append(time.perf_counter() - t)
            return out
    finally:
        srv.terminate()
        srv.wait(5)


def bench_client(f: Flock, node: str, n: int) -> list[float]:
    api = f[node].flock_api
    for _ in range(200):
        api.active()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        api.active()
        out.append(time.perf_counter() - t)
    return out


def report(label: str, raw: list[float], cli: list[float]) -> float:
    r, c = stats(raw), stats(cli)
    ratio = c["p50"] / r["p50"]
    print(
        f"{label:5} raw pynng   p50 {r['p50'] * 1e6:7.1f} µs  mean {r['mean'] * 1e6:7.1f} µs"
        f"  p99 {r['p99'] * 1e6:7.1f} µs"
    )
    print(
        f"{label:5} Flock client p50 {c['p50'] * 1e6:7.1f} µs  mean {c['mean'] * 1e6:7.1f} µs"
        f"  p99 {c['p99'] * 1e6:7.1f} µs"
    )
    print(
        f"{label:5} ratio client/raw: p50 {ratio:.2f}x, mean {c['mean'] / r['mean']:.2f}x "
        f"({'OK' if ratio <= 2 else 'MISSES'} the 2x target)"
    )
    return ratio


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--serve", nargs=2, metavar=("ADDR", "REPLY_SIZE"))
    a = ap.parse_args()
    if a.serve:
        serve_raw(a.serve[0], int(a.serve[1]))
        return 0
    worst = 0.0
    with Agents() as ag:
        # ipc, unkeyed (the local default)
        ag.start("bench")
        ag.wait_listening("bench")
        req, rep = frame_sizes(None)
        raw = bench_raw(f"ipc://{ag.root}/raw.sock", req, rep, a.n)
        with Flock.connect(runtime_dir=ag.runtime_dir) as f:
            cli = bench_client(f, "bench", a.n)
        print(f"frames: request {req} B, answer {rep} B")
        worst = max(worst, report("ipc", raw, cli))

        # tcp loopback with a flock key
        from flock_node.protocol import generate_key_file, load_key

        keyf = str(ag.root / "flock.key")
        generate_key_file(keyf)
        port = free_port()
        ag.start("btcp", "--listen", f"tcp://127.0.0.1:{port}", "--key-file", keyf)
        seed = f"tcp://127.0.0.1:{port}"
        f = wait_for(
            lambda: Flock.connect(seeds=[seed], runtime_dir=ag.root / "none", key_file=keyf),
            30,
            0.1,
            "btcp",
        )
        wait_for(lambda: f["btcp"].flock_api.active() is False, 30, 0.1, "btcp")
        req, rep = frame_sizes(load_key(keyf))
        raw = bench_raw(f"tcp://127.0.0.1:{free_port()}", req, rep, a.n)
        with f:
            cli = bench_client(f, "btcp", a.n)
        print(f"frames: request {req} B, answer {rep} B (signed)")
        worst = max(worst, report("tcp", raw, cli))
    return 0 if worst <= 2 else 1


if __name__ == "__main__":
    sys.exit(main())
