"""The RPC contract in code: each call's arguments as a msgspec Struct, the member view, and the
membership states.

The server decodes a request's arguments with `decode_args` (decoding is validation: a wrong
type or an unknown argument is one `bad_request` naming the field), the Python client takes its
positional argument names from the same Structs (`positional`), and the CLI and console read the
member view's fields. A method a node serves must have its Struct here (tests check it).
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal

import msgspec

# A count (offset, limit) SQLite can take: 0 .. 2**63 - 1.
Count = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]


class State(enum.StrEnum):
    """What a node is to the others (SPEC: Discovery and liveness)."""

    ALIVE = "alive"
    SUSPECT = "suspect"
    DOWN = "down"
    LEFT = "left"  # announced its shutdown


class Args(msgspec.Struct, forbid_unknown_fields=True):
    """Arguments of one call; field order is the order of positional arguments."""


# --- flock_api ------------------------------------------------------------------------------


class RunChef(Args):
    pass


class WhyRun(Args):
    pass


class Active(Args):
    pass


class Status(Args):
    pass


class History(Args):
    limit: Count = 200
    offset: Count | None = None


class Run(Args):
    id: str
    offset: Count | None = None


class Members(Args):
    offset: Count | None = None
    after: str | None = None  # the name the last page ended on (paging.py)
    pattern: str | None = None  # only names matching this glob
    tag: str | None = None  # only members carrying this tag


OutboxStatus = Literal["held", "pending", "delivered", "failed", "dead", "unmatched"]


class Outbox(Args):
    status: OutboxStatus | None = None
    limit: Count = 500
    offset: Count | None = None


class Retry(Args):
    ids: list[str] | None = None


class Discard(Args):
    ids: list[str] | None = None
    statuses: list[Literal["dead", "failed"]] | None = None


# --- resource_manager -------------------------------------------------------------------------


class Resources(Args):
    offset: Count | None = None
    limit: Count | None = None


class Notify(Args):
    resource: str
    action: str
    id: str | None = None
    sender: str = ""
    hops: int = 1
    cause: dict[str, Any] | None = None


class NotifyBatch(Args):
    # Each item is checked on its own (and answered on its own): one bad item must not
    # refuse the others of its batch.
    items: list[Any]


class Subscribe(Args):
    resource: str
    subscriber: str
    subscriber_resource: str
    action: str


class SubscribeTo(Args):
    resource: str
    action: str
    node: str
    remote_resource: str


class Unsubscribe(Args):
    id: str


class Subscriptions(Args):
    pass


# --- trust ----------------------------------------------------------------------------------


class Audit(Args):
    limit: Count = 50


class Crl(Args):
    pass


class InstallCrl(Args):
    list: Any  # bytes signed by the flock CA, or base64 as `crl` gives it (checked by the actor)


CALLS: dict[tuple[str, str], type[Args]] = {
    ("flock_api", "run_chef"): RunChef,
    ("flock_api", "why_run"): WhyRun,
    ("flock_api", "active"): Active,
    ("flock_api", "status"): Status,
    ("flock_api", "history"): History,
    ("flock_api", "run"): Run,
    ("flock_api", "members"): Members,
    ("flock_api", "outbox"): Outbox,
    ("flock_api", "retry"): Retry,
    ("flock_api", "discard"): Discard,
    ("resource_manager", "resources"): Resources,
    ("resource_manager", "notify"): Notify,
    ("resource_manager", "notify_batch"): NotifyBatch,
    ("resource_manager", "subscribe"): Subscribe,
    ("resource_manager", "subscribe_to"): SubscribeTo,
    ("resource_manager", "unsubscribe"): Unsubscribe,
    ("resource_manager", "subscriptions"): Subscriptions,
    ("trust", "audit"): Audit,
    ("trust", "crl"): Crl,
    ("trust", "install_crl"): InstallCrl,
}


class BadArgs(ValueError):
    """A call's arguments do not fit its Struct; the message names the argument."""


def decode_args(actor: str, method: str, args: Any) -> dict[str, Any]:
    """The arguments of `actor.method`, validated, as keyword arguments for the handler."""
    kind = CALLS[(actor, method)]
    if not isinstance(args, dict):
        raise BadArgs(f"{method}: arguments must be a map of names to values")
    try:
        value = msgspec.convert(args, kind)
    except msgspec.ValidationError as e:
        text = str(e)
        where = text.rsplit(" - at `$.", 1)
        if len(where) == 2:  # "Expected `int`, got `str` - at `$.limit`" → name it first
            text = f"{where[1].rstrip('`')}: {where[0][0].lower()}{where[0][1:]}"
        raise BadArgs(f"{method}: {text}") from None
    return {f: getattr(value, f) for f in kind.__struct_fields__}


def positional(method: str, actor: str | None = None) -> tuple[str, ...]:
    """The names a client's positional arguments stand for, in order."""
    for (a, m), kind in CALLS.items():
        if m == method and (actor is None or a == actor):
            return kind.__struct_fields__
    return ()


# --- what the flock looks like --------------------------------------------------------------


class LastRun(msgspec.Struct):
    """The outcome of a node's last finished run (or last converge: its health)."""

    id: str
    status: str  # ok | failed
    ok: bool
    kind: str = "converge"  # converge | reaction
    started: float | None = None
    finished: float | None = None
    duration: float | None = None
    updated: int = 0
    error: str | None = None


def last_run_view(run: Any) -> LastRun | None:
    """The one view of a run's outcome, from a store row, a heartbeat's summary or a map."""
    if not run:
        return None
    d = run if isinstance(run, dict) else msgspec.to_builtins(run)
    started, duration = d.get("started"), d.get("duration")
    finished = d.get("finished")
    if finished is None and started is not None:
        finished = started + (duration or 0.0)
    return LastRun(id=d["id"], status=d["status"], ok=d["status"] == "ok",
                   kind=d.get("kind") or "converge", started=started, finished=finished,
                   duration=duration, updated=d.get("updated") or 0, error=d.get("error"))


class Member(msgspec.Struct):
    """One node as `flock_api.members` describes it (itself first, then what it heard)."""

    name: str
    state: State
    address: str
    bus: str
    rpc: str
    incarnation: int
    active: bool
    run: dict[str, Any] | None
    last_run: LastRun | None
    last_converge: LastRun | None  # its health: a reaction never stands in for it
    pending: int
    dead_letters: int
    tags: list[str]
    version: str
    age: float  # seconds since this node last heard of it
