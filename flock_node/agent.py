"""The node agent: builds the parts, gives each its collaborators, and runs them under one
asyncio loop (start order, stop, shutdown).

One work queue runs converges and out-of-band reactions in order on one worker thread, so
they never overlap; `active` is true while either runs. The outbox is drained by a delivery
task, subscriptions we want on other nodes by a sync task, heartbeats by the membership
driver, scheduled converges by `schedule`; names resolve in `directory`, the revocation list
follows the flock in `trust/crl_sync`, and the process around the agent is `process`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flock_node import sdnotify
from flock_node.actors import Dispatcher
from flock_node.actors.flock_api import FlockApi
from flock_node.actors.resource_manager import ResourceManager
from flock_node.delivery import Deliverer
from flock_node.directory import Directory
from flock_node.discovery import VIEW_SYNC_HEARTBEATS, Me, MembershipDriver
from flock_node.engine import Engine
from flock_node.facts import node_record
from flock_node.fastpath import Launched
from flock_node.member_events import MemberEvents
from flock_node.membership.driver import SwimDriver
from flock_node.paths import ensure_private_dir
from flock_node.protocol import (
    Codec,
    Envelope,
    Event,
    Heartbeat,
    Message,
)
from flock_node.schedule import Schedule
from flock_node.store import (
    OutboxItem,
    Store,
    lock_state,
    outgoing,
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
    lock_name,
    tcp_addresses,
)
from flock_node.transport.base import swim_for_bus
from flock_node.trust.actor import TrustApi
from flock_node.trust.crl_sync import CrlSync
from flock_node.trust.guard import Guard, unverified_via
from flock_node.trust.policy import DEFAULT as DEFAULT_POLICY
from flock_node.trust.policy import Policy
from flock_node.trust.tls import TlsIdentity
from flock_node.work import Job, WorkQueue

log = logging.getLogger("flock.agent")



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
    interval: float | None = None  # converge every interval (+ splay) seconds
    splay: float = 0.0
    tls: TlsIdentity | None = None  # tls+tcp: our certificate, the CA, the revocation gate
    policy: Policy = field(default_factory=lambda: DEFAULT_POLICY)
    membership: str = "swim"  # swim: SWIM over nng datagrams; mesh: heartbeats over Bus0
    swim_pool: int = 32  # swim: outgoing connections kept besides the ring neighbours


class Agent:
    def __init__(self, cfg: AgentConfig):
        self.cfg = cfg
        self.name = cfg.name
        ensure_private_dir(cfg.runtime_dir)
        self._name_lock: int | None = None
        if not cfg.listen:
            # Our name in the runtime dir, taken before anything else: refuses a second
            # agent of the same name, and tells others scanning the dir that our sockets
            # are not stale even while we are still starting.
            self._name_lock = lock_name(cfg.runtime_dir, cfg.name)
        ensure_private_dir(cfg.state_dir)
        self._state_lock = lock_state(cfg.state_dir, cfg.name)
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
        self.started = time.time()
        me = Me(cfg.name, self.incarnation, self.instance, self.bus_addr, self.rpc_addr,
                cfg.heartbeat, self.started, cfg.runtime_dir, list(cfg.seeds))

        def stopping() -> bool:
            return self.work.stopping.is_set()

        self.members: MembershipDriver | SwimDriver
        if cfg.membership == "swim":
            self.members = SwimDriver(me, self.codec, self._record, stopping,
                                      swim_for_bus(self.bus_addr), tls=cfg.tls,
                                      pool=cfg.swim_pool)
        else:
            self.members = MembershipDriver(me, self.codec, self._record, stopping)
        self.membership = self.members.membership
        self.ready = False  # the first compile ended: resource_manager answers for real
        self.view_synced = threading.Event()  # heard from the seeds: targets can resolve
        self.supervisor = Supervisor()
        self.tls = cfg.tls
        self.rpc = AsyncRpc(self.codec, timeout=2.0, tls=self.tls)
        self.crl = CrlSync(self.tls.gate, self.rpc, cfg.state_dir) if self.tls else None
        if self.crl is not None:
            self.crl.holders.append(self.rpc)
            if isinstance(self.members, SwimDriver):
                self.members.on_crl = self.crl.seen
                self.crl.holders.append(self.members.net)
        self.directory = Directory(cfg.name, self.rpc_addr, cfg.tags, self.membership,
                                   cfg.runtime_dir, self.view_synced,
                                   VIEW_SYNC_HEARTBEATS * cfg.heartbeat)
        self.deliverer = Deliverer(self.store, self.rpc, cfg.name, self.directory.locate,
                                   self.emit)
        self.subscriptions = SubscriptionSync(self.store, self.rpc, cfg.name,
                                              self.directory.resolve_addr, self.emit)
        self._stopped = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.crashed = False  # an internal task died: exit non-zero so a supervisor restarts us
        self.engine = Engine(node=cfg.name, recipes=list(cfg.recipes), store=self.store, hooks=self)
        self.work = WorkQueue(self.engine, self.store, cfg.stop_timeout, self.emit,
                              self.members.prompt, self._job_finished, self._stopped.set)
        self.schedule = (Schedule(cfg.interval, cfg.splay, self.work.run_chef, self.work.stopping)
                         if cfg.interval else None)
        self.audit = self.store.audit
        self.dispatcher = Dispatcher(cfg.name, [
            FlockApi(self, self.store, self.work, self.deliverer, self.membership),
            ResourceManager(self, self.store, self.work, self.subscriptions, self.emit),
            TrustApi(cfg.name, self.audit, self.tls.gate if self.tls else None),
        ], Guard(cfg.name, self.audit, cfg.policy, self._subscriber_of,
                 unverified_via(cfg.key is not None, not cfg.listen)))

    # -- what the actors read about this node (NodeFacts) ---------------------------------
    @property
    def tags(self) -> list[str]:
        return list(self.cfg.tags)

    @property
    def next_run(self) -> float | None:
        return self.schedule.next_run if self.schedule is not None else None

    def dropped_frames(self) -> dict[str, int]:
        return dict(self.codec.dropped)

    def loop_failures(self) -> list[dict[str, Any]]:
        return self.supervisor.report()

    def name_clashes(self) -> list[dict[str, Any]]:
        return list(self.members.clashes.values())

    # -- engine hooks (called from the worker thread) -------------------------------------
    def resolve_targets(self, node: str | None, tag: str | None) -> list[str]:
        return self.directory.resolve_targets(node, tag)

    def outbox_changed(self) -> None:
        """Outbox rows changed in a way only a query sees (delayed ones released...)."""
        self.deliverer.changed()

    def outbox_early(self, items: list[OutboxItem]) -> Launched | None:
        """A reaction's rows, before their commit: sent now if the fast path can (see
        engine.context.Hooks for why that is safe)."""
        job = self.work.current
        if job is None or job.kind != "reaction" or not self.deliverer.fast_ok():
            return None
        return self.deliverer.fast.launch(outgoing(items))

    def outbox_abandoned(self, early: Launched) -> None:
        self.deliverer.fast.abandon(early)

    def outbox_added(self, items: list[OutboxItem], early: Launched | None = None) -> None:
        """Rows just committed by the worker: immediate ones are pending now. Handing them to
        the delivery loop in memory lets it send them without reading the outbox back."""
        # Rows sent early were made from the same items: only those not launched are left.
        rows = early.rest if early is not None else outgoing(items)
        # A reaction is a link of a chain, where each hop's latency adds up: its worker waits
        # for the send. A converge's rows are better left to pile up into batches.
        job = self.work.current
        self.deliverer.added(rows, hand_off=job is not None and job.kind == "reaction",
                             alone=not self.work.queue, early=early)

    # -- lifecycle -------------------------------------------------------------------------
    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.bus = Bus(self.codec, self._on_bus, self.members.on_pipe_removed,
                       self.members.on_pipe_added, tls=self.tls)
        self.members.attach(self.bus)
        self.members.listeners.append(MemberEvents(self.deliverer, self.subscriptions, self.rpc))
        self.server = RpcServer(self.codec, self.dispatcher.handle, tls=self.tls)
        if self.crl is not None:
            self.crl.holders += [self.bus, self.server]
        # Recover before serving: a notification accepted now must find the inbox as the
        # last run left it, or a retry landing during the start would be queued twice.
        interrupted = self.store.runs.recover_interrupted()
        if interrupted:
            log.warning("closed %d run(s) interrupted by the last stop", len(interrupted))
        for n in self.store.inbox.recover():
            self.work.enqueue_reaction(n)
        self.bus.listen(self.bus_addr)
        self.server.listen(self.rpc_addr)
        self.bus.start()
        self.server.start()
        self._bind_recipe_flock()
        # Heartbeats first: the flock sees us (and we it) while the recipe compiles.
        self.supervisor.spawn("heartbeat", self.members.run)
        view = asyncio.create_task(self.members.sync_view(self.view_synced), name="sync-view")
        await self.work.compile_at_start(self._stopped)
        if self.work.abandoned:  # stopped while a recipe compile hung: leave without it
            self._tasks = [*self.supervisor.all(), view]
            await self._shutdown()
            return
        self.ready = True
        log.info("node %s up (incarnation %d) bus=%s rpc=%s", self.name, self.incarnation,
                 self.bus_addr, self.rpc_addr)
        sdnotify.notify("READY=1", f"STATUS=serving {self.name} on {self.rpc_addr}"
                        + (f"; recipe does not compile: {self.work.compile_error}"
                           if self.work.compile_error else ""))
        self.work.open()
        self.supervisor.spawn("delivery", self.deliverer.run)
        self.supervisor.spawn("subscriptions", self.subscriptions.run)
        if self.schedule is not None:
            self.supervisor.spawn("schedule", self.schedule.run)
        self._tasks = [*self.supervisor.all(), view]
        await self._stopped.wait()
        await self._shutdown()

    def request_stop(self) -> None:
        """SIGTERM/SIGINT: finish the resource in progress if it ends within --stop-timeout,
        else kill it; persist, announce, exit. A second signal kills it at once."""
        if not self.work.stopping.is_set():
            sdnotify.notify("STOPPING=1", "STATUS=stopping: finishing the resource in progress")
        self.work.stop()

    async def _shutdown(self) -> None:
        with contextlib.suppress(Exception):
            self.members.leave()
            # Let the goodbye leave the socket buffers: closing a Push0 socket drops what nng
            # has not written yet, and on a loaded machine its threads may wait their turn.
            await asyncio.sleep(0.2)
        self.members.close()
        await cancel_and_wait(self._tasks, 2.0)
        await self.server.close()
        await self.bus.close()
        if isinstance(self.members, SwimDriver):
            await self.members.aclose()
        self.rpc.close()
        self._recipe_rpc.close()
        self.work.shutdown()
        self.store.close()
        for fd in (self._state_lock, self._name_lock):  # an agent in a test may start again
            if fd is not None:
                os.close(fd)
        log.info("node %s stopped", self.name)

    def _bind_recipe_flock(self) -> None:
        from flock_node.client import Flock
        from flock_node.dsl import bind_flock

        self._recipe_rpc = SyncRpc(Codec(self.cfg.key, self.name), timeout=2.0, tls=self.tls)
        bind_flock(Flock(self._recipe_rpc, resolver=self.directory.resolve_addr))

    def _record(self) -> dict[str, Any]:
        return node_record(self.store, self.work, self.cfg.tags,
                           self.tls.gate.version if self.tls else 0)

    # -- trust -------------------------------------------------------------------------------
    def _subscriber_of(self, sid: str) -> str | None:
        return self.store.subscriptions.subscriber_of(sid)

    def _on_bus(self, env: Envelope, msg: Message, pipe: int) -> None:
        self.members.on_bus(env, msg, pipe)
        if self.crl is not None and isinstance(msg, Heartbeat) and msg.node == env.sender:
            self.crl.seen(msg.crl, msg.rpc)

    def emit(self, event: str, **data: Any) -> None:
        if self._loop is None:
            return
        self.bus.send(Event(self.name, event, time.time(), data))

    def _job_finished(self, job: Job) -> None:
        self.deliverer.wake()
        if job.kind == "converge":
            self.store.wanted.recheck_recipe()
            if sdnotify.enabled():  # `systemctl status` shows the node's health
                lc = self.store.runs.last("converge")
                sdnotify.notify(f"STATUS=serving {self.name}; last converge "
                                f"{lc.status if lc else '?'} ({job.run_id})")
        self.subscriptions.wake()
