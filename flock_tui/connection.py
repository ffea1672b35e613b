"""The console's connection to the flock: a poll of `nodes()` every second (re-armed after
each answer, so polls never overlap; one SWIM member answers for the whole flock), and a bus
dialled to the nodes the console looks at (a bounded set, `watch.py`) whose heartbeats and
events are folded into the view as they arrive. It tells the app what changed by posting
messages."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

from rich.text import Text
from textual.message import Message

from flock_node.client import AsyncFlock, resolve_key
from flock_node.membership import admit
from flock_node.protocol import Codec, Event, Heartbeat, Leave
from flock_node.transport import Bus, RpcError
from flock_tui.context import err_text
from flock_tui.messages import ConnectionProblem, MembersUpdated, NodeEvent
from flock_tui.model import Change, FlockView, Styles, change_text, merge_event, merge_heartbeat
from flock_tui.watch import Watch, dialable, limits

POLL_INTERVAL = 1.0
Log = Callable[[Text, str | None], None]


class Connection:
    """Owns the AsyncFlock and the Bus; `post` hands messages to the app, `log` writes the
    membership changes to the event log."""

    def __init__(self, args: Any, view: FlockView, post: Callable[[Message], object], log: Log,
                 styles: Callable[[], Styles]):
        self.args, self.view, self.post, self.log, self.styles = args, view, post, log, styles
        self.flock: AsyncFlock | None = None
        self.bus: Bus | None = None
        self.first_poll = True
        self.last_error = ""
        self.asked_history: set[str] = set()  # nodes whose last converge came from history
        self.watch = Watch(*limits())

    async def poll_loop(self) -> None:
        """Poll forever; an error is shown, never raised."""
        while True:
            try:
                await self.poll_once()
            except Exception as e:  # noqa: BLE001 - the console keeps going
                self.problem(f"refresh failed: {err_text(e)}")
            await asyncio.sleep(POLL_INTERVAL)

    async def poll_once(self) -> None:
        a = self.args
        if self.flock is None:
            try:
                self.flock = await AsyncFlock.connect(
                    seeds=a.seed or [], runtime_dir=a.runtime_dir, key_file=a.key_file,
                    insecure=a.insecure, timeout=a.connect_timeout or 5.0,
                    tls_dir=getattr(a, "tls_dir", None))
                tls = self.flock.tls  # on TLS: our certificate, and no key
                key = None if tls else resolve_key(a.key_file, a.insecure)
                self.bus = Bus(Codec(key, tls.me.name if tls else f"console-{os.getpid()}"),
                               self.on_bus_message, tls=tls)
                self.bus.start()
            except RpcError as e:
                self.problem(f"cannot connect: {err_text(e)}")
                return
        try:
            rows = await self.flock.nodes()
        except RpcError as e:
            self.problem(f"cannot list nodes: {err_text(e)}")
            return
        self.apply_members(rows)
        await self.converges_from_history()

    def problem(self, msg: str) -> None:
        if msg != self.last_error:
            self.post(ConnectionProblem(msg))
        self.last_error = msg

    def apply_members(self, rows: list[dict[str, Any]]) -> None:
        """A fresh member list: log state changes, mark rows dirty."""
        changes = self.view.replace(rows)
        st = self.styles()
        if self.first_poll:
            self.first_poll = False
            if rows:
                t = Text()
                t.append(f"found {len(rows)} node(s): ", style=st.muted)
                t.append(", ".join(f"{r['name']} ({r['state']})" for r in rows))
                self.log(t, None)
        else:
            for c in changes:
                self.log(change_text(c, st), c.node)
        if self.last_error:
            self.last_error = ""
            self.post(ConnectionProblem(""))
        self.post(MembersUpdated(frozenset(self.view.dirty)))

    def look(self, looked_at: list[str], pinned: list[str], now: float) -> None:
        """The console looks at `looked_at` (cursor, visible rows, marked rows) and `pinned`
        (open node screens): hold bus connections to those, within the watch's bounds."""
        if self.bus is None:
            return
        dial, close = self.watch.step(now, looked_at, pinned, dialable(self.view.members))
        for addr in close:
            self.bus.undial(addr)
        for addr in dial:
            self.bus.dial(addr)

    def connections(self) -> int:
        """Bus connections the console holds (dialled addresses)."""
        return len(self.bus.dialed()) if self.bus is not None else 0

    async def converges_from_history(self) -> None:
        """A node whose last run was a reaction, from an agent that does not send
        `last_converge`: its health comes from its history (asked once per node)."""
        if self.flock is None:
            return
        for name, m in list(self.view.members.items()):
            lr = m.get("last_run") or {}
            if (m.get("last_converge") or lr.get("kind") != "reaction"
                    or name in self.asked_history or m.get("state") != "alive"):
                continue
            self.asked_history.add(name)
            try:
                runs = await self.flock[name].flock_api.history(20)
            except RpcError:
                continue
            conv = next((h for h in runs if h.get("kind") == "converge"), None)
            if conv is not None and name in self.view.members:
                self.view.members[name]["last_converge"] = conv
                self.view.dirty.add(name)

    def on_bus_message(self, env: Any, msg: Any, pipe: int) -> None:
        """Heartbeats, leaves and events from the nodes' buses (on the loop)."""
        members = self.view.members
        # The console believes a node only about itself, as the agents do.
        if isinstance(msg, (Heartbeat, Leave)) and admit(msg, env.sender, time.time()):
            return
        if isinstance(msg, Event) and msg.node != env.sender:
            return
        st = self.styles()
        if isinstance(msg, Heartbeat):
            old = members.get(msg.node)
            before = old.get("state") if old else None
            snapshot = dict(old) if old else None
            m = merge_heartbeat(members, msg)
            if m != snapshot:  # idle nodes beat without changing anything
                self.view.dirty.add(msg.node)
                self.post(MembersUpdated(frozenset({msg.node})))
            if before is None or before in ("suspect", "down", "left"):
                self.log(change_text(Change(msg.node, before, "alive"), st), msg.node)
        elif isinstance(msg, Leave):
            gone = members.get(msg.node)
            if (gone is not None and gone.get("state") != "left"
                    and msg.incarnation >= gone.get("incarnation", 0)
                    and (not msg.instance
                         or msg.instance == gone.get("instance", msg.instance))):
                old = gone.get("state")
                gone.update(state="left", active=False, run=None)
                self.view.dirty.add(msg.node)
                self.log(change_text(Change(msg.node, old, "left"), st), msg.node)
                self.post(MembersUpdated(frozenset({msg.node})))
        elif isinstance(msg, Event):
            self.on_event(msg)

    def on_event(self, ev: Event) -> None:
        """An event: progress and outcomes into the view at once, then to the screens."""
        merge_event(self.view.members, ev)
        self.view.dirty.add(ev.node)
        self.post(NodeEvent(ev))

    async def close(self) -> None:
        """Close the bus (bounded) and the flock client; the receivers are cancelled first."""
        if self.bus is not None:
            bus, self.bus = self.bus, None
            # asyncio.wait, not wait_for: on timeout it does not wait for the cancellation
            # to finish (a pynng receive may never acknowledge it) - shutdown stays bounded.
            closing = asyncio.ensure_future(bus.close())
            await asyncio.wait([closing], timeout=5.0)
            if closing.done() and not closing.cancelled():
                closing.exception()
        if self.flock is not None:
            flock, self.flock = self.flock, None
            flock.close()
