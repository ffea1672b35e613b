"""Issue 8: the exactly-once promise under faults — crashes of the delivery loop, restarts,
first starts, chains across crashes, full disks, rolling restarts and recipe subscriptions.

Each test reproduces a fault found on the seed and checks what must hold instead."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from flock_node.engine import Engine, RunContext
from flock_node.store import Store


class _Hooks:
    def __init__(self, targets: dict[str, list[str]]):
        self.targets = targets

    def resolve_targets(self, node, tag):
        return list(self.targets.get(node or f"tag:{tag}", []))

    def outbox_changed(self):
        pass


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "state" / "flock.db", node="a")
    yield s
    s.close()


def _engine(tmp_path: Path, store: Store, body: str) -> Engine:
    recipe = tmp_path / "recipe.py"
    recipe.write_text("from flock_node.dsl import *\n" + textwrap.dedent(body))
    return Engine("a", [recipe], store, hooks=_Hooks({"b": ["b"], "tag:web": ["w1", "w2"]}))


# -- item 4: a chain re-run after a crash is de-duplicated by the next hop ----------------------
def test_a_reaction_run_again_sends_the_same_notification_ids(tmp_path, store):
    out = tmp_path / "env.txt"
    eng = _engine(tmp_path, store, f"""
        execute("relay", command="env | grep ^FLOCK_ | sort >> {out}", action="nothing") \\
            .remote_notifies("run", "execute[sink]", node="b") \\
            .remote_notifies("run", "execute[sink]", tag="web")
    """)
    eng.compile()
    cause = {"node": "src", "notification": "n-root", "hops": 1}

    def react(run_id: str) -> list[tuple[str, str]]:
        eng.run_action("execute[relay]", "run", RunContext(run_id, "reaction", cause=dict(cause),
                                                           hops=1))
        return sorted((r["target"], r["id"]) for r in store.outbox()
                      if r["run_id"] == run_id)

    first = react("r-1")
    # The same notification applied again (a crash between the action and its commit): the
    # same ids, so the receivers' inboxes drop the copies.
    store._db.execute("DELETE FROM outbox")
    again = react("r-2")
    assert [t for t, _ in first] == ["b", "w1", "w2"]
    assert first == again
    assert len({i for _, i in first}) == 3
    # ...and the chain's origin travels with them and reaches the commands.
    assert all(r["cause"]["origin"] == "n-root" for r in store.outbox())
    env_lines = out.read_text().splitlines()
    assert "FLOCK_NOTIFICATION=n-root" in env_lines and "FLOCK_ORIGIN=n-root" in env_lines
    assert "FLOCK_SENDER=src" in env_lines


def test_a_converge_sends_fresh_ids_each_run(tmp_path, store):
    eng = _engine(tmp_path, store, f"""
        file({str(tmp_path / 'f')!r}, action="touch").remote_notifies("run", "execute[x]", node="b")
    """)
    eng.converge(RunContext("c-1"))
    eng.converge(RunContext("c-2"))
    ids = {r["id"] for r in store.outbox()}
    assert len(ids) == 2
    # A notification caused by a converge starts a chain: its own id is the origin downstream.
    assert all("origin" not in r["cause"] for r in store.outbox())
