"""What our heartbeat (or gossiped record) says about us besides who and where we are: tags,
activity, the last run and converge, the outbox's counts, the revocation list's version."""

from __future__ import annotations

from typing import Any

from flock_node.protocol import RunSummary
from flock_node.store import RunRow, Store
from flock_node.work import WorkQueue


def summary(last: RunRow | None) -> RunSummary | None:
    """A run's outcome as heartbeats carry it."""
    if last is None:
        return None
    return RunSummary(id=last.id, status=last.status, kind=last.kind, started=last.started,
                      duration=last.duration or 0.0, updated=last.updated, error=last.error)


def node_record(store: Store, work: WorkQueue, tags: list[str], crl: int) -> dict[str, Any]:
    """Our changing facts, read afresh (the membership driver asks every interval)."""
    counts = store.outbox.counts()
    last = store.runs.last()
    converge = last if last and last.kind == "converge" else store.runs.last("converge")
    return {
        "tags": list(tags), "active": work.active, "run": work.progress,
        "last_run": summary(last), "last_converge": summary(converge),
        "pending": counts.get("pending", 0) + counts.get("held", 0),
        "dead": counts.get("dead", 0), "crl": crl,
    }
