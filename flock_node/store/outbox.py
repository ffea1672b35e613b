"""The outbox: remote notifications to send, their retries and dead letters (sender side)."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from flock_node.store.db import (
    DEFAULT_TTL,
    Db,
    dump,
)


@dataclass
class OutboxItem:
    """A remote notification to queue: the target node runs `action` on its `resource`."""

    target: str
    resource: str
    action: str
    hops: int = 1
    cause: dict[str, Any] = field(default_factory=dict)
    timing: str = "immediately"  # immediately | delayed
    id: str = field(default_factory=lambda: "n-" + uuid.uuid4().hex)
    # Set when `target` is a node=/tag= pattern that matched no member: kept (status
    # 'unmatched', never sent) so the run's history says so.
    unmatched: str | None = None


class Outgoing(msgspec.Struct):
    """A pending notification as the deliverer sends it: `target` runs `action` on its
    `resource`; `attempts` so far pace its retries."""

    id: str
    target: str
    resource: str
    action: str
    hops: int
    cause: dict[str, Any]
    attempts: int = 0


class OutboxRow(msgspec.Struct):
    """A notification as the `outbox` table keeps it (what `outbox` answers)."""

    id: str
    target: str
    resource: str
    action: str
    status: str  # held | pending | delivered | failed | dead | unmatched
    hops: int
    cause: dict[str, Any]
    hold_run: str | None  # a delayed notification waits for the end of this run
    run_id: str | None  # the run whose update produced it
    dedup: str | None
    created: float
    deadline: float
    next_attempt: float
    attempts: int
    last_error: str | None
    done_at: float | None


def outgoing(items: Iterable[OutboxItem]) -> list[Outgoing]:
    """The items just queued that are pending at once (not delayed, not unmatched), as the
    deliverer sends them: the cause as the outbox stores it (JSON), so a row handed over in
    memory and one read back from the store send the same."""
    return [Outgoing(i.id, i.target, i.resource, i.action, i.hops, _plain(i.cause))
            for i in items if i.timing != "delayed" and i.unmatched is None]


def _plain(obj: Any) -> Any:
    return json.loads(dump(obj))


def _cause(text: str | None) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(text) if text else {}
    return out


def insert_outbox(db: sqlite3.Connection, item: OutboxItem, run_id: str, now: float,
                  ttl: float) -> None:
    """Queue one remote notification inside the caller's transaction."""
    if item.unmatched is not None:
        db.execute(
            "INSERT OR IGNORE INTO outbox (id, target, resource, action, status, hops, cause,"
            " run_id, created, deadline, next_attempt, last_error, done_at)"
            " VALUES (?,?,?,?,'unmatched',?,?,?,?,?,?,?,?)",
            (item.id, item.target, item.resource, item.action, item.hops, dump(item.cause),
             run_id or None, now, now, now, item.unmatched, now),
        )
        return
    held = item.timing == "delayed"
    dedup = f"{item.target}\x1f{item.resource}\x1f{item.action}" if held else None
    if held:
        dup = db.execute(
            "SELECT 1 FROM outbox WHERE status='held' AND hold_run=? AND dedup=?",
            (run_id, dedup),
        ).fetchone()
        if dup:
            return
    db.execute(
        "INSERT OR IGNORE INTO outbox (id, target, resource, action, status, hops, cause,"
        " hold_run, run_id, dedup, created, deadline, next_attempt)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            item.id, item.target, item.resource, item.action,
            "held" if held else "pending", item.hops, dump(item.cause),
            run_id if held else None, run_id or None, dedup, now, now + ttl, now,
        ),
    )


