"""Real agents: liveness (SIGTERM, kill -9, restart), TCP with a flock key, and garbage thrown
at the bus and RPC sockets from raw pynng sockets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import msgspec
import pynng
import pytest
from conftest import FlockEnv, free_port, wait_for

from flock_node.client import Flock, FlockError
from flock_node.protocol import (
    MAX_FRAME,
    Codec,
    Envelope,
    Event,
    Heartbeat,
    Request,
    Response,
    _mac,
)
from flock_node.transport import RpcError


def view(f: Flock, observer: str) -> dict[str, dict]:
    return {m["name"]: m for m in f[observer].flock_api.members()}


def states(f: Flock, observer: str) -> dict[str, str]:
    return {n: m["state"] for n, m in view(f, observer).items()}


def start_many(env: FlockEnv, names, *args, **kw):
    procs = [env.start(n, *args, wait=False, **kw) for n in names]
    for p in procs:
        env.wait_up(p)
    return procs


def clean_log(text: str) -> None:
    assert "Traceback" not in text, text
    assert "panic" not in text.lower(), text


# --- liveness over ipc --------------------------------------------------------------------


@pytest.mark.parametrize("membership", ["mesh", "swim"])
def test_sigterm_exits_0_and_others_see_left(flock_env, membership):
    flock_env.env["FLOCK_MEMBERSHIP"] = membership
    start_many(flock_env, ["a0", "a1", "a2"])
    f = flock_env.flock()
    wait_for(
        lambda: all(list(states(f, n).values()) == ["alive"] * 3 for n in ("a0", "a1")),
        10,
        what="mesh",
    )
    assert flock_env.nodes["a2"].stop(signal.SIGTERM) == 0
    wait_for(
        lambda: states(f, "a0")["a2"] == "left" and states(f, "a1")["a2"] == "left",
        3,
        what="a2 to be seen as left",
    )
    out = flock_env.nodes["a2"].output()
    assert "node a2 stopped" in out
    clean_log(out)
    # `nodes` keeps showing it as left; glob targets skip it.
    nodes = {n["name"]: n for n in json.loads(flock_env.cli("--json", "nodes").stdout)}
    assert nodes["a2"]["state"] == "left"
    r = flock_env.cli("--json", "run-chef", "a*")
    assert r.returncode == 0 and set(json.loads(r.stdout)["runs"]) == {"a0", "a1"}
    # SIGINT is a clean stop too.
    assert flock_env.nodes["a1"].stop(signal.SIGINT) == 0
    clean_log(flock_env.nodes["a1"].output())
    f.close()


@pytest.mark.parametrize("membership", ["mesh", "swim"])
def test_kill9_is_suspect_within_1s_and_restart_is_alive_again(flock_env, membership):
    flock_env.env["FLOCK_MEMBERSHIP"] = membership
    start_many(flock_env, ["k0", "k1", "k2"])
    f = flock_env.flock()
    wait_for(
        lambda: all(list(states(f, n).values()) == ["alive"] * 3 for n in ("k0", "k1")),
        10,
        what="mesh",
    )
    old_inc = view(f, "k0")["k2"]["incarnation"]
    t0 = time.monotonic()
    flock_env.nodes["k2"].kill9()
    wait_for(
        lambda: (
            states(f, "k0")["k2"] in ("suspect", "down")
            and states(f, "k1")["k2"] in ("suspect", "down")
        ),
        1.0,
        interval=0.02,
        what="k2 to be seen suspect within 1 s",
    )
    seen = time.monotonic() - t0
    # not back within 2 intervals → down
    wait_for(lambda: states(f, "k0")["k2"] == "down", 4 if membership == "mesh" else 8,
             what="k2 down")
    r = flock_env.cli("active", "k2")
    assert r.returncode == 3, r.stdout + r.stderr
    # Restart with the same state dir: a new incarnation replaces the old entry.
    flock_env.restart("k2")
    wait_for(
        lambda: all(
            view(f, n)["k2"]["state"] == "alive" and view(f, n)["k2"]["incarnation"] > old_inc
            for n in ("k0", "k1")
        ),
        5,
        what="k2 alive again with a new incarnation",
    )
    assert f["k2"].flock_api.active() is False
    assert seen < 1.0


# --- TCP with a key -------------------------------------------------------------------------


class TcpFlock:
    def __init__(self, env: FlockEnv, key: Path, port0: int, port1: int):
        self.env, self.key, self.port0, self.port1 = env, key, port0, port1
        self.seed = f"tcp://127.0.0.1:{port0}"
        self.rpc0 = f"tcp://127.0.0.1:{port0 + 1}"
        self.bus0 = self.seed

    def cli(self, *args: str, key: Path | None = None, timeout: float = 30):
        return self.env.cli(
            "--seed", self.seed, "--key-file", str(key or self.key), *args, timeout=timeout
        )

    def flock(self, **kw) -> Flock:
        return Flock.connect(
            seeds=[self.seed],
            runtime_dir=self.env.runtime_dir,
            key_file=kw.pop("key_file", str(self.key)),
            **kw,
        )

    def status(self, node: str) -> dict:
        with self.flock() as f:
            return f[node].flock_api.status()


@pytest.fixture(scope="module")
def tcp(tmp_path_factory):
    yield from _tcp_pair(tmp_path_factory)


@pytest.fixture(scope="module")
def tcp_mesh(tmp_path_factory):
    """The pair on the heartbeat mesh, for tests of its Bus0 wire."""
    yield from _tcp_pair(tmp_path_factory, "mesh")


def _tcp_pair(tmp_path_factory, membership: str | None = None):
    env = FlockEnv(Path(tmp_path_factory.mktemp("t", numbered=True)))
    if membership is not None:
        env.env["FLOCK_MEMBERSHIP"] = membership
    key = env.root / "flock.key"
    r = env.cli("keygen", str(key))
    assert r.returncode == 0, r.stderr
    p0, p1 = free_port(), free_port()
    recipe = env.root / "r.py"
    recipe.write_text("from flock_node.dsl import log\nlog('tcp hello')\n")
    try:
        env.start(
            "t0", "--listen", f"tcp://127.0.0.1:{p0}", "--key-file", str(key), recipes=[recipe]
        )
        env.start(
            "t1",
            "--listen",
            f"tcp://127.0.0.1:{p1}",
            "--key-file",
            str(key),
            "--seed",
            f"tcp://127.0.0.1:{p0}",
            recipes=[recipe],
        )
        t = TcpFlock(env, key, p0, p1)
        with t.flock() as f:
            wait_for(
                lambda: (
                    states(f, "t0") == {"t0": "alive", "t1": "alive"}
                    and states(f, "t1") == {"t0": "alive", "t1": "alive"}
                ),
                10,
                what="t0 and t1 to see each other",
            )
        yield t
    finally:
        env.stop_all()


def test_tcp_flock_driven_by_cli_and_client(tcp):
    r = tcp.cli("--json", "nodes")
    assert r.returncode == 0, r.stderr
    nodes = json.loads(r.stdout)
    assert [(n["name"], n["state"]) for n in nodes] == [("t0", "alive"), ("t1", "alive")]
    assert nodes[1]["address"] == f"tcp://127.0.0.1:{tcp.port1 + 1}"
    r = tcp.cli("run-chef", "t*", "--wait", "--timeout", "30")
    assert r.returncode == 0 and "2 ok" in r.stdout, r.stdout + r.stderr
    r = tcp.cli("active", "t1")
    assert (r.returncode, r.stdout.strip()) == (0, "false")
    r = tcp.cli("--json", "status", "t1")
    assert r.returncode == 0 and json.loads(r.stdout)["last_run"]["status"] == "ok"
    r = tcp.cli("history", "t0")
    assert r.returncode == 0 and "log[tcp hello]" in r.stdout
    r = tcp.cli("wait-until", "t*", "idle", "--timeout", "5")
    assert r.returncode == 0, r.stderr
    with tcp.flock() as f:
        assert f["t1"].flock_api.active() is False
        assert f["t0"].flock_api.status()["address"] == tcp.rpc0


def test_tcp_wrong_key_is_refused(tcp):
    wrong = tcp.env.root / "wrong.key"
    if not wrong.exists():
        assert tcp.env.cli("keygen", str(wrong)).returncode == 0
    before = tcp.status("t0")["dropped_frames"].get("unauthorized", 0)
    t0 = time.monotonic()
    r = tcp.cli("active", "t0", key=wrong)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "unauthorized" in r.stderr or "flock key" in r.stderr
    assert time.monotonic() - t0 < 10  # an answer, not a timeout
    r = tcp.env.cli("--seed", tcp.seed, "--insecure", "nodes")
    assert r.returncode == 3 and "key" in r.stderr, r.stderr
    with pytest.raises(FlockError) as ei:
        tcp.flock(key_file=str(wrong))
    assert ei.value.code == "unauthorized"
    assert tcp.status("t0")["dropped_frames"].get("unauthorized", 0) > before


def test_tcp_agent_with_wrong_key_never_joins(tcp):
    wrong = tcp.env.root / "wrong.key"
    if not wrong.exists():
        assert tcp.env.cli("keygen", str(wrong)).returncode == 0
    before = tcp.status("t0")["dropped_frames"].get("unauthorized", 0)
    p = free_port()
    intruder = tcp.env.start(
        "tx",
        "--listen",
        f"tcp://127.0.0.1:{p}",
        "--key-file",
        str(wrong),
        "--seed",
        tcp.seed,
        heartbeat=0.2,
    )
    try:
        wait_for(
            lambda: tcp.status("t0")["dropped_frames"].get("unauthorized", 0) > before + 2,
            5,
            what="t0 to refuse the intruder's heartbeats",
        )
        with tcp.flock() as f:
            assert set(states(f, "t0")) == {"t0", "t1"}
    finally:
        assert intruder.stop() == 0


def test_tcp_listen_without_key_is_refused_and_insecure_works(tcp):
    p = free_port()
    env = dict(tcp.env.env)
    env["FLOCK_CONFIG_DIR"] = str(tcp.env.root / "nokey-config")  # no default key file here
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "flock_node.cli_node",
            "run",
            "nk",
            "--listen",
            f"tcp://127.0.0.1:{p}",
            "--state-dir",
            str(tcp.env.root / "nk"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert "needs a flock key" in r.stderr and "--insecure" in r.stderr
    for bad in (
        ["bad name!"],
        ["ok", "--listen", "udp://x:1", "--insecure"],
        ["ok", "--heartbeat", "0"],
        ["ok", "--recipe", "/no/such/file.py"],
    ):
        r = subprocess.run(
            [sys.executable, "-m", "flock_node.cli_node", "run", *bad],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        # Our own checks say "flock-node: ..."; argparse's say "flock-node run: error: ...".
        said = r.stderr.startswith("flock-node:") or "flock-node run: error:" in r.stderr
        assert r.returncode == 2 and said and "Traceback" not in r.stderr, (bad, r.stderr)

    node = tcp.env.start("ins", "--listen", f"tcp://127.0.0.1:{p}", "--insecure")
    try:
        seed = f"tcp://127.0.0.1:{p}"
        r = tcp.env.cli("--seed", seed, "--insecure", "active", "ins")
        assert (r.returncode, r.stdout.strip()) == (0, "false"), r.stderr
        r = tcp.env.cli("--seed", seed, "--insecure", "--json", "status", "ins")
        assert r.returncode == 0 and json.loads(r.stdout)["name"] == "ins"
        # A keyed client is refused by an open node, clearly.
        r = tcp.env.cli("--seed", seed, "--key-file", str(tcp.key), "active", "ins")
        assert r.returncode == 3 and "key" in r.stderr
    finally:
        assert node.stop() == 0


# --- garbage --------------------------------------------------------------------------------


def _signed(key: bytes, sender: str, body: bytes) -> bytes:
    ts, nonce = time.time(), os.urandom(12)
    return msgspec.msgpack.encode(
        Envelope(1, sender, ts, nonce, body, _mac(key, 1, sender, ts, nonce, body))
    )


def test_garbage_changes_nothing(tcp_mesh):
    # The bus part needs heartbeats on the bus (a captured one is replayed): the mesh's wire.
    # SWIM's socket gets its garbage in test_swim_agents.py.
    from flock_node.protocol import load_key

    tcp = tcp_mesh

    key = load_key(tcp.key)
    codec = Codec(key, "tester")
    with tcp.flock() as f:
        members_before = {
            n: (m["state"], m["incarnation"], m["bus"], m["rpc"], m["tags"])
            for n, m in view(f, "t0").items()
        }
        dropped_before = dict(f["t0"].flock_api.status()["dropped_frames"])

    hb_frame = Codec(key, "t1").encode(Heartbeat("t1", 1, 1, "x", "y"))
    unknown_tag = _signed(key, "tester", msgspec.msgpack.encode({"type": "bogus", "x": 1}))
    garbage = [
        b"",
        b"\x00",
        b"\xff" * 64,
        os.urandom(300),
        b"\x96\x01",  # random and short
        hb_frame[: len(hb_frame) // 2],
        hb_frame[:-1],  # truncated
        unknown_tag,  # valid envelope, unknown message type
        Codec(os.urandom(32), "t1").encode(Heartbeat("t1", 1, 1, "x", "y")),  # wrong key
        Codec(None, "t1").encode(Heartbeat("evil", 99, 1, "x", "y")),  # unsigned
    ]

    # The bus: raw Bus0 peers. Capture a real heartbeat of t1 (t0 got it too) to replay it
    # at t0, and send a keyholder's harmless event twice (the second is a replay).
    def dropped_now() -> dict[str, int]:
        with tcp.flock() as f:
            return f["t0"].flock_api.status()["dropped_frames"]

    def grew_by(reason: str, n: int) -> bool:
        return dropped_now().get(reason, 0) - dropped_before.get(reason, 0) >= n

    with pynng.Bus0(recv_timeout=3000) as spy:
        spy.dial(f"tcp://127.0.0.1:{tcp.port1}", block=True)
        captured = spy.recv()
    assert Codec(key, "me").decode(captured)[1].node == "t1"
    event = codec.encode(Event("tester", "noise", time.time()))
    with pynng.Bus0(recv_timeout=3000, send_timeout=1000) as bus:
        bus.dial(tcp.bus0, block=True)
        bus.recv()  # connected both ways
        for g in garbage:
            bus.send(g)
        bus.send(captured)
        bus.send(event)
        bus.send(event)
        # Bus0 is best effort: keep the socket open until t0 has read everything. The
        # captured heartbeat arrives on a second pipe: a `duplicate` (two pipes to one node
        # deliver every frame twice), dropped all the same; the event sent twice on one pipe
        # is a `replay`.
        wait_for(
            lambda: grew_by("malformed", 7) and grew_by("unauthorized", 2)
            and grew_by("replay", 1) and grew_by("duplicate", 1),
            5,
            what="t0 to count the bus garbage",
        )
    with pynng.Bus0(recv_timeout=3000, send_timeout=1000) as bus:
        dropped = []
        # Seen by the callback, not by `bus.pipes`: the dialer reconnects at once, so an
        # empty pipe list may never be observed.
        bus.add_post_pipe_remove_cb(lambda pipe: dropped.append(pipe.id))
        bus.dial(tcp.bus0, block=True)
        bus.send(b"\x00" * (MAX_FRAME + 100))  # > recv_max_size: nng drops the connection
        wait_for(lambda: dropped, 5, what="t0 to drop the oversize sender")

    # The RPC socket: raw Req0 contexts; dropped frames get no answer.
    with pynng.Req0(recv_timeout=150, send_timeout=1000, resend_time=60_000) as req:
        req.dial(tcp.rpc0, block=True)
        for g in garbage[:8]:
            ctx = req.new_context()
            ctx.send(g if g else b"\x00")
            with pytest.raises(pynng.Timeout):
                ctx.recv()
            ctx.close()
        # A valid frame that is not a request: dropped as unexpected.
        ctx = req.new_context()
        ctx.send(codec.encode(Response("x", True)))
        with pytest.raises(pynng.Timeout):
            ctx.recv()
        ctx.close()
        # A wrong key gets a clear refusal, not silence.
        ctx = req.new_context()
        ctx.send(Codec(os.urandom(32), "x").encode(Request("w1", "flock_api", "active")))
        _, ans = Codec(None, "me").decode(ctx.recv())
        assert isinstance(ans, Response) and ans.error.code == "unauthorized"
        ctx.close()
        # The same request frame twice (a replay, or a Req0 re-send): the first call's answer.
        frame = codec.encode(Request(uuid.uuid4().hex, "flock_api", "active"))
        answers = []
        for _ in range(2):
            ctx = req.new_context()
            ctx.send(frame)
            answers.append(ctx.recv())
            ctx.close()
        first, second = (Codec(key, "me").decode(a)[1] for a in answers)
        assert first.result is False and second.result is False
        assert first.call_id == second.call_id
    with pynng.Req0(recv_timeout=150, send_timeout=1000) as req:
        req.dial(tcp.rpc0, block=True)
        ctx = req.new_context()
        ctx.send(b"\x00" * (MAX_FRAME + 100))
        with pytest.raises(pynng.Timeout):
            ctx.recv()
        ctx.close()

    with tcp.flock() as f:
        api = f["t0"].flock_api
        assert api.active() is False
        wait_for(lambda: all(m["state"] == "alive" for m in view(f, "t0").values()), 5)
        members_after = {
            n: (m["state"], m["incarnation"], m["bus"], m["rpc"], m["tags"])
            for n, m in view(f, "t0").items()
        }
        assert members_after == members_before
        dropped = api.status()["dropped_frames"]

    def grew(reason: str) -> int:
        return dropped.get(reason, 0) - dropped_before.get(reason, 0)

    assert grew("malformed") >= 2 * 7, dropped  # bus and rpc
    assert grew("unauthorized") >= 2 + 1, dropped  # bus: wrong key, unsigned; rpc: wrong key
    assert grew("replay") >= 1 and grew("duplicate") >= 1, dropped
    assert grew("unexpected") >= 1, dropped
    clean_log(tcp.env.nodes["t0"].output())
    r = tcp.cli("run-chef", "t0", "--wait", "--timeout", "30")
    assert r.returncode == 0, r.stdout + r.stderr


def test_duplicate_call_id_runs_the_handler_once(tcp):
    """Req0 re-sends the same request after a reconnect: the handler runs once."""
    from flock_node.protocol import load_key

    key = load_key(tcp.key)
    with tcp.flock() as f:
        wait_for(lambda: not f["t1"].flock_api.active(), 10)
        runs_before = len(f["t1"].flock_api.history(100))
    rpc1 = f"tcp://127.0.0.1:{tcp.port1 + 1}"
    frame = Codec(key, "tester").encode(Request(uuid.uuid4().hex, "flock_api", "run_chef"))
    with pynng.Req0(recv_timeout=5000, send_timeout=1000, resend_time=60_000) as req:
        req.dial(rpc1, block=True)
        c1, c2 = req.new_context(), req.new_context()
        c1.send(frame)
        c2.send(frame)
        a1, a2 = c1.recv(), c2.recv()
        c1.close()
        c2.close()
    dec = Codec(key, "me")
    r1, r2 = dec.decode(a1)[1], dec.decode(a2)[1]
    assert r1.ok and r2.ok
    assert r1.result["run_id"] == r2.result["run_id"]
    with tcp.flock() as f:
        api = f["t1"].flock_api
        wait_for(lambda: (api.run(r1.result["run_id"]) or {}).get("status") == "ok", 10)
        assert len(api.history(100)) == runs_before + 1


def test_two_agents_never_share_one_state_database(flock_env):
    """Two agents on one database would each deliver the other's outbox and run the other's
    inbox: exactly once gone. Another name, or the same name in another runtime dir (where
    the name lock does not see it), given the same state dir is refused, naming it."""
    env = flock_env
    first = env.start("one")
    other = env.start("two", "--state-dir", str(first.state_dir), wait=False)
    assert other.proc.wait(20) == 2
    assert f"{first.state_dir}" in other.output() and "in use" in other.output()
    elsewhere = env.root / "run2"
    twin = env.start("one", "--runtime-dir", str(elsewhere), wait=False)
    env.nodes["one"] = first  # the fixture stops the nodes it holds: the live one
    assert twin.proc.wait(20) == 2
    assert "in use" in twin.output()
    with env.flock() as f:
        assert f["one"].flock_api.active() is False  # the first is untouched


def test_a_second_agent_with_the_same_name_is_refused_and_stale_sockets_are_reused(flock_env):
    env = flock_env
    first = env.start("twin")
    second = env.start("twin", wait=False)
    assert second.proc.wait(20) == 2
    assert "a node named 'twin' is already running" in second.output()
    # The first one is untouched and still answers.
    with env.flock() as f:
        assert f["twin"].flock_api.active() is False
        first_life = f["twin"].flock_api.status()["incarnation"]
    # kill -9 leaves its sockets behind; the next start of that name takes them over.
    first.kill9()
    assert (env.runtime_dir / "twin.bus").exists()
    env.start("twin")
    with env.flock() as f:
        assert f["twin"].flock_api.status()["incarnation"] > first_life


def test_private_files_and_refusals(flock_env, tmp_path):
    env = flock_env
    node = env.start("p1")
    db = node.state_dir / "flock.db"
    assert os.stat(node.state_dir).st_mode & 0o777 == 0o700
    assert os.stat(db).st_mode & 0o777 == 0o600
    # Arguments of the wrong shape are the caller's mistake: bad_request, the node lives on.
    with env.flock() as f:
        for method, args in (("outbox", {"status": ["x"]}), ("history", {"limit": 2**63 + 5})):
            with pytest.raises(FlockError) as e:
                f.call("p1", "flock_api", method, args)
            assert e.value.code == "bad_request", e.value
        with pytest.raises(FlockError) as e:
            f.call("p1", "resource_manager", "unsubscribe", {"id": ["x"]})
        assert e.value.code == "bad_request"
        assert f["p1"].flock_api.active() is False
    # A key file others can read is refused, naming the fix.
    key = tmp_path / "k"
    key.write_text(os.urandom(32).hex())
    os.chmod(key, 0o644)
    r = subprocess.run([sys.executable, "-m", "flock_node.cli_node", "run", "p2", "--listen",
                        f"tcp://127.0.0.1:{free_port()}", "--key-file", str(key)],
                       env=env.env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "chmod 600" in r.stderr, r.stderr
    # A runtime dir others can write in is refused instead of being chmod-ed.
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    r = subprocess.run([sys.executable, "-m", "flock_node.cli_node", "run", "p3",
                        "--runtime-dir", str(shared), "--state-dir", str(tmp_path / "s3")],
                       env=env.env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "writable by other users" in r.stderr, r.stderr
    assert os.stat(shared).st_mode & 0o777 == 0o777


def test_one_discovery_rule_for_flock_and_asyncflock(tcp):
    """A seed running with another key must not hide the nodes we can talk to, for the
    Python client, the CLI and the console's AsyncFlock alike (the console failed its poll)."""
    import asyncio

    from flock_node.client import AsyncFlock

    other = tcp.env.root / "other.key"
    assert tcp.env.cli("keygen", str(other)).returncode == 0
    p = free_port()
    node = tcp.env.start("stranger", "--listen", f"tcp://127.0.0.1:{p}", "--key-file", str(other))
    try:
        seeds = [f"tcp://127.0.0.1:{p}", tcp.seed]
        with Flock.connect(seeds=seeds, key_file=str(tcp.key), runtime_dir=tcp.env.runtime_dir) as f:
            assert {"t0", "t1"} <= {m["name"] for m in f.nodes()}
            assert f.refused == [f"tcp://127.0.0.1:{p + 1}"]

        async def console_view() -> set[str]:
            af = await AsyncFlock.connect(seeds=seeds, key_file=str(tcp.key),
                                          runtime_dir=tcp.env.runtime_dir)
            try:
                return {m["name"] for m in await af.nodes()}
            finally:
                af.close()

        assert {"t0", "t1"} <= asyncio.run(console_view())
        # Nobody we can talk to: the refusal is the error, for both.
        with pytest.raises(RpcError) as e:
            Flock.connect(seeds=seeds[:1], key_file=str(tcp.key), runtime_dir=tcp.env.root / "none")
        assert e.value.code == "unauthorized"
    finally:
        node.stop()
