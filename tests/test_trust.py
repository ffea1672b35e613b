"""Issue 10: per-node identity. A flock CA, mutual TLS on tls+tcp, the verified name as the
sender, roles and the policy file, the audit trail, revocation. Real agents on loopback.

The CA and certificates are made in-process (flock_node.trust.ca), the agents are real
`flock-node` subprocesses, and the operators are the real `flockctl` or raw pynng sockets
holding a certificate.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import pynng
import pytest
from conftest import FlockEnv, free_port, wait_for, write_recipe
from debian import ensure_tool

from flock_node.client import AsyncFlock, Flock
from flock_node.protocol import Codec, Heartbeat, Leave
from flock_node.transport import Bus, RpcError, SyncRpc
from flock_node.trust import ca, policy
from flock_node.trust.identity import Caller
from flock_node.trust.tls import load_identity

HB = 0.2


class Tls:
    """A CA and certificates for a test flock."""

    def __init__(self, env: FlockEnv):
        self.env = env
        self.ca_dir = env.config_dir / "ca"
        ca.init(self.ca_dir)
        self.dirs: dict[str, Path] = {}
        self.ports: dict[str, int] = {}

    def issue(self, name: str, role: str = "node", **kw) -> Path:
        out = self.env.root / "certs" / name
        ca.issue(self.ca_dir, name, role, out, **kw)
        self.dirs[name] = out
        return out

    def start(self, name: str, *args: str, recipe: str | None = None, seed: str | None = None,
              wait: bool = True):
        if name not in self.dirs:
            self.issue(name)
        port = self.ports.setdefault(name, free_port())
        flags = ["--listen", f"tls+tcp://127.0.0.1:{port}", "--tls-dir", str(self.dirs[name])]
        if seed:
            flags += ["--seed", self.bus(seed)]
        recipes = []
        if recipe is not None:
            recipes = [write_recipe(self.env.root / f"{name}.py", textwrap.dedent(recipe))]
        return self.env.start(name, *flags, *args, recipes=recipes, heartbeat=HB, wait=wait)

    def bus(self, node: str) -> str:
        return f"tls+tcp://127.0.0.1:{self.ports[node]}"

    def rpc(self, node: str) -> str:
        return f"tls+tcp://127.0.0.1:{self.ports[node] + 1}"

    def cli(self, who: str, *args: str, seed: str = "a", timeout: float = 30.0):
        return self.env.cli("--seed", self.bus(seed), "--tls-dir", str(self.dirs[who]),
                            "--connect-timeout", "2", *args, timeout=timeout)

    def flock(self, who: str, seed: str = "a", timeout: float = 2.0) -> Flock:
        return Flock.connect(seeds=[self.bus(seed)], runtime_dir=self.env.runtime_dir,
                             tls_dir=self.dirs[who], timeout=timeout)

    def raw(self, who: str, sender: str, timeout: float = 1.0) -> SyncRpc:
        """A client holding `who`'s certificate that writes `sender` on its frames."""
        return SyncRpc(Codec(None, sender), timeout=timeout, tls=load_identity(self.dirs[who]))


@pytest.fixture
def tls(flock_env) -> Tls:
    return Tls(flock_env)


RESTART = """
    from flock_node.dsl import execute
    execute("restart db", command="echo restarted >> {out}", action="nothing")
"""


# --- the CA -------------------------------------------------------------------------------


