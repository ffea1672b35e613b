"""Between a decoded call and the actor that answers it: who is calling (the verified
identity of the connection, or an unverified key holder), may they (policy.py), do they speak
only for themselves (a node's notifications and subscriptions), and the audit trail."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from flock_node.protocol import Envelope, Error, Request, Response
from flock_node.store.audit import INSECURE, KEY, LOCAL, AuditLog
from flock_node.trust.identity import NODE, OPERATOR, Caller
from flock_node.trust.policy import CHANGES, DEFAULT, Policy

log = logging.getLogger("flock.trust")

Call = Callable[[dict[str, Any]], Awaitable[Response]]


def unverified_via(keyed: bool, local: bool) -> str:
    """How a caller without a certificate was known, for the audit trail: a flock key
    verified its frame, or it came on our local socket with no key, or over TCP unchecked."""
    return KEY if keyed else LOCAL if local else INSECURE


class Guard:
    """`owner_of(subscription id)` names the subscriber of one of our incoming
    subscriptions (None if there is none); `via` says how unverified callers were known
    (`unverified_via`)."""

    def __init__(self, node: str, audit: AuditLog | None, policy: Policy = DEFAULT,
                 owner_of: Callable[[str], str | None] = lambda _id: None, via: str = KEY):
        self.node = node
        self.audit = audit
        self.policy = policy
        self.owner_of = owner_of
        self.via = via

    async def run(self, caller: Caller, env: Envelope, req: Request, call: Call) -> Response:
        """Answer `req` through `call(args)` if `caller` may make it; audit the outcome."""
        who = caller if caller.verified else Caller(OPERATOR, env.sender or "?", verified=False)
        args = dict(req.args)
        if caller.verified:  # shared-key mode: every key holder is an operator
            why = self._refusal(who, req, args)
            if why is not None:
                return self._refuse(who, req, args, why)
            args = self._as_sender(who, req.method, args)
        if req.method == "notify_batch" and caller.verified:
            return await self._batch(who, req, args, call)
        resp = await call(args)
        if req.method in CHANGES:
            # Written once this step of the loop is over, i.e. the answer is handed to nng:
            # its commit need not stand between a notification and its answer.
            asyncio.get_running_loop().call_soon(
                self._record, who, req, args, "ok" if resp.ok else
                (resp.error.code if resp.error else "error"),
                resp.error.message if resp.error else None)
        return resp

    def _refusal(self, who: Caller, req: Request, args: dict[str, Any]) -> str | None:
        """Why `who` may not make this call, or None."""
        d = self.policy.decide(who, self.node, req.actor, req.method, _resource(args))
        if not d.allowed:
            return f"{who.name} ({who.role}) may not call {req.method} on {self.node}: {d.why}"
        if who.role != NODE:
            return None
        if req.method == "notify":
            return _foreign(who, args)
        if req.method == "subscribe" and args.get("subscriber") != who.name:
            return (f"{who.name} may not subscribe in the name of {args.get('subscriber')!r}: "
                    "a node manages only its own subscriptions")
        if req.method == "unsubscribe":
            owner = self.owner_of(str(args.get("id")))
            if owner != who.name:
                return (f"{who.name} may not remove subscription {args.get('id')!r}: it is not "
                        "its own")
        return None

    def _as_sender(self, who: Caller, method: str, args: dict[str, Any]) -> dict[str, Any]:
        """The verified name is the sender: run history names it, whatever was claimed."""
        if method == "notify":
            args["sender"] = who.name
        return args

    async def _batch(self, who: Caller, req: Request, args: dict[str, Any],
                     call: Call) -> Response:
        """Each notification of a batch is judged alone: the refused ones are answered
        `unauthorized` in their place, the others go on together."""
        items = args.get("items")
        if not isinstance(items, list):
            return await call(args)
        refusals: dict[int, str] = {}
        allowed = []
        for i, it in enumerate(items):
            if not isinstance(it, dict):
                allowed.append(it)
                continue
            d = self.policy.decide(who, self.node, req.actor, "notify", _resource(it))
            why = (None if d.allowed else
                   f"{who.name} ({who.role}) may not notify {it.get('resource')} on "
                   f"{self.node}: {d.why}")
            why = why or (_foreign(who, it) if who.role == NODE else None)
            if why is not None:
                refusals[i] = why
                self._record(who, req, it, "refused", why)
            else:
                allowed.append({**it, "sender": who.name})
        resp = await call({**args, "items": allowed}) if allowed else Response(
            req.call_id, True, result=[])
        if refusals and resp.ok and isinstance(resp.result, list):
            answers = iter(resp.result)
            resp = Response(req.call_id, True, result=[
                {"id": it.get("id") if isinstance(it, dict) else None,
                 "error": {"code": "unauthorized", "message": refusals[i]}}
                if i in refusals else next(answers, None) for i, it in enumerate(items)])
        asyncio.get_running_loop().call_soon(
            self._record, who, req, {"items": len(items), "refused": len(refusals)},
            "ok" if resp.ok else (resp.error.code if resp.error else "error"),
            resp.error.message if resp.error else None)
        return resp

    def _refuse(self, who: Caller, req: Request, args: dict[str, Any], why: str) -> Response:
        log.warning("refused: %s", why)
        self._record(who, req, args, "refused", why)
        return Response(req.call_id, False, error=Error("unauthorized", f"{self.node}: {why}"))

    def _record(self, who: Caller, req: Request, args: dict[str, Any], outcome: str,
                detail: str | None) -> None:
        if self.audit is None:
            return
        try:
            self.audit.record(who.name, who.role, who.verified, f"{req.actor}.{req.method}",
                              args, outcome, detail, via=None if who.verified else self.via)
        except Exception:  # the audit trail must not take the call down with it
            log.exception("audit record failed")


def _resource(args: dict[str, Any]) -> str | None:
    v = args.get("resource")
    return v if isinstance(v, str) else None


def _foreign(who: Caller, args: dict[str, Any]) -> str | None:
    """Why a node's notification speaks for another node, or None."""
    claimed = args.get("sender")
    cause = args.get("cause")
    by = cause.get("node") if isinstance(cause, dict) else None
    for name in (claimed, by):
        if name not in (None, "", who.name):
            return (f"{who.name} may not notify in the name of {name!r}: a node speaks only "
                    "for itself")
    return None
