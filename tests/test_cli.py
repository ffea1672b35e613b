"""Three local agents on ipc, driven entirely by the real `flockctl` command and the Python
client. Recipes read a per-node mode file, so one flock serves ok, failing and slow runs."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import pytest
from conftest import FlockEnv, on_a_terminal, wait_for

from flock_node.client import AsyncFlock, Flock, FlockError

NODES = ("b0", "b1", "b2")

RECIPE = """\
from pathlib import Path
from flock_node.dsl import execute, log

mode = Path({ctl!r}).read_text().strip() if Path({ctl!r}).exists() else "ok"
log("hello from {name}")
if mode == "fail":
    execute("boom", command="echo doomed >&2; exit 7")
elif mode.startswith("sleep"):
    execute("slow", command="sleep " + mode.split()[1])
elif mode.startswith("gate"):  # converges until the test creates the gate file
    execute("gated", command="while [ ! -e " + mode.split()[1] + " ]; do sleep 0.05; done")
"""


class Flock3:
    def __init__(self, env: FlockEnv):
        self.env = env

    def mode(self, node: str, mode: str) -> None:
        (self.env.root / f"{node}.mode").write_text(mode)

    def cli(self, *args: str, **kw):
        return self.env.cli(*args, **kw)

    def json(self, *args: str):
        return self.env.json(*args)


@pytest.fixture(scope="module")
def flock3(tmp_path_factory):
    env = FlockEnv(Path(tmp_path_factory.mktemp("c", numbered=True)))
    try:
        env.start_moded(NODES, RECIPE)
        yield Flock3(env)
    finally:
        env.stop_all()


def test_three_agents_see_each_other(flock3):
    with flock3.env.flock() as f:
        for n in NODES:
            view = {m["name"]: m for m in f[n].flock_api.members()}
            assert set(view) == set(NODES)
            assert all(m["state"] == "alive" for m in view.values())
            assert view[n]["incarnation"] >= 1
    for n in NODES:
        assert "up (incarnation" in flock3.env.nodes[n].output()


def test_status_before_any_run_has_null_last_run(flock3):
    st = flock3.json("status", "b0")
    assert st["name"] == "b0"
    assert st["active"] is False
    assert st["last_run"] is None


def test_nodes_text_and_json(flock3):
    r = flock3.cli("nodes")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:4] == ["NAME", "STATE", "HEALTH", "ACTIVITY"]
    assert [ln.split()[0] for ln in lines[1:]] == list(NODES)
    assert all(ln.split()[1] == "alive" for ln in lines[1:])
    nodes = flock3.json("nodes")
    assert isinstance(nodes, list) and [n["name"] for n in nodes] == list(NODES)
    for n in nodes:
        assert {"name", "state", "active", "address", "last_run"} <= set(n)
        assert n["state"] == "alive" and isinstance(n["active"], bool)
        assert n["address"].startswith("ipc://") and n["address"].endswith(f"{n['name']}.rpc")
    # Consoles and CLI calls are observers: they never show up as nodes.
    assert not any(n["name"].startswith("client-") for n in nodes)


def test_run_chef_wait_ok_then_failed(flock3):
    for n in NODES:
        flock3.mode(n, "ok")
    r = flock3.cli("run-chef", "b*", "--wait", "--timeout", "30")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 ok, 0 failed" in r.stdout
    st = flock3.json("status", "b1")
    lr = st["last_run"]
    assert lr["status"] == "ok" and lr["error"] is None and isinstance(lr["updated"], int)
    assert isinstance(lr["id"], str) and lr["id"]

    flock3.mode("b2", "fail")
    try:
        r = flock3.cli("run-chef", "b*", "--wait", "--timeout", "30")
        assert r.returncode == 1, r.stdout + r.stderr
        assert "2 ok, 1 failed" in r.stdout and "b2" in r.stdout
        st = flock3.json("status", "b2")
        assert st["active"] is False
        lr = st["last_run"]
        assert lr["status"] == "failed" and lr["error"]
        r = flock3.cli("active", "b2")
        assert (r.returncode, r.stdout.strip()) == (0, "false")
        r = flock3.cli("--json", "run-chef", "b2", "--wait", "--timeout", "30")
        assert r.returncode == 1
        assert json.loads(r.stdout)["runs"]["b2"]["status"] == "failed"
        hist = flock3.json("history", "b2")
        assert hist[0]["status"] == "failed"
        assert any(x["result"] == "failed" for x in hist[0]["resources"])
    finally:
        flock3.mode("b2", "ok")
    # Without --wait: returns at once with run ids.
    runs = flock3.json("run-chef", "b[01]")
    assert set(runs["runs"]) == {"b0", "b1"} and runs["errors"] == {}
    r = flock3.cli("wait-until", "b*", "idle", "--timeout", "30")
    assert r.returncode == 0, r.stderr


def test_active_wait_while_and_wait_until(flock3):
    gate = flock3.env.root / "b0.gate"
    gate.unlink(missing_ok=True)
    flock3.mode("b0", f"gate {gate}")
    try:
        r = flock3.cli("run-chef", "b0")
        assert r.returncode == 0 and "started" in r.stdout
        wait_for(
            lambda: flock3.cli("active", "b0").stdout.strip() == "true",
            5,
            what="`flockctl active b0` to print true",
        )
        assert flock3.json("active", "b0") is True
        st = flock3.json("status", "b0")
        assert st["active"] is True and st["current_run"]["id"]
        r = flock3.cli("wait-while", "b0", "active", "--timeout", "1")
        assert r.returncode == 1 and "timed out" in r.stderr  # still converging: the gate holds
        gate.touch()
        r = flock3.cli("wait-while", "b0", "active", "--timeout", "15")
        assert r.returncode == 0, r.stderr
        r = flock3.cli("active", "b0")
        assert (r.returncode, r.stdout.strip()) == (0, "false")
        r = flock3.cli("wait-until", "b0", "idle", "--timeout", "5")
        assert r.returncode == 0 and "done" in r.stdout
        r = flock3.cli("wait-until", "b*", "alive", "--timeout", "5")
        assert r.returncode == 0, r.stderr
    finally:
        gate.touch()
        flock3.mode("b0", "ok")


def test_wait_timeout_is_exit_1_with_message(flock3):
    r = flock3.cli("wait-until", "b0", "active", "--timeout", "1")
    assert r.returncode == 1
    assert "timed out after 1s" in r.stderr and "b0" in r.stderr
    r = flock3.cli("wait-while", "b1", "alive", "--timeout", "0.5")
    assert r.returncode == 1 and "timed out" in r.stderr


def test_history(flock3):
    flock3.cli("run-chef", "b1", "--wait", "--timeout", "30")
    r = flock3.cli("history", "b1")
    assert r.returncode == 0, r.stderr
    assert "converge" in r.stdout and "ok" in r.stdout
    assert "log[hello from b1]" in r.stdout
    hist = flock3.json("history", "b1", "--limit", "1")
    assert len(hist) == 1 and hist[0]["kind"] == "converge"


def test_unknown_node_is_exit_3(flock3):
    for args in (
        ("active", "nope"),
        ("status", "nope"),
        ("history", "nope"),
        ("run-chef", "nope"),
        ("run-chef", "zz*"),
    ):
        r = flock3.cli(*args, timeout=20)
        assert r.returncode == 3, (args, r.stdout, r.stderr)
        assert r.stderr.startswith("flockctl: ")
        assert args[1] in r.stderr


def test_usage_error_is_exit_2(flock3):
    for args in (
        ("bogus",),
        ("status",),
        ("wait-until", "b0", "sleepy"),
        ("--key-file", "x", "--insecure", "nodes"),
        ("history", "b0", "--limit", "x"),
        ("history", "b0", "--limit", "-5"),
        ("outbox", "b0", "--limit", "0"),
    ):
        r = flock3.cli(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "usage:" in r.stderr
        if "--limit" in args:
            assert "argument --limit" in r.stderr


def test_keygen_mode_0600_and_no_overwrite(flock3, tmp_path):
    k = tmp_path / "k" / "flock.key"
    r = flock3.cli("keygen", str(k))
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(k.stat().st_mode) == 0o600
    first = k.read_text()
    assert len(bytes.fromhex(first.strip())) == 32
    r = flock3.cli("keygen", str(k))
    assert r.returncode == 1 and "already exists" in r.stderr
    assert k.read_text() == first
    r = flock3.cli("keygen", str(k), "--force")
    assert r.returncode == 0 and k.read_text() != first
    # No FILE: the default key file in the config dir.
    r = flock3.cli("--json", "keygen")
    assert r.returncode == 0, r.stderr
    default = Path(json.loads(r.stdout)["key_file"])
    assert default.parent == flock3.env.config_dir
    assert stat.S_IMODE(default.stat().st_mode) == 0o600
    default.unlink()  # the other tests' ipc flock is unkeyed


def test_run_chef_while_active_is_queued_and_joined(flock3):
    flock3.mode("b1", "sleep 1.5")
    try:
        with flock3.env.flock() as f:
            api = f["b1"].flock_api
            first = api.run_chef()
            assert first["queued"] is False
            assert api.active() is True  # from the moment run_chef returns
            wait_for(lambda: (api.status()["current_run"] or {}).get("id") == first["run_id"],
                     5, what="b1 to start converging")
            second = api.run_chef()
            assert second["queued"] is True and second["joined"] is False
            third = api.run_chef()
            fourth = f.call("b1", "flock_api", "run_chef")
            assert third["run_id"] == fourth["run_id"] == second["run_id"]
            assert third["joined"] is True and third["run_id"] != first["run_id"]
            st = api.status()
            assert st["current_run"]["id"] == first["run_id"]
            assert st["queued"] == [second["run_id"]]
            wait_for(
                lambda: (api.run(second["run_id"]) or {}).get("status") == "ok",
                15,
                what="the queued run to finish",
            )
            assert api.run(first["run_id"])["status"] == "ok"
            ids = [h["id"] for h in api.history(5)]
            assert ids.index(second["run_id"]) < ids.index(first["run_id"])
            assert api.active() is False
    finally:
        flock3.mode("b1", "ok")


def test_python_client(flock3):
    rt = flock3.env.runtime_dir
    with Flock.connect(runtime_dir=rt) as f:
        assert [n["name"] for n in f.nodes()] == list(NODES)
        assert f.match("b[12]") == ["b1", "b2"]
        assert f["b0"].flock_api.active() is False
        assert f["b0"].flock_api.status()["name"] == "b0"
        assert isinstance(f["b0"].flock_api.history(2), list)
        assert repr(f["b2"]) == "<flock node b2>"
        with pytest.raises(FlockError) as ei:
            f["nope"].flock_api.active()
        assert ei.value.code == "unknown_node"
        with pytest.raises(FlockError) as ei:
            f["b0"].flock_api.no_such_method()
        assert ei.value.code == "unknown_method"
        with pytest.raises(FlockError) as ei:
            f["b0"].flock_api.history(limit="ten")
        assert ei.value.code == "bad_request"
        rid = f["b2"].flock_api.run_chef()["run_id"]
        wait_for(lambda: (f["b2"].flock_api.run(rid) or {}).get("status") == "ok", 15)


def test_async_client(flock3):
    rt = flock3.env.runtime_dir

    async def main():
        async with await AsyncFlock.connect(runtime_dir=rt) as f:
            names = [n["name"] for n in await f.nodes()]
            actives = await asyncio.gather(*(f[n].flock_api.active() for n in NODES))
            st = await f["b1"].flock_api.status()
            hist = await f["b1"].flock_api.history(limit=1)
            try:
                await f["nope"].flock_api.active()
            except FlockError as e:
                err = e.code
            return names, actives, st, hist, err

    names, actives, st, hist, err = asyncio.run(main())
    assert names == list(NODES)
    assert actives == [False, False, False]
    assert st["name"] == "b1" and len(hist) <= 1
    assert err == "unknown_node"


def test_env_runtime_dir_is_private(flock3):
    rt = flock3.env.runtime_dir
    assert stat.S_IMODE(rt.stat().st_mode) == 0o700
    for n in NODES:
        for suffix in (".bus", ".rpc"):
            assert stat.S_IMODE(os.stat(rt / (n + suffix)).st_mode) == 0o600


def test_run_chef_wait_on_a_terminal_redraws_live_progress(flock3):
    """On a terminal, `run-chef --wait` redraws one line per node in place (ANSI), showing
    which node converges and which finished, then a summary; piped, it prints plain lines."""
    for n in NODES:
        flock3.mode(n, "sleep 0.6")
    try:
        code, screen = on_a_terminal(["run-chef", "b*", "--wait"], flock3.env.env)
        assert code == 0
        assert "\x1b[2K" in screen and "\x1b[3F" in screen  # lines redrawn in place
        assert "converging" in screen
        assert "3 ok, 0 failed, 0 unreachable (3 nodes)" in screen
        for n in NODES:
            assert f"{n}: ok in" in screen
    finally:
        for n in NODES:
            flock3.mode(n, "ok")
    piped = flock3.cli("run-chef", "b*", "--wait")
    assert piped.returncode == 0 and "\x1b" not in piped.stdout
    assert sorted(line.split(":")[0] for line in piped.stdout.splitlines()
                  if ": ok in" in line) == list(NODES)


def test_tag_targets_and_flags_after_the_command(flock_env):
    env = flock_env
    env.start("w1", "--tag", "web")
    env.start("w2", "--tag", "web")
    env.start("d1", "--tag", "db")
    with env.flock() as f:
        wait_for(lambda: len([m for m in f["w1"].flock_api.members()
                              if m["state"] == "alive"]) == 3, 10, what="the mesh")
    r = env.cli("run-chef", "tag:web", "--wait", "--json")  # global flag after the command
    assert r.returncode == 0, r.stderr
    assert sorted(json.loads(r.stdout)["runs"]) == ["w1", "w2"]
    w = env.cli("wait-until", "tag:web", "idle", "--timeout", "10")
    assert w.returncode == 0, w.stderr
    none = env.cli("run-chef", "tag:nope", "--json")
    assert none.returncode == 3 and json.loads(none.stdout)["exit_code"] == 3