def test_ca_commands_make_a_ready_tls_dir_and_say_what_is_wrong(flock_env):
    env = flock_env
    r = env.cli("ca", "issue", "a", "--role", "node")
    assert r.returncode == 1 and "no CA in" in r.stderr and "ca init" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert env.cli("ca", "init").returncode == 0
    ca_dir = env.config_dir / "ca"
    assert (ca_dir / "ca.key").stat().st_mode & 0o777 == 0o600
    out = env.root / "a-tls"
    r = env.cli("ca", "issue", "a", "--role", "node", "--out", str(out), "--days", "30")
    assert r.returncode == 0, r.stderr
    assert {p.name for p in out.iterdir()} == {"ca.crt", "identity.crt", "identity.key"}
    assert (out / "identity.key").stat().st_mode & 0o777 == 0o600
    ident = load_identity(out)
    assert ident.me == Caller("node", "a") and ident.me.cn == "node:a"
    r = env.cli("ca", "issue", "a", "--role", "operator", "--out", str(env.root / "x"))
    assert r.returncode == 1 and "taken" in r.stderr, r.stderr
    r = env.cli("ca", "issue", "b", "--role", "admin")
    assert r.returncode == 2 and "invalid choice" in r.stderr
    r = env.cli("ca", "issue", "x:y", "--role", "operator", "--out", str(env.root / "y"))
    assert r.returncode == 2 and "':'" in r.stderr  # a name no certificate can carry: usage
    assert env.cli("ca", "init").returncode == 1
    r = env.cli("ca", "revoke", "a")
    assert r.returncode == 0, r.stderr
    rows = json.loads(env.cli("--json", "ca", "list").stdout)
    assert [(x["name"], x["role"], x["state"]) for x in rows] == [("a", "node", "revoked")]


# --- policy (pure) --------------------------------------------------------------------------


def test_role_defaults_and_a_policy_file_per_glob_and_call(tmp_path):
    node, op, obs = Caller("node", "web-1"), Caller("operator", "operator:al"), Caller(
        "observer", "observer:bob")
    d = policy.DEFAULT
    assert d.decide(op, "db-1", "flock_api", "retry").allowed
    assert d.decide(obs, "db-1", "flock_api", "status").allowed
    assert not d.decide(obs, "db-1", "flock_api", "run_chef").allowed
    assert d.decide(node, "db-1", "flock_api", "run_chef").allowed
    assert not d.decide(node, "db-1", "flock_api", "retry").allowed
    f = tmp_path / "policy.toml"
    f.write_text(textwrap.dedent("""
        # only web-* may restart things on db-*
        [[rule]]
        name = "web restarts db"
        effect = "allow"
        who = "web-*"
        call = "notify"
        on = "db-*"
        resource = "execute[restart*]"

        [[rule]]
        name = "nobody else restarts db"
        effect = "deny"
        call = "resource_manager.notify"
        on = "db-*"
        resource = "execute[restart*]"
    """))
    p = policy.load(f)
    assert p.decide(node, "db-1", "resource_manager", "notify", "execute[restart db]").allowed
    no = p.decide(Caller("node", "app-1"), "db-1", "resource_manager", "notify",
                  "execute[restart db]")
    assert not no.allowed and "nobody else restarts db" in no.why and "line 11" in no.why
    assert p.decide(Caller("node", "app-1"), "db-1", "resource_manager", "notify",
                    "file[/x]").allowed
    f.write_text('[[rule]]\neffect = "allow"\n\n[[rule]]\neffect = "maybe"\n')
    with pytest.raises(policy.PolicyError, match=r"line 4 \(rule 2\)"):
        policy.load(f)
    f.write_text('[[rule]]\neffect = "allow"\nwho = \n')
    with pytest.raises(policy.PolicyError, match="line 3"):
        policy.load(f)


# --- mutual TLS -----------------------------------------------------------------------------


def test_a_node_refuses_to_start_with_a_certificate_not_its_own(tls):
    tls.issue("a")
    tls.issue("alice", "operator")
    port = free_port()
    for cert, words in (("a", "not 'b'"), ("alice", "not a node's")):
        n = tls.env.start("b", "--listen", f"tls+tcp://127.0.0.1:{port}", "--tls-dir",
                          str(tls.dirs[cert]), wait=False)
        assert n.proc.wait(15) == 2
        assert words in n.output() and "Traceback" not in n.output(), n.output()
    bad = tls.env.root / "policy.toml"
    bad.write_text('[[rule]]\neffect = "allow"\nwho = "web-*"\n\n[[rule]]\nefect = "deny"\n')
    n = tls.env.start("a", "--listen", f"tls+tcp://127.0.0.1:{port}", "--tls-dir",
                      str(tls.dirs["a"]), "--policy", str(bad), wait=False)
    assert n.proc.wait(15) == 2
    assert "line 5 (rule 2)" in n.output() and "efect" in n.output(), n.output()


