"""The node agent: wires store, engine, membership and transport under one asyncio loop.

One work queue runs converges and out-of-band reactions in order on one worker thread, so
they never overlap; `active` is true while either runs. The outbox is drained by a delivery
task, subscriptions we want on other nodes by a sync task, heartbeats by a third.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flock_node import __version__
from flock_node.actors import Dispatcher
from flock_node.actors.flock_api import FlockApi, summary
from flock_node.actors.resource_manager import ResourceManager
from flock_node.delivery import Deliverer, Target
from flock_node.engine import Engine
from flock_node.membership import (
    ALIVE,
    CLASH,
    DOWN,
    LEFT,
    SUSPECT,
    Membership,
    Transition,
    admit,
)
from flock_node.paths import ensure_private_dir
from flock_node.protocol import (
    Codec,
    Envelope,
    Event,
    Heartbeat,
    Leave,
    Message,
    Peer,
)
from flock_node.store import (
    OutboxItem,
    Store,
)
from flock_node.subscriptions import SubscriptionSync
from flock_node.supervisor import Supervisor
from flock_node.transport import (
    AsyncRpc,
    Bus,
    RpcServer,
    SyncRpc,
    cancel_and_wait,
    ipc_addresses,
    ipc_alive,
    lock_name,
    scan_runtime_dir,
    tcp_addresses,
)
from flock_node.work import Job, WorkQueue

log = logging.getLogger("flock.agent")

VIEW_SYNC_HEARTBEATS = 3  # heartbeats a first converge waits at most to hear the flock
# A third party's `peers` list is only a hint: at most HINT_DIALS new hinted addresses are
# dialed per heartbeat interval, each undialed unless the named node heartbeats from it
# within HINT_PATIENCE intervals, and not tried again for HINT_RETRY seconds. A forged list
# of any length costs a bounded number of connections.
HINT_DIALS = 4
HINT_PATIENCE = 3
HINT_RETRY = 60.0
CLASH_LOG_EVERY = 60.0  # seconds between two name-clash warnings about one name


@dataclass
class AgentConfig:
    name: str
    recipes: list[Path] = field(default_factory=list)
    listen: str | None = None
    seeds: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    state_dir: Path = Path(".")
    runtime_dir: Path = Path(".")
    key: bytes | None = None
    heartbeat: float = 1.0
    ttl: float = 24 * 3600.0
    stop_timeout: float = 30.0  # SIGTERM: how long the resource in progress may still take


class Agent:
    def __init__(self, cfg: AgentConfig):
        self.cfg = cfg
        self.name = cfg.name
        ensure_private_dir(cfg.runtime_dir)
        if not cfg.listen:
            # Our name in the runtime dir, taken before anything else: refuses a second
            # agent of the same name, and tells others scanning the dir that our sockets
            # are not stale even while we are still starting.
            self._name_lock = lock_name(cfg.runtime_dir, cfg.name)
        ensure_private_dir(cfg.state_dir)
        self.store = Store(cfg.state_dir / "flock.db", node=cfg.name, ttl=cfg.ttl)
        self.incarnation = self.store.next_incarnation()
        # Per process: peers tell a restart from a late heartbeat even if the incarnation
        # went back (state wiped, clock reset), and two processes claiming a name apart.
        self.instance = uuid.uuid4().hex[:16]
        if cfg.listen:
            self.bus_addr, self.rpc_addr = tcp_addresses(cfg.listen)
        else:
            self.bus_addr, self.rpc_addr = ipc_addresses(cfg.runtime_dir, cfg.name)
        self.codec = Codec(cfg.key, cfg.name)
        self.membership = Membership(cfg.name)
        self.started = time.time()
        self._pipes: dict[int, str] = {}  # bus pipe id → node name
        self._hints: dict[str, tuple[str, float]] = {}  # hinted bus address → (node, dialed at)
        self._hint_budget = HINT_DIALS
        self._hint_failed: dict[str, float] = {}  # hinted address → when it was given up
        self._clash_logged: dict[str, float] = {}
        self._hb_soon: asyncio.TimerHandle | None = None
        self._last_hb = 0.0  # monotonic time of our last heartbeat
        self._seq = 0
        self._last_prompt = 0.0
        self._prompt_timer: asyncio.TimerHandle | None = None
        self.ready = False  # the first compile ended: resource_manager answers for real
        self.view_synced = threading.Event()  # heard from the seeds: targets can resolve
        self.supervisor = Supervisor()
        self.rpc = AsyncRpc(self.codec, timeout=2.0)
        self.deliverer = Deliverer(self.store, self.rpc, cfg.name, self._locate, self.emit)
        self.subscriptions = SubscriptionSync(self.store, self.rpc, cfg.name,
                                              self._resolve_addr, self.emit)
        self._stopped = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.crashed = False  # an internal task died: exit non-zero so a supervisor restarts us
        self.engine = Engine(node=cfg.name, recipes=list(cfg.recipes), store=self.store, hooks=self)
        self.work = WorkQueue(self.engine, self.store, cfg.stop_timeout, self.emit,
                              self._prompt_heartbeat, self._job_finished, self._stopped.set)
        self.dispatcher = Dispatcher(cfg.name, [
            FlockApi(self, self.store, self.work, self.deliverer, self.membership),
            ResourceManager(self, self.store, self.work, self.subscriptions, self.emit),
        ])

    # -- what the actors read about this node (NodeFacts) ---------------------------------
    @property
    def tags(self) -> list[str]:
        return list(self.cfg.tags)

    def dropped_frames(self) -> dict[str, int]:
        return dict(self.codec.dropped)

    def loop_failures(self) -> list[dict[str, Any]]:
        return self.supervisor.report()

    # -- engine hooks (called from the worker thread) -------------------------------------
    def resolve_targets(self, node: str | None, tag: str | None) -> list[str]:
        if node is not None and not any(c in node for c in "*?["):
            return [node]  # a named node is queued even if unknown now: it may come back
        # Every member we know, gone ones too: a node restarting (left) or down for a while
        # gets its notification when it is back; the TTL bounds how long it is waited for.
        self._await_view()
        names = set(self.membership.match(node, tag, include_gone=True))
        if (node is None or _glob(node, self.name)) and (tag is None or tag in self.cfg.tags):
            names.add(self.name)
        return sorted(names)

    def outbox_changed(self) -> None:
        """Outbox rows changed in a way only a query sees (delayed ones released...)."""
        self.deliverer.changed()

    def outbox_added(self, items: list[OutboxItem]) -> None:
        """Rows just committed by the worker: immediate ones are pending now. Handing them to
        the delivery loop in memory lets it send them without reading the outbox back."""
        rows = [{"id": i.id, "target": i.target, "resource": i.resource, "action": i.action,
                 "hops": i.hops, "cause": _plain(i.cause), "attempts": 0}
                for i in items if i.timing != "delayed" and i.unmatched is None]
        self.deliverer.added(rows)

    def _await_view(self) -> None:
        """Before the first converge resolves a glob or tag: give the seeds and local nodes a
        moment to be heard (bounded), so targets resolve against the flock, not an empty view."""
        self.view_synced.wait(VIEW_SYNC_HEARTBEATS * self.cfg.heartbeat)

    def _locate(self, target: str) -> Target:
        m = self.membership.get(target)
        return Target(self._resolve_addr(target), m.state if m is not None else None)

    # -- lifecycle -------------------------------------------------------------------------
    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.bus = Bus(self.codec, self._on_bus, self._on_pipe_removed, self._on_pipe_added)
        self.server = RpcServer(self.codec, self.dispatcher.handle)
        # Recover before serving: a notification accepted now must find the inbox as the
        # last run left it, or a retry landing during the start would be queued twice.
        interrupted = self.store.recover_interrupted_runs()
        if interrupted:
            log.warning("closed %d run(s) interrupted by the last stop", len(interrupted))
        for n in self.store.inbox_recover():
            self.work.enqueue_reaction(n)
        self.bus.listen(self.bus_addr)
        self.server.listen(self.rpc_addr)
        self.bus.start()
        self.server.start()
        self._bind_recipe_flock()
        # Heartbeats first: the flock sees us (and we it) while the recipe compiles.
        self.supervisor.spawn("heartbeat", self._heartbeat_loop)
        view = asyncio.create_task(self._sync_view(), name="sync-view")
        await self.work.compile_at_start(self._stopped)
        if self.work.abandoned:  # stopped while a recipe compile hung: leave without it
            self._tasks = [*self.supervisor.all(), view]
            await self._shutdown()
            return
        self.ready = True
        log.info("node %s up (incarnation %d) bus=%s rpc=%s", self.name, self.incarnation,
                 self.bus_addr, self.rpc_addr)
        self.work.open()
        self.supervisor.spawn("delivery", self.deliverer.run)
        self.supervisor.spawn("subscriptions", self.subscriptions.run)
        self._tasks = [*self.supervisor.all(), view]
        await self._stopped.wait()
        await self._shutdown()

    def request_stop(self) -> None:
        """SIGTERM/SIGINT: finish the resource in progress if it ends within --stop-timeout,
        else kill it; persist, announce, exit. A second signal kills it at once."""
        self.work.stop()

    async def _shutdown(self) -> None:
        with contextlib.suppress(Exception):
            self.bus.send(Leave(self.name, self.incarnation, self.instance))
            await asyncio.sleep(0.05)  # let the goodbye leave the socket buffers
        if self._prompt_timer is not None:
            self._prompt_timer.cancel()
        if self._hb_soon is not None:
            self._hb_soon.cancel()
        await cancel_and_wait(self._tasks, 2.0)
        await self.server.close()
        await self.bus.close()
        self.rpc.close()
        self._recipe_rpc.close()
        self.work.shutdown()
        self.store.close()
        log.info("node %s stopped", self.name)

    async def _sync_view(self) -> None:
        """Set `view_synced` once the seeds, the local nodes and the peers they name have been
        heard from, or after VIEW_SYNC_HEARTBEATS heartbeats, whichever comes first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + VIEW_SYNC_HEARTBEATS * self.cfg.heartbeat
        want_bus = set(self.cfg.seeds)
        want = set(scan_runtime_dir(self.cfg.runtime_dir)) - {self.name}
        try:
            while loop.time() < deadline:
                known = self.membership.members()
                names = {m.name for m in known}
                heard_of = {p.name for m in known
                            for p in (getattr(m.info, "peers", None) or ())} - {self.name}
                if want_bus <= {m.bus for m in known} and (want | heard_of) <= names:
                    break
                await asyncio.sleep(self.cfg.heartbeat / 10)
        finally:
            self.view_synced.set()

    def _bind_recipe_flock(self) -> None:
        from flock_node.client import Flock
        from flock_node.dsl import bind_flock

        self._recipe_rpc = SyncRpc(Codec(self.cfg.key, self.name), timeout=2.0)
        bind_flock(Flock(self._recipe_rpc, resolver=self._resolve_addr))

    def _resolve_addr(self, name: str) -> str | None:
        if name == self.name:
            return self.rpc_addr
        m = self.membership.get(name)
        if m is not None:
            return m.rpc
        local = scan_runtime_dir(self.cfg.runtime_dir).get(name)
        return local[1] if local else None

    # -- heartbeats and discovery ----------------------------------------------------------
    def heartbeat_msg(self) -> Heartbeat:
        self._seq += 1
        counts = self.store.outbox_counts()
        last = self.store.last_run()
        return Heartbeat(
            node=self.name, incarnation=self.incarnation, seq=self._seq, bus=self.bus_addr,
            rpc=self.rpc_addr, interval=self.cfg.heartbeat, instance=self.instance,
            version=__version__,
            tags=list(self.cfg.tags), active=self.work.active, run=self.work.progress,
            last_run=summary(last), pending=counts.get("pending", 0) + counts.get("held", 0),
            dead=counts.get("dead", 0), started=self.started,
            peers=[Peer(m.name, m.bus, m.rpc) for m in self.membership.members()
                   if m.state in (ALIVE, SUSPECT)],
        )

    async def _heartbeat_loop(self) -> None:
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
                await asyncio.sleep(self.cfg.heartbeat / 4)
                for t in self.membership.tick(time.monotonic()):
                    self._transition(t)
                self._discover(full=False)

    def _on_pipe_added(self, pipe: int) -> None:
        """A new bus connection: heartbeat soon, so the peer behind it sees us alive without
        waiting a whole interval. One heartbeat for a burst of new connections, at most one
        per quarter interval: a peer reconnecting in a loop cannot make us flood the flock."""
        if self._hb_soon is None and self._loop is not None and not self.work.stopping.is_set():
            wait = self._last_hb + self.cfg.heartbeat / 4 - time.monotonic()
            self._hb_soon = self._loop.call_later(max(0.02, wait), self._heartbeat_now)

    def _heartbeat_now(self) -> None:
        self._hb_soon = None
        self._send_heartbeat()

    def _send_heartbeat(self) -> None:
        self._last_hb = time.monotonic()
        self.bus.send(self.heartbeat_msg())

    def _discover(self, full: bool) -> None:
        """Dial seeds, and agents in our runtime dir: only the smaller name of a pair dials,
        so two local agents share one bus pipe instead of two (every frame twice). A full
        scan also removes sockets left by dead agents; the light one only looks for names
        not dialed yet, cheap enough to run four times per interval."""
        for seed in self.cfg.seeds:
            self.bus.dial(seed)
        if full:
            found = {name: bus for name, (bus, _) in
                     scan_runtime_dir(self.cfg.runtime_dir, clean=True).items()}
        else:
            found = {}
            try:
                paths = list(self.cfg.runtime_dir.glob("*.bus"))
            except OSError:
                return
            for path in paths:
                name = path.name[: -len(".bus")]
                if name > self.name and not self.bus.is_dialed(f"ipc://{path}"):
                    if not self._connected(name) and ipc_alive(str(path)):
                        found[name] = f"ipc://{path}"
        for name, bus in found.items():
            if name > self.name and not self._connected(name):
                self.bus.dial(bus)

    def _connected(self, name: str) -> bool:
        return name in self._pipes.values()

    def _on_bus(self, env: Envelope, msg: Message, pipe: int) -> None:
        now = time.monotonic()
        if isinstance(msg, (Heartbeat, Leave)):
            # Believe a node only about itself; a heartbeat that could keep a dead node
            # alive forever or outrank every restart is dropped before membership sees it.
            why = admit(msg, env.sender, self.codec.clock(), self.codec.window)
            if why is not None:
                self._drop(why)
                log.debug("%s from %s about %s dropped: %s", type(msg).__name__,
                          env.sender, msg.node, why)
                return
        if isinstance(msg, Heartbeat):
            if msg.node == self.name:
                if msg.instance != self.instance:
                    self._clash(msg.node, f"another process at {msg.bus} uses our name "
                                f"(we are at {self.bus_addr})")
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
                if p.name != self.name and self.membership.get(p.name) is None:
                    self._hint(p, now)
        elif isinstance(msg, Leave):
            for t in self.membership.leave(msg.node, msg.incarnation, now, msg.instance):
                self._transition(t)

    def _drop(self, reason: str) -> None:
        self.codec.dropped[reason] = self.codec.dropped.get(reason, 0) + 1

    def _clash(self, name: str, why: str) -> None:
        """Two processes claim one name: keep the established one, say so now and then."""
        self._drop("name_clash")
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
        if (addr == self.bus_addr or addr in self._hints or self.bus.is_dialed(addr)
                or self._hint_budget <= 0):
            return
        if addr.startswith(f"ipc://{self.cfg.runtime_dir}/"):
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
            elif now - at >= HINT_PATIENCE * self.cfg.heartbeat:
                del self._hints[addr]
                if addr not in self.cfg.seeds:
                    self.bus.undial(addr)
                self._hint_failed[addr] = now
        if len(self._hint_failed) > 1024:  # bounded whatever a forger lists
            self._hint_failed = {a: t for a, t in self._hint_failed.items()
                                 if now - t < HINT_RETRY}
            if len(self._hint_failed) > 4096:
                self._hint_failed.clear()

    def _on_pipe_removed(self, pipe: int) -> None:
        name = self._pipes.pop(pipe, None)
        if self.work.stopping.is_set():
            return  # our own sockets are closing: the peers did not go anywhere
        if name and name not in self._pipes.values():
            for t in self.membership.disconnected(name, time.monotonic()):
                self._transition(t)

    def _transition(self, t: Transition) -> None:
        log.info("%s: %s → %s (%s)", t.name, t.old or "new", t.new, t.reason)
        if t.new == ALIVE:
            self.deliverer.target_back(t.name)  # someone came (back): retry what waits for it
            self.subscriptions.wake()
        if t.new in (DOWN, LEFT):
            m = self.membership.get(t.name)
            if m is not None:
                self.rpc.forget(m.rpc)  # a fresh socket if it comes back
                if m.bus not in self.cfg.seeds and not m.bus.startswith("ipc://"):
                    self.bus.undial(m.bus)

    def emit(self, event: str, **data: Any) -> None:
        if self._loop is None:
            return
        self.bus.send(Event(self.name, event, time.time(), data))

    def _job_finished(self, job: Job) -> None:
        self.deliverer.wake()
        if job.kind == "converge":
            self.store.recheck_recipe_subscriptions()
        self.subscriptions.wake()

    def _prompt_heartbeat(self) -> None:
        """Tell the flock about a start or end of run now, but at most every 50 ms: a stream
        of reactions must not become a stream of heartbeats. The last state always goes out."""
        now = time.monotonic()
        if now - self._last_prompt >= 0.05:
            self._last_prompt = now
            self.bus.send(self.heartbeat_msg())
        elif self._prompt_timer is None:
            def fire() -> None:
                self._prompt_timer = None
                self._last_prompt = time.monotonic()
                self.bus.send(self.heartbeat_msg())

            self._prompt_timer = asyncio.get_running_loop().call_later(
                0.05 - (now - self._last_prompt), fire)


def _glob(pattern: str, name: str) -> bool:
    from fnmatch import fnmatchcase

    return fnmatchcase(name, pattern)


def _plain(obj: Any) -> Any:
    """A value as the outbox row stores it (JSON), so both delivery paths send the same."""
    return json.loads(json.dumps(obj, default=repr, sort_keys=True))


def run_agent(cfg: AgentConfig) -> int:
    """Run until SIGTERM/SIGINT; exit code 0 on a clean stop."""
    from flock_node.engine.shell import children

    agent = Agent(cfg)
    # After Agent(): it holds our name, so the groups in the file are no live agent's.
    killed = children.use_file(cfg.state_dir / "children")
    if killed:
        log.warning("killed %d process group(s) left running by the previous agent", len(killed))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, agent.request_stop)
        await agent.run()

    # The converge worker and the loop share the GIL: with the default 5 ms switch interval
    # every nng or SQLite call that releases it can wait 5 ms to get it back.
    sys.setswitchinterval(0.0005)
    asyncio.run(main())
    if agent.work.abandoned:
        # The stuck worker thread would keep the interpreter from exiting: flush, then leave.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1 if agent.crashed else 0)
    return 1 if agent.crashed else 0

