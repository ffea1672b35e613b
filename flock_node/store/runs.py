"""Run history: converges and reactions, each resource's result, and what its notifications became."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

import msgspec

from flock_node.store.db import (
    DEFAULT_TTL,
    HISTORY_LIMIT,
    HISTORY_SLACK,
    Db,
    dump,
)
from flock_node.store.outbox import OutboxItem, insert_outbox

# One result as `record_results` writes it: (seq, resource, action, result, duration, error,
# output).
ResultTuple = tuple[int, str, str, str, float, str | None, str | None]


class RunResult(msgspec.Struct):
    """One resource's result in a run (a why-run's: what it would do, and why)."""

    resource: str
    action: str
    result: str  # up_to_date | updated | skipped | failed (why-run: would_update...)
    duration: float
    error: str | None = None
    output: str | None = None


class RunNotification(msgspec.Struct):
    """What became of a remote notification a run sent: the sender's view."""

    id: str
    target: str
    resource: str
    action: str
    status: str  # held | pending | delivered | failed | dead | unmatched
    attempts: int
    error: str | None = None


class RunRow(msgspec.Struct):
    """A converge, reaction or why-run; `resources` and `notifications` are read only for
    `get` and `history` (empty from `last`)."""

    id: str
    kind: str  # converge | reaction | why-run
    status: str  # running | ok | failed
    started: float
    finished: float | None
    duration: float | None
    error: str | None
    updated: int
    total: int
    cause: dict[str, Any] | None
    resources: list[RunResult] = msgspec.field(default_factory=list)
    notifications: list[RunNotification] = msgspec.field(default_factory=list)


class PagedRun(RunRow, kw_only=True):
    """A run in a page of `history` without its resources (too many for the page): how many
    there are, the client fetches them with `run(id)`."""

    resources_paged: int


