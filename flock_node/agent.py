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
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from flock_node import __version__, delivery
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
from flock_node.paging import (
    HISTORY_LIMIT,
    OUTBOX_LIMIT,
    count_arg,
    fill_page,
    too_big_for_a_page,
)
from flock_node.paths import ensure_private_dir
from flock_node.protocol import (
    Codec,
    Envelope,
    Error,
    Event,
    Heartbeat,
    Leave,
    Message,
    Peer,
    Request,
    Response,
    RunSummary,
)
from flock_node.store import (
    OutboxItem,
    Store,
    store_error,
)
from flock_node.subscriptions import SubscriptionSync
from flock_node.supervisor import Supervisor
from flock_node.transport import (
    AsyncRpc,
    Bus,
    RpcError,
    RpcServer,
    SyncRpc,
    cancel_and_wait,
    ipc_addresses,
    ipc_alive,
    lock_name,
    scan_runtime_dir,
    tcp_addresses,
)
from flock_node.work import Job, WorkQueue, cause_of
from flock_node.work import run_id as new_run_id

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


class BadRequest(Exception):
    pass


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
        self.server = RpcServer(self.codec, self._handle)
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
            last_run=_summary(last), pending=counts.get("pending", 0) + counts.get("held", 0),
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

    # -- RPC ---------------------------------------------------------------------------------
    async def _handle(self, req: Request, env: Envelope) -> Response:
        fn = _METHODS.get((req.actor, req.method))
        if fn is None:
            known = sorted(f"{a}.{m}" for a, m in _METHODS)
            return Response(req.call_id, False, error=Error(
                "unknown_method", f"no method {req.actor}.{req.method}; known: {', '.join(known)}"))
        try:
            result = await fn(self, **req.args)
        except (sqlite3.InterfaceError, sqlite3.ProgrammingError, sqlite3.DataError) as e:
            # A value SQLite cannot take (a list where a string goes): the caller's mistake.
            return Response(req.call_id, False, error=Error("bad_request", f"{req.method}: {e}"))
        except sqlite3.Error as e:
            # Our own trouble (disk full, database locked...), never the caller's: retryable.
            code, msg = store_error(e)
            log.error("%s.%s: %s", req.actor, req.method, msg)
            return Response(req.call_id, False, error=Error(code, f"{self.name}: {msg}"))
        except (TypeError, ValueError, OverflowError) as e:
            # Arguments of the wrong shape: the caller's mistake, answered, not a crash.
            return Response(req.call_id, False, error=Error("bad_request", f"{req.method}: {e}"))
        except BadRequest as e:
            return Response(req.call_id, False, error=Error("bad_request", str(e)))
        except RpcError as e:
            return Response(req.call_id, False, error=Error(e.code, e.message))
        return Response(req.call_id, True, result=msgspec.to_builtins(result))

    async def api_run_chef(self) -> dict[str, Any]:
        if self.work.stopping.is_set():
            raise RpcError("stopping", f"{self.name} is shutting down")
        run_id, joined = self.work.run_chef()
        # queued: it waits behind another run (it starts at once otherwise).
        ahead = (self.work.current is not None and self.work.current.run_id != run_id) or any(
            j.run_id != run_id for j in list(self.work.queue)[:1])
        return {"run_id": run_id, "queued": joined or ahead, "joined": joined}

    async def api_active(self) -> bool:
        return self.work.active

    async def api_status(self) -> dict[str, Any]:
        counts = self.store.outbox_counts()
        last = self.store.last_run()
        cur = None
        if self.work.current is not None:
            p = self.work.progress
            cur = {"id": self.work.current.run_id, "kind": self.work.current.kind,
                   "resource": p.resource if p else "", "k": p.k if p else 0,
                   "n": p.n if p else 0}
        return {
            "name": self.name, "version": __version__, "tags": list(self.cfg.tags),
            "incarnation": self.incarnation, "address": self.rpc_addr, "bus": self.bus_addr,
            "active": self.work.active, "current_run": cur,
            "queued": [j.run_id for j in self.work.queue],
            "last_run": _last_run(last),
            "pending": counts.get("pending", 0) + counts.get("held", 0),
            "dead_letters": counts.get("dead", 0), "failed_notifications": counts.get("failed", 0),
            "uptime": time.time() - self.started, "compile_error": self.work.compile_error,
            "dropped_frames": dict(self.codec.dropped), "ready": self.ready,
            "loop_failures": self.supervisor.report(),
        }

    async def api_history(self, limit: int = HISTORY_LIMIT,
                          offset: int | None = None) -> list[dict[str, Any]] | dict[str, Any]:
        """The `limit` most recent runs, newest first, with per-resource results. With `offset`:
        one page of them from there, `{"items", "next_offset"}`, that fits a frame (see
        flock_node/paging.py); without it, the whole list (too_large if it does not fit)."""
        limit = count_arg(limit, "limit")
        if offset is None:
            return self.store.history(limit)
        offset = count_arg(offset, "offset")
        # Runs carry their resources: a page rarely holds many, so read few at a time.
        take = min(limit, 50)
        rows = [too_big_for_a_page(r) for r in self.store.history(take + 1, offset=offset)]
        return fill_page(rows[:take], offset, more=len(rows) > take and take < limit)

    async def api_run(self, id: str, offset: int | None = None) -> dict[str, Any] | None:
        """One run with its per-resource results. With `offset`: `{"run", "items",
        "next_offset"}`, the run and one page of its resources from there (a run with many
        big outputs does not fit one frame); without it, the whole run."""
        run = self.store.run(str(id))
        if offset is None or run is None:
            return run
        offset = count_arg(offset, "offset")
        resources = run.pop("resources")
        page = fill_page(resources[offset:], offset, more=False)
        return {"run": {**run, "resources": []}, **page}

    async def api_members(self) -> list[dict[str, Any]]:
        own = await self.api_status()
        out = [{
            "name": self.name, "state": ALIVE, "address": self.rpc_addr, "bus": self.bus_addr,
            "rpc": self.rpc_addr, "incarnation": self.incarnation, "active": self.work.active,
            "run": msgspec.to_builtins(self.work.progress), "last_run": own["last_run"],
            "pending": own["pending"], "dead_letters": own["dead_letters"],
            "tags": list(self.cfg.tags), "version": __version__, "age": 0.0,
        }]
        now = time.monotonic()
        for m in self.membership.members():
            hb: Heartbeat = m.info
            out.append({
                "name": m.name, "state": m.state, "address": m.rpc, "bus": m.bus, "rpc": m.rpc,
                "incarnation": m.incarnation, "active": hb.active if m.state == ALIVE else False,
                "run": msgspec.to_builtins(hb.run), "last_run": _summary_dict(hb.last_run),
                "pending": hb.pending, "dead_letters": hb.dead, "tags": list(m.tags),
                "version": hb.version, "age": now - m.last_seen,
            })
        return out

    async def api_outbox(self, status: str | None = None, limit: int = OUTBOX_LIMIT,
                         offset: int | None = None) -> list[dict] | dict[str, Any]:
        """This node's remote notifications, newest first (only `status` ones if given). With
        `offset`: one page from there that fits a frame, as `history` pages."""
        limit = count_arg(limit, "limit")
        statuses = [status] if status else None
        if offset is None:
            return self.store.outbox(statuses, limit)
        offset = count_arg(offset, "offset")
        take = min(limit, 1000)
        rows = self.store.outbox(statuses, take + 1, offset=offset)
        return fill_page(rows[:take], offset, more=len(rows) > take and take < limit)

    async def api_retry(self, ids: list[str] | None = None) -> dict[str, Any]:
        """Send dead-lettered and refused notifications again (all, or the given ids) with a
        fresh TTL: after the receiver's disk was freed or its recipe fixed."""
        if ids is not None and not (isinstance(ids, list)
                                    and all(isinstance(i, str) for i in ids)):
            raise BadRequest("ids must be a list of notification ids")
        revived = self.store.outbox_revive(ids)
        if revived:
            self.deliverer.changed()
        return {"retried": revived}

    # resource_manager
    async def rm_resources(self, offset: int | None = None,
                           limit: int | None = None) -> list[dict[str, Any]] | dict[str, Any]:
        """The persisted resources of the last compile, in recipe order. With `offset` (or
        `limit`): one page, `{"items", "next_offset"}`, that fits a frame; without either, the
        whole list (too_large if it does not fit)."""
        rows = self.store.resources()
        if offset is None and limit is None:
            return [msgspec.to_builtins(r.__dict__) for r in rows]
        start = count_arg(offset or 0, "offset")
        end = len(rows) if limit is None else start + count_arg(limit, "limit")
        return fill_page([msgspec.to_builtins(r.__dict__) for r in rows[start:end]], start,
                         more=False)

    def _check_ready(self) -> None:
        if not self.ready:
            raise RpcError("not_ready", f"{self.name} is starting: its recipe is compiling")

    def _check_target(self, resource: str, action: str | None) -> None:
        self._check_ready()
        actions = self.store.resource_actions(resource)
        if actions is None:
            if self.work.compile_error is not None:
                # The recipe that may declare it does not compile now: not final.
                raise RpcError("not_ready", f"{self.name} has no resource {resource} and its "
                               f"recipe does not compile ({self.work.compile_error})")
            known = ", ".join(x.id for x in self.store.resources()[:20]) or "none"
            raise RpcError("unknown_resource", f"{self.name} has no resource {resource}; it has: {known}")
        if action is not None and action not in actions:
            raise RpcError("unknown_action",
                           f"{resource} on {self.name} has no action {action!r}; "
                           f"allowed: {', '.join(actions)}")

    async def rm_notify(self, resource: str, action: str, id: str | None = None,
                        sender: str = "", hops: int = 1, cause: dict | None = None) -> dict:
        """Accept a notification (de-duplicated by id) and queue its reaction."""
        if not isinstance(resource, str) or not isinstance(action, str):
            raise BadRequest("resource and action must be strings")
        hops = _int(hops, "hops")
        why = delivery.hop_refusal(hops)
        if why:
            log.error("refused notification %s from %s: %s", id, sender, why)
            self.emit("notification_refused", id=id, sender=sender, resource=resource,
                      action=action, error=why)
            raise RpcError("hop_limit", why)
        self._check_target(resource, action)
        nid = id or "n-" + uuid.uuid4().hex
        cause = dict(cause or {})
        n = {"id": nid, "sender": sender, "resource": resource, "action": action,
             "hops": hops, "cause": cause}
        # The worker is idle: the reaction starts now, so its run row goes in the inbox
        # row's commit, one commit fewer before the action starts.
        run_id = new_run_id() if self.work.idle() else None
        fresh = self.store.inbox_accept(nid, sender or "?", resource, action, hops, cause,
                                        run=(run_id, cause_of(n)) if run_id else None)
        if fresh:
            self.work.enqueue_reaction(n, run_id)
            self.emit("notification_received", id=nid, sender=sender, resource=resource,
                      action=action)
        return {"id": nid, "accepted": True, "duplicate": not fresh}

    async def rm_notify_batch(self, items: list) -> list[dict | None]:
        """Many notifications from one sender in one call and one commit, in order; each
        answered like `notify` (accepted/duplicate) or with its own error."""
        if not isinstance(items, list):
            raise BadRequest("items must be a list")
        out: list[dict | None] = []
        rows: list[tuple] = []
        for it in items:
            nid = None
            try:
                if not isinstance(it, dict):
                    raise BadRequest("each item must be a map")
                nid, resource, action = it.get("id"), it.get("resource"), it.get("action")
                if not (isinstance(nid, str) and isinstance(resource, str)
                        and isinstance(action, str)):
                    raise BadRequest("id, resource and action must be strings")
                cause = it.get("cause") or {}
                if not isinstance(cause, dict):
                    raise BadRequest("cause must be a map")
                hops = _int(it.get("hops", 1), "hops")
                why = delivery.hop_refusal(hops)
                if why:
                    log.error("refused notification %s from %s: %s", nid, it.get("sender"), why)
                    self.emit("notification_refused", id=nid, sender=it.get("sender"),
                              resource=resource, action=action, error=why)
                    raise RpcError("hop_limit", why)
                self._check_target(resource, action)
            except BadRequest as e:
                out.append({"id": it.get("id") if isinstance(it, dict) else None,
                            "error": {"code": "bad_request", "message": str(e)}})
                continue
            except RpcError as e:
                out.append({"id": nid, "error": {"code": e.code, "message": e.message}})
                if not delivery.is_final(e.code):
                    # Not now (not ready...): none after it either, so the sender's order holds.
                    out.extend({"id": x.get("id") if isinstance(x, dict) else None,
                                "error": {"code": e.code, "message": e.message}}
                               for x in items[len(out):])
                    break
                continue
            out.append(None)
            rows.append((nid, str(it.get("sender") or "?"), resource, action, hops, cause))
        fresh = iter(self.store.inbox_accept_many(rows)) if rows else iter(())
        accepted = iter(rows)
        for i, r in enumerate(out):
            if r is not None:
                continue
            nid, sender, resource, action, hops, cause = next(accepted)
            new = next(fresh)
            if new:
                self.work.enqueue_reaction({"id": nid, "sender": sender, "resource": resource,
                                        "action": action, "hops": hops, "cause": cause})
                self.emit("notification_received", id=nid, sender=sender, resource=resource,
                          action=action)
            out[i] = {"id": nid, "accepted": True, "duplicate": not new}
        return out

    async def rm_subscribe(self, resource: str, subscriber: str, subscriber_resource: str,
                           action: str) -> dict:
        """Another node asks to run `action` on its resource when our `resource` is updated."""
        self._check_target(resource, None)
        sid = self.store.add_subscription(resource, subscriber, subscriber_resource, action)
        return {"id": sid}

    async def rm_subscribe_to(self, resource: str, action: str, node: str,
                              remote_resource: str) -> dict:
        """Wire by hand: our `resource` runs `action` when `node`'s `remote_resource` updates."""
        self._check_target(resource, action)
        wid = self.store.add_wanted(node, remote_resource, resource, action)
        w = next(x for x in self.store.wanted_subscriptions() if x["id"] == wid)
        await self.subscriptions.sync(w)
        w = next(x for x in self.store.wanted_subscriptions() if x["id"] == wid)
        if w["state"] == "failed":  # refused by the publisher: say so, keep nothing
            self.store.wanted_state(wid, "removed")
            code, _, msg = (w["last_error"] or "bad_request: refused").partition(": ")
            raise RpcError(code, msg)
        return {"id": wid.rsplit("@", 1)[0], "state": w["state"], "error": w["last_error"]}

    async def rm_unsubscribe(self, id: str) -> dict:
        """Remove a subscription, incoming (someone's on our resource) or outgoing (ours)."""
        if not isinstance(id, str):
            raise BadRequest("id must be a subscription id")
        if self.store.remove_subscription(id):
            return {"id": id, "removed": "incoming",
                    "note": "if the subscriber's recipe declares it (remote_subscribes), its "
                            "next converge registers it again"}
        for w in self.store.wanted_subscriptions():
            if w["id"] == id or w["id"].rsplit("@", 1)[0] == id:
                self.store.wanted_state(w["id"], "removing")
                ok = await self.subscriptions.sync({**w, "state": "removing"})
                out = {"id": id, "removed": "outgoing", "remote_done": ok}
                if w["origin"] == "recipe":
                    out["note"] = (f"{w['resource']} declares it in the recipe "
                                   "(remote_subscribes): the next converge registers it again; "
                                   "remove it from the recipe to drop it for good")
                return out
        raise RpcError("unknown_subscription", f"{self.name} has no subscription {id!r}")

    async def rm_subscriptions(self) -> dict[str, list[dict]]:
        incoming = self.store.subscriptions()
        outgoing = []
        for w in self.store.wanted_subscriptions():
            state = "registered" if w["state"] == "recheck" else w["state"]
            outgoing.append({**w, "id": w["id"].rsplit("@", 1)[0], "state": state})
        return {"incoming": incoming, "outgoing": outgoing}


