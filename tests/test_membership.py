"""Membership as a pure state machine: heartbeats, departures, disconnects and a clock in,
member states out. No sockets, no wall clock."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from flock_node.membership import ALIVE, CLASH, DOWN, LEFT, SUSPECT, Membership, admit


@dataclass
class HB:
    node: str
    incarnation: int = 1
    bus: str = "ipc:///x.bus"
    rpc: str = "ipc:///x.rpc"
    interval: float = 1.0
    tags: list[str] = field(default_factory=list)
    instance: str = ""


def state(m: Membership, name: str) -> str | None:
    x = m.get(name)
    return x.state if x else None


def test_alive_suspect_down_by_missed_heartbeats():
    m = Membership("me")
    t = m.heartbeat(HB("a"), 0.0)
    assert [(x.old, x.new, x.reason) for x in t] == [(None, ALIVE, "joined")]
    assert m.tick(2.99) == [] and state(m, "a") == ALIVE
    t = m.tick(3.0)
    assert [(x.old, x.new) for x in t] == [(ALIVE, SUSPECT)]
    assert m.tick(9.9) == [] and state(m, "a") == SUSPECT
    t = m.tick(10.0)
    assert [(x.old, x.new) for x in t] == [(SUSPECT, DOWN)]
    assert m.tick(100.0) == [] and state(m, "a") == DOWN


def test_intervals_scale_with_the_senders_heartbeat():
    m = Membership("me")
    m.heartbeat(HB("a", interval=0.5), 0.0)
    m.tick(1.49)
    assert state(m, "a") == ALIVE
    m.tick(1.5)
    assert state(m, "a") == SUSPECT
    m.tick(5.0)
    assert state(m, "a") == DOWN


def test_disconnect_is_suspect_at_once_then_down_after_two_intervals():
    m = Membership("me")
    m.heartbeat(HB("a"), 0.0)
    t = m.disconnected("a", 0.5)
    assert [(x.old, x.new, x.reason) for x in t] == [(ALIVE, SUSPECT, "connection closed")]
    assert m.tick(2.4) == [] and state(m, "a") == SUSPECT
    t = m.tick(2.5)
    assert [(x.old, x.new) for x in t] == [(SUSPECT, DOWN)]


def test_disconnect_then_back_in_time_stays_alive():
    m = Membership("me")
    m.heartbeat(HB("a"), 0.0)
    m.disconnected("a", 0.5)
    t = m.heartbeat(HB("a"), 1.0)
    assert [(x.old, x.new, x.reason) for x in t] == [(SUSPECT, ALIVE, "heartbeat resumed")]
    assert m.tick(3.0) == [] and state(m, "a") == ALIVE
    assert m.get("a").disconnected_at is None


def test_heartbeat_brings_back_suspect_and_down():
    m = Membership("me")
    m.heartbeat(HB("a"), 0.0)
    m.tick(3.0)
    assert state(m, "a") == SUSPECT
    m.heartbeat(HB("a"), 3.5)
    assert state(m, "a") == ALIVE
    m.tick(20.0)
    assert state(m, "a") == DOWN
    t = m.heartbeat(HB("a"), 21.0)
    assert [(x.old, x.new) for x in t] == [(DOWN, ALIVE)]


def test_leave_is_final_for_that_incarnation():
    m = Membership("me")
    m.heartbeat(HB("a", 3), 0.0)
    assert m.leave("a", 2, 0.1) == []  # an old incarnation's goodbye
    t = m.leave("a", 3, 0.2)
    assert [(x.old, x.new) for x in t] == [(ALIVE, LEFT)]
    assert m.leave("a", 3, 0.3) == []
    assert m.heartbeat(HB("a", 3), 0.4) == []  # a late heartbeat does not resurrect it
    assert m.tick(100.0) == [] and state(m, "a") == LEFT
    assert m.disconnected("a", 100.0) == []
    t = m.heartbeat(HB("a", 4), 101.0)
    assert [(x.old, x.new, x.reason) for x in t] == [(LEFT, ALIVE, "restarted")]


def test_leave_of_unknown_is_ignored():
    assert Membership("me").leave("ghost", 1, 0.0) == []
    assert Membership("me").disconnected("ghost", 0.0) == []


def test_higher_incarnation_replaces_lower_is_ignored():
    m = Membership("me")
    m.heartbeat(HB("a", 5, bus="ipc:///old", tags=["x"]), 0.0)
    m.disconnected("a", 1.0)
    t = m.heartbeat(HB("a", 6, bus="ipc:///new"), 1.5)
    assert [(x.old, x.new, x.reason) for x in t] == [(SUSPECT, ALIVE, "restarted")]
    a = m.get("a")
    assert (a.incarnation, a.bus, a.tags, a.disconnected_at) == (6, "ipc:///new", [], None)
    assert m.heartbeat(HB("a", 5, bus="ipc:///old"), 2.0) == []
    assert m.get("a").bus == "ipc:///new" and m.get("a").last_seen == 1.5


def test_own_name_is_ignored():
    m = Membership("me")
    assert m.heartbeat(HB("me"), 0.0) == []
    assert m.get("me") is None and m.members() == []


def test_match_by_glob_and_tag():
    m = Membership("me")
    m.heartbeat(HB("web-1", tags=["web", "eu"]), 0.0)
    m.heartbeat(HB("web-2", tags=["web"]), 0.0)
    m.heartbeat(HB("db-1", tags=["db", "eu"]), 0.0)
    m.heartbeat(HB("web-3", tags=["web"]), 0.0)
    m.leave("web-3", 1, 0.1)
    assert m.match("web-*") == ["web-1", "web-2"]
    assert m.match("web-*", include_gone=True) == ["web-1", "web-2", "web-3"]
    assert m.match(tag="eu") == ["db-1", "web-1"]
    assert m.match("web-*", tag="eu") == ["web-1"]
    assert m.match("db-1") == ["db-1"]
    assert m.match("nope*") == []
    assert m.match() == ["db-1", "web-1", "web-2"]
    assert [x.name for x in m.members()] == ["db-1", "web-1", "web-2", "web-3"]
    m.forget("db-1")
    assert m.match(tag="eu") == ["web-1"]


# --- a model-based check ------------------------------------------------------------------

NAMES = ["a", "b", "c"]


class MembershipMachine(RuleBasedStateMachine):
    """Drive Membership with random events; a tiny independent model predicts each state."""

    def __init__(self):
        super().__init__()
        self.m = Membership("me")
        self.now = 0.0
        self.instances = 0
        # model: name → dict(inc, state, last, disc, inst)
        self.model: dict[str, dict] = {}

    def _expect_tick(self) -> None:
        for x in self.model.values():
            if x["state"] in (LEFT, DOWN):
                continue
            silent = self.now - x["last"]
            if x["disc"] is not None and self.now - x["disc"] >= 2:
                x["state"] = DOWN
            elif silent >= 10:
                x["state"] = DOWN
            elif x["state"] == ALIVE and silent >= 3:
                x["state"] = SUSPECT

    @rule(dt=st.floats(min_value=0, max_value=4))
    def advance(self, dt):
        self.now += dt
        ts = self.m.tick(self.now)
        before = {n: x["state"] for n, x in self.model.items()}
        self._expect_tick()
        for t in ts:
            assert t.old == before[t.name] and t.new == self.model[t.name]["state"]

    @rule(name=st.sampled_from(NAMES + ["me"]), bump=st.integers(min_value=-1, max_value=1),
          restart=st.booleans())
    def heartbeat(self, name, bump, restart):
        """A heartbeat from the member's process, or from a new one (a restart, or another
        process claiming the name) whose incarnation may even be lower."""
        x = self.model.get(name)
        inc = max(1, (x["inc"] if x else 1) + bump)
        self.instances += 1
        inst = f"i{self.instances}" if restart or x is None else x["inst"]
        self.m.heartbeat(HB(name, inc, instance=inst), self.now)
        if name == "me":
            return
        fresh = {"inc": inc, "state": ALIVE, "last": self.now, "disc": None, "inst": inst}
        if x is None:
            self.model[name] = fresh
        elif inst != x["inst"]:
            if x["state"] != ALIVE:  # alive: a name clash, the established one stays
                self.model[name] = fresh
        elif inc > x["inc"]:
            self.model[name] = fresh
        elif inc == x["inc"] and x["state"] != LEFT:
            x.update(state=ALIVE, last=self.now, disc=None)

    @rule(name=st.sampled_from(NAMES), stranger=st.booleans())
    def leave(self, name, stranger):
        x = self.model.get(name)
        inc = x["inc"] if x else 1
        self.m.leave(name, inc, self.now, "someone-else" if stranger else
                     (x["inst"] if x else ""))
        if x is not None and not stranger:
            x["state"] = LEFT

    @precondition(lambda self: self.model)
    @rule(name=st.sampled_from(NAMES))
    def disconnect(self, name):
        self.m.disconnected(name, self.now)
        x = self.model.get(name)
        if x is not None and x["state"] not in (LEFT, DOWN):
            x["disc"] = self.now
            if x["state"] == ALIVE:
                x["state"] = SUSPECT

    @invariant()
    def states_agree(self):
        for name, x in self.model.items():
            got = self.m.get(name)
            assert got is not None
            assert (got.state, got.incarnation) == (x["state"], x["inc"]), name
        assert self.m.get("me") is None
        live = sorted(n for n, x in self.model.items() if x["state"] in (ALIVE, SUSPECT))
        assert self.m.match("*") == live


MembershipMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
test_membership_machine = MembershipMachine.TestCase


@given(st.lists(st.tuples(st.sampled_from(NAMES), st.integers(1, 5)), min_size=1, max_size=30))
def test_incarnation_never_goes_backwards(beats):
    m = Membership("me")
    top: dict[str, int] = {}
    for i, (name, inc) in enumerate(beats):
        m.heartbeat(HB(name, inc), float(i))
        top[name] = max(top.get(name, 0), inc)
        assert m.get(name).incarnation == top[name]
        assert m.get(name).state == ALIVE


def test_left_and_down_members_are_forgotten_after_a_while():
    from flock_node.membership import FORGOTTEN

    m = Membership("me", forget_after=100)
    for name in ("a", "b", "c"):
        m.heartbeat(HB(name), 0.0)
    m.leave("a", 1, 1.0)
    m.disconnected("b", 1.0)
    m.tick(3.0)
    assert state(m, "b") == DOWN  # connection closed, not back after 2 intervals
    m.heartbeat(HB("c"), 100.0)
    assert m.tick(100.5) == []
    m.heartbeat(HB("c"), 102.5)
    forgotten = m.tick(103.0)
    assert sorted((t.name, t.old, t.new) for t in forgotten) == [
        ("a", LEFT, FORGOTTEN), ("b", DOWN, FORGOTTEN)]
    assert [x.name for x in m.members()] == ["c"]
    m.heartbeat(HB("a", incarnation=2), 104.0)  # a restart brings it back
    assert m.get("a").state == ALIVE


# --- believe a node only about itself (issue 8, items 7 and 9) --------------------------------


@dataclass
class LV:
    node: str
    incarnation: int = 1
    instance: str = ""


def test_admit_believes_a_node_only_about_itself():
    now = 1_800_000_000.0
    ms = int(now * 1000)
    assert admit(HB("b", ms), "b", now) is None
    assert admit(HB("b", ms), "mallory", now) == "impersonation"
    assert admit(LV("a"), "mallory", now) == "impersonation"
    assert admit(LV("a"), "a", now) is None
    for bad in (1e9, 0.01, 61.0, float("nan"), float("inf"), -1.0):
        assert admit(HB("b", interval=bad), "b", now) == "bad_interval", bad
    for ok in (0.05, 1.0, 60.0):
        assert admit(HB("b", interval=ok), "b", now) is None
    assert admit(HB("b", 2**62), "b", now) == "future_incarnation"
    assert admit(HB("b", ms + 59_000), "b", now) is None  # its clock a little ahead
    assert admit(HB("b", ms + 61_000), "b", now) == "future_incarnation"
    assert admit(LV("b", 2**62), "b", now) == "future_incarnation"
    assert admit(HB("b", 7), "b", now) is None  # an older peer counting restarts


def test_a_new_instance_replaces_a_member_that_is_not_alive_whatever_its_incarnation():
    for gone in ("disconnect", "leave", "silence"):
        m = Membership("me")
        m.heartbeat(HB("a", 5_000, instance="old"), 0.0)
        if gone == "disconnect":
            m.disconnected("a", 1.0)
        elif gone == "leave":
            m.leave("a", 5_000, 1.0, "old")
        else:
            m.tick(20.0)
        # state wiped and clock set back: a lower incarnation, a new process
        t = m.heartbeat(HB("a", 1, bus="ipc:///new.bus", instance="new"), 21.0)
        assert [(x.new, x.reason) for x in t] == [(ALIVE, "restarted")], gone
        a = m.get("a")
        assert (a.state, a.incarnation, a.instance, a.bus) == (ALIVE, 1, "new", "ipc:///new.bus")
        m.heartbeat(HB("a", 1, bus="ipc:///new.bus", instance="new"), 22.0)
        assert m.get("a").last_seen == 22.0


def test_a_second_process_with_an_alive_members_name_is_a_clash():
    m = Membership("me")
    m.heartbeat(HB("b", 10, bus="tcp://b:1", rpc="tcp://b:2", instance="real"), 0.0)
    forged = HB("b", 2**40, bus="tcp://evil:1", rpc="tcp://evil:2", interval=60, instance="x")
    t = m.heartbeat(forged, 0.5)
    assert [(x.old, x.new) for x in t] == [(ALIVE, CLASH)]
    assert "tcp://evil:1" in t[0].reason and "tcp://b:1" in t[0].reason
    b = m.get("b")
    assert (b.state, b.rpc, b.interval, b.instance) == (ALIVE, "tcp://b:2", 1.0, "real")
    # Same instance, another address: a clash too.
    t = m.heartbeat(HB("b", 10, bus="tcp://evil:1", rpc="tcp://evil:2", instance="real"), 0.6)
    assert [x.new for x in t] == [CLASH]
    assert m.heartbeat(HB("b", 10, bus="tcp://b:1", rpc="tcp://b:2", instance="real"), 1.0) == []
    # Its goodbye does not count for the established one either.
    assert m.leave("b", 2**40, 1.1, "x") == []
    assert m.get("b").state == ALIVE
    # Once the established one is gone (connection closed), the newcomer is accepted.
    m.disconnected("b", 2.0)
    t = m.heartbeat(forged, 2.1)
    assert [(x.old, x.new, x.reason) for x in t] == [(SUSPECT, ALIVE, "restarted")]
    assert m.get("b").rpc == "tcp://evil:2"


@given(node=st.sampled_from(["a", "b"]), sender=st.sampled_from(["a", "b"]),
       incarnation=st.integers(-(2**63), 2**63 - 1),
       interval=st.floats(allow_nan=True, allow_infinity=True),
       now=st.floats(min_value=0, max_value=4e9))
def test_admit_accepts_exactly_the_sane_heartbeats(node, sender, incarnation, interval, now):
    why = admit(HB(node, incarnation, interval=interval), sender, now)
    sane = (node == sender and 0.05 <= interval <= 60
            and incarnation <= (now + 60) * 1000)
    assert (why is None) == sane
    assert why in (None, "impersonation", "bad_interval", "future_incarnation")