class Runs:
    """The `runs` and `run_resources` tables."""

    def __init__(self, db: Db, ttl: float = DEFAULT_TTL):
        self.db = db
        self.ttl = ttl

    def start(self, run_id: str, kind: str, cause: dict[str, Any] | None = None) -> None:
        with self.db.tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO runs (id, kind, status, started, cause) VALUES (?,?,?,?,?)",
                (run_id, kind, "running", time.time(), dump(cause) if cause else None),
            )

    def record_result(
        self,
        run_id: str,
        seq: int,
        resource: str,
        action: str,
        result: str,
        duration: float,
        error: str | None = None,
        output: str | None = None,
        outbox: list[OutboxItem] | None = None,
    ) -> None:
        """Record one resource's result and queue its remote notifications, atomically."""
        now = time.time()
        with self.db.tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO run_resources VALUES (?,?,?,?,?,?,?,?)",
                (run_id, seq, resource, action, result, duration, error, output),
            )
            db.execute(
                "UPDATE resources SET last_result=?, last_action=?, last_run=?, last_at=? WHERE id=?",
                (result, action, run_id, now, resource),
            )
            if result == "updated":
                db.execute("UPDATE runs SET updated=updated+1 WHERE id=?", (run_id,))
            for item in outbox or ():
                insert_outbox(db, item, run_id, now, self.ttl)

    def record_results(self, run_id: str, rows: list[ResultTuple]) -> None:
        """Many quiet results at once: (seq, resource, action, result, duration, error, output).
        Only for results with no outbox rows (up-to-date resources), so batching is safe."""
        now = time.time()
        with self.db.tx() as db:
            db.executemany(
                "INSERT OR REPLACE INTO run_resources VALUES (?,?,?,?,?,?,?,?)",
                [(run_id, *row) for row in rows],
            )
            db.executemany(
                "UPDATE resources SET last_result=?, last_action=?, last_run=?, last_at=? WHERE id=?",
                [(row[3], row[2], run_id, now, row[1]) for row in rows],
            )

    def record_why_run(self, run_id: str, rows: list[ResultTuple], would_update: int) -> None:
        """A why-run's plan, as history rows (seq, resource, action, result, duration, error,
        output): nothing else is touched (persisted resources, outbox, subscriptions)."""
        with self.db.tx() as db:
            db.executemany("INSERT OR REPLACE INTO run_resources VALUES (?,?,?,?,?,?,?,?)",
                           [(run_id, *row) for row in rows])
            db.execute("UPDATE runs SET updated=? WHERE id=?", (would_update, run_id))

    def finish(
        self, run_id: str, ok: bool, error: str | None = None, total: int | None = None
    ) -> None:
        """Close a run; its delayed remote notifications are released to the outbox."""
        now = time.time()
        with self.db.tx() as db:
            db.execute(
                "UPDATE runs SET status=?, finished=?, error=?, total=COALESCE(?, total) WHERE id=?",
                ("ok" if ok else "failed", now, error, total, run_id),
            )
            db.execute(
                "UPDATE outbox SET status='pending', next_attempt=? WHERE status='held' AND hold_run=?",
                (now, run_id),
            )
            # Keep history bounded: back to the newest HISTORY_LIMIT runs once HISTORY_SLACK
            # more have piled up, so a stream of reactions prunes in batches, not every run.
            over = db.execute(
                "SELECT 1 FROM runs ORDER BY started DESC LIMIT 1 OFFSET ?",
                (HISTORY_LIMIT + HISTORY_SLACK,),
            ).fetchone()
            # The newest finished converge is never pruned: it is the node's health, and a
            # steady stream of reactions would otherwise turn it into `never`.
            old = db.execute(
                "SELECT id FROM runs WHERE id IS NOT (SELECT id FROM runs WHERE kind='converge'"
                " AND status!='running' ORDER BY started DESC LIMIT 1)"
                " ORDER BY started DESC LIMIT -1 OFFSET ?", (HISTORY_LIMIT,)
            ).fetchall() if over else []
            for (rid,) in old:
                db.execute("DELETE FROM runs WHERE id=?", (rid,))
                db.execute("DELETE FROM run_resources WHERE run_id=?", (rid,))
                # Settled notifications go with their run; dead letters stay until seen.
                db.execute(
                    "DELETE FROM outbox WHERE run_id=? AND status IN ('delivered', 'failed')",
                    (rid,),
                )
            # The inbox remembers ids for de-duplication: long past any sender's TTL is enough.
            # (IN, not !=: the inbox_status index answers it without scanning the inbox.)
            db.execute(
                "DELETE FROM inbox WHERE status IN ('applied', 'failed') AND received<?",
                (now - 2 * self.ttl,),
            )

    def recover_interrupted(self) -> list[str]:
        """After a crash: close runs left 'running' and release their delayed notifications."""
        ids = [r["id"] for r in self.db.all("SELECT id FROM runs WHERE status='running'")]
        for rid in ids:
            self.finish(rid, False, "agent stopped during the run (interrupted)")
        return ids

    def get(self, run_id: str) -> RunRow | None:
        r = self.db.one("SELECT * FROM runs WHERE id=?", (run_id,))
        return self._row(r, with_resources=True) if r else None

    def last(self, kind: str | None = None) -> RunRow | None:
        if kind:
            r = self.db.one(
                "SELECT * FROM runs WHERE status!='running' AND kind=? ORDER BY started DESC LIMIT 1",
                (kind,),
            )
        else:
            r = self.db.one(
                # A why-run changed nothing: it says nothing about the node's health.
                "SELECT * FROM runs WHERE status!='running' AND kind!='why-run'"
                " ORDER BY started DESC LIMIT 1"
            )
        return self._row(r, with_resources=False) if r else None

    def history(self, limit: int = 20, offset: int = 0) -> list[RunRow]:
        rows = self.db.all("SELECT * FROM runs ORDER BY started DESC LIMIT ? OFFSET ?",
                         (int(limit), int(offset)))
        return [self._row(r, with_resources=True) for r in rows]

    def _row(self, r: sqlite3.Row, with_resources: bool) -> RunRow:
        run = RunRow(
            id=r["id"], kind=r["kind"], status=r["status"], started=r["started"],
            finished=r["finished"],
            duration=(r["finished"] - r["started"]) if r["finished"] else None,
            error=r["error"], updated=r["updated"], total=r["total"],
            cause=json.loads(r["cause"]) if r["cause"] else None,
        )
        if with_resources:
            run.resources = [
                RunResult(x["resource"], x["action"], x["result"], x["duration"], x["error"],
                          x["output"])
                for x in self.db.all(
                    "SELECT * FROM run_resources WHERE run_id=? ORDER BY seq", (r["id"],)
                )
            ]
            # What became of the remote notifications this run sent: the sender's view.
            run.notifications = [
                RunNotification(x["id"], x["target"], x["resource"], x["action"], x["status"],
                                x["attempts"], x["last_error"])
                for x in self.db.all(
                    "SELECT * FROM outbox WHERE run_id=? ORDER BY created", (r["id"],)
                )
            ]
        return run
