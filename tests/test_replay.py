"""Key mode: a signed call names the node it is for, so a frame captured on the wire to one
node cannot be replayed to another (the MAC does not name the recipient, nonces are per node)."""

from __future__ import annotations

import msgspec
import pynng
import pytest

from flock_node.protocol import Codec, Request, Response, load_key
from flock_node.transport.rpc import _request
from tests.conftest import FlockEnv, free_port, wait_for

HIT = """
from flock_node.dsl import execute
execute("hit", command="echo hit >> {out}", action="nothing")
"""


def _start(env: FlockEnv, name: str, key: str) -> str:
    """Start `name` on tcp loopback with the key; its RPC address."""
    recipe = env.root / f"{name}.py"
    recipe.write_text(HIT.format(out=env.root / f"{name}.hits"))
    port = free_port()
    env.start(name, "--listen", f"tcp://127.0.0.1:{port}", "--key-file", key,
              recipes=[recipe], wait=False)
    return f"tcp://127.0.0.1:{port + 1}"


def _send_raw(addr: str, frame: bytes, wait_ms: int) -> bytes | None:
    """Send `frame` as is on a raw Req0 socket: the answer, or None if none comes."""
    with pynng.Req0(recv_timeout=wait_ms, send_timeout=2000, resend_time=600_000) as req:
        req.dial(addr, block=True)
        try:
            req.send(frame)
            return req.recv()
        except pynng.Timeout:
            return None


def _status(env: FlockEnv, key: str, addr: str, name: str) -> dict:
    """`status` of one node, asked with its name (`to`) as flockctl asks."""
    from flock_node.transport.rpc import SyncRpc

    rpc = SyncRpc(Codec(load_key(key), "tester"), timeout=5.0)
    try:
        return rpc.call(addr, "flock_api", "status", expect=name)
    finally:
        rpc.close()


def test_a_notify_captured_to_a_is_not_run_by_b(flock_env):
    env = flock_env
    key = str(env.root / "flock.key")
    assert env.cli("keygen", key).returncode == 0
    rpc_a, rpc_b = _start(env, "a", key), _start(env, "b", key)
    for n in ("a", "b"):
        env.wait_up(env.nodes[n])
    codec = Codec(load_key(key), "client-1")
    args = {"resource": "execute[hit]", "action": "run", "id": "n-captured", "sender": "t"}
    call_id, frame = _request(codec, "resource_manager", "notify", args, to="a")

    # Replayed unchanged to b (no key needed): dropped unanswered, counted, not run.
    assert _send_raw(rpc_b, frame, 500) is None
    wait_for(lambda: _status(env, key, rpc_b, "b")["dropped_frames"].get("misdirected") == 1,
             5, what="b to count the misdirected call")
    assert not (env.root / "b.hits").exists()

    # The same bytes to a, the node they were for: accepted, and run once.
    answer = _send_raw(rpc_a, frame, 5000)
    assert answer is not None
    msg = codec.decode(answer, check_replay=False)[1]
    assert isinstance(msg, Response) and msg.call_id == call_id and msg.ok, msg
    assert msg.result["accepted"] and not msg.result["duplicate"]
    wait_for(lambda: (env.root / "a.hits").exists(), 10, what="a to run the reaction")
    # Again: a re-send of that call gets its first answer (a rerun would answer `duplicate`).
    again = _send_raw(rpc_a, frame, 2000)
    if again is not None:
        assert codec.decode(again, check_replay=False)[1] == msg
    assert (env.root / "a.hits").read_text().count("hit") == 1
    assert "misdirected" not in _status(env, key, rpc_a, "a")["dropped_frames"]
    assert not (env.root / "b.hits").exists()


def test_a_call_without_to_still_goes_to_any_node(flock_env):
    """Discovery at a seed address, before its name is known: no `to`, accepted as before."""
    env = flock_env
    key = str(env.root / "flock.key")
    assert env.cli("keygen", key).returncode == 0
    rpc_b = _start(env, "b", key)
    env.wait_up(env.nodes["b"])
    codec = Codec(load_key(key), "client-1")
    call_id, frame = _request(codec, "flock_api", "status", {})
    answer = _send_raw(rpc_b, frame, 5000)
    assert answer is not None
    msg = codec.decode(answer, check_replay=False)[1]
    assert isinstance(msg, Response) and msg.ok and msg.result["name"] == "b"


class _OldRequest(msgspec.Struct, tag="req", omit_defaults=True):
    """`Request` as agents before `to` had it."""

    call_id: str
    actor: str
    method: str
    args: dict = {}


@pytest.mark.parametrize("to", ["", "a"])
def test_the_wire_stays_compatible_both_ways(to):
    """`to` is a trailing optional field of the signed body: an old agent ignores it and
    verifies the frame as before; an old frame decodes here with `to` empty."""
    key = b"k" * 32
    new = Codec(key, "new")
    old_body = msgspec.msgpack.encode(_OldRequest("c1", "flock_api", "status"))
    frame = new.encode(Request("c1", "flock_api", "status", to=to))
    env, _ = Codec(key, "old").decode(frame)  # signature checks whatever the body holds
    assert msgspec.msgpack.decode(env.body, type=_OldRequest) == _OldRequest(
        "c1", "flock_api", "status")
    assert msgspec.msgpack.decode(old_body, type=Request).to == ""
    if not to:
        assert env.body == old_body  # omitted when empty: the same bytes as before
