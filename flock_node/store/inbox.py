"""The inbox: notifications received, so each takes effect exactly once (receiver side)."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

import msgspec

from flock_node.store.db import (
    INTERRUPTED,
    STOPPED_BEFORE_ACTION,
    Db,
    dump,
)


class Received(msgspec.Struct):
    """A notification this node accepted: its reaction runs `action` on our `resource`."""

    id: str
    sender: str
    resource: str
    action: str
    hops: int
    cause: dict[str, Any] = msgspec.field(default_factory=dict)
    attempt: int = 1  # > 1: run again after a stop or crash cut the last attempt


class IdTaken(Exception):
    """A notification id already received from another sender: not a duplicate of this one
    (answering "duplicate" would drop it unrun), and not run again either."""

    def __init__(self, nid: str, holder: str):
        super().__init__(f"notification id {nid} was already received from {holder}; "
                         "ids are unique per sender")
        self.holder = holder


def _check_sender(db: sqlite3.Connection, nid: str, sender: str) -> None:
    row = db.execute("SELECT sender FROM inbox WHERE id=?", (nid,)).fetchone()
    if row is not None and row[0] != sender:
        raise IdTaken(nid, row[0])


class InboxRow(Received, kw_only=True):
    """A notification as the `inbox` table keeps it."""

    status: str  # pending | applied | failed
    received: float
    run_id: str | None = None
    error: str | None = None


def _row(r: Any) -> InboxRow:
    return InboxRow(id=r["id"], sender=r["sender"], resource=r["resource"], action=r["action"],
                    hops=r["hops"], cause=json.loads(r["cause"]) if r["cause"] else {},
                    status=r["status"], received=r["received"], run_id=r["run_id"],
                    error=r["error"])


class Inbox:
    """The `inbox` table (its recovery reads the reactions' runs)."""

    def __init__(self, db: Db):
        self.db = db

    def accept(
        self, nid: str, sender: str, resource: str, action: str, hops: int, cause: dict[str, Any],
        run: tuple[str, dict[str, Any] | None] | None = None,
    ) -> bool:
        """Record a received notification. False if this id was already received from this
        sender; IdTaken if another sender used it.

        `run` (run id, cause): when fresh, also start the reaction's run in the same commit
        (what Runs.start does), for a reaction that starts at once."""
        with self.db.tx() as db:
            now = time.time()
            cur = db.execute(
                "INSERT OR IGNORE INTO inbox (id, sender, resource, action, hops, cause, status,"
                " received) VALUES (?,?,?,?,?,?,?,?)",
                (nid, sender, resource, action, hops, dump(cause), "pending", now),
            )
            fresh = cur.rowcount == 1
            if not fresh:
                _check_sender(db, nid, sender)
            if fresh and run is not None:
                run_id, run_cause = run
                db.execute(
                    "INSERT OR REPLACE INTO runs (id, kind, status, started, cause)"
                    " VALUES (?,?,?,?,?)",
                    (run_id, "reaction", "running", now, dump(run_cause) if run_cause else None),
                )
            return fresh

    def accept_many(self, rows: list[tuple[str, str, str, str, int, dict[str, Any]]]
                    ) -> list[bool | IdTaken]:
        """accept for many (nid, sender, resource, action, hops, cause) in one commit; an id
        another sender used is answered by its IdTaken, the others still go in."""
        now = time.time()
        fresh: list[bool | IdTaken] = []
        with self.db.tx() as db:
            for nid, sender, resource, action, hops, cause in rows:
                cur = db.execute(
                    "INSERT OR IGNORE INTO inbox (id, sender, resource, action, hops, cause,"
                    " status, received) VALUES (?,?,?,?,?,?,?,?)",
                    (nid, sender, resource, action, hops, dump(cause), "pending", now),
                )
                if cur.rowcount == 1:
                    fresh.append(True)
                    continue
                try:
                    _check_sender(db, nid, sender)
                    fresh.append(False)
                except IdTaken as e:
                    fresh.append(e)
        return fresh

    def pending(self) -> list[InboxRow]:
        rows = self.db.all("SELECT * FROM inbox WHERE status='pending' ORDER BY received")
        return [_row(r) for r in rows]

    def recover(self) -> list[InboxRow]:
        """After a restart: the pending notifications to run again.

        A reaction killed after its action was recorded (the action's result and its outbox
        rows commit together) but before the inbox row was closed must not run twice: close
        it from that record. Only one killed before its action was recorded, or whose action
        was cut short by the stop timeout (INTERRUPTED), runs again.
        """
        todo = []
        for n in self.pending():
            # Runs already opened for it: each was cut by a stop or a crash. The next is attempt
            # k + 1, and its commands are told (FLOCK_ATTEMPT) so they can check their effect.
            tried = self.db.one(
                "SELECT COUNT(*) FROM runs WHERE kind = 'reaction' "
                "AND json_extract(cause, '$.notification') = ?",
                (n.id,),
            )
            n.attempt = 1 + (tried[0] if tried else 0)
            r = self.db.one(
                "SELECT runs.id, rr.result, rr.error FROM runs JOIN run_resources rr "
                "ON rr.run_id = runs.id AND rr.seq = 1 WHERE runs.kind = 'reaction' "
                "AND json_extract(runs.cause, '$.notification') = ? "
                "ORDER BY runs.started DESC LIMIT 1",
                (n.id,),
            )
            if r is None or (r["error"] or "").startswith((STOPPED_BEFORE_ACTION, INTERRUPTED)):
                todo.append(n)
            else:
                self.done(n.id, r["id"], r["result"] != "failed", r["error"])
        return todo

    def done(self, nid: str, run_id: str | None, ok: bool, error: str | None) -> None:
        with self.db.tx() as db:
            db.execute(
                "UPDATE inbox SET status=?, run_id=?, error=? WHERE id=?",
                ("applied" if ok else "failed", run_id, error, nid),
            )

    def get(self, nid: str) -> InboxRow | None:
        r = self.db.one("SELECT * FROM inbox WHERE id=?", (nid,))
        return _row(r) if r else None
