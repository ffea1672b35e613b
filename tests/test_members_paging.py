"""`members` for a flock of thousands: paged like the other long answers (issue 11).

A real agent learns thousands of members the way it learns any: a push-pull over its SWIM
socket carrying their signed statements (from a test "seeder", the members' addresses lead
nowhere). The whole list passes the frame limit; `flockctl nodes`, `Flock.nodes()` and the
console's poll (AsyncFlock) still get every member, page by page.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pynng
import pytest

from flock_node import api
from flock_node.client import AsyncFlock, resolve_key
from flock_node.membership.messages import Alive, PushPull, encode
from flock_node.membership.statements import Notary
from flock_node.paging import by_name, collect, fill_page, name_start
from flock_node.protocol import MAX_FRAME, Codec, SwimFrame
from flock_node.transport import RpcError
from flock_node.transport.base import swim_for_bus
from tests.conftest import FlockEnv, wait_for

BATCH = 1000  # statements per push-pull: each frame stays well under MAX_FRAME


def statement(i: int, nowhere: str, notary: Notary) -> Alive:
    """Member i's own signed statement, with the facts a busy node gossips."""
    run = {"id": f"r{i:08x}", "status": "ok", "kind": "converge", "started": 1.7e9 + i,
           "duration": 12.5, "updated": i % 4}
    record = {"tags": ["web" if i % 2 else "db", f"rack{i % 40}"], "active": False,
              "last_run": run, "last_converge": run, "pending": i % 3, "dead": 0,
              "bus": f"{nowhere}/m{i:05d}.bus", "rpc": f"{nowhere}/m{i:05d}.rpc",
              "version": "0.1.0", "started": 1.7e9 + i}
    return notary.sign(Alive(f"m{i:05d}", 1, f"inst{i:05d}", f"{nowhere}/m{i:05d}.swim", 1,
                             record))


def push_pull(env: FlockEnv, bus: str, states: list[Alive], learned: Callable[[], object],
              deadline: float = 120.0) -> None:
    """Push-pull `states` to the agent at `bus` (BATCH a frame) until `learned()` says it
    holds them. Push0 has no acknowledgement and a socket closed early drops its queue, so
    the frames go again until the agent has learned them; a send that finds the agent's
    pipe full (a loaded machine: the agent is still checking the last batch's signatures)
    waits and tries again instead of failing the test, all within one deadline."""
    codec = Codec(resolve_key(), "seeder")
    frames = [codec.encode(SwimFrame(encode(PushPull("seeder", "", False, False,
                                                     states[i:i + BATCH]))))
              for i in range(0, len(states), BATCH)]
    assert all(len(f) < MAX_FRAME for f in frames)
    end = time.monotonic() + deadline
    push = pynng.Push0(send_timeout=2000)
    try:
        push.dial(swim_for_bus(bus), block=True)
        while time.monotonic() < end:
            for f in frames:
                while True:
                    try:
                        push.send(f)
                        break
                    except pynng.Timeout:
                        assert time.monotonic() < end, "the agent took no frame for too long"
            try:
                wait_for(learned, min(20.0, max(0.1, end - time.monotonic())),
                         interval=0.5, what="the members pushed")
                return
            except AssertionError:
                continue
        raise AssertionError(f"the agent did not learn the {len(states)} members pushed")
    finally:
        push.close()


@pytest.fixture
def big_flock(flock_env: FlockEnv):
    """One SWIM agent holding 5,000 members besides itself."""
    n = 5000
    flock_env.start("big0")
    notary = Notary(resolve_key())
    nowhere = f"ipc://{flock_env.root}/nowhere"
    with flock_env.flock() as f:
        node = f["big0"].flock_api
        push_pull(flock_env, node.status()["bus"],
                  [statement(i, nowhere, notary) for i in range(n)],
                  lambda: len(node.members()) >= n + 1)
    return flock_env, n


