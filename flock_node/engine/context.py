"""What a run is told (its id, kind, cause, progress callback, stop and kill) and what it
tells the commands it starts (FLOCK_RUN_ID, FLOCK_NOTIFICATION...)."""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from flock_node.engine.ansible_session import ansible_session
from flock_node.engine.limits import Kill
from flock_node.engine.resources import RUN_ENV


class Hooks(Protocol):
    def resolve_targets(self, node: str | None, tag: str | None) -> list[str]: ...

    def outbox_changed(self) -> None: ...

    # Optional: `outbox_added(items[, early])` is told the rows just committed (immediate
    # ones become pending at once), so the agent can send them without reading them back;
    # hooks without it get `outbox_changed()`.
    # Optional: `outbox_early(items)` is given a reaction's rows whose ids derive from the
    # notification that caused it, before their commit: the agent may send them while the
    # commit syncs (a crash before it runs the reaction again, which sends the same ids, and
    # the receiver keeps one); what it returns comes back in `outbox_added(items, early)`, or
    # in `outbox_abandoned(early)` when the commit failed.


@dataclass
class RunContext:
    """What the agent tells one run: its id, why it runs, and how to report and stop it."""

    run_id: str
    kind: str = "converge"  # converge | reaction | why-run
    cause: dict[str, Any] | None = None  # reactions: {"node", "run", "resource", "notification"}
    hops: int = 0
    progress: Callable[[int, int, str], None] | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    kill: Kill = field(default_factory=Kill)  # fired when a stop must not wait any longer
    opened: bool = False  # the caller already committed the run row (start_run)


def derived_id(key: str) -> str:
    """A notification id that is a pure function of `key`."""
    return "n-" + uuid.uuid5(uuid.NAMESPACE_URL, "flock-notification:" + key).hex


def chain_origin(cause: dict[str, Any] | None) -> str | None:
    """The id of the first notification of the chain a reaction belongs to."""
    if not cause:
        return None
    return cause.get("origin") or cause.get("notification")


def reaction_env(ctx: RunContext) -> dict[str, str]:
    """What a reaction's commands see about why they run: FLOCK_RUN_ID always; for a
    reaction FLOCK_NOTIFICATION (the notification applied), FLOCK_ORIGIN (the first
    notification of its chain), FLOCK_SENDER and FLOCK_ATTEMPT (2 or more when an earlier
    attempt was cut by a crash or a stop: the command may check whether its effect is there)."""
    env = {"FLOCK_RUN_ID": ctx.run_id}
    cause = ctx.cause or {}
    if ctx.kind == "reaction" and cause.get("notification"):
        env["FLOCK_NOTIFICATION"] = str(cause["notification"])
        env["FLOCK_ORIGIN"] = str(chain_origin(cause))
        if cause.get("node"):
            env["FLOCK_SENDER"] = str(cause["node"])
        env["FLOCK_ATTEMPT"] = str(cause.get("attempt") or 1)
    return env


@contextlib.contextmanager
def run_env(ctx: RunContext) -> Iterator[None]:
    """The run's variables for the commands started inside (see reaction_env)."""
    token = RUN_ENV.set(reaction_env(ctx))
    try:
        with ansible_session():  # one Ansible worker per run, started on first use
            yield
    finally:
        RUN_ENV.reset(token)
