"""The node's durable state: one SQLite database per node, one small repository per table.

    store.resources      the resources of the latest compile     (resources.py)
    store.runs           run history and per-resource results    (runs.py)
    store.outbox         remote notifications to send            (outbox.py)
    store.inbox          notifications received, exactly once    (inbox.py)
    store.subscriptions  others' subscriptions to our resources  (subscriptions.py)
    store.wanted         our subscriptions to others' resources  (subscriptions.py)
    store.audit          changes and refusals, by verified caller (audit.py)

All share one connection and its lock (db.py); a transaction may span tables (a result and
its outbox rows commit together).
"""

from __future__ import annotations

from pathlib import Path

from flock_node.store.audit import AuditEntry, AuditLog
from flock_node.store.db import (
    DEFAULT_TTL,
    HISTORY_LIMIT,
    HISTORY_SLACK,
    INTERRUPTED,
    SCHEMA_VERSION,
    STOPPED_BEFORE_ACTION,
    Db,
    StoreError,
    lock_state,
    store_error,
)
from flock_node.store.inbox import IdTaken, Inbox, InboxRow, Received
from flock_node.store.outbox import Outbox, OutboxItem, OutboxRow, Outgoing, outgoing
from flock_node.store.resources import ResourceRow, Resources
from flock_node.store.runs import PagedRun, ResultTuple, RunNotification, RunResult, RunRow, Runs
from flock_node.store.subscriptions import (
    SubscriptionRow,
    Subscriptions,
    Wanted,
    WantedRow,
    WantedSpec,
    subscription_id,
)

__all__ = ["DEFAULT_TTL", "HISTORY_LIMIT", "HISTORY_SLACK", "INTERRUPTED", "SCHEMA_VERSION",
           "STOPPED_BEFORE_ACTION", "AuditEntry", "AuditLog", "Db", "IdTaken", "InboxRow", "OutboxItem", "OutboxRow", "Outgoing", "PagedRun", "Received", "ResourceRow", "ResultTuple", "RunNotification", "RunResult", "RunRow", "Store", "StoreError", "lock_state", "SubscriptionRow", "WantedRow", "WantedSpec",
           "outgoing", "store_error", "subscription_id"]


class Store:
    """The repositories of one node's database (thread-safe; WAL: survives kill -9)."""

    def __init__(self, path: str | Path, node: str = "", ttl: float = DEFAULT_TTL):
        self.db = Db(path)
        self.path = self.db.path
        self.node = node
        self.ttl = ttl
        self.resources = Resources(self.db)
        self.runs = Runs(self.db, ttl)
        self.outbox = Outbox(self.db, ttl)
        self.inbox = Inbox(self.db)
        self.subscriptions = Subscriptions(self.db, node)
        self.wanted = Wanted(self.db, node)
        self.audit = AuditLog(self.db)

    def next_incarnation(self, now: float | None = None) -> int:
        """Bump and return the incarnation (see Db.next_incarnation)."""
        return self.db.next_incarnation(now)

    def close(self) -> None:
        self.db.close()
