"""flockctl's messages and exit codes as an operator meets them (an audit's findings): what a
run-chef answer was, refusals told from unreachable nodes, local setup errors as usage errors,
one node prefix per line, the node asked named. Real agents and the real `flockctl`."""

from __future__ import annotations

import json
import signal

import pytest
from conftest import free_port, wait_for, write_recipe
from test_trust import Tls

from flock_node import cli_node


@pytest.fixture
def tls(flock_env) -> Tls:
    return Tls(flock_env)


SLOW = """\
from flock_node.dsl import execute
execute("slow", command="sleep 2")
"""


def test_run_chef_says_started_queued_and_joined_in_text_and_json(flock_env):
    recipe = write_recipe(flock_env.root / "slow.py", SLOW)
    flock_env.start("a", recipes=[recipe])
    r = flock_env.cli("--json", "run-chef", "a")
    assert r.returncode == 0, r.stderr
    first = json.loads(r.stdout)
    assert first["states"] == {"a": "started"} and "a" in first["runs"]
    with flock_env.flock() as f:
        wait_for(lambda: (f["a"].flock_api.status()["current_run"] or {}).get("id")
                 == first["runs"]["a"], 5, what="a to start converging")
    r2 = flock_env.cli("run-chef", "a")
    r3 = flock_env.cli("run-chef", "a")
    assert r2.returncode == r3.returncode == 0, r2.stderr + r3.stderr
    assert "queued" in r2.stdout and "started" not in r2.stdout, r2.stdout
    second = r2.stdout.split("run ")[1].split()[0]
    assert r3.stdout.strip() == f"a: joined (run {second}, already queued)", r3.stdout
    third = json.loads(flock_env.cli("--json", "run-chef", "a").stdout)
    assert third == {"runs": {"a": second}, "states": {"a": "joined"}, "errors": {}}


def test_a_revoked_or_foreign_certificate_is_refused_exit_4(tls, tmp_path):
    tls.start("a")
    tls.issue("alice", "operator")
    tls.issue("bob", "observer")
    r = tls.env.cli("--seed", tls.bus("a"), "--tls-dir", str(tls.dirs["alice"]), "ca",
                    "revoke", "bob")
    assert r.returncode == 0, r.stderr
    r = tls.cli("bob", "active", "a")
    assert r.returncode == 4, r.stdout + r.stderr
    assert "refused our certificate" in r.stderr and "could not be reached" not in r.stderr
    assert "observer:bob" in r.stderr, r.stderr
    from conftest import FlockEnv

    other = Tls(FlockEnv(tmp_path / "other"))
    tls.dirs["mallory"] = other.issue("mallory", "operator")
    r = tls.cli("mallory", "status", "a")
    assert r.returncode == 4 and "refused our certificate" in r.stderr, r.stderr
    # Nobody listening: still unreachable (3).
    r = tls.env.cli("--seed", f"tls+tcp://127.0.0.1:{free_port()}", "--tls-dir",
                    str(tls.dirs["alice"]), "--connect-timeout", "1", "active", "a")
    assert r.returncode == 3 and "refused our certificate" not in r.stderr, r.stderr


def test_local_setup_errors_are_usage_errors_naming_file_and_flag(flock_env):
    r = flock_env.cli("--key-file", "/nonexist", "status", "a")
    assert r.returncode == 2, r.stderr
    assert "bad_request" not in r.stderr and "/nonexist" in r.stderr and "--key-file" in r.stderr
    r = flock_env.cli("--json", "--seed", f"tls+tcp://127.0.0.1:{free_port()}", "status", "a")
    assert r.returncode == 2, r.stderr
    assert "bad_request" not in r.stderr and "ca.crt" in r.stderr and "--tls-dir" in r.stderr
    assert json.loads(r.stdout)["exit_code"] == 2