_METHODS: dict[tuple[str, str], Callable[..., Awaitable[Any]]] = {
    ("flock_api", "run_chef"): Agent.api_run_chef,
    ("flock_api", "active"): Agent.api_active,
    ("flock_api", "status"): Agent.api_status,
    ("flock_api", "history"): Agent.api_history,
    ("flock_api", "run"): Agent.api_run,
    ("flock_api", "members"): Agent.api_members,
    ("flock_api", "outbox"): Agent.api_outbox,
    ("flock_api", "retry"): Agent.api_retry,
    ("resource_manager", "resources"): Agent.rm_resources,
    ("resource_manager", "notify"): Agent.rm_notify,
    ("resource_manager", "notify_batch"): Agent.rm_notify_batch,
    ("resource_manager", "subscribe"): Agent.rm_subscribe,
    ("resource_manager", "subscribe_to"): Agent.rm_subscribe_to,
    ("resource_manager", "unsubscribe"): Agent.rm_unsubscribe,
    ("resource_manager", "subscriptions"): Agent.rm_subscriptions,
}


def _int(v: Any, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise BadRequest(f"{name} must be an integer, got {v!r}")
    return v


def _glob(pattern: str, name: str) -> bool:
    from fnmatch import fnmatchcase

    return fnmatchcase(name, pattern)


def _plain(obj: Any) -> Any:
    """A value as the outbox row stores it (JSON), so both delivery paths send the same."""
    return json.loads(json.dumps(obj, default=repr, sort_keys=True))


def _summary(last: dict[str, Any] | None) -> RunSummary | None:
    if not last:
        return None
    return RunSummary(id=last["id"], status=last["status"], kind=last["kind"],
                      started=last["started"], duration=last["duration"] or 0.0,
                      updated=last["updated"], error=last["error"])


def _summary_dict(s: RunSummary | None) -> dict[str, Any] | None:
    return _last_run_from(msgspec.to_builtins(s)) if s else None


def _last_run(last: dict[str, Any] | None) -> dict[str, Any] | None:
    return _last_run_from(last) if last else None


def _last_run_from(d: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": d["id"], "status": d["status"], "kind": d.get("kind", "converge"),
        "started": d.get("started"), "duration": d.get("duration"),
        "updated": d.get("updated", 0), "error": d.get("error"),
    }


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

