"""RPC round trip of `flock_api.active()` through the Python client vs. raw pynng.

    .venv/bin/python benchmarks/bench_rpc.py [--n 3000]

Baseline: a sync pynng Req0 client and an asyncio Rep0 server in another process, exchanging
frames of the same sizes as the client's request and the agent's answer, over the same
transport. Target: the client within 2x of the baseline (p50), on ipc and on tcp loopback.

TLS (issue 10): `active()` over tls+tcp (an operator's certificate) beside the keyed tcp run,
and raw pynng Req/Rep over tcp and tls+tcp with the same certificates. Goal: what TLS adds to
Flock's round trip is at most 1.2x what it adds to the raw one. Also the time to a first
answer on a fresh connection (TCP connect, TLS handshake, one call), tcp vs tls+tcp.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pynng

sys.path.insert(0, __import__("os").path.dirname(__file__))
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

from common import Agents, free_port, stats, wait_for  # noqa: E402

from flock_node.client import Flock  # noqa: E402
from flock_node.protocol import Codec, Request, Response  # noqa: E402


def serve_raw(addr: str, reply_size: int, tls_dir: str | None = None) -> None:
    """The baseline server: asyncio Rep0, one context, a fixed-size answer."""

    async def main() -> None:
        sock = pynng.Rep0(recv_max_size=1 << 20)
        if tls_dir:
            from flock_node.transport.tls import tls_endpoint
            from flock_node.trust.tls import load_identity

            tls_endpoint(sock, addr, load_identity(Path(tls_dir)), listen=True)
        else:
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


def bench_raw(addr: str, req_size: int, rep_size: int, n: int,
              tls: tuple[str, str] | None = None) -> list[float]:
    """`tls`: (server's tls dir, client's tls dir) for tls+tcp."""
    srv = subprocess.Popen(
        [sys.executable, __file__, "--serve", addr, str(rep_size),
         *(["--serve-tls", tls[0]] if tls else [])],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert srv.stdout.readline().strip() == "ready"
        with pynng.Req0(recv_timeout=5000, send_timeout=5000) as s:
            if tls:
                from flock_node.transport import dial
                from flock_node.trust.tls import load_identity

                dial(s, addr, load_identity(Path(tls[1])), block=True)
            else:
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
    ap.add_argument("--serve-tls", metavar="DIR")
    a = ap.parse_args()
    if a.serve:
        serve_raw(a.serve[0], int(a.serve[1]), a.serve_tls)
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
        tls_ok = bench_tls(ag, a.n, raw, cli, seed, keyf)
    return 0 if worst <= 2 and tls_ok else 1


def first_answer(make: Callable[[], Any], addr: str, n: int = 30) -> list[float]:
    """Time from a fresh client to its first answer: connect (and handshake), one call."""
    out = []
    for _ in range(n):
        t = time.perf_counter()
        rpc = make()
        rpc.call(addr, "flock_api", "active", timeout=5.0)
        out.append(time.perf_counter() - t)
        rpc.close()
    return out


def bench_tls(ag: Agents, n: int, raw_tcp: list[float], cli_tcp: list[float], tcp_seed: str,
              keyf: str) -> bool:
    """active() over tls+tcp vs keyed tcp, raw Req/Rep tls+tcp vs tcp; the goal's ratio."""
    from flock_node.protocol import load_key
    from flock_node.transport import SyncRpc, rpc_for_bus
    from flock_node.trust import ca
    from flock_node.trust.tls import load_identity

    ca_dir = ag.root / "ca"
    ca.init(ca_dir)
    certs = {w: ca.issue(ca_dir, w, r, ag.root / "certs" / w)
             for w, r in (("btls", "node"), ("bench-op", "operator"))}
    port = free_port()
    ag.start("btls", "--listen", f"tls+tcp://127.0.0.1:{port}", "--tls-dir",
             str(certs["btls"]))
    seed = f"tls+tcp://127.0.0.1:{port}"
    f = wait_for(lambda: Flock.connect(seeds=[seed], runtime_dir=ag.root / "none",
                                       tls_dir=certs["bench-op"]), 30, 0.1, "btls")
    wait_for(lambda: f["btls"].flock_api.active() is False, 30, 0.1, "btls")
    req, rep = frame_sizes(None)
    raw_tls = bench_raw(f"tls+tcp://127.0.0.1:{free_port()}", req, rep, n,
                        tls=(str(certs["btls"]), str(certs["bench-op"])))
    with f:
        cli_tls = bench_client(f, "btls", n)
    print(f"frames: request {req} B, answer {rep} B (TLS: unsigned, TLS protects them)")
    report("tls", raw_tls, cli_tls)
    p50 = {k: stats(v)["p50"] * 1e6 for k, v in
           (("raw_tcp", raw_tcp), ("raw_tls", raw_tls), ("cli_tcp", cli_tcp),
            ("cli_tls", cli_tls))}
    raw_added, cli_added = p50["raw_tls"] - p50["raw_tcp"], p50["cli_tls"] - p50["cli_tcp"]
    ratio = cli_added / raw_added if raw_added > 0 else float("inf")
    print(f"TLS adds to raw pynng: {raw_added:+.1f} µs (p50 {p50['raw_tcp']:.1f} → "
          f"{p50['raw_tls']:.1f}); to Flock active(): {cli_added:+.1f} µs (keyed tcp "
          f"{p50['cli_tcp']:.1f} → tls {p50['cli_tls']:.1f})")
    ok = ratio <= 1.2
    print(f"TLS cost ratio Flock/raw: {ratio:.2f}x ({'OK' if ok else 'MISSES'} the 1.2x goal)")
    key = load_key(keyf)
    ident = load_identity(certs["bench-op"])
    fresh_tcp = first_answer(lambda: SyncRpc(Codec(key, "bench"), timeout=5.0),
                             rpc_for_bus(tcp_seed))
    fresh_tls = first_answer(lambda: SyncRpc(Codec(None, ident.me.name), timeout=5.0,
                                             tls=ident), rpc_for_bus(seed))
    t, s = stats(fresh_tcp), stats(fresh_tls)
    print(f"first answer on a fresh connection: keyed tcp p50 {t['p50'] * 1e3:.2f} ms, "
          f"tls+tcp p50 {s['p50'] * 1e3:.2f} ms (handshake included); a client keeps one "
          "connection per node and reuses it for every later call")
    return ok


if __name__ == "__main__":
    sys.exit(main())
