"""The membership driver: runs the pure `Membership` state machine over the bus.

It sends our heartbeats (with the record a console shows: active, run, last run, outbox),
discovers peers (seeds, the runtime dir, hints from other nodes' peer lists, within a budget),
believes a node only about itself, and turns membership transitions into calls of its
listeners (memberlist's EventDelegate idea) instead of side effects wired into the agent.
Everything here runs on the agent's loop; bus callbacks are handed to it by the transport.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flock_node import __version__
from flock_node.membership import (
    ALIVE,
    CLASH,
    DOWN,
    LEFT,
    SUSPECT,
    Member,
    Membership,
    Transition,
    admit,
)
from flock_node.protocol import Codec, Envelope, Heartbeat, Leave, Message, Peer
from flock_node.transport import Bus, ipc_alive, scan_runtime_dir

log = logging.getLogger("flock.discovery")

VIEW_SYNC_HEARTBEATS = 3  # heartbeats a first converge waits at most to hear the flock
# A third party's `peers` list is only a hint: at most HINT_DIALS new hinted addresses are
# dialed per heartbeat interval, each undialed unless the named node heartbeats from it
# within HINT_PATIENCE intervals, and not tried again for HINT_RETRY seconds. A forged list
# of any length costs a bounded number of connections.
HINT_DIALS = 4
HINT_PATIENCE = 3
HINT_RETRY = 60.0
CLASH_LOG_EVERY = 60.0  # seconds between two name-clash warnings about one name

Listener = Callable[[Transition, Member | None], None]


@dataclass
class Me:
    """Who we are on the bus."""

    name: str
    incarnation: int
    instance: str
    bus_addr: str
    rpc_addr: str
    interval: float  # seconds between heartbeats
    started: float
    runtime_dir: Path
    seeds: list[str] = field(default_factory=list)


class MembershipDriver:
    """`record()` gives the changing part of our heartbeat (tags, active, run, last_run,
    pending, dead); `stopping()` says our own sockets are closing."""

    def __init__(self, me: Me, codec: Codec, record: Callable[[], dict[str, Any]],
                 stopping: Callable[[], bool]):
        self.me = me
        self.codec = codec
        self.record = record
        self.stopping = stopping
        self.membership = Membership(me.name)
        self.listeners: list[Listener] = []
        self._bus: Bus | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pipes: dict[int, str] = {}  # bus pipe id → node name
        self._hints: dict[str, tuple[str, float]] = {}  # hinted bus address → (node, dialed at)
        self._hint_budget = HINT_DIALS
        self._hint_failed: dict[str, float] = {}  # hinted address → when it was given up
        self._clash_logged: dict[str, float] = {}
        # name → what we last saw of a clash (shown in `status`): two processes, one name.
        self.clashes: dict[str, dict[str, Any]] = {}
        self._hb_soon: asyncio.TimerHandle | None = None
        self._last_hb = 0.0  # monotonic time of our last heartbeat
        self._seq = 0
        self._last_prompt = 0.0
        self._prompt_timer: asyncio.TimerHandle | None = None

    @property
    def bus(self) -> Bus:
        if self._bus is None:
            raise RuntimeError("the membership driver has no bus yet")
        return self._bus

    def attach(self, bus: Bus) -> None:
        """The bus this driver speaks on (created by the agent with our callbacks)."""
        self._bus = bus
        self._loop = asyncio.get_running_loop()

    def leave(self) -> None:
        """Announce our shutdown."""
        if self._bus is not None:
            self._bus.send(Leave(self.me.name, self.me.incarnation, self.me.instance))

    def close(self) -> None:
        for timer in (self._prompt_timer, self._hb_soon):
            if timer is not None:
                timer.cancel()

    def heartbeat_msg(self) -> Heartbeat:
        self._seq += 1
        me = self.me
        return Heartbeat(
            node=me.name, incarnation=me.incarnation, seq=self._seq, bus=me.bus_addr,
            rpc=me.rpc_addr, interval=me.interval, instance=me.instance, version=__version__,
            started=me.started,
            peers=[Peer(m.name, m.bus, m.rpc) for m in self.membership.members()
                   if m.state in (ALIVE, SUSPECT)],
            **self.record(),
        )

    async def run(self) -> None:
        n = 0
        while True:
            self._discover(full=n % 5 == 0)
            n += 1
            self._hint_budget = HINT_DIALS
            self._expire_hints(time.monotonic())
            self._send_heartbeat()
            for t in self.membership.tick(time.monotonic()):
                self._transition(t)
            # Tick between heartbeats too: a silent peer turns suspect within a quarter
            # interval of its deadline (3 intervals), not up to a whole interval late.
            for _ in range(4):
                await asyncio.sleep(self.me.interval / 4)
                for t in self.membership.tick(time.monotonic()):
                    self._transition(t)
                self._discover(full=False)

    def on_pipe_added(self, pipe: int) -> None:
        """A new bus connection: heartbeat soon, so the peer behind it sees us alive without
        waiting a whole interval. One heartbeat for a burst of new connections, at most one
        per quarter interval: a peer reconnecting in a loop cannot make us flood the flock."""
        if self._hb_soon is None and self._loop is not None and not self.stopping():
            wait = self._last_hb + self.me.interval / 4 - time.monotonic()
            self._hb_soon = self._loop.call_later(max(0.02, wait), self._heartbeat_now)

    def _heartbeat_now(self) -> None:
        self._hb_soon = None
        self._send_heartbeat()

    def _send_heartbeat(self) -> None:
        if self._bus is None:
            return
        self._last_hb = time.monotonic()
        self.bus.send(self.heartbeat_msg())

    def _discover(self, full: bool) -> None:
        """Dial seeds, and agents in our runtime dir: only the smaller name of a pair dials,
        so two local agents share one bus pipe instead of two (every frame twice). A full
        scan also removes sockets left by dead agents; the light one only looks for names
        not dialed yet, cheap enough to run four times per interval."""
        for seed in self.me.seeds:
            self.bus.dial(seed)
        if full:
            found = {name: bus for name, (bus, _) in
                     scan_runtime_dir(self.me.runtime_dir, clean=True).items()}
        else:
            found = {}
            try:
                paths = list(self.me.runtime_dir.glob("*.bus"))
            except OSError:
                return
            for path in paths:
                name = path.name[: -len(".bus")]
                if name > self.me.name and not self.bus.is_dialed(f"ipc://{path}"):
                    if not self._connected(name) and ipc_alive(str(path)):
                        found[name] = f"ipc://{path}"
        for name, bus in found.items():
            if name > self.me.name and not self._connected(name):
                self.bus.dial(bus)

    def _connected(self, name: str) -> bool:
        return name in self._pipes.values()

    def on_bus(self, env: Envelope, msg: Message, pipe: int) -> None:
        now = time.monotonic()
        if isinstance(msg, (Heartbeat, Leave)):
            # Believe a node only about itself; a heartbeat that could keep a dead node
            # alive forever or outrank every restart is dropped before membership sees it.
            why = admit(msg, env.sender, self.codec.clock(), self.codec.window)
            if why is not None:
                self._count(why)
                log.debug("%s from %s about %s dropped: %s", type(msg).__name__,
                          env.sender, msg.node, why)
                return
        if isinstance(msg, Heartbeat):
            if msg.node == self.me.name:
                if msg.instance != self.me.instance:
                    self._clash(msg.node, f"another process at {msg.bus} uses our name "
                                f"(we are at {self.me.bus_addr})")
                return
            transitions = self.membership.heartbeat(msg, now)
            clash = next((t for t in transitions if t.new == CLASH), None)
            if clash is not None:
                self._clash(msg.node, clash.reason)
                return
            self._pipes[pipe] = msg.node
            for t in transitions:
                self._transition(t)
            for p in msg.peers:
                if p.name != self.me.name and self.membership.get(p.name) is None:
                    self._hint(p, now)
        elif isinstance(msg, Leave):
            for t in self.membership.leave(msg.node, msg.incarnation, now, msg.instance):
                self._transition(t)

    def _count(self, reason: str) -> None:
        self.codec.dropped[reason] = self.codec.dropped.get(reason, 0) + 1

    def _clash(self, name: str, why: str) -> None:
        """Two processes claim one name: keep the established one, say so now and then, and
        show it in `status` (both sides see it: each hears the other's heartbeats)."""
        self._count("name_clash")
        seen = self.clashes.get(name)
        if seen is None and len(self.clashes) >= 64:  # bounded whatever names forgers use
            self.clashes.pop(next(iter(self.clashes)))
        self.clashes[name] = {"name": name, "why": why, "at": time.time(),
                              "count": (seen or {}).get("count", 0) + 1}
        now = time.monotonic()
        last = self._clash_logged.get(name)
        if last is not None and now - last < CLASH_LOG_EVERY:
            return
        if len(self._clash_logged) >= 1024:
            self._clash_logged.clear()
        self._clash_logged[name] = now
        log.warning("name clash for %s: %s; keeping the established one", name, why)

    def _hint(self, p: Peer, now: float) -> None:
        """A third party names a node we do not know: dial its address, within budget."""
        addr = p.bus
        if (addr == self.me.bus_addr or addr in self._hints or self.bus.is_dialed(addr)
                or self._hint_budget <= 0):
            return
        if addr.startswith(f"ipc://{self.me.runtime_dir}/"):
            return  # our runtime dir: scanning finds it, with one side of a pair dialing
        failed = self._hint_failed.get(addr)
        if failed is not None and now - failed < HINT_RETRY:
            return
        self._hint_budget -= 1
        self._hints[addr] = (p.name, now)
        self.bus.dial(addr)

    def _expire_hints(self, now: float) -> None:
        """Keep a hinted dial once the named node heartbeats from that address; undial it
        if it has not within HINT_PATIENCE intervals."""
        for addr, (name, at) in list(self._hints.items()):
            m = self.membership.get(name)
            if m is not None and m.bus == addr and m.state == ALIVE:
                del self._hints[addr]  # now announced by its owner
            elif now - at >= HINT_PATIENCE * self.me.interval:
                del self._hints[addr]
                if addr not in self.me.seeds:
                    self.bus.undial(addr)
                self._hint_failed[addr] = now
        if len(self._hint_failed) > 1024:  # bounded whatever a forger lists
            self._hint_failed = {a: t for a, t in self._hint_failed.items()
                                 if now - t < HINT_RETRY}
            if len(self._hint_failed) > 4096:
                self._hint_failed.clear()

    def on_pipe_removed(self, pipe: int) -> None:
        name = self._pipes.pop(pipe, None)
        if self.stopping():
            return  # our own sockets are closing: the peers did not go anywhere
        if name and name not in self._pipes.values():
            for t in self.membership.disconnected(name, time.monotonic()):
                self._transition(t)

    def _transition(self, t: Transition) -> None:
        log.info("%s: %s → %s (%s)", t.name, t.old or "new", t.new, t.reason)
        m = self.membership.get(t.name)
        if t.new in (DOWN, LEFT) and m is not None and self._bus is not None:
            if m.bus not in self.me.seeds and not m.bus.startswith("ipc://"):
                self.bus.undial(m.bus)
        for listener in self.listeners:
            try:
                listener(t, m)
            except Exception:
                log.exception("membership listener failed on %s", t)

    async def sync_view(self, synced: threading.Event) -> None:
        """Set `view_synced` once the seeds, the local nodes and the peers they name have been
        heard from, or after VIEW_SYNC_HEARTBEATS heartbeats, whichever comes first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + VIEW_SYNC_HEARTBEATS * self.me.interval
        want_bus = set(self.me.seeds)
        want = set(scan_runtime_dir(self.me.runtime_dir)) - {self.me.name}
        try:
            while loop.time() < deadline:
                known = self.membership.members()
                names = {m.name for m in known}
                heard_of = {p.name for m in known
                            for p in (getattr(m.info, "peers", None) or ())} - {self.me.name}
                if want_bus <= {m.bus for m in known} and (want | heard_of) <= names:
                    break
                await asyncio.sleep(self.me.interval / 10)
        finally:
            synced.set()

    def prompt(self) -> None:
        """Tell the flock about a start or end of run now, but at most every 50 ms: a stream
        of reactions must not become a stream of heartbeats. The last state always goes out."""
        now = time.monotonic()
        if self._bus is None:
            return
        if now - self._last_prompt >= 0.05:
            self._last_prompt = now
            self._send_heartbeat()
        elif self._prompt_timer is None:
            def fire() -> None:
                self._prompt_timer = None
                self._last_prompt = time.monotonic()
                self._send_heartbeat()

            self._prompt_timer = asyncio.get_running_loop().call_later(
                0.05 - (now - self._last_prompt), fire)