def test_a_policy_file_narrows_a_node_per_glob_and_resource(tls):
    out = tls.env.root / "restarted"
    rules = tls.env.root / "policy.toml"
    rules.write_text(textwrap.dedent("""
        [[rule]]
        name = "web restarts db"
        effect = "allow"
        who = "web-*"
        call = "notify"
        resource = "execute[restart*]"

        [[rule]]
        name = "only web restarts db"
        effect = "deny"
        call = "notify*"
        resource = "execute[restart*]"
    """))
    tls.start("db-1", "--policy", str(rules), recipe=RESTART.format(out=out))
    tls.issue("web-1")
    tls.issue("app-1")
    args = {"resource": "execute[restart db]", "action": "run"}
    with pytest.raises(RpcError) as ei:
        tls.raw("app-1", "app-1").call(tls.rpc("db-1"), "resource_manager", "notify", args)
    assert ei.value.code == "unauthorized" and "'only web restarts db'" in ei.value.message
    assert "line 9" in ei.value.message
    # In a batch (how the outbox delivers), the refused one is answered in its place.
    [ans] = tls.raw("app-1", "app-1").call(tls.rpc("db-1"), "resource_manager",
                                           "notify_batch", {"items": [{**args, "id": "n1"}]})
    assert ans["error"]["code"] == "unauthorized"
    tls.raw("web-1", "web-1").call(tls.rpc("db-1"), "resource_manager", "notify", args)
    wait_for(lambda: out.exists(), what="web-1's restart to run")


def test_other_ca_expired_revoked_and_no_certificate_are_refused(tls, tmp_path):
    tls.start("a")
    tls.issue("alice", "operator")
    with tls.flock("alice") as f:
        assert f["a"].flock_api.active() is False
    # A certificate from another CA.
    other = Tls(FlockEnv(tmp_path / "other"))
    other.issue("mallory", "operator")
    tls.dirs["mallory"] = other.dirs["mallory"]
    r = tls.cli("mallory", "active", "a")
    assert r.returncode == 4 and "Traceback" not in r.stderr, r.stderr  # refused, not unreachable
    # An expired one, from our CA.
    tls.issue("old", "operator", days=1,
              not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=3))
    with pytest.raises(RpcError) as ei:
        tls.raw("old", "operator:old").call(tls.rpc("a"), "flock_api", "active")
    assert ei.value.code == "unreachable"
    # No certificate: plain TCP to the TLS port gets nothing, nor does TLS without one.
    with pytest.raises(RpcError):
        SyncRpc(Codec(None, "x"), timeout=1.0).call(f"tcp://127.0.0.1:{tls.ports['a'] + 1}",
                                                    "flock_api", "active")
    anon = pynng.TLSConfig(pynng.TLSConfig.MODE_CLIENT, server_name="node.flock",
                           ca_string=(tls.dirs["a"] / "ca.crt").read_text(),
                           auth_mode=pynng.TLSConfig.AUTH_MODE_REQUIRED)
    with pynng.Req0(recv_timeout=1000, send_timeout=1000, tls_config=anon) as s:
        s.dial(tls.rpc("a"), block=False)
        time.sleep(0.5)
        assert not s.pipes
    # Revoked: pushed by `flockctl ca revoke`, refused from then on.
    tls.issue("bob", "observer")
    assert tls.cli("bob", "active", "a").returncode == 0
    r = tls.env.cli("--seed", tls.bus("a"), "--tls-dir", str(tls.dirs["alice"]), "ca",
                    "revoke", "bob")
    assert r.returncode == 0 and "pushed to 1 node(s): a" in r.stdout, r.stdout + r.stderr
    r = tls.cli("bob", "active", "a")
    assert r.returncode == 4 and "refused our certificate" in r.stderr, r.stdout + r.stderr


