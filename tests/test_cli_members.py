"""The CLI reads the flock's members as `api.Member` (msgspec.convert at the edge) and formats
the typed view; a member entry it cannot read is one clear error, never a traceback."""

from __future__ import annotations

import time

import msgspec
import pytest

from flock_node.api import LastRun, Member, State
from flock_node.cli import CliError
from flock_node.cli.context import as_members, gone, select
from flock_node.cli.runs import _state_holds
from flock_node.cli.text import activity, converge_text, health, last_runs


def _wire(name: str, **kw) -> dict:
    row = {"name": name, "state": "alive", "address": f"rpc-{name}", "bus": f"bus-{name}",
           "rpc": f"rpc-{name}", "incarnation": 1, "active": False, "run": None,
           "last_run": None, "last_converge": None, "pending": 0, "dead_letters": 0,
           "tags": [], "version": "1", "age": 0.0}
    row.update(kw)
    return row


def _run(rid: str, kind: str, status: str = "ok") -> dict:
    return msgspec.to_builtins(LastRun(id=rid, status=status, ok=status == "ok", kind=kind,
                                       started=time.time() - 5, duration=1.0, updated=2))


def test_members_are_typed_and_formatted_from_the_view():
    a, b, c = as_members([
        _wire("web1", tags=["web"], active=True,
              run={"id": "r", "kind": "converge", "resource": "file[/x]", "k": 2, "n": 5},
              last_run=_run("r2", "reaction", "failed"), last_converge=_run("r1", "converge")),
        _wire("web2", state="left", tags=["web"]),
        _wire("db1"),
    ])
    assert isinstance(a, Member) and a.state is State.ALIVE and a.last_converge is not None
    assert activity(a) == "converging 2/5 file[/x]" and activity(b) == "-"
    assert health(a.last_converge) == "ok" and health(c.last_converge) == "never"
    assert converge_text(a).endswith("(reaction failed 5s ago)")
    assert select([a, b, c], "tag:web") == ["web1", "web2"] and gone(b) and not gone(a)
    assert _state_holds("active", a) and not _state_holds("active", a, reached=False)
    assert _state_holds("down", b) and _state_holds("idle", c)


def test_a_status_answer_gives_its_last_runs_typed():
    lc, lr = last_runs({"last_run": _run("r2", "reaction"), "last_converge": _run("r1", "converge")})
    assert (lc.id, lr.id) == ("r1", "r2")
    lc, lr = last_runs({"last_run": _run("r1", "converge")})  # an agent before last_converge
    assert lc == lr and lc.kind == "converge"


def test_an_unreadable_member_entry_is_a_clear_error():
    with pytest.raises(CliError, match="another version of flock"):
        as_members([_wire("web1", incarnation="one")])