def test_a_key_mismatch_names_the_node_asked(flock_env):
    flock_env.start("a")
    flock_env.start("d")
    assert flock_env.cli("keygen").returncode == 0  # the default key now; agents have none
    r = flock_env.cli("status", "a")
    assert r.returncode == 3, r.stderr
    assert r.stderr.startswith("flockctl: a: the flock key does not match"), r.stderr
    assert "d: unauthorized" not in r.stderr and "--key-file" in r.stderr, r.stderr


def test_one_node_prefix_per_line(flock_env, tls):
    tls.start("t1")
    tls.issue("obs", "observer")
    r = tls.cli("obs", "run-chef", "t1", seed="t1")
    assert r.returncode == 4, r.stderr
    out = r.stdout + r.stderr
    assert "t1: t1:" not in out and "unauthorized: t1:" not in out, out
    assert "t1: unauthorized: observer:obs" in out, out
    flock_env.start("g")
    flock_env.nodes["g"].stop(signal.SIGKILL)  # its socket file stays: refused at once
    for args in (("run-chef", "g"), ("run-chef", "g", "--wait"), ("subscriptions",)):
        r = flock_env.cli(*args)
        assert "g: g:" not in r.stdout + r.stderr, r.stdout + r.stderr
    from flock_node.cli.context import node_line

    assert node_line("g", "g: could not be reached") == "g: could not be reached"
    assert node_line("g", "could not be reached") == "g: could not be reached"


def test_flock_node_checks_the_listen_address_before_the_key(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("FLOCK_CONFIG_DIR", str(tmp_path))
    monkeypatch.delenv("FLOCK_KEY_FILE", raising=False)
    assert cli_node.main(["run", "c6", "--listen", "foo://x"]) == 2
    err = capsys.readouterr().err
    assert "tcp://HOST:PORT" in err and "flock key" not in err, err


@pytest.mark.parametrize("n", ["500", "0"])
def test_demo_nodes_out_of_range_is_one_json_usage_error(flock_env, n):
    r = flock_env.cli("--json", "demo", "--nodes", n, "--no-console", timeout=20)
    assert r.returncode == 2, r.stderr
    doc = json.loads(r.stdout)
    assert doc["exit_code"] == 2 and "1 to 100" in doc["error"], doc


def test_ca_issue_usage_errors(flock_env):
    assert flock_env.cli("ca", "init").returncode == 0
    r = flock_env.cli("ca", "issue", "bad:name", "--role", "node")
    assert r.returncode == 2 and "bad:name" in r.stderr, r.stderr
    r = flock_env.cli("ca", "issue", "x", "--role", "node", "--days", "0")
    assert r.returncode == 2 and "days" in r.stderr and "seconds" not in r.stderr, r.stderr


def test_why_run_with_max_parallel_is_a_usage_error(flock_env):
    r = flock_env.cli("run-chef", "a", "--why-run", "--max-parallel", "2")
    assert r.returncode == 2, r.stderr
    assert "--why-run" in r.stderr and "--max-parallel" in r.stderr, r.stderr



def test_message_helpers():
    from flock_node.cli.context import key_mismatch
    from flock_node.cli.probe import tls_address
    from flock_node.cli.runs import start_line, start_state

    assert [start_state(r) for r in ({"queued": False, "joined": False},
                                     {"queued": True, "joined": False},
                                     {"queued": True, "joined": True}, {})] == [
        "started", "queued", "joined", "started"]
    assert start_line("a", "r1", "joined") == "a: joined (run r1, already queued)"
    msg = ("the node and this client do not share the same flock key (check --key-file / "
           "FLOCK_KEY_FILE / --insecure): d refused our call: d: unauthorized: no key here")
    assert key_mismatch("a", msg) == (
        "a: the flock key does not match (d refused our call: no key here); check --key-file "
        "/ FLOCK_KEY_FILE / --insecure")
    assert tls_address("cannot connect to tls+tcp://h:7601 within 2s (on TLS also: x)") \
        == "tls+tcp://h:7601"
    assert tls_address("no answer from tls+tcp://[::1]:7601 within 2s") == "tls+tcp://[::1]:7601"
    assert tls_address("no agent listening at ipc:///x.rpc") is None