def test_observer_run_chef_exits_4_and_is_audited(tls):
    tls.start("a")
    tls.issue("bob", "observer")
    tls.issue("alice", "operator")
    r = tls.cli("bob", "run-chef", "a")
    assert r.returncode == 4, r.stdout + r.stderr
    assert "observer:bob (observer) may not call run_chef" in r.stdout + r.stderr, r.stderr
    assert tls.cli("bob", "status", "a").returncode == 0  # reads are fine
    assert asyncio.run(_async_nodes(tls, "bob")) == ["a"]  # AsyncFlock on TLS too
    assert tls.cli("alice", "run-chef", "a").returncode == 0
    rows = json.loads(tls.cli("bob", "--json", "audit", "a").stdout)
    got = [(x["caller"], x["role"], x["call"], x["outcome"]) for x in rows]
    assert ("observer:bob", "observer", "flock_api.run_chef", "refused") in got
    assert ("operator:alice", "operator", "flock_api.run_chef", "ok") in got
    assert all(x["verified"] for x in rows)


def test_a_node_speaks_only_for_itself(tls):
    out = tls.env.root / "restarted"
    tls.start("a", recipe=RESTART.format(out=out))
    tls.start("b", seed="a")
    tls.start("c", seed="a")
    with tls.flock("a") as f:
        wait_for(lambda: {m["name"]: m["state"] for m in f["a"].flock_api.members()}
                 .get("c") == "alive", what="c alive on a")
        before = f["a"].flock_api.status()["dropped_frames"]
    # b's certificate, frames in a's name: dropped and counted, never answered.
    with pytest.raises(RpcError) as ei:
        tls.raw("b", "c").call(tls.rpc("a"), "flock_api", "run_chef")
    assert ei.value.code == "timeout"
    # b in its own name, but notifying as c: refused; as itself: accepted, and the history
    # names the verified sender whatever the cause claims.
    b = tls.raw("b", "b", timeout=3.0)
    with pytest.raises(RpcError) as ei:
        b.call(tls.rpc("a"), "resource_manager", "notify",
               {"resource": "execute[restart db]", "action": "run", "sender": "c"})
    assert ei.value.code == "unauthorized" and "in the name of 'c'" in ei.value.message
    b.call(tls.rpc("a"), "resource_manager", "notify",
           {"resource": "execute[restart db]", "action": "run"})
    with tls.flock("a") as f:
        wait_for(lambda: any(h.get("cause") for h in f["a"].flock_api.history()),
                 what="the reaction on a")
        cause = next(h["cause"] for h in f["a"].flock_api.history() if h.get("cause"))
        assert cause["node"] == "b"
        # subscriptions in another node's name are refused too
        with pytest.raises(RpcError) as ei:
            b.call(tls.rpc("a"), "resource_manager", "subscribe",
                   {"resource": "execute[restart db]", "subscriber": "c",
                    "subscriber_resource": "x", "action": "run"})
        assert ei.value.code == "unauthorized"
    # Forged heartbeats and leaves for c over b's bus connection change nothing.
    _forge_on_bus(tls, "b", [("c", Leave("c", 1)), ("b", Leave("c", 1)),
                             ("c", Heartbeat("c", 1, 99, "tls+tcp://127.0.0.1:9", "x"))])
    with tls.flock("a") as f:
        after = f["a"].flock_api.status()["dropped_frames"]
        members = {m["name"]: m for m in f["a"].flock_api.members()}
    assert members["c"]["state"] == "alive" and members["c"]["address"] == tls.rpc("c")
    assert after.get("sender_mismatch", 0) >= before.get("sender_mismatch", 0) + 3, after
    assert after.get("impersonation", 0) >= before.get("impersonation", 0) + 1, after
    tls.env.stop_all()


async def _async_nodes(tls: Tls, who: str) -> list[str]:
    async with await AsyncFlock.connect(seeds=[tls.bus("a")], tls_dir=tls.dirs[who],
                                        runtime_dir=tls.env.runtime_dir, timeout=2.0) as f:
        return [n["name"] for n in await f.nodes()]


def _forge_on_bus(tls: Tls, cert: str, frames: list) -> None:
    async def go() -> None:
        codecs = {}
        bus = Bus(Codec(None, "?"), lambda *a: None, tls=load_identity(tls.dirs[cert]))
        bus.start()
        bus.dial(tls.bus("a"))
        deadline = time.monotonic() + 5
        while not bus.sock.pipes and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for sender, msg in frames:
            codecs.setdefault(sender, Codec(None, sender))
            bus.codec = codecs[sender]
            bus.send(msg)
        await asyncio.sleep(3 * HB)
        await bus.close()

    asyncio.run(go())


