"""Issue 11: who the client asks for the membership. A SWIM member answers `members` for the
whole flock, so the first that answers is enough; mesh agents know only their peers, so each
is asked. The rules (`_Discovery.walk`) are pure and tested here without I/O, then with real
agents of both kinds."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest import wait_for
from test_agent import start_many

from flock_node.client import AsyncFlock, _Discovery
from flock_node.transport import AsyncRpc, RpcError, SyncRpc


def run_walk(disc: _Discovery, answer: Any) -> tuple[list[tuple[str, str]], Any]:
    """Drive one refresh's conversation: `answer(addr, method)` answers each question."""
    asked: list[tuple[str, str]] = []
    walk = disc.walk()
    try:
        step = next(walk)
        while True:
            asked.append(step)
            step = walk.send(answer(*step))
    except StopIteration as done:
        return asked, done.value


def disc_with(addrs: list[str]) -> _Discovery:
    d = _Discovery([], "/nonexistent-runtime-dir")
    d.entry_points = lambda: list(addrs)  # type: ignore[method-assign]
    return d


def row(name: str) -> dict[str, Any]:
    return {"name": name, "incarnation": 1, "age": 0.0, "state": "alive", "rpc": f"x/{name}"}


def test_one_swim_member_is_enough_and_is_asked_first_next_time():
    d = disc_with(["a", "b", "c"])
    asked, (tried, answers, rest) = run_walk(
        d, lambda addr, m: {"membership": "swim"} if m == "status" else [row("a"), row("b")])
    assert asked == [("a", "status"), ("a", "members")] and rest == [] and tried == ["a"]
    assert {m["name"] for m in d.absorb(tried, answers)} == {"a", "b"}
    # Known now: one call per refresh.
    asked, (_, _, rest) = run_walk(d, lambda addr, m: [row("a")])
    assert asked == [("a", "members")] and rest == []


def test_a_failing_member_passes_to_the_next_and_a_refusal_is_kept():
    d = disc_with(["a", "b", "c"])

    def answer(addr: str, m: str) -> Any:
        if addr == "a":
            return RpcError("unauthorized", "another key")
        if addr == "b" and m == "members":
            return RpcError("unreachable", "gone")
        return {"membership": "swim"} if m == "status" else [row("c")]

    asked, (tried, answers, rest) = run_walk(d, answer)
    assert asked == [("a", "status"), ("b", "status"), ("b", "members"), ("c", "status"),
                     ("c", "members")]
    assert rest == [] and d.answered == "c" and "b" not in d.kinds
    assert [m["name"] for m in d.absorb(tried, answers)] == ["c"]
    assert d.refused == ["a"]
    # c answered last: asked first from now on.
    assert d.plan() == (["c", "a", "b"], True)


def test_a_local_agent_the_swim_member_does_not_know_yet_is_asked_too():
    d = disc_with(["a", "b", "c"])
    d.local = {"na": "a", "nb": "b", "nc": "c"}
    _, (tried, _, rest) = run_walk(
        d, lambda addr, m: {"membership": "swim"} if m == "status" else [row("na"), row("nb")])
    assert tried == ["a"] and rest == ["c"]


def test_mesh_agents_are_all_asked():
    d = disc_with(["a", "b", "c"])
    asked, (tried, _, rest) = run_walk(
        d, lambda addr, m: {"membership": "mesh"} if m == "status" else [row(addr)])
    assert tried == ["a"] and rest == ["b", "c"]
    # An agent from before SWIM says nothing of its membership: mesh.
    d2 = disc_with(["a"])
    run_walk(d2, lambda addr, m: {} if m == "status" else [row(addr)])
    assert d2.kinds == {"a": "mesh"}
    # Once only mesh agents are known, all are asked at once, nothing one by one.
    asked, (tried, _, rest) = run_walk(d, lambda addr, m: [row(addr)])
    assert asked == [] and rest == ["a", "b", "c"]


class Counting:
    """Wraps a client's rpc `call` to count who is asked `members` (the calls are real)."""

    def __init__(self, rpc: SyncRpc | AsyncRpc):
        self.asked: list[str] = []
        real = rpc.call

        def call(addr: str, actor: str, method: str, *a: Any, **kw: Any) -> Any:
            if method == "members":
                self.asked.append(addr)
            return real(addr, actor, method, *a, **kw)

        rpc.call = call  # type: ignore[method-assign]


@pytest.mark.parametrize("membership", ["swim", "mesh"])
def test_the_clients_ask_one_swim_member_and_every_mesh_agent(flock_env, membership):
    flock_env.env["FLOCK_MEMBERSHIP"] = membership
    names = ["d0", "d1", "d2"]
    start_many(flock_env, names)
    with flock_env.flock() as f:
        wait_for(lambda: all(sorted(m["name"] for m in f[n].flock_api.members()
                                    if m["state"] == "alive") == names for n in names),
                 15, what="all alive")
        count = Counting(f._rpc)
        assert sorted(m["name"] for m in f.refresh()) == names
        assert len(count.asked) == (1 if membership == "swim" else 3), count.asked

    async def console_view() -> tuple[list[str], list[str]]:
        af = await AsyncFlock.connect(runtime_dir=flock_env.runtime_dir)
        try:
            count = Counting(af._rpc)
            rows = await af.nodes()
            return [m["name"] for m in rows], count.asked
        finally:
            af.close()

    seen, asked = asyncio.run(console_view())
    assert seen == names
    assert len(asked) == (1 if membership == "swim" else 3), asked
