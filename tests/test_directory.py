"""Directory without sockets: names to addresses, and node=/tag= patterns to nodes."""

from __future__ import annotations

import threading

from flock_node.directory import Directory
from flock_node.membership import Membership
from flock_node.protocol import Heartbeat


def _directory(tmp_path, synced: bool = True) -> tuple[Directory, Membership]:
    ms = Membership("a")
    for name, tags in (("web1", ["web"]), ("web2", ["web"]), ("db1", ["db"])):
        ms.heartbeat(Heartbeat(node=name, incarnation=1, seq=1, bus=f"bus-{name}",
                               rpc=f"rpc-{name}", tags=tags, instance=name), 100.0)
    ms.leave("web2", 1, 101.0, instance="web2")
    ev = threading.Event()
    if synced:
        ev.set()
    return Directory("a", "rpc-a", ["web"], ms, tmp_path, ev, 0.05), ms


def test_names_resolve_to_addresses(tmp_path):
    d, _ = _directory(tmp_path)
    assert d.resolve_addr("a") == "rpc-a"
    assert d.resolve_addr("web1") == "rpc-web1"
    assert d.resolve_addr("nobody") is None
    assert d.locate("web2") == ("rpc-web2", "left")
    assert d.locate("nobody") == (None, None)


def test_patterns_name_members_gone_ones_and_ourselves(tmp_path):
    d, _ = _directory(tmp_path)
    assert d.resolve_targets("later", None) == ["later"]  # a plain name, known or not
    assert d.resolve_targets("web*", None) == ["web1", "web2"]  # left ones too: they come back
    assert d.resolve_targets(None, "web") == ["a", "web1", "web2"]
    assert d.resolve_targets("*", "db") == ["db1"]


def test_a_glob_waits_for_the_view_only_a_bounded_moment(tmp_path):
    d, _ = _directory(tmp_path, synced=False)
    assert d.resolve_targets("db*", None) == ["db1"]  # after view_wait, with what it knows