@pytest.mark.parametrize("membership", ["mesh", "swim"])
def test_revocation_spreads_between_nodes_and_closes_connections(tls, membership):
    tls.env.env["FLOCK_MEMBERSHIP"] = membership
    tls.start("a")
    tls.start("b", seed="a")
    tls.issue("alice", "operator")
    tls.issue("eve", "operator")
    eve = tls.raw("eve", "operator:eve", timeout=1.0)
    assert eve.call(tls.rpc("b"), "flock_api", "active") is False  # connected
    blob = ca.revoke(tls.ca_dir, "eve")
    with tls.flock("alice") as f:
        assert f.call("a", "trust", "install_crl", {"list": blob})["installed"]
        # b is told only by a's heartbeats; within 5 s it refuses eve everywhere.
        t0 = time.monotonic()
        wait_for(lambda: f.call("b", "trust", "crl")["version"] == 1, timeout=5.0,
                 what="b to fetch the revocation list from a")
    with pytest.raises(RpcError):
        eve.call(tls.rpc("b"), "flock_api", "active")
    assert time.monotonic() - t0 < 5.0
    # Persisted: a restarted b still refuses eve.
    tls.env.nodes["b"].stop()
    tls.start("b", seed="a")
    with pytest.raises(RpcError):
        tls.raw("eve", "operator:eve").call(tls.rpc("b"), "flock_api", "active")
    # A list not signed by our CA is refused.
    other = ca.init(tls.env.root / "ca2")
    ca.issue(other, "x", "node", tls.env.root / "x2")
    forged = ca.revoke(other, "x")
    with tls.flock("alice") as f, pytest.raises(RpcError) as ei:
        f.call("a", "trust", "install_crl", {"list": forged})
    assert ei.value.code == "bad_request" and "CA" in ei.value.message


# --- on the wire ----------------------------------------------------------------------------


