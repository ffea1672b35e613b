"""Keeping the remote subscriptions this node wants registered on the nodes that publish them.

A subscription we want lives in our store ("wanted": from the recipe's `remote_subscribes`, or
wired by hand); the publisher keeps its own row. `SubscriptionSync` registers pending ones until
the publisher has them (also if it was down at compile time), re-registers recipe ones after
each converge (`recheck`, idempotent on the publisher), and removes those marked `removing`.
It runs on the agent's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from flock_node.delivery import is_final
from flock_node.store import Store, WantedRow
from flock_node.transport import AsyncRpc, RpcError

log = logging.getLogger("flock.subscriptions")

RETRY_EVERY = 2.0  # seconds between passes while a publisher cannot be reached
RECHECK_EVERY = 30.0  # seconds between passes when all is registered


def public_id(wanted_id: str) -> str:
    """The subscription's id as both nodes know it (ours is qualified with '@publisher')."""
    return wanted_id.rsplit("@", 1)[0]


def not_known(node: str) -> str:
    """Why a subscription to `node` waits: no address for it yet."""
    return f"node {node!r} not known yet"


class SubscriptionSync:
    def __init__(self, store: Store, rpc: AsyncRpc, name: str,
                 resolve: Callable[[str], str | None], emit: Callable[..., None]):
        self.store = store
        self.rpc = rpc
        self.name = name
        self.resolve = resolve
        self.emit = emit
        self._wake = asyncio.Event()

    @staticmethod
    def never_sent(w: WantedRow) -> bool:
        """A subscription whose publisher we never reached (it was never known): removing it
        needs no call, the publisher holds nothing of it."""
        return w.state == "pending" and w.last_error == not_known(w.node)

    def wake(self) -> None:
        """Something changed (a converge ended, a publisher came back): sync now. Loop only."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            retry = False
            for w in self.store.wanted.all({"pending", "recheck", "removing",
                                                      "failed"}):
                retry |= not await self.sync(w)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RETRY_EVERY if retry else RECHECK_EVERY):
                    await self._wake.wait()

    async def sync(self, w: WantedRow) -> bool:
        """Bring one wanted subscription to the publisher; False to try again later."""
        addr = self.resolve(w.node)
        sid = public_id(w.id)
        if addr is None:
            self.store.wanted.set_state(w.id, w.state, not_known(w.node))
            return False
        try:
            if w.state == "removing":
                await self.rpc.call(addr, "resource_manager", "unsubscribe", {"id": sid},
                                    expect=w.node)
                self.store.wanted.set_state(w.id, "removed")
                self.emit("subscription_removed", id=sid, node=w.node)
            else:
                await self.rpc.call(addr, "resource_manager", "subscribe", {
                    "resource": w.remote_resource, "subscriber": self.name,
                    "subscriber_resource": w.resource, "action": w.action,
                }, expect=w.node)
                self.store.wanted.set_state(w.id, "registered")
                if w.state != "recheck":  # a routine re-registration is not news
                    self.emit("subscription_registered", id=sid, node=w.node,
                              resource=w.remote_resource)
            return True
        except RpcError as e:
            if e.code == "unknown_subscription" and w.state == "removing":
                self.store.wanted.set_state(w.id, "removed")
                return True
            final = is_final(e.code)
            self.store.wanted.set_state(w.id, "failed" if final else w.state, str(e))
            return final
