"""Limits: bounded agent memory, answers bigger than a frame (paged, or `too_large`, never
"could not be reached"), a corrupt or unreadable state database and a taken port (one line,
no traceback), numeric flags (usage errors)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import FlockEnv, free_port, wait_for

from flock_node.client import FlockError
from flock_node.protocol import MAX_FRAME, Codec
from flock_node.transport import SyncRpc

# Many resources with long names and properties: their list is several MiB encoded.
MANY = """\
from flock_node.dsl import execute
for i in range({n}):
    execute("job-%05d-" % i + "x" * {pad}, command="echo " + "y" * {pad}, action="nothing")
"""


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _many(env: FlockEnv, name: str, n: int, pad: int):
    recipe = env.root / f"{name}.py"
    recipe.write_text(MANY.format(n=n, pad=pad))
    node = env.start(name, recipes=[recipe])
    with env.flock() as f:
        wait_for(lambda: len(f[name].resource_manager.resources()) == n, 30,
                 what=f"{n} resources persisted")
    return node


# --- memory --------------------------------------------------------------------------------


def test_agent_memory_stays_flat_under_many_resources_calls(flock_env):
    node = _many(flock_env, "mem", 1000, 40)
    pid = node.proc.pid
    with flock_env.flock() as f:
        for _ in range(10):  # warm up: allocator arenas, caches
            f["mem"].resource_manager.resources()
        before = _rss_kib(pid)
        for i in range(300):
            assert len(f["mem"].resource_manager.resources()) == 1000
            grown = (_rss_kib(pid) - before) / 1024
            assert grown < 40, f"agent RSS grew {grown:.0f} MB after {i + 1} calls"
    print(f"agent RSS {before / 1024:.0f} MB -> {_rss_kib(pid) / 1024:.0f} MB after 300 calls")


def test_answer_cache_bounded_in_count_bytes_and_age():
    from flock_node.transport import RERUN, AnswerCache

    c = AnswerCache(max_bytes=1000, max_age=10.0, max_count=5, max_entry=400)
    inflight = object()
    c.begin("a", inflight, now=0.0)
    for i in range(10):
        c.begin(f"k{i}", None, now=1.0)
        c.finish(f"k{i}", b"x" * 100, now=1.0)
    assert len(c) <= 5 and c.bytes <= 1000
    assert c.get("a") is inflight  # in flight: kept whatever the bounds
    c.begin("big", None, now=2.0)
    c.finish("big", b"x" * 401, now=2.0)  # too big to keep: a re-send runs the handler again
    assert c.get("big") is RERUN and c.bytes <= 1000
    for i in range(30):
        c.begin(f"m{i}", None, now=3.0)
        c.finish(f"m{i}", b"y" * 300, now=3.0)
    assert c.bytes <= 1000 and c.get("m29") == b"y" * 300 and c.get("m0") is None
    c.begin("late", None, now=20.0)  # everything older than 10 s is gone
    assert [k for k in c.keys() if k != "late"] == ["a"]
    c.finish("a", b"z", now=20.0)
    assert c.get("a") == b"z"
    c.begin("cut", None, now=21.0)
    c.finish("cut", None, now=21.0)  # cancelled: nothing kept
    assert c.get("cut") is None


# --- paging and too_large ------------------------------------------------------------------


def test_fill_page_by_bytes():
    from flock_node.paging import fill_page

    rows = [{"id": i, "pad": "p" * 1000} for i in range(100)]
    page = fill_page(rows, offset=40, more=False, budget=10_000)
    assert 5 <= len(page.items) < 10 and page.items[0]["id"] == 0
    assert page.next_offset == 40 + len(page.items)
    whole = fill_page(rows[:3], offset=0, more=False, budget=10_000)
    assert len(whole.items) == 3 and whole.next_offset is None
    assert fill_page(rows[:3], offset=7, more=True, budget=10_000).next_offset == 10
    one = fill_page([{"pad": "q" * 50_000}], offset=0, more=True, budget=10_000)
    assert len(one.items) == 1 and one.next_offset == 1  # always advances


def test_big_answers_are_paged_and_over_limit_frames_are_too_large(flock_env):
    env = flock_env
    n = 5000
    _many(env, "big", n, 200)
    r = env.cli("resources", "big", timeout=60)
    assert r.returncode == 0, r.stderr
    lines = [x for x in r.stdout.splitlines() if x.startswith("execute[job-")]
    assert len(lines) == n
    rs = json.loads(env.cli("--json", "resources", "big", timeout=60).stdout)
    assert len(rs) == n and len({x["id"] for x in rs}) == n
    assert len(json.dumps(rs)) > 2 * MAX_FRAME  # really more than one frame's worth
    with env.flock() as f:
        # A page asked for explicitly fits a frame and says where the next one starts.
        page = f.call("big", "resource_manager", "resources", {"offset": 0})
        assert 0 < len(page["items"]) < n and page["next_offset"] == len(page["items"])
        last = f.call("big", "resource_manager", "resources", {"offset": n - 2, "limit": 5})
        assert len(last["items"]) == 2 and last["next_offset"] is None
        # The old call shape (no offset) is answered whole when it fits, too_large otherwise:
        # a clear error naming the limit, the node counts it, and stays up.
        raw = SyncRpc(Codec(None, "raw"))
        try:
            with pytest.raises(FlockError) as e:
                raw.call(f"ipc://{env.runtime_dir / 'big.rpc'}", "resource_manager",
                         "resources", {})
        finally:
            raw.close()
        assert e.value.code == "too_large" and "1 MiB frame limit" in e.value.message
        assert f["big"].flock_api.status()["dropped_frames"].get("oversize", 0) >= 1
        # A request over the frame limit is refused before it is sent.
        with pytest.raises(FlockError) as e:
            f["big"].resource_manager.notify("execute[x]", "run", id="i" * (MAX_FRAME + 10))
        assert e.value.code == "too_large"
        assert f["big"].flock_api.active() is False
    # The CLI shows a too_large answer as a failure (exit 1), not as an unreachable node.
    from flock_node.cli import FAILED, _cli_error
    from flock_node.transport import RpcError

    assert _cli_error(RpcError("too_large", "answer of 2000000 bytes ..."), "big").code == FAILED


def test_history_and_outbox_page(flock_env):
    env = flock_env
    env.start("h0")
    with env.flock() as f:
        for _ in range(3):
            run_id = f["h0"].flock_api.run_chef()["run_id"]
            wait_for(lambda rid=run_id: (f["h0"].flock_api.run(rid) or {}).get("status") == "ok",
                     10, what="run to end")
        hist = f["h0"].flock_api.history(10)
        assert isinstance(hist, list) and len(hist) >= 3
        assert [h["id"] for h in f["h0"].flock_api.history(2)] == [h["id"] for h in hist[:2]]
        page = f.call("h0", "flock_api", "history", {"limit": 2, "offset": 1})
        assert [h["id"] for h in page["items"]] == [h["id"] for h in hist[1:3]]
        assert f.call("h0", "flock_api", "outbox", {"offset": 0}) == {"items": [],
                                                                      "next_offset": None}
        for args in ({"limit": -5}, {"limit": 2, "offset": -1}):
            with pytest.raises(FlockError) as e:
                f.call("h0", "flock_api", "history", args)
            assert e.value.code == "bad_request", args


# --- startup failures: one line, no traceback ----------------------------------------------


def _node_run(env: FlockEnv, *args: str, user: list[str] | None = None):
    run_env = env.env
    if user:  # `make cov`: another user cannot write the coverage data, so is not measured
        run_env = {k: v for k, v in run_env.items() if not k.startswith("COVERAGE_")}
    return subprocess.run([*(user or []), sys.executable, "-m", "flock_node.cli_node", "run",
                           *args], env=run_env, capture_output=True, text=True, timeout=30)


def _one_line_error(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("flock-node: "), r.stderr
    for w in words:
        assert w in err[0], r.stderr


def test_corrupt_state_database_is_one_clear_line(flock_env):
    env = flock_env
    state = env.root / "state" / "bad"
    state.mkdir(parents=True, mode=0o700)
    db = state / "flock.db"
    junk = b"this is not an SQLite database\n" * 200
    db.write_bytes(junk)
    r = _node_run(env, "bad", "--state-dir", str(state))
    _one_line_error(r, str(db), "not a database", "move it away")
    assert db.read_bytes() == junk
    # Nothing written beside it but the agent's lock (no -wal, no -shm)
    assert sorted(p.name for p in state.iterdir()) == ["agent.lock", "flock.db"]


def test_unreadable_state_database_is_one_clear_line(flock_env):
    env = flock_env
    if os.geteuid() != 0 and shutil.which("setpriv") is None:
        pytest.skip("needs root (to run as another user) or setpriv")
    node = env.start("unr")
    node.stop()
    # Root reads everything: run the agent as nobody on a database only root may read.
    top = Path(tempfile.mkdtemp(prefix="flock-unr-"))
    try:
        os.chmod(top, 0o755)
        state, run = top / "state", top / "run"
        shutil.copytree(node.state_dir, state, ignore=shutil.ignore_patterns("agent.lock"))
        run.mkdir(mode=0o700)
        os.chown(run, 65534, 65534)
        os.chown(state, 65534, 65534)
        os.chmod(state / "flock.db", 0o600)  # owned by root
        user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        r = _node_run(env, "unr", "--insecure", "--state-dir", str(state), "--runtime-dir", str(run),
                      user=user if os.geteuid() == 0 else None)
        _one_line_error(r, str(state / "flock.db"))
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pytest.mark.parametrize("taken, user", [(0, "bus"), (1, "RPC"), (2, "SWIM")])
def test_listen_port_in_use_is_one_clear_line(flock_env, taken, user):
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port + taken))
        s.listen()
        r = _node_run(flock_env, "busy", "--listen", f"tcp://127.0.0.1:{port}", "--insecure",
                      "--membership", "swim",
                      "--state-dir", str(flock_env.root / "state" / "busy"))
    # The port taken and what of ours needed it (an agent listens on PORT, PORT+1, PORT+2).
    plus = f"+{taken}" if taken else ""
    _one_line_error(r, f"127.0.0.1:{port + taken} ({user}", f"PORT{plus} of --listen", "in use")


# --- numeric flags -------------------------------------------------------------------------


@pytest.mark.parametrize("args, flag", [
    (("history", "n0", "--limit", "-5"), "--limit"),
    (("history", "n0", "--limit", "0"), "--limit"),
    (("outbox", "n0", "--limit", "-1"), "--limit"),
    (("outbox", "n0", "--limit", "ten"), "--limit"),
    (("demo", "--nodes", "0"), "--nodes"),
    (("demo", "--nodes", "-3"), "--nodes"),
    (("--connect-timeout", "-1", "nodes"), "--connect-timeout"),
    (("run-chef", "n0", "--timeout", "0"), "--timeout"),
    (("wait-until", "n0", "idle", "--interval", "nan"), "--interval"),
])
def test_bad_numbers_are_usage_errors(flock_env, args, flag):
    r = flock_env.cli(*args, timeout=20)
    assert r.returncode == 2, (args, r.stdout, r.stderr)
    assert flag in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("args, flag", [
    (("--heartbeat", "0"), "--heartbeat"),
    (("--ttl", "-1"), "--ttl"),
    (("--heartbeat", "x"), "--heartbeat"),
])
def test_bad_numbers_are_usage_errors_for_the_agent(flock_env, args, flag):
    r = _node_run(flock_env, "n1", *args)
    assert r.returncode == 2, (args, r.stdout, r.stderr)
    assert flag in r.stderr and "Traceback" not in r.stderr


def test_collect_pages_up_to_the_limit_and_falls_back_for_old_nodes():
    import msgspec

    from flock_node.paging import collect, fill_page
    from flock_node.transport import RpcError

    rows = [{"id": i, "pad": "p" * 1000} for i in range(100)]
    asked = []

    def node(method, args):  # a node serving `rows` a few at a time, like the agent
        asked.append(args)
        start, limit = args["offset"], args.get("limit", 20)
        take = rows[start:start + limit]
        return msgspec.to_builtins(fill_page(take, start, more=False, budget=5000))  # as sent

    assert [r["id"] for r in collect(node, "history", {})] == list(range(20))
    assert all(a["offset"] + a["limit"] <= 20 for a in asked)  # never past the default 20
    assert len(collect(node, "history", {"limit": 7})) == 7
    assert len(collect(node, "resources", {"limit": 100})) == 100

    def old(method, args):
        if "offset" in args:
            raise RpcError("bad_request", "history: Agent.api_history() got an unexpected "
                                          "keyword argument 'offset'")
        return rows[:args.get("limit", 20)]

    assert len(collect(old, "history", {"limit": 3})) == 3


def test_a_run_bigger_than_a_frame_is_paged_not_cut(flock_env):
    """80 commands with 16 KiB of output each: one run record of ~1.3 MiB."""
    env = flock_env
    recipe = env.root / "loud.py"
    recipe.write_text(
        "from flock_node.dsl import execute\n"
        "for i in range(80):\n"
        "    execute(f'loud-{i}', command=\"head -c 16384 /dev/zero | tr '\\\\0' x\")\n")
    env.start("loud", recipes=[recipe])
    r = env.cli("--json", "run-chef", "loud", "--wait", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    with env.flock() as f:
        [run] = f["loud"].flock_api.history(1)
        assert len(run["resources"]) == 80 and "resources_paged" not in run
        assert all(len(x["output"]) == 16384 for x in run["resources"])
        whole = f["loud"].flock_api.run(run["id"])
        assert whole["resources"] == run["resources"]
        raw = f.call("loud", "flock_api", "run", {"id": run["id"], "offset": 0})
        assert 0 < len(raw["items"]) < 80 and raw["next_offset"] == len(raw["items"])
    h = env.cli("history", "loud", "--limit", "1", timeout=60)
    assert h.returncode == 0 and h.stdout.count("execute[loud-") == 80, h.stderr


def test_test_ports_are_drawn_below_the_kernels_range_for_outgoing_connections():
    # A port in that range can go to any outgoing connection between the check and the
    # agent's bind (CI saw an agent fail on its P+2 so); below it, none can.
    lo = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(30)]
    assert len(set(ports)) == 30, ports  # never the same one twice in a process
    ordered = sorted(ports)  # nor one agent's three ports overlapping another's
    assert all(b - a >= 3 for a, b in zip(ordered, ordered[1:], strict=False)), ordered
    assert all(p + 2 < lo for p in ports), (lo, ports)
    with socket.socket() as s:  # and each is free to listen on, as are the two beside it
        s.bind(("127.0.0.1", ports[-1] + 2))
