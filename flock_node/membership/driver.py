"""`SwimDriver`: runs the SWIM state machine (`AgentSwim`) in the agent over nng.

It owns the clock (the agent's loop), the datagram transport (a Pull0 listener and a bounded
pool of Push0 senders), the signatures of statements (`Notary`), our facts (published as a new
record version when one changes, not every second), the ring neighbours whose standing
connections turn a `kill -9` into an immediate suspicion, and the local discovery of agents in
the runtime dir. It has the surface of the heartbeat driver (`discovery.MembershipDriver`), so
the agent and its listeners (delivery's target_back, subscriptions' wake) run either.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from flock_node import __version__
from flock_node.discovery import VIEW_SYNC_HEARTBEATS, Listener, Me
from flock_node.membership.agentswim import AgentSwim
from flock_node.membership.heartbeat import ALIVE, DOWN, LEFT, SUSPECT, Transition, admit
from flock_node.membership.messages import Alive, BadMessage, Message, decode, encode
from flock_node.membership.ring import RING, Ring
from flock_node.membership.statements import Notary
from flock_node.membership.table import Change, Config, Output
from flock_node.membership.view import SwimView, facts_of
from flock_node.protocol import Codec, Envelope, Heartbeat, Leave
from flock_node.protocol import Message as Frame
from flock_node.transport import Bus, scan_runtime_dir
from flock_node.transport.base import swim_for_bus
from flock_node.transport.datagram import POOL, Datagrams
from flock_node.trust.tls import TlsIdentity

log = logging.getLogger("flock.swim")

# Bad news (a member suspect, down or left) is passed on at once to GOSSIP_FANOUT members we
# are connected to, by every member it changes: a crash reaches a flock of hundreds within
# a few hops of milliseconds. Routine news (joins, new facts, refutations) waits for a gossip
# round (every GOSSIP_INTERVAL while some is queued) or rides on the probes: each news goes
# out a bounded number of times, and the fewer the messages that carry it, the less CPU a
# Python agent spends (about a millisecond a message, all told).
GOSSIP_INTERVAL = 1.0
GOSSIP_FANOUT = 3
FACTS_EVERY = 1.0  # seconds between two looks at our facts
FACTS_SLACK = 0.3  # ... or this much earlier, when the loop is awake anyway
SCAN_EVERY = 5.0  # seconds between two scans of the runtime dir for local agents


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _first_in_a_minute(seen: dict[str, float], sender: str, now: float) -> bool:
    """Whether `sender` was not named in the last minute (then it is named now); bounded
    whatever names the senders use."""
    if now - seen.get(sender, -1e18) < 60.0:
        return False
    if len(seen) >= 64:
        seen.clear()
    seen[sender] = now
    return True


class SwimDriver:
    """`record()` gives our changing facts; `stopping()` says our own sockets are closing."""

    def __init__(self, me: Me, codec: Codec, record: Callable[[], dict[str, Any]],
                 stopping: Callable[[], bool], swim_addr: str,
                 tls: TlsIdentity | None = None, config: Config | None = None,
                 pool: int = POOL) -> None:
        self.me = me
        self.codec = codec
        self.record = record
        self.stopping = stopping
        self.swim_addr = swim_addr
        self.notary = Notary(codec.key, tls)
        # --heartbeat is the probe interval: one member probed per interval, as memberlist.
        cfg = config or Config(probe_interval=me.interval, probe_timeout=me.interval / 2,
                               gossip_budget=4096 if tls is not None else 2048)
        # The store's facts are published once the agent is wired (`attach`).
        self._facts = facts_of({"bus": me.bus_addr, "rpc": me.rpc_addr, "version": __version__,
                                "started": me.started})
        alive = Alive(me.name, me.incarnation, me.instance, swim_addr, 1, self._facts)
        self.swim = AgentSwim(alive, random.Random(), cfg, vouch=self.notary.vouch,
                              sign=self.notary.sign, vouch_many=self.notary.vouch_many)
        self.membership = SwimView(self.swim)
        self.listeners: list[Listener] = []
        self.clashes: dict[str, dict[str, Any]] = {}  # SWIM settles a clash by incarnation
        self.width = RING + pool // 2
        self.net = Datagrams(codec, self._on_frame, self._on_lost, tls, pool=pool - pool // 2)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future[None] | None = None  # the run loop's sleep
        self._facts_due = 0.0
        self.ring = Ring(me.name, self.width)
        self._live: set[str] = set()  # addresses of the members alive now
        self._gossiping = False  # the run loop knows news waits in the queue
        self._mesh_warned: dict[str, float] = {}  # mesh agents named in the log, and when
        # Told of the newest revocation list version a live member holds, and where it is.
        self.on_crl: Callable[[int, str], None] | None = None
        self.swim.on_clash = self._clash

    # -- the heartbeat driver's surface ----------------------------------------------------
    def attach(self, bus: Bus) -> None:
        """Start listening for SWIM frames (the bus only carries events for consoles)."""
        self._loop = asyncio.get_running_loop()
        self.net.listen(self.swim_addr)
        self.net.start()
        self._publish(self.now())

    def on_bus(self, env: Envelope, msg: Frame, pipe: int) -> None:
        """Members speak SWIM: a heartbeat here comes from an agent on the mesh, which can
        never be a member. Counted (and judged as the mesh would), and named in the log."""
        if not isinstance(msg, (Heartbeat, Leave)):
            return
        why = admit(msg, env.sender, self.codec.clock(), self.codec.window)
        self._count(why or "mesh_member")
        if why is not None or not isinstance(msg, Heartbeat):
            return
        if not _first_in_a_minute(self._mesh_warned, env.sender, time.monotonic()):
            return
        log.warning("%s runs --membership mesh and we run swim: it is not a member here; "
                    "every agent of a flock must run one mode", env.sender)

    def on_pipe_added(self, pipe: int) -> None:
        """Nothing: the bus is not how members find each other here."""

    def on_pipe_removed(self, pipe: int) -> None:
        """Nothing: SWIM connections report their own losses."""

    def now(self) -> float:
        return time.monotonic()

    async def run(self) -> None:
        """Join, then drive the timers: probes, gossip rounds, facts, local discovery."""
        now = self.now()
        self._handle(self.swim.start(now, self._seeds()))
        next_gossip = now + GOSSIP_INTERVAL
        next_scan = now + SCAN_EVERY
        last = now
        while True:
            now = self.now()
            if now - last > max(2.0, 2 * self.me.interval):
                # We were frozen (SIGSTOP, a stalled VM) or starved: the acks to our probes
                # wait in the socket. Read them before the timers run, or we would suspect
                # the members that did answer.
                await asyncio.sleep(0.05)
                now = self.now()
            self._handle(self.swim.tick(now))
            queued = len(self.swim.queue) > 0
            if queued and now >= next_gossip:
                next_gossip = now + GOSSIP_INTERVAL
                self._handle(self.swim.gossip_round(now, GOSSIP_FANOUT, self._near()))
                queued = len(self.swim.queue) > 0
            self._gossiping = queued
            # Awake anyway (a probe, its timeout): look at our facts now if they are nearly
            # due, rather than wake up again for them alone.
            if now >= self._facts_due - FACTS_SLACK:
                self._facts_due = now + FACTS_EVERY
                self._publish(now)
                # A member restarted elsewhere (another port, another host) can replace a
                # live entry without a change of state: look at the ring's addresses too.
                self._rering()
            if now >= next_scan:
                next_scan = now + SCAN_EVERY
                self._scan(now)
            due = self.swim.next_deadline()
            # An idle flock has nothing queued: no wake-ups for gossip rounds then (`_handle`
            # wakes us when news arrives).
            wait = (min(next_gossip, self._facts_due) if queued else self._facts_due) - now
            if due is not None:
                wait = min(wait, due - now)
            await self._sleep(max(0.005, wait))
            last = self.now()

    async def _sleep(self, seconds: float) -> None:
        """Until `seconds` pass or `_poke` (a plain future and timer: `wait_for` would make a
        task and a timeout each time, several loop turns for every wake-up)."""
        loop = asyncio.get_running_loop()
        fut = self._waiter = loop.create_future()
        timer = loop.call_later(seconds, _resolve, fut)
        try:
            await fut
        finally:
            timer.cancel()
            self._waiter = None

    def _poke(self) -> None:
        """Wake the run loop now."""
        if self._waiter is not None:
            _resolve(self._waiter)

    def leave(self) -> None:
        """Announce our departure (then stay silent)."""
        if self._loop is not None and not self.swim.left:
            self._handle(self.swim.leave(self.now()))

    def close(self) -> None:
        """Timers end with the `run` task; sockets close in `aclose`."""

    async def aclose(self) -> None:
        """Close our sockets."""
        await self.net.close()

    def prompt(self) -> None:
        """A run started or ended (from any thread): look at our facts within 50 ms."""
        loop = self._loop
        if loop is None:
            return

        def soon() -> None:
            self._facts_due = min(self._facts_due, self.now() + 0.05)
            self._poke()

        try:
            loop.call_soon_threadsafe(soon)
        except RuntimeError:
            pass  # the loop is closing

    async def sync_view(self, synced: threading.Event) -> None:
        """Set `synced` once a seed or local agent answered our join (we hold the flock's
        table), or after VIEW_SYNC_HEARTBEATS intervals, or at once with nobody to ask."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + VIEW_SYNC_HEARTBEATS * self.me.interval
        try:
            seeds = self._seeds()
            local = set(scan_runtime_dir(self.me.runtime_dir)) - {self.me.name}
            while loop.time() < deadline and seeds:
                if self.swim.table and local <= set(self.swim.table):
                    break
                await asyncio.sleep(0.02)
        finally:
            synced.set()

    # -- inside ----------------------------------------------------------------------------
    def _seeds(self) -> list[str]:
        seeds = []
        for s in self.me.seeds:
            try:
                seeds.append(swim_for_bus(s))
            except ValueError:
                log.warning("seed %s: cannot tell its SWIM address", s)
        for name, (bus, _) in scan_runtime_dir(self.me.runtime_dir).items():
            if name != self.me.name:
                seeds.append(swim_for_bus(bus))
        return [s for s in dict.fromkeys(seeds) if s != self.swim_addr]

    def _scan(self, now: float) -> None:
        """Local agents we do not know yet (started after us, or missed): join them."""
        known = set(self.swim.table)
        for name, (bus, _) in scan_runtime_dir(self.me.runtime_dir, clean=True).items():
            if name != self.me.name and name not in known:
                self._handle(self.swim.join(now, swim_for_bus(bus)))

    def _current_facts(self) -> dict[str, Any]:
        rec = dict(self.record())
        rec.update(bus=self.me.bus_addr, rpc=self.me.rpc_addr, version=__version__,
                   started=self.me.started)
        return facts_of(rec)

    def _publish(self, now: float) -> None:
        """Our facts changed: a new version of our statement goes out in the gossip."""
        try:
            facts = self._current_facts()
        except Exception:  # the store is closing or busy: the next look tries again
            log.debug("facts unavailable", exc_info=True)
            return
        if facts != self._facts:
            self._facts = facts
            self._handle(self.swim.update_record(now, facts))
        if self.on_crl is not None:
            best = max(((m.info.crl, m.rpc) for m in self.membership.members()
                        if m.state == ALIVE), default=None)
            if best is not None and best[0] > facts.get("crl", 0):
                self.on_crl(*best)

    def _clash(self, claim: Alive) -> None:
        """Another process claims our name (we refute it): say so, as the mesh does."""
        now = time.time()
        seen = self.clashes.get(claim.node)
        self.clashes[claim.node] = {"name": claim.node, "at": now,
                                    "why": f"another process at {claim.addr} uses our name "
                                           f"(we are at {self.swim_addr})",
                                    "count": (seen or {}).get("count", 0) + 1}
        if seen is None or now - seen["at"] >= 60.0:
            self._count("name_clash")
            log.warning("name clash for %s: another process at %s; keeping ours",
                        claim.node, claim.addr)

    def _on_frame(self, sender: str, data: bytes) -> None:
        try:
            msg: Message = decode(data)
        except BadMessage as e:
            log.debug("swim message from %s dropped: %s", sender, e)
            self._count("malformed")
            return
        if msg.sender != sender:  # the envelope's (or the certificate's) sender, not a claim
            self._count("sender_mismatch")
            return
        now = self.now()
        self.membership.heard(sender, now)
        self._handle(self.swim.receive(now, msg))

    def _on_lost(self, addr: str) -> None:
        if self.stopping():
            return
        node = next((n for n in self.ring.names if self.swim.addr_of(n) == addr), None)
        if node is None:
            node = next((n for n, e in self.swim.table.items()
                         if type(e) is Alive and e.addr == addr), None)
        if node is not None and self.swim.state(node) == ALIVE:
            now = self.now()
            log.info("%s: connection closed, suspected at once", node)
            self._handle(self.swim.lost(now, node))  # passed on at once: bad news

    def _handle(self, out: Output) -> None:
        sends, changes = out
        net = self.net
        for addr, msg in sends:
            net.send(addr, encode(msg))
        if len(self.swim.queue) and not self._gossiping:
            self._gossiping = True
            self._poke()
        if changes:
            now = self.now()
            for c in changes:
                self._changed(c, now)
            self._rering()
            for node, _, new in changes:
                if new in (DOWN, LEFT):  # unpinned by now: no more redials to it
                    self.net.forget(self.swim.addr_of(node))
            if any(c[2] in (SUSPECT, DOWN, LEFT) for c in changes):
                self._handle(self.swim.gossip_round(now, GOSSIP_FANOUT, self._near()))

    def _changed(self, c: Change, now: float) -> None:
        node, old, new = c
        self.membership.changed(node, now, new)
        m = self.membership.get(node)
        t = Transition(node, old, new, "joined" if old is None else "swim")
        log.info("%s: %s → %s", node, old or "new", new)
        for listener in self.listeners:
            try:
                listener(t, m)
            except Exception:
                log.exception("membership listener failed on %s", t)

    def _near(self) -> list[str]:
        """Live members we hold a connection to."""
        live = self._live
        return [a for a in self.net.connected() if a in live]

    def _rering(self) -> None:
        pin, gone = self.ring.update(self.swim.table)
        self._live = self.ring.live
        if pin is not None:
            self.net.pin(pin)
        for addr in gone:
            self.net.forget(addr)
        self.swim.watch = self.ring.watch

    def _count(self, reason: str) -> None:
        self.codec.dropped[reason] = self.codec.dropped.get(reason, 0) + 1