def _capture_start(port: int, path: Path) -> subprocess.Popen | None:
    if ensure_tool("tcpdump") is None:
        return None
    p = subprocess.Popen(["tcpdump", "-i", "lo", "-U", "--immediate-mode", "-w", str(path),
                          f"tcp port {port} or tcp port {port + 1}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert p.stderr is not None
    line = p.stderr.readline()  # "listening on lo, ...": capturing from here on
    assert "listening" in line, line
    return p


def _proxy(listen: int, target: int, seen: list[bytes]) -> socket.socket:
    """A TCP proxy that keeps every byte crossing it (if tcpdump cannot run here)."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", listen))
    srv.listen()

    def pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                seen.append(data)
                b.sendall(data)
        except OSError:
            pass

    def accept() -> None:
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            u = socket.create_connection(("127.0.0.1", target))
            threading.Thread(target=pump, args=(c, u), daemon=True).start()
            threading.Thread(target=pump, args=(u, c), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return srv


def test_a_capture_of_the_traffic_holds_no_resource_name(tls):
    out = tls.env.root / "restarted"
    secret = "execute[restart db]"
    tls.start("a", recipe=RESTART.format(out=out))
    tls.issue("alice", "operator")
    pcap = tls.env.root / "lo.pcap"
    cap = _capture_start(tls.ports["a"], pcap)
    seen: list[bytes] = []
    addr = tls.rpc("a")
    srv = None
    if cap is None:  # no tcpdump: every byte through a proxy instead
        port = free_port()
        srv = _proxy(port, tls.ports["a"] + 1, seen)
        addr = f"tls+tcp://127.0.0.1:{port}"
    rpc = tls.raw("alice", "operator:alice", timeout=3.0)
    rpc.call(addr, "resource_manager", "notify", {"resource": secret, "action": "run"})
    names = [r["id"] for r in rpc.call(addr, "resource_manager", "resources")]
    assert secret in names
    wait_for(lambda: out.exists(), what="the notification to run")
    rpc.close()
    if cap is not None:
        time.sleep(0.3)
        cap.terminate()
        cap.communicate(timeout=5)
        data = pcap.read_bytes()
    else:
        assert srv is not None
        srv.close()
        data = b"".join(seen)
    assert len(data) > 1000, len(data)  # the handshake and the calls were captured
    for word in (b"restart db", b"resource_manager", b"notify", b"restarted"):
        assert word not in data, word


# --- names are unique (shared-key mode) ------------------------------------------------------


@pytest.mark.parametrize("membership", ["mesh", "swim"])
def test_two_agents_claiming_one_name_both_show_the_clash(flock_env, membership):
    from flock_node.protocol import generate_key_file

    env = flock_env
    env.env["FLOCK_MEMBERSHIP"] = membership
    key = generate_key_file(env.root / "flock.key")
    p1, p2 = free_port(), free_port()
    first = env.start("dup", "--listen", f"tcp://127.0.0.1:{p1}", "--key-file", key,
                      heartbeat=HB)
    # Another machine: its own state directory (one agent per state directory).
    env.start("dup", "--listen", f"tcp://127.0.0.1:{p2}", "--key-file", key,
              "--seed", f"tcp://127.0.0.1:{p1}",
              "--state-dir", str(env.root / "state" / "dup-elsewhere"), heartbeat=HB)
    second = env.nodes["dup"]  # the fixture stops only this one: the first one is ours
    try:
        for port in (p1, p2):
            def shown(port: int = port) -> bool:
                r = env.cli("--seed", f"tcp://127.0.0.1:{port}", "--key-file", key,
                            "status", "dup")
                return "name clash:  dup: another process at" in r.stdout
            wait_for(shown, 10, interval=0.2, what=f"the clash in status on port {port}")
        for n in (first, second):
            assert "name clash for dup" in n.output()
    finally:
        first.stop()


@pytest.mark.parametrize("membership", ["mesh", "swim"])
def test_notifications_and_subscriptions_flow_between_tls_nodes(tls, membership):
    tls.env.env["FLOCK_MEMBERSHIP"] = membership
    hits, subs = tls.env.root / "hits", tls.env.root / "subs"
    tls.start("b", recipe=f"""
        from flock_node.dsl import execute
        execute("hit", command="echo hit >> {hits}", action="nothing")
        execute("sub", command="echo sub >> {subs}", action="nothing").remote_subscribes(
            "run", "file[{tls.env.root}/x]", node="a")
    """)
    tls.start("a", seed="b", recipe=f"""
        from flock_node.dsl import file
        file("{tls.env.root}/x", content="1").remote_notifies("run", "execute[hit]", node="b")
    """)
    tls.issue("alice", "operator")
    with tls.flock("alice", seed="b") as f:
        wait_for(lambda: any(s["state"] == "registered"
                             for s in f["b"].resource_manager.subscriptions()["outgoing"]),
                 15, what="b's subscription registered on a")
        f["a"].flock_api.run_chef()
        wait_for(lambda: hits.exists() and subs.exists(), 15, what="both reactions on b")
        causes = [h["cause"] for h in f["b"].flock_api.history() if h.get("cause")]
        assert {c["node"] for c in causes} == {"a"}
        on_b = f.call("b", "trust", "audit", {"limit": 20})
        on_a = f.call("a", "trust", "audit", {"limit": 20})
    assert any(r["caller"] == "a" and r["role"] == "node" and r["outcome"] == "ok"
               and r["call"].startswith("resource_manager.notify") for r in on_b), on_b
    assert any(r["caller"] == "b" and r["call"] == "resource_manager.subscribe"
               and r["outcome"] == "ok" for r in on_a), on_a


def test_a_client_drops_an_answer_from_another_node_than_the_one_it_asked(tls):
    """Every node's certificate passes the handshake: an address pointing at b (a stale or
    forged member entry) must not answer in a's name."""
    tls.start("a")
    tls.start("b", seed="a")
    tls.issue("alice", "operator")
    rpc = tls.raw("alice", "operator:alice")
    try:
        assert rpc.call(tls.rpc("b"), "flock_api", "active", expect="b") is False
        with pytest.raises(RpcError) as e:
            rpc.call(tls.rpc("b"), "flock_api", "active", expect="a")
        assert e.value.code == "wrong_node" and "answered as node:b, not as node a" in str(e.value)
    finally:
        rpc.close()
