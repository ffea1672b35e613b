"""The node agent: wires store, engine, membership and transport under one asyncio loop.

One work queue runs converges and out-of-band reactions in order on one worker thread, so
they never overlap; `active` is true while either runs. The outbox is drained by a delivery
task, subscriptions we want on other nodes by a sync task, heartbeats by a third.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import random
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flock_node import logs, sdnotify
from flock_node.actors import Dispatcher
from flock_node.actors.flock_api import FlockApi, summary
from flock_node.actors.resource_manager import ResourceManager
from flock_node.delivery import Deliverer, Target
from flock_node.discovery import VIEW_SYNC_HEARTBEATS, Me, MembershipDriver
from flock_node.engine import Engine
from flock_node.membership import (
    ALIVE,
    DOWN,
    LEFT,
    Member,
    Transition,
)
from flock_node.membership.driver import SwimDriver
from flock_node.paths import ensure_private_dir
from flock_node.protocol import (
    Codec,
    Envelope,
    Event,
    Heartbeat,
    Message,
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
    lock_name,
    scan_runtime_dir,
    tcp_addresses,
)
from flock_node.transport.base import swim_for_bus
from flock_node.trust.actor import TrustApi
from flock_node.trust.guard import Guard
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
    membership: str = "mesh"  # mesh: heartbeats over Bus0; swim: SWIM over nng datagrams
    swim_pool: int = 32  # swim: outgoing connections kept besides the ring neighbours


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
            if cfg.tls is not None:
                self.members.on_crl = self._crl_seen
        else:
            self.members = MembershipDriver(me, self.codec, self._record, stopping)
        self.membership = self.members.membership
        self.ready = False  # the first compile ended: resource_manager answers for real
        self.next_run: float | None = None  # wall clock of the next scheduled converge
        self.view_synced = threading.Event()  # heard from the seeds: targets can resolve
        self.supervisor = Supervisor()
        self.tls = cfg.tls
        if self.tls is not None:
            self.tls.gate.persist_in(cfg.state_dir / "revoked.list")
            self.tls.gate.listeners.append(self._revoked)
        self._crl_fetching = False
        self.rpc = AsyncRpc(self.codec, timeout=2.0, tls=self.tls)
        self.deliverer = Deliverer(self.store, self.rpc, cfg.name, self._locate, self.emit)
        self.subscriptions = SubscriptionSync(self.store, self.rpc, cfg.name,
                                              self._resolve_addr, self.emit)
        self._stopped = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.crashed = False  # an internal task died: exit non-zero so a supervisor restarts us
        self.engine = Engine(node=cfg.name, recipes=list(cfg.recipes), store=self.store, hooks=self)
        self.work = WorkQueue(self.engine, self.store, cfg.stop_timeout, self.emit,
                              self.members.prompt, self._job_finished, self._stopped.set)
        self.audit = self.store.audit
        self.dispatcher = Dispatcher(cfg.name, [
            FlockApi(self, self.store, self.work, self.deliverer, self.membership),
            ResourceManager(self, self.store, self.work, self.subscriptions, self.emit),
            TrustApi(cfg.name, self.audit, self.tls.gate if self.tls else None),
        ], Guard(cfg.name, self.audit, cfg.policy, self._subscriber_of))

    # -- what the actors read about this node (NodeFacts) ---------------------------------
    @property
    def tags(self) -> list[str]:
        return list(self.cfg.tags)

    def dropped_frames(self) -> dict[str, int]:
        return dict(self.codec.dropped)

    def loop_failures(self) -> list[dict[str, Any]]:
        return self.supervisor.report()

    def name_clashes(self) -> list[dict[str, Any]]:
        return list(self.members.clashes.values())

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
        # A reaction is a link of a chain, where each hop's latency adds up: its worker waits
        # for the send. A converge's rows are better left to pile up into batches.
        job = self.work.current
        self.deliverer.added(rows, hand_off=job is not None and job.kind == "reaction",
                             alone=not self.work.queue)

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
        self.bus = Bus(self.codec, self._on_bus, self.members.on_pipe_removed,
                       self.members.on_pipe_added, tls=self.tls)
        self.members.attach(self.bus)
        self.members.listeners.append(self._member_changed)
        self.server = RpcServer(self.codec, self.dispatcher.handle, tls=self.tls)
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
        if self.cfg.interval:
            self.supervisor.spawn("schedule", self._schedule)
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
            await asyncio.sleep(0.05)  # let the goodbye leave the socket buffers
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
        log.info("node %s stopped", self.name)

    def _bind_recipe_flock(self) -> None:
        from flock_node.client import Flock
        from flock_node.dsl import bind_flock

        self._recipe_rpc = SyncRpc(Codec(self.cfg.key, self.name), timeout=2.0, tls=self.tls)
        bind_flock(Flock(self._recipe_rpc, resolver=self._resolve_addr))

    def _resolve_addr(self, name: str) -> str | None:
        if name == self.name:
            return self.rpc_addr
        m = self.membership.get(name)
        if m is not None:
            return m.rpc
        local = scan_runtime_dir(self.cfg.runtime_dir).get(name)
        return local[1] if local else None

    async def _schedule(self) -> None:
        """chef-client's daemon mode: converge now, then every interval plus a fresh random
        splay. The times are fixed in advance, so a run_chef in between does not shift them
        (a converge still running at the next time is joined, not doubled)."""
        assert self.cfg.interval
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            wait = due - loop.time()
            self.next_run = time.time() + max(0.0, wait)
            if wait > 0:
                await asyncio.sleep(wait)
            if self.work.stopping.is_set():
                return
            self.work.run_chef(cause={"scheduled": True})
            due += self.cfg.interval + random.uniform(0.0, self.cfg.splay)
            if due < loop.time():  # we were frozen or busy past a whole interval: no burst
                due = loop.time() + self.cfg.interval

    def _record(self) -> dict[str, Any]:
        """What our heartbeat says about us besides who and where we are."""
        counts = self.store.outbox.counts()
        last = self.store.runs.last()
        converge = last if last and last["kind"] == "converge" else self.store.runs.last("converge")
        return {
            "tags": list(self.cfg.tags), "active": self.work.active, "run": self.work.progress,
            "last_run": summary(last), "last_converge": summary(converge),
            "pending": counts.get("pending", 0) + counts.get("held", 0),
            "dead": counts.get("dead", 0), "crl": self.tls.gate.version if self.tls else 0,
        }

    # -- trust -------------------------------------------------------------------------------
    def _subscriber_of(self, sid: str) -> str | None:
        return next((s["subscriber"] for s in self.store.subscriptions.all() if s["id"] == sid),
                    None)

    def _on_bus(self, env: Envelope, msg: Message, pipe: int) -> None:
        self.members.on_bus(env, msg, pipe)
        if isinstance(msg, Heartbeat) and msg.node == env.sender:
            self._crl_seen(msg.crl, msg.rpc)

    def _crl_seen(self, version: int, rpc: str) -> None:
        """A member holds revocation list `version`: fetch it from there if it is newer."""
        if self.tls is not None and version > self.tls.gate.version and not self._crl_fetching:
            self._crl_fetching = True
            asyncio.get_running_loop().create_task(self._fetch_crl(rpc), name="fetch-crl")

    async def _fetch_crl(self, addr: str) -> None:
        """A peer has a newer revocation list: take it (it is signed, so from anyone)."""
        assert self.tls is not None
        try:
            got = await self.rpc.call(addr, "trust", "crl", timeout=2.0)
            if isinstance(got, dict) and isinstance(got.get("list"), str):
                self.tls.gate.offer(base64.b64decode(got["list"]))
        except Exception as e:  # noqa: BLE001 - the next heartbeat tries again
            log.warning("could not fetch the revocation list from %s: %s", addr, e)
        finally:
            self._crl_fetching = False

    def _revoked(self) -> None:
        """A newer revocation list: close what the revoked identities still hold open."""
        if self._loop is None:
            return
        n = self.bus.close_revoked() + self.server.close_revoked() + self.rpc.close_revoked()
        if isinstance(self.members, SwimDriver):
            n += self.members.net.close_revoked()
        if n:
            log.warning("closed %d connection(s) of revoked identities", n)

    def _member_changed(self, t: Transition, m: Member | None) -> None:
        if t.new == ALIVE:
            self.deliverer.target_back(t.name)  # someone came (back): retry what waits for it
            self.subscriptions.wake()
        if t.new in (DOWN, LEFT) and m is not None:
            self.rpc.forget(m.rpc)  # a fresh socket if it comes back

    def emit(self, event: str, **data: Any) -> None:
        if self._loop is None:
            return
        self.bus.send(Event(self.name, event, time.time(), data))

    def _job_finished(self, job: Job) -> None:
        self.deliverer.wake()
        if job.kind == "converge":
            self.store.wanted.recheck_recipe()
            if sdnotify.enabled():  # `systemctl status` shows the node's health
                lc = self.store.runs.last("converge") or {}
                sdnotify.notify(f"STATUS=serving {self.name}; last converge "
                                f"{lc.get('status', '?')} ({job.run_id})")
        self.subscriptions.wake()


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
        # SIGHUP: with a log file, logrotate renamed it (reopen); else the terminal closed,
        # and a graceful stop beats the default abrupt death.
        loop.add_signal_handler(signal.SIGHUP, logs.reopen if logs.has_log_file()
                                else agent.request_stop)
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