def test_members_of_thousands_page_to_the_end(big_flock) -> None:
    env, n = big_flock
    want = {"big0"} | {f"m{i:05d}" for i in range(n)}
    # The whole list is past the frame: the old shape is refused, as before.
    with env.flock() as f:
        with pytest.raises(RpcError) as e:
            f._rpc.call(f._discovery.address("big0"), "flock_api", "members", {})
        assert e.value.code == "too_large"
        assert {m["name"] for m in f.nodes()} == want
        # The members call itself pages when asked without `offset`.
        assert {m["name"] for m in f["big0"].flock_api.members()} == want
        # One page fits a frame, in name order.
        page = f["big0"].flock_api.members(offset=0)
        names = [m["name"] for m in page["items"]]
        assert names == sorted(names) and 1 < len(names) < n and page["next_offset"]
    t0 = time.monotonic()
    rows = env.json("nodes")
    took = time.monotonic() - t0
    assert {r["name"] for r in rows} == want, took

    async def console_poll() -> set[str]:
        async with await AsyncFlock.connect(runtime_dir=env.runtime_dir) as af:
            return {m["name"] for m in await af.nodes()}

    assert asyncio.run(console_poll()) == want


def test_pages_hold_under_change(big_flock) -> None:
    """Pages taken while members come and go neither skip nor repeat a name that stayed."""
    env, n = big_flock
    with env.flock() as f:
        node = f["big0"].flock_api
        first = node.members(offset=0)
        assert first["next_offset"] and first.get("next_after")
        # Members join before and after the cursor: an index would now repeat a row.
        notary = Notary(resolve_key())
        nowhere = f"ipc://{env.root}/nowhere"
        states = [notary.sign(Alive(nm, 1, "i", f"{nowhere}/{nm}.swim", 1, {}))
                  for nm in ("a-early", "zz-late")]
        push_pull(env, node.status()["bus"], states,
                  lambda: "zz-late" in {m["name"] for m in f.refresh()})
        got = [m["name"] for m in first["items"]]
        page = first
        while page["next_offset"] is not None:
            page = node.members(offset=page["next_offset"], after=page["next_after"])
            got += [m["name"] for m in page["items"]]
        assert len(got) == len(set(got))  # nothing repeated
        stayed = {"big0"} | {f"m{i:05d}" for i in range(n)}
        assert stayed <= set(got)  # nothing skipped
        assert "zz-late" in got and "a-early" not in got


def test_members_args_are_typed() -> None:
    """The contract: `members` takes offset, after, pattern and tag, nothing else."""
    got = api.decode_args("flock_api", "members", {"offset": 3, "after": "x", "pattern": "w*"})
    assert got == {"offset": 3, "after": "x", "pattern": "w*", "tag": None}
    with pytest.raises(api.BadArgs):
        api.decode_args("flock_api", "members", {"offset": -1})


def test_name_cursor() -> None:
    names = ["a", "b", "d", "e"]
    assert name_start(names, 2, None) == 2
    assert name_start(names, 0, "b") == 2 and name_start(names, 0, "c") == 2
    assert name_start(names, 0, "e") == 4
    page = fill_page([{"name": n} for n in names], 0, more=True, budget=20)
    assert by_name(page, lambda r: r["name"]).next_after == page.items[-1]["name"]
    last = fill_page([{"name": "e"}], 3, more=False)
    assert by_name(last, lambda r: r["name"]).next_after is None


def test_a_node_from_before_members_paging_is_asked_the_old_way() -> None:
    """A node with the typed contract but no paged `members` refuses `offset` in its own
    words: the client asks it again without."""
    asked: list[dict] = []

    def call(method: str, args: dict) -> list[dict]:
        asked.append(args)
        if "offset" in args:
            raise RpcError("bad_request", "members: Object contains unknown field `offset`")
        return [{"name": "old0"}]

    assert collect(call, "members", {}) == [{"name": "old0"}]
    assert asked == [{"offset": 0}, {}]
