"""Issue 11: the RPC clients hold a bounded number of connections (FLOCK_RPC_CONNECTIONS, 64 by
default, as the console's bus connections): calling more nodes than the bound closes the least
recently used. The pool's rules are tested pure; the bound itself against real agents, counting
the connections (socket descriptors) this process holds."""

from __future__ import annotations

import asyncio
import os
import select

import pynng
from conftest import FlockEnv, wait_for

from flock_node.client import AsyncFlock, Flock
from flock_node.protocol import Codec
from flock_node.transport import AsyncRpc, Bus
from flock_node.transport.pool import RPC_CONNECTIONS, Pool, rpc_bound


class Sock:
    def __init__(self, name: str):
        self.name, self.closed = name, False

    def close(self) -> None:
        self.closed = True


def test_the_least_recently_used_idle_socket_goes_first():
    pool: Pool[str, Sock] = Pool(2)
    a, b, c = Sock("a"), Sock("b"), Sock("c")
    pool.add("a", a)
    pool.add("b", b)
    assert pool.get("a") is a  # a is now the most recently used: b goes
    pool.add("c", c)
    assert (a.closed, b.closed, c.closed) == (False, True, False)
    assert pool.get("b") is None and len(pool) == 2


def test_a_busy_socket_is_retired_and_closed_when_its_last_call_ends():
    pool: Pool[str, Sock] = Pool(1)
    a, b, c = Sock("a"), Sock("b"), Sock("c")
    pool.add("a", a)
    pool.use(a)
    pool.use(a)
    pool.add("b", b)  # only a busy one to drop: out of the pool, still open
    assert not a.closed and pool.get("a") is None and len(pool) == 2
    pool.done(a)
    assert not a.closed
    pool.done(a)
    assert a.closed and len(pool) == 1
    pool.use(b)
    pool.add("c", c)  # the newcomer is never the one dropped
    assert not c.closed and pool.get("c") is c
    pool.forget("c")
    assert c.closed
    pool.close()
    assert b.closed and len(pool) == 0


def test_the_bound_comes_from_the_environment():
    assert rpc_bound({}) == RPC_CONNECTIONS == 64
    assert rpc_bound({"FLOCK_RPC_CONNECTIONS": "3"}) == 3
    assert rpc_bound({"FLOCK_RPC_CONNECTIONS": "lots"}) == 64
    assert rpc_bound({"FLOCK_RPC_CONNECTIONS": "0"}) == 64


def _sockets() -> int:
    """Socket descriptors this process holds (an ipc connection is one)."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return n


def test_calling_more_nodes_than_the_bound_holds_at_most_the_bound(flock_env: FlockEnv,
                                                                   monkeypatch):
    bound = 2
    monkeypatch.setenv("FLOCK_RPC_CONNECTIONS", str(bound))
    names = [f"p{i}" for i in range(5)]
    for p in [flock_env.start(n, wait=False) for n in names]:
        flock_env.wait_up(p)
    base = _sockets()

    # the blocking client, twice round the flock
    with Flock.connect(runtime_dir=flock_env.runtime_dir) as f:
        wait_for(lambda: {m["name"] for m in f.refresh()} >= set(names), 15, what="5 nodes")
        for n in names * 2:
            assert f[n].flock_api.status()["name"] == n
            # +1: the socket just closed may still be closing in nng's threads
            assert _sockets() - base <= bound + 1
        assert f.connections() == bound
        wait_for(lambda: _sockets() - base <= bound, 5, what="the bound held")
    wait_for(lambda: _sockets() <= base, 5, what="all closed")

    async def go() -> None:
        base = _sockets()  # the loop's own socket pair included
        f = await AsyncFlock.connect(runtime_dir=flock_env.runtime_dir)
        try:
            for n in names * 2:
                assert (await f[n].flock_api.status())["name"] == n
                assert _sockets() - base <= bound + 1
            assert f.connections() == bound
            # calls at once to every node: none fails, and the bound holds once they end
            got = await asyncio.gather(*(f[n].flock_api.status() for n in names))
            assert [s["name"] for s in got] == names
            assert f.connections() <= bound
            # the worker's fast path (send_now, its answer later) keeps the same bound
            rpc = AsyncRpc(Codec(None, "test-client"))
            try:
                for n in names * 2:
                    addr = f._discovery.address(n)
                    assert addr is not None
                    sent = wait_for(lambda a=addr: rpc.send_now(a, "flock_api", "status", {}, 2.0),
                                    5, what=f"a connection to {n}")  # NOT_SENT until dialled
                    assert (await rpc.answer(sent))["name"] == n
                    assert _sockets() - base <= 2 * bound + 1
            finally:
                rpc.close()
        finally:
            f.close()
        wait_for(lambda: _sockets() <= base, 5, what="all closed")

    asyncio.run(go())
    wait_for(lambda: _sockets() <= base, 5, what="all closed")


def test_the_bus_does_not_keep_pipes_that_closed(tmp_path):
    """pynng puts a closed pipe back in a socket's list when a frame from it is read after
    its removal; the bus sweeps those out as it dials and undials (the console does, for
    hours), so its pipe list stays the connections it has."""
    addr = f"ipc://{tmp_path}/peer.bus"
    peer = pynng.Bus0(listen=addr)
    bus = Bus(Codec(None, "console-test"), lambda env, msg, pipe: None)
    try:
        bus.dial(addr)
        wait_for(lambda: len(bus.sock.pipes) == 1 and len(peer.pipes) == 1, 5, what="connected")
        peer.send(b"a frame")
        fd = bus.sock.recv_fd  # readable once the frame waits in our socket
        assert select.select([fd], [], [], 5)[0], "the frame never arrived"
        bus.undial(addr)
        wait_for(lambda: not peer.pipes and not bus.sock.pipes, 5, what="the pipe removed")
        bus.sock.recv_msg(block=False)  # read after the removal: pynng adds its pipe back
        assert len(bus.sock.pipes) == 1  # pynng's stale pipe (the reproduction)
        bus.dial(addr)  # and on: the sweeps as the console follows the screen
        wait_for(lambda: len(peer.pipes) == 1, 5, what="connected again")
        bus.undial(addr)
        wait_for(lambda: not peer.pipes, 5, what="the pipe closed")
        bus.dial(addr)
        wait_for(lambda: len(peer.pipes) == 1, 5, what="connected again")
        assert len(bus.sock.pipes) == 1  # the live one only
    finally:
        bus.sock.close()
        peer.close()