class Outbox:
    """The `outbox` table."""

    def __init__(self, db: Db, ttl: float = DEFAULT_TTL):
        self.db = db
        self.ttl = ttl

    def enqueue(self, items: list[OutboxItem], run_id: str | None = None) -> None:
        now = time.time()
        with self.db.tx() as db:
            for item in items:
                insert_outbox(db, item, run_id or "", now, self.ttl)

    def due(self, now: float, limit: int = 256) -> list[Outgoing]:
        """Everything pending for a target with something due, oldest first: a target's
        notifications go (and arrive) in the order they were queued."""
        rows = self.db.all(
            "SELECT id, target, resource, action, hops, cause, attempts FROM outbox"
            " WHERE status='pending' AND target IN (SELECT DISTINCT target"
            " FROM outbox WHERE status='pending' AND next_attempt<=?) ORDER BY created LIMIT ?",
            (now, limit),
        )
        return [Outgoing(r[0], r[1], r[2], r[3], r[4], _cause(r[5]), r[6]) for r in rows]

    def next_due(self) -> float | None:
        r = self.db.one("SELECT MIN(next_attempt) FROM outbox WHERE status='pending'")
        return r[0] if r and r[0] is not None else None

    def settle(self, delivered: list[str], failed: list[tuple[str, str]]) -> None:
        """Many answers of one batch at once: ids delivered, (id, error) refused."""
        now = time.time()
        with self.db.tx() as db:
            db.executemany(
                "UPDATE outbox SET status='delivered', done_at=?, last_error=NULL, "
                "attempts=attempts+1 WHERE id=?",
                [(now, nid) for nid in delivered],
            )
            db.executemany(
                "UPDATE outbox SET status='failed', done_at=?, last_error=?, "
                "attempts=attempts+1 WHERE id=?",
                [(now, err, nid) for nid, err in failed],
            )

    def due_now(self, target: str) -> None:
        """The target is back: what waits for it is due now, not at its backoff time."""
        with self.db.tx() as db:
            db.execute(
                "UPDATE outbox SET next_attempt=? WHERE status='pending' AND target=? "
                "AND next_attempt>?",
                (time.time(), target, time.time()),
            )

    def retry_many(self, ids: list[str], error: str, next_attempt: float) -> set[str]:
        """retry for a target's whole queue in one commit; returns the dead-lettered."""
        now = time.time()
        dead: set[str] = set()
        with self.db.tx() as db:
            for nid in ids:
                r = db.execute("SELECT deadline FROM outbox WHERE id=? AND status='pending'",
                               (nid,)).fetchone()
                if r is None:
                    continue
                if next_attempt >= r[0]:
                    db.execute(
                        "UPDATE outbox SET status='dead', done_at=?, last_error=?, "
                        "attempts=attempts+1 WHERE id=?",
                        (now, error, nid),
                    )
                    dead.add(nid)
                else:
                    db.execute(
                        "UPDATE outbox SET next_attempt=?, last_error=?, attempts=attempts+1 "
                        "WHERE id=?",
                        (next_attempt, error, nid),
                    )
        return dead

    def shift_times(self, delta: float) -> int:
        """The wall clock jumped by `delta`: move pending deadlines and retry times with it."""
        with self.db.tx() as db:
            return db.execute(
                "UPDATE outbox SET deadline=deadline+?, next_attempt=next_attempt+? "
                "WHERE status IN ('pending', 'held')",
                (delta, delta),
            ).rowcount

    def rows(self, statuses: Iterable[str] | None = None, limit: int = 500,
               offset: int = 0) -> list[OutboxRow]:
        """The notifications, newest first (only those in `statuses` if given)."""
        if statuses:
            st = list(statuses)
            q = ",".join("?" * len(st))
            rows = self.db.all(
                f"SELECT * FROM outbox WHERE status IN ({q}) ORDER BY created DESC "
                "LIMIT ? OFFSET ?",
                (*st, limit, offset),
            )
        else:
            rows = self.db.all("SELECT * FROM outbox ORDER BY created DESC LIMIT ? OFFSET ?",
                             (limit, offset))
        return [self._row(r) for r in rows]

    @staticmethod
    def _settled_ids(db: sqlite3.Connection, ids: list[str] | None,
                     statuses: tuple[str, ...]) -> list[str]:
        """Ids of outbox rows in `statuses`: all of them, or those of `ids`."""
        if not statuses or ids == []:
            return []
        st = ",".join("?" * len(statuses))
        sql, args = f"SELECT id FROM outbox WHERE status IN ({st})", list(statuses)
        if ids is not None:
            sql += f" AND id IN ({','.join('?' * len(ids))})"
            args += ids
        return [r[0] for r in db.execute(sql, args).fetchall()]

    def revive(self, ids: list[str] | None = None,
                      statuses: tuple[str, ...] = ("dead", "failed")) -> list[str]:
        """Send dead-lettered or refused notifications again (all, or those `ids`), with a
        fresh TTL: after the receiver's disk was freed or its recipe fixed."""
        now = time.time()
        with self.db.tx() as db:
            revived = self._settled_ids(db, ids, statuses)
            db.executemany(
                "UPDATE outbox SET status='pending', next_attempt=?, deadline=?, attempts=0, "
                "done_at=NULL, last_error=NULL WHERE id=?",
                [(now, now + self.ttl, i) for i in revived],
            )
        return revived

    def discard(self, ids: list[str] | None,
                       statuses: tuple[str, ...] = ("dead", "failed")) -> list[str]:
        """Forget settled-for-good notifications (dead letters, refusals): those `ids`, or all
        with `statuses`. Pending ones are never discarded: they may be on the wire."""
        allowed = tuple(s for s in statuses if s in ("dead", "failed", "unmatched"))
        with self.db.tx() as db:
            gone = self._settled_ids(db, ids, allowed)
            db.executemany("DELETE FROM outbox WHERE id=?", [(i,) for i in gone])
        return gone

    def counts(self) -> dict[str, int]:
        rows = self.db.all("SELECT status, COUNT(*) FROM outbox GROUP BY status")
        return {r[0]: r[1] for r in rows}

    @staticmethod
    def _row(r: sqlite3.Row) -> OutboxRow:
        return OutboxRow(
            id=r["id"], target=r["target"], resource=r["resource"], action=r["action"],
            status=r["status"], hops=r["hops"], cause=_cause(r["cause"]),
            hold_run=r["hold_run"], run_id=r["run_id"], dedup=r["dedup"], created=r["created"],
            deadline=r["deadline"], next_attempt=r["next_attempt"], attempts=r["attempts"],
            last_error=r["last_error"], done_at=r["done_at"])
