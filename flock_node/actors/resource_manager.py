"""`resource_manager`: what nodes ask each other — notifications (de-duplicated by id in the
inbox, answered before their reaction runs) and subscriptions."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

import msgspec

from flock_node import delivery, trace
from flock_node.actors import BadRequest, NodeFacts, as_map, as_maps
from flock_node.actors import int_arg as _int
from flock_node.paging import Page, count_arg, fill_page
from flock_node.store import IdTaken, Received, ResourceRow, Store
from flock_node.subscriptions import SubscriptionSync
from flock_node.transport import RpcError
from flock_node.work import WorkQueue, cause_of
from flock_node.work import run_id as new_run_id

log = logging.getLogger("flock.resource_manager")


class ResourceManager:
    NAME = "resource_manager"
    METHODS = ('resources', 'notify', 'notify_batch', 'subscribe', 'subscribe_to', 'unsubscribe', 'subscriptions')

    def __init__(self, node: NodeFacts, store: Store, work: WorkQueue,
                 subscriptions: SubscriptionSync, emit: Callable[..., None]):
        self.node = node
        self.store = store
        self.work = work
        self.sync = subscriptions
        self.emit = emit

    async def resources(self, offset: int | None = None,
                        limit: int | None = None) -> list[ResourceRow] | Page[ResourceRow]:
        """The persisted resources of the last compile, in recipe order. With `offset` (or
        `limit`): one page, `{"items", "next_offset"}`, that fits a frame; without either, the
        whole list (too_large if it does not fit)."""
        rows = self.store.resources.all()
        if offset is None and limit is None:
            return rows
        start = count_arg(offset or 0, "offset")
        end = len(rows) if limit is None else start + count_arg(limit, "limit")
        return fill_page(rows[start:end], start, more=False)

    def _check_ready(self) -> None:
        if not self.node.ready:
            raise RpcError("not_ready", f"{self.node.name} is starting: its recipe is compiling")

    def _check_target(self, resource: str, action: str | None) -> None:
        self._check_ready()
        actions = self.store.resources.actions(resource)
        if actions is None:
            if len(resource) > 200:  # named back in the answer: not a megabyte of it
                resource = resource[:200] + "…"
            if self.work.compile_error is not None:
                # The recipe that may declare it does not compile now: not final.
                raise RpcError("not_ready", f"{self.node.name} has no resource {resource} and its "
                               f"recipe does not compile ({self.work.compile_error})")
            known = ", ".join(x.id for x in self.store.resources.all()[:20]) or "none"
            raise RpcError("unknown_resource", f"{self.node.name} has no resource {resource}; it has: {known}")
        if action is not None and action not in actions:
            raise RpcError("unknown_action",
                           f"{resource} on {self.node.name} has no action {action!r}; "
                           f"allowed: {', '.join(actions)}")

    async def notify(self, resource: str, action: str, id: str | None = None,
                        sender: str = "", hops: int = 1, cause: dict[str, Any] | None = None) -> dict[str, Any]:
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
        n = Received(nid, sender, resource, action, hops, cause)
        # The worker is idle: the reaction starts now, so its run row goes in the inbox
        # row's commit, one commit fewer before the action starts.
        run_id = new_run_id() if self.work.idle() else None
        try:
            fresh = self.store.inbox.accept(nid, sender or "?", resource, action, hops, cause,
                                            run=(run_id, cause_of(n)) if run_id else None)
        except IdTaken as e:
            raise RpcError("bad_request", str(e)) from None
        trace.stamp("inbox_committed")
        if fresh:
            self.work.enqueue_reaction(n, run_id)
            self.emit("notification_received", id=nid, sender=sender, resource=resource,
                      action=action)
        return {"id": nid, "accepted": True, "duplicate": not fresh}

    async def notify_batch(self, items: list[Any]) -> list[dict[str, Any] | None]:
        """Many notifications from one sender in one call and one commit, in order; each
        answered like `notify` (accepted/duplicate) or with its own error."""
        if not isinstance(items, list):
            raise BadRequest("items must be a list")
        out: list[dict[str, Any] | None] = []
        rows: list[tuple[Any, ...]] = []
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
        fresh = iter(self.store.inbox.accept_many(rows)) if rows else iter(())
        accepted = iter(rows)
        for i, r in enumerate(out):
            if r is not None:
                continue
            nid, sender, resource, action, hops, cause = next(accepted)
            new = next(fresh)
            if isinstance(new, IdTaken):
                out[i] = {"id": nid, "error": {"code": "bad_request", "message": str(new)}}
                continue
            if new:
                self.work.enqueue_reaction(Received(nid, sender, resource, action, hops, cause))
                self.emit("notification_received", id=nid, sender=sender, resource=resource,
                          action=action)
            out[i] = {"id": nid, "accepted": True, "duplicate": not new}
        return out

    async def subscribe(self, resource: str, subscriber: str, subscriber_resource: str,
                           action: str) -> dict[str, Any]:
        """Another node asks to run `action` on its resource when our `resource` is updated."""
        self._check_target(resource, None)
        sid = self.store.subscriptions.add(resource, subscriber, subscriber_resource, action)
        return {"id": sid}

    async def subscribe_to(self, resource: str, action: str, node: str,
                              remote_resource: str) -> dict[str, Any]:
        """Wire by hand: our `resource` runs `action` when `node`'s `remote_resource` updates."""
        self._check_target(resource, action)
        wid = self.store.wanted.add(node, remote_resource, resource, action)
        w = self.store.wanted.get(wid)
        assert w is not None  # just added, and only the loop removes
        await self.sync.sync(w)
        w = self.store.wanted.get(wid)
        assert w is not None
        if w.state == "failed":  # refused by the publisher: say so, keep nothing
            self.store.wanted.set_state(wid, "removed")
            code, _, msg = (w.last_error or "bad_request: refused").partition(": ")
            raise RpcError(code, msg)
        return {"id": wid.rsplit("@", 1)[0], "state": w.state, "error": w.last_error}

    async def unsubscribe(self, id: str) -> dict[str, Any]:
        """Remove a subscription, incoming (someone's on our resource) or outgoing (ours)."""
        if not isinstance(id, str):
            raise BadRequest("id must be a subscription id")
        if self.store.subscriptions.remove(id):
            return {"id": id, "removed": "incoming",
                    "note": "if the subscriber's recipe declares it (remote_subscribes), its "
                            "next converge registers it again"}
        for w in self.store.wanted.all():
            if w.id == id or w.id.rsplit("@", 1)[0] == id:
                if self.sync.never_sent(w):
                    self.store.wanted.set_state(w.id, "removed")
                    ok = True
                else:
                    self.store.wanted.set_state(w.id, "removing")
                    ok = await self.sync.sync(msgspec.structs.replace(w, state="removing"))
                out = {"id": id, "removed": "outgoing", "remote_done": ok}
                if w.origin == "recipe":
                    out["note"] = (f"{w.resource} declares it in the recipe "
                                   "(remote_subscribes): the next converge registers it again; "
                                   "remove it from the recipe to drop it for good")
                return out
        raise RpcError("unknown_subscription", f"{self.node.name} has no subscription {id!r}")

    async def subscriptions(self) -> dict[str, list[dict[str, Any]]]:
        incoming = as_maps(self.store.subscriptions.all())
        outgoing = []
        for w in self.store.wanted.all():
            state = "registered" if w.state == "recheck" else w.state
            outgoing.append(as_map(
                msgspec.structs.replace(w, id=w.id.rsplit("@", 1)[0], state=state)))
        return {"incoming": incoming, "outgoing": outgoing}
