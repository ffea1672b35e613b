"""`flock_api`: what operators, consoles and recipes ask a node (run_chef, why_run, active,
status, history, members, outbox, retry)."""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from fnmatch import fnmatchcase
from typing import Any

import msgspec

from flock_node import __version__
from flock_node.actors import BadRequest, NodeFacts
from flock_node.api import Member, State, last_run_view
from flock_node.delivery import Deliverer
from flock_node.engine import RunContext
from flock_node.membership import Membership
from flock_node.membership.heartbeat import Member as HeardMember
from flock_node.membership.view import SwimView
from flock_node.paging import (
    HISTORY_LIMIT,
    OUTBOX_LIMIT,
    NamePage,
    Page,
    RunPage,
    by_name,
    count_arg,
    crowds_a_page,
    fill_page,
    name_start,
)
from flock_node.protocol import Heartbeat
from flock_node.store import OutboxRow, PagedRun, RunResult, RunRow, Store
from flock_node.transport import RpcError
from flock_node.work import WorkQueue, run_id


class FlockApi:
    NAME = "flock_api"
    METHODS = ('run_chef', 'why_run', 'active', 'status', 'history', 'run', 'members', 'outbox', 'retry',
               'discard')

    def __init__(self, node: NodeFacts, store: Store, work: WorkQueue, deliverer: Deliverer,
                 membership: Membership | SwimView):
        self.node = node
        self.store = store
        self.work = work
        self.deliverer = deliverer
        self.membership = membership

    async def run_chef(self) -> dict[str, Any]:
        if self.work.stopping.is_set():
            raise RpcError("stopping", f"{self.node.name} is shutting down")
        run_id, joined = self.work.run_chef()
        # queued: it waits behind another run (it starts at once otherwise).
        ahead = (self.work.current is not None and self.work.current.run_id != run_id) or any(
            j.run_id != run_id for j in list(self.work.queue)[:1])
        return {"run_id": run_id, "queued": joined or ahead, "joined": joined}

    async def why_run(self) -> dict[str, Any]:
        """Compile and decide without changing or sending anything: the plan (each resource's
        would-be action and why, the notifications it would fire, the nodes remote ones would
        reach), also recorded in history as a why-run. Answers when the plan is made."""
        if self.work.stopping.is_set():
            raise RpcError("stopping", f"{self.node.name} is shutting down")
        ctx = RunContext(run_id(), "why-run", stop=self.work.stopping)
        # Off the loop (guards run commands), and beside a converge: it changes nothing.
        return await asyncio.to_thread(self.work.engine.why_run, ctx)

    async def active(self) -> bool:
        return self.work.active

    async def status(self) -> dict[str, Any]:
        counts = self.store.outbox.counts()
        last = self.store.runs.last()
        cur = None
        if self.work.current is not None:
            p = self.work.progress
            cur = {"id": self.work.current.run_id, "kind": self.work.current.kind,
                   "resource": p.resource if p else "", "k": p.k if p else 0,
                   "n": p.n if p else 0}
        return {
            "name": self.node.name, "version": __version__, "tags": list(self.node.tags),
            "incarnation": self.node.incarnation, "address": self.node.rpc_addr, "bus": self.node.bus_addr,
            "active": self.work.active, "current_run": cur,
            "queued": [j.run_id for j in self.work.queue],
            "last_run": last_run_view(last),
            "last_converge": last_run_view(self.store.runs.last("converge")),
            "pending": counts.get("pending", 0) + counts.get("held", 0),
            "dead_letters": counts.get("dead", 0), "failed_notifications": counts.get("failed", 0),
            "uptime": time.time() - self.node.started, "compile_error": self.work.compile_error,
            "dropped_frames": self.node.dropped_frames(), "ready": self.node.ready,
            "loop_failures": self.node.loop_failures(),
            "name_clashes": self.node.name_clashes(),
            "next_run": self.node.next_run,
            # swim: `members` answers for the whole flock; mesh: for our peers only.
            "membership": "swim" if isinstance(self.membership, SwimView) else "mesh",
        }

    async def history(self, limit: int = HISTORY_LIMIT,
                      offset: int | None = None) -> list[RunRow] | Page[RunRow]:
        """The `limit` most recent runs, newest first, with per-resource results. With `offset`:
        one page of them from there, `{"items", "next_offset"}`, that fits a frame (see
        flock_node/paging.py); without it, the whole list (too_large if it does not fit)."""
        limit = count_arg(limit, "limit")
        if offset is None:
            return self.store.runs.history(limit)
        offset = count_arg(offset, "offset")
        # Runs carry their resources: a page rarely holds many, so read few at a time.
        take = min(limit, 50)
        rows = self.store.runs.history(take + 1, offset=offset)
        return fill_page([_in_a_page(r) for r in rows[:take]], offset,
                         more=len(rows) > take and take < limit)

    async def run(self, id: str,
                  offset: int | None = None) -> RunRow | RunPage[RunRow, RunResult] | None:
        """One run with its per-resource results. With `offset`: `{"run", "items",
        "next_offset"}`, the run and one page of its resources from there (a run with many
        big outputs does not fit one frame); without it, the whole run."""
        row = self.store.runs.get(str(id))
        if row is None or offset is None:
            return row
        offset = count_arg(offset, "offset")
        page = fill_page(row.resources[offset:], offset, more=False)
        return RunPage(msgspec.structs.replace(row, resources=[]), page.items, page.next_offset)

    async def members(self, offset: int | None = None, after: str | None = None,
                      pattern: str | None = None,
                      tag: str | None = None) -> list[Member] | NamePage[Member]:
        """This node first, then every member it knows (`pattern`/`tag`: only those). With
        `offset` or `after`: one page in name order, `{"items", "next_offset",
        "next_after"}`, that fits a frame (see flock_node/paging.py); without, the whole
        list (too_large past a frame, as before paging)."""
        own = await self.status()
        me = Member(
            name=self.node.name, state=State.ALIVE, address=self.node.rpc_addr,
            bus=self.node.bus_addr, rpc=self.node.rpc_addr, incarnation=self.node.incarnation,
            active=self.work.active, run=msgspec.to_builtins(self.work.progress),
            last_run=own["last_run"], last_converge=own["last_converge"],
            pending=own["pending"], dead_letters=own["dead_letters"],
            tags=list(self.node.tags), version=__version__, age=0.0,
        )
        now = time.monotonic()
        # Heard members are cheap to list; their rows are built only for the page asked.
        heard = [m for m in self.membership.members() if _wanted(m.name, m.tags, pattern, tag)]
        mine = _wanted(me.name, me.tags, pattern, tag)
        if offset is None and after is None:
            return ([me] if mine else []) + [_member_row(m, now) for m in heard]
        # Every row in name order, ourselves included (None stands for us).
        names = [m.name for m in heard]
        entries: list[HeardMember | None] = list(heard)
        if mine:
            at = bisect_left(names, me.name)
            names.insert(at, me.name)
            entries.insert(at, None)
        start = name_start(names, count_arg(offset or 0, "offset"), after)
        # Rows are made as the page takes them: a page never makes the whole flock's.
        rows = (me if e is None else _member_row(e, now) for e in entries[start:])
        return by_name(fill_page(rows, start, more=False), lambda r: r.name)

    async def outbox(self, status: str | None = None, limit: int = OUTBOX_LIMIT,
                     offset: int | None = None) -> list[OutboxRow] | Page[OutboxRow]:
        """This node's remote notifications, newest first (only `status` ones if given). With
        `offset`: one page from there that fits a frame, as `history` pages."""
        limit = count_arg(limit, "limit")
        statuses = [status] if status else None
        if offset is None:
            return self.store.outbox.rows(statuses, limit)
        offset = count_arg(offset, "offset")
        take = min(limit, 1000)
        rows = self.store.outbox.rows(statuses, take + 1, offset=offset)
        return fill_page(rows[:take], offset, more=len(rows) > take and take < limit)

    async def discard(self, ids: list[str] | None = None,
                      statuses: list[str] | None = None) -> dict[str, Any]:
        """Forget dead-lettered or refused notifications: the given ids, or all with the given
        statuses (dead, failed). Pending ones are never discarded."""
        if ids is not None and not (isinstance(ids, list)
                                    and all(isinstance(i, str) for i in ids)):
            raise BadRequest("ids must be a list of notification ids")
        if statuses is not None and not (isinstance(statuses, list) and all(
                s in ("dead", "failed") for s in statuses)):
            raise BadRequest("statuses must be a list of: dead, failed")
        if ids is None and not statuses:
            raise BadRequest("say which: notification ids, or statuses (dead, failed)")
        gone = self.store.outbox.discard(ids, tuple(statuses or ("dead", "failed")))
        return {"discarded": gone}

    async def retry(self, ids: list[str] | None = None) -> dict[str, Any]:
        """Send dead-lettered and refused notifications again (all, or the given ids) with a
        fresh TTL: after the receiver's disk was freed or its recipe fixed."""
        if ids is not None and not (isinstance(ids, list)
                                    and all(isinstance(i, str) for i in ids)):
            raise BadRequest("ids must be a list of notification ids")
        revived = self.store.outbox.revive(ids)
        if revived:
            self.deliverer.changed()
        return {"retried": revived}


def _in_a_page(run: RunRow) -> RunRow:
    """A run of a `history` page, or, when it alone would crowd the page, the run without its
    resources and how many (the client fetches them with `run(id)`)."""
    if not crowds_a_page(run):
        return run
    fields = msgspec.structs.asdict(run)
    fields["resources"] = []
    return PagedRun(**fields, resources_paged=len(run.resources))


def _wanted(name: str, tags: list[str], pattern: str | None, tag: str | None) -> bool:
    """Whether a member passes `members`' filters: a name glob and a tag."""
    return (pattern is None or fnmatchcase(name, pattern)) and (tag is None or tag in tags)


def _member_row(m: HeardMember, now: float) -> Member:
    """A member we heard of as `members` describes it."""
    hb: Heartbeat = m.info
    return Member(
        name=m.name, state=State(m.state), address=m.rpc, bus=m.bus, rpc=m.rpc,
        incarnation=m.incarnation, active=hb.active if m.state == State.ALIVE else False,
        run=msgspec.to_builtins(hb.run), last_run=last_run_view(hb.last_run),
        last_converge=last_run_view(hb.last_converge),
        pending=hb.pending, dead_letters=hb.dead, tags=list(m.tags),
        version=hb.version, age=now - m.last_seen,
    )
