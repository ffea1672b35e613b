"""The node's durable state: one SQLite database per node.

Tables: resources of the last compile, run history with per-resource results, the outbox of
remote notifications to send, the inbox of notifications received (for exactly-once), the
subscriptions other nodes hold on our resources, and the subscriptions we want on theirs.
Everything a converge records about one resource is written in a single transaction, outbox
rows included, so a crash never separates "updated" from "notification queued".
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
# How the engine records a resource whose wait was cut short by a stop: its action never ran.
STOPPED_BEFORE_ACTION = "stopped during"
# A result whose action the stop timeout killed: its effect never completed, so a reaction
# that ended so runs again after the restart (Chef actions are idempotent).
INTERRUPTED = "interrupted:"
HISTORY_LIMIT = 200  # runs kept per node, newest first
HISTORY_SLACK = 50  # ...pruned back to HISTORY_LIMIT when this many more have accumulated
DEFAULT_TTL = 24 * 3600.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS resources (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    name TEXT NOT NULL,
    seq INTEGER NOT NULL,
    actions TEXT NOT NULL,          -- JSON list of the actions this type allows
    default_action TEXT NOT NULL,
    properties TEXT NOT NULL,       -- JSON of the serialisable properties
    source TEXT NOT NULL,           -- recipe file:line
    last_result TEXT,               -- up_to_date | updated | skipped | failed
    last_action TEXT,
    last_run TEXT,
    last_at REAL
);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,             -- converge | reaction
    status TEXT NOT NULL,           -- running | ok | failed
    started REAL NOT NULL,
    finished REAL,
    error TEXT,
    updated INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    cause TEXT                      -- JSON: sender node, run id, resource, notification id
);
CREATE INDEX IF NOT EXISTS runs_started ON runs(started);
CREATE TABLE IF NOT EXISTS run_resources (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    resource TEXT NOT NULL,
    action TEXT NOT NULL,
    result TEXT NOT NULL,
    duration REAL NOT NULL,
    error TEXT,
    output TEXT,
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY,            -- notification id, also the receiver's de-duplication key
    target TEXT NOT NULL,           -- node name
    resource TEXT NOT NULL,
    action TEXT NOT NULL,
    status TEXT NOT NULL,           -- held | pending | delivered | failed | dead | unmatched
    hops INTEGER NOT NULL,
    cause TEXT NOT NULL,            -- JSON
    hold_run TEXT,                  -- delayed notifications wait for the end of this run
    run_id TEXT,                    -- the run whose update produced it (shown in its history)
    dedup TEXT,
    created REAL NOT NULL,
    deadline REAL NOT NULL,
    next_attempt REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    done_at REAL
);
CREATE INDEX IF NOT EXISTS outbox_status ON outbox(status, next_attempt);
CREATE TABLE IF NOT EXISTS inbox (
    id TEXT PRIMARY KEY,
    sender TEXT NOT NULL,
    resource TEXT NOT NULL,
    action TEXT NOT NULL,
    hops INTEGER NOT NULL,
    cause TEXT NOT NULL,
    status TEXT NOT NULL,           -- pending | applied | failed
    received REAL NOT NULL,
    run_id TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS inbox_status ON inbox(status, received);
CREATE TABLE IF NOT EXISTS subscriptions (
    id TEXT PRIMARY KEY,            -- stable: derived from the four fields below
    resource TEXT NOT NULL,         -- our resource being watched
    subscriber TEXT NOT NULL,       -- node that wants to hear
    subscriber_resource TEXT NOT NULL,
    action TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS wanted_subscriptions (
    id TEXT PRIMARY KEY,            -- same id as the remote node's subscriptions row
    resource TEXT NOT NULL,         -- our subscribing resource
    action TEXT NOT NULL,
    node TEXT NOT NULL,             -- remote node
    remote_resource TEXT NOT NULL,
    origin TEXT NOT NULL,           -- recipe | manual
    state TEXT NOT NULL,            -- pending | registered | recheck | removing | failed
    last_error TEXT,
    updated REAL NOT NULL
);
"""


def store_error(e: sqlite3.Error) -> tuple[str, str]:
    """An error code (all retryable: the caller did nothing wrong) and message for a failure
    of our own database."""
    text = str(e)
    low = text.lower()
    if "disk is full" in low or "disk i/o" in low:
        return "disk_full", f"its state database cannot be written ({text})"
    if "locked" in low or "busy" in low:
        return "busy", f"its state database is busy ({text})"
    return "store_error", f"its state database failed ({type(e).__name__}: {text})"


def subscription_id(publisher: str, resource: str, subscriber: str, subscriber_resource: str,
                    action: str) -> str:
    """A stable id so registering the same subscription twice is a no-op; both nodes and
    both resources are in it, so subscriptions to the same path on two nodes differ."""
    key = "\x1f".join((publisher, resource, subscriber, subscriber_resource, action))
    return "sub-" + uuid.uuid5(uuid.NAMESPACE_URL, "flock:" + key).hex[:16]


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


@dataclass
class ResourceRow:
    id: str
    type: str
    name: str
    seq: int
    actions: list[str]
    default_action: str
    properties: dict[str, Any]
    source: str
    last_result: str | None = None
    last_action: str | None = None
    last_run: str | None = None
    last_at: float | None = None


class StoreError(Exception):
    """The state database cannot be opened; the message names the file and what to do."""


def _open_error(path: Path, e: Exception) -> str:
    """What went wrong opening the state database at `path`, and what the user can do."""
    why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    if isinstance(e, sqlite3.DatabaseError) and "not a database" in why:
        return (f"the state database {path} is not a database ({why}); move it away to start "
                "afresh, or restore it from a backup")
    if isinstance(e, sqlite3.DatabaseError) and "malformed" in why:
        return (f"the state database {path} is damaged ({why}); move it away to start "
                "afresh, or restore it from a backup")
    return (f"cannot open the state database {path} ({why}); check that this user may read "
            "and write it and its directory, or choose another --state-dir")


def _json(obj: Any) -> str:
    return json.dumps(obj, default=repr, sort_keys=True)


class Store:
    """Thread-safe wrapper around one SQLite connection (WAL: survives kill -9)."""

    def __init__(self, path: str | Path, node: str = "", ttl: float = DEFAULT_TTL):
        self.path = Path(path)
        self.node = node
        self.ttl = ttl
        self._lock = threading.RLock()
        self._actions: dict[str, tuple[str, ...] | None] = {}  # resource id → allowed actions
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():  # 0600: SQLite gives its -wal and -shm files the same mode
                os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            self._db = sqlite3.connect(str(self.path), check_same_thread=False,
                                       isolation_level=None)
        except (OSError, sqlite3.Error) as e:
            raise StoreError(_open_error(self.path, e)) from None
        try:
            # Read the header before anything writes: a file that is not a database (or
            # one we may not read) is left exactly as it was.
            self._db.execute("PRAGMA schema_version").fetchone()
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            with self._lock:
                self._db.executescript(_SCHEMA)
                self._migrate()
                self._db.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
                )
        except (OSError, sqlite3.Error) as e:
            self._db.close()
            raise StoreError(_open_error(self.path, e)) from None

    def _migrate(self) -> None:
        """Bring a database made by an older version up to this schema (additive only)."""
        cols = {r[1] for r in self._db.execute("PRAGMA table_info(outbox)")}
        if "run_id" not in cols:
            self._db.execute("ALTER TABLE outbox ADD COLUMN run_id TEXT")
        self._db.execute("CREATE INDEX IF NOT EXISTS outbox_run ON outbox(run_id)")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- helpers ---------------------------------------------------------------------------
    def _tx(self) -> _Tx:
        return _Tx(self)

    def _all(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, tuple(args)).fetchall()

    def _one(self, sql: str, args: Iterable[Any] = ()) -> sqlite3.Row | None:
        with self._lock:
            row: sqlite3.Row | None = self._db.execute(sql, tuple(args)).fetchone()
            return row

    # -- meta ------------------------------------------------------------------------------
    def next_incarnation(self, now: float | None = None) -> int:
        """Bump and return the incarnation: every agent start is a new one. Wall-clock
        milliseconds, so a node whose state dir was wiped still starts above its last life."""
        now_ms = int((time.time() if now is None else now) * 1000)
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key='incarnation'").fetchone()
            inc = max(int(row[0]) + 1 if row else 1, now_ms)
            if inc > now_ms + 60_000:
                # Stored by a clock that was ahead: peers would refuse it as from the future
                # for as long. The instance id tells them this is a new process anyway.
                inc = now_ms
            db.execute("INSERT OR REPLACE INTO meta VALUES ('incarnation', ?)", (str(inc),))
        return inc

    # -- resources -------------------------------------------------------------------------
    def save_resources(self, rows: list[ResourceRow]) -> None:
        """Replace the persisted resources with those of the latest compile, keeping results."""
        with self._tx() as db:
            self._actions.clear()
            old = {
                r["id"]: r
                for r in db.execute(
                    "SELECT id, last_result, last_action, last_run, last_at FROM resources"
                )
            }
            db.execute("DELETE FROM resources")
            for r in rows:
                prev = old.get(r.id)
                db.execute(
                    "INSERT INTO resources VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        r.id, r.type, r.name, r.seq, _json(r.actions), r.default_action,
                        _json(r.properties), r.source,
                        prev["last_result"] if prev else None,
                        prev["last_action"] if prev else None,
                        prev["last_run"] if prev else None,
                        prev["last_at"] if prev else None,
                    ),
                )

    def resources(self) -> list[ResourceRow]:
        rows = self._all("SELECT * FROM resources ORDER BY seq")
        return [self._resource(r) for r in rows]

    def resource(self, rid: str) -> ResourceRow | None:
        r = self._one("SELECT * FROM resources WHERE id=?", (rid,))
        return self._resource(r) if r else None

    def resource_actions(self, rid: str) -> tuple[str, ...] | None:
        """The actions a persisted resource allows (None: no such resource); cached until the
        next save_resources, since every received notification checks its target."""
        with self._lock:
            if rid not in self._actions:
                r = self._db.execute("SELECT actions FROM resources WHERE id=?", (rid,)).fetchone()
                if len(self._actions) > 100_000:
                    self._actions.clear()
                self._actions[rid] = tuple(json.loads(r[0])) if r else None
            return self._actions[rid]

    @staticmethod
    def _resource(r: sqlite3.Row) -> ResourceRow:
        return ResourceRow(
            id=r["id"], type=r["type"], name=r["name"], seq=r["seq"],
            actions=json.loads(r["actions"]), default_action=r["default_action"],
            properties=json.loads(r["properties"]), source=r["source"],
            last_result=r["last_result"], last_action=r["last_action"],
            last_run=r["last_run"], last_at=r["last_at"],
        )

    # -- runs ------------------------------------------------------------------------------
    def start_run(self, run_id: str, kind: str, cause: dict[str, Any] | None = None) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO runs (id, kind, status, started, cause) VALUES (?,?,?,?,?)",
                (run_id, kind, "running", time.time(), _json(cause) if cause else None),
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
        with self._tx() as db:
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
                self._insert_outbox(db, item, run_id, now)

    def record_results(self, run_id: str, rows: list[tuple[Any, ...]]) -> None:
        """Many quiet results at once: (seq, resource, action, result, duration, error, output).
        Only for results with no outbox rows (up-to-date resources), so batching is safe."""
        now = time.time()
        with self._tx() as db:
            db.executemany(
                "INSERT OR REPLACE INTO run_resources VALUES (?,?,?,?,?,?,?,?)",
                [(run_id, *row) for row in rows],
            )
            db.executemany(
                "UPDATE resources SET last_result=?, last_action=?, last_run=?, last_at=? WHERE id=?",
                [(row[3], row[2], run_id, now, row[1]) for row in rows],
            )

    def record_why_run(self, run_id: str, rows: list[tuple[Any, ...]], would_update: int) -> None:
        """A why-run's plan, as history rows (seq, resource, action, result, duration, error,
        output): nothing else is touched (persisted resources, outbox, subscriptions)."""
        with self._tx() as db:
            db.executemany("INSERT OR REPLACE INTO run_resources VALUES (?,?,?,?,?,?,?,?)",
                           [(run_id, *row) for row in rows])
            db.execute("UPDATE runs SET updated=? WHERE id=?", (would_update, run_id))

    def _insert_outbox(self, db: sqlite3.Connection, item: OutboxItem, run_id: str,
                       now: float) -> None:
        if item.unmatched is not None:
            db.execute(
                "INSERT OR IGNORE INTO outbox (id, target, resource, action, status, hops, cause,"
                " run_id, created, deadline, next_attempt, last_error, done_at)"
                " VALUES (?,?,?,?,'unmatched',?,?,?,?,?,?,?,?)",
                (item.id, item.target, item.resource, item.action, item.hops, _json(item.cause),
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
                "held" if held else "pending", item.hops, _json(item.cause),
                run_id if held else None, run_id or None, dedup, now, now + self.ttl, now,
            ),
        )

    def finish_run(
        self, run_id: str, ok: bool, error: str | None = None, total: int | None = None
    ) -> None:
        """Close a run; its delayed remote notifications are released to the outbox."""
        now = time.time()
        with self._tx() as db:
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
            old = db.execute(
                "SELECT id FROM runs ORDER BY started DESC LIMIT -1 OFFSET ?", (HISTORY_LIMIT,)
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

    def recover_interrupted_runs(self) -> list[str]:
        """After a crash: close runs left 'running' and release their delayed notifications."""
        ids = [r["id"] for r in self._all("SELECT id FROM runs WHERE status='running'")]
        for rid in ids:
            self.finish_run(rid, False, "agent stopped during the run (interrupted)")
        return ids

    def run(self, run_id: str) -> dict[str, Any] | None:
        r = self._one("SELECT * FROM runs WHERE id=?", (run_id,))
        return self._run(r, with_resources=True) if r else None

    def last_run(self, kind: str | None = None) -> dict[str, Any] | None:
        if kind:
            r = self._one(
                "SELECT * FROM runs WHERE status!='running' AND kind=? ORDER BY started DESC LIMIT 1",
                (kind,),
            )
        else:
            r = self._one(
                # A why-run changed nothing: it says nothing about the node's health.
                "SELECT * FROM runs WHERE status!='running' AND kind!='why-run'"
                " ORDER BY started DESC LIMIT 1"
            )
        return self._run(r, with_resources=False) if r else None

    def history(self, limit: int = 20, offset: int = 0) -> list[dict[str, Any]]:
        rows = self._all("SELECT * FROM runs ORDER BY started DESC LIMIT ? OFFSET ?",
                         (int(limit), int(offset)))
        return [self._run(r, with_resources=True) for r in rows]

    def _run(self, r: sqlite3.Row, with_resources: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": r["id"],
            "kind": r["kind"],
            "status": r["status"],
            "started": r["started"],
            "finished": r["finished"],
            "duration": (r["finished"] - r["started"]) if r["finished"] else None,
            "error": r["error"],
            "updated": r["updated"],
            "total": r["total"],
            "cause": json.loads(r["cause"]) if r["cause"] else None,
        }
        if with_resources:
            out["resources"] = [
                {
                    "resource": x["resource"], "action": x["action"], "result": x["result"],
                    "duration": x["duration"], "error": x["error"], "output": x["output"],
                }
                for x in self._all(
                    "SELECT * FROM run_resources WHERE run_id=? ORDER BY seq", (r["id"],)
                )
            ]
            # What became of the remote notifications this run sent: the sender's view.
            out["notifications"] = [
                {
                    "id": x["id"], "target": x["target"], "resource": x["resource"],
                    "action": x["action"], "status": x["status"], "attempts": x["attempts"],
                    "error": x["last_error"],
                }
                for x in self._all(
                    "SELECT * FROM outbox WHERE run_id=? ORDER BY created", (r["id"],)
                )
            ]
        return out

    # -- outbox ----------------------------------------------------------------------------
    def enqueue(self, items: list[OutboxItem], run_id: str | None = None) -> None:
        now = time.time()
        with self._tx() as db:
            for item in items:
                self._insert_outbox(db, item, run_id or "", now)

    def due_outbox(self, now: float, limit: int = 256) -> list[dict[str, Any]]:
        # Everything pending for a target with something due, oldest first: a target's
        # notifications go (and arrive) in the order they were queued.
        rows = self._all(
            "SELECT * FROM outbox WHERE status='pending' AND target IN (SELECT DISTINCT target"
            " FROM outbox WHERE status='pending' AND next_attempt<=?) ORDER BY created LIMIT ?",
            (now, limit),
        )
        return [self._outbox(r) for r in rows]

    def next_outbox_due(self) -> float | None:
        r = self._one("SELECT MIN(next_attempt) FROM outbox WHERE status='pending'")
        return r[0] if r and r[0] is not None else None

    def outbox_delivered(self, nid: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE outbox SET status='delivered', done_at=?, last_error=NULL, "
                "attempts=attempts+1 WHERE id=?",
                (time.time(), nid),
            )

    def outbox_settle(self, delivered: list[str], failed: list[tuple[str, str]]) -> None:
        """Many answers of one batch at once: ids delivered, (id, error) refused."""
        now = time.time()
        with self._tx() as db:
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

    def outbox_due_now(self, target: str) -> None:
        """The target is back: what waits for it is due now, not at its backoff time."""
        with self._tx() as db:
            db.execute(
                "UPDATE outbox SET next_attempt=? WHERE status='pending' AND target=? "
                "AND next_attempt>?",
                (time.time(), target, time.time()),
            )

    def outbox_failed(self, nid: str, error: str) -> None:
        """Refused by the receiver (unknown resource, hop limit...): final, no retry."""
        with self._tx() as db:
            db.execute(
                "UPDATE outbox SET status='failed', done_at=?, last_error=?, "
                "attempts=attempts+1 WHERE id=?",
                (time.time(), error, nid),
            )

    def outbox_retry(self, nid: str, error: str, next_attempt: float) -> str:
        """Schedule another attempt, or dead-letter once past the deadline. Returns status."""
        with self._tx() as db:
            r = db.execute("SELECT deadline FROM outbox WHERE id=?", (nid,)).fetchone()
            if r is None:
                return "gone"
            if next_attempt >= r[0]:
                db.execute(
                    "UPDATE outbox SET status='dead', done_at=?, last_error=?, "
                    "attempts=attempts+1 WHERE id=?",
                    (time.time(), error, nid),
                )
                return "dead"
            db.execute(
                "UPDATE outbox SET next_attempt=?, last_error=?, attempts=attempts+1 WHERE id=?",
                (next_attempt, error, nid),
            )
            return "pending"

    def outbox_retry_many(self, ids: list[str], error: str, next_attempt: float) -> set[str]:
        """outbox_retry for a target's whole queue in one commit; returns the dead-lettered."""
        now = time.time()
        dead: set[str] = set()
        with self._tx() as db:
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

    def outbox_shift_times(self, delta: float) -> int:
        """The wall clock jumped by `delta`: move pending deadlines and retry times with it."""
        with self._tx() as db:
            return db.execute(
                "UPDATE outbox SET deadline=deadline+?, next_attempt=next_attempt+? "
                "WHERE status IN ('pending', 'held')",
                (delta, delta),
            ).rowcount

    def outbox(self, statuses: Iterable[str] | None = None, limit: int = 500,
               offset: int = 0) -> list[dict[str, Any]]:
        if statuses:
            st = list(statuses)
            q = ",".join("?" * len(st))
            rows = self._all(
                f"SELECT * FROM outbox WHERE status IN ({q}) ORDER BY created DESC "
                "LIMIT ? OFFSET ?",
                (*st, limit, offset),
            )
        else:
            rows = self._all("SELECT * FROM outbox ORDER BY created DESC LIMIT ? OFFSET ?",
                             (limit, offset))
        return [self._outbox(r) for r in rows]

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

    def outbox_revive(self, ids: list[str] | None = None,
                      statuses: tuple[str, ...] = ("dead", "failed")) -> list[str]:
        """Send dead-lettered or refused notifications again (all, or those `ids`), with a
        fresh TTL: after the receiver's disk was freed or its recipe fixed."""
        now = time.time()
        with self._tx() as db:
            revived = self._settled_ids(db, ids, statuses)
            db.executemany(
                "UPDATE outbox SET status='pending', next_attempt=?, deadline=?, attempts=0, "
                "done_at=NULL, last_error=NULL WHERE id=?",
                [(now, now + self.ttl, i) for i in revived],
            )
        return revived

    def outbox_discard(self, ids: list[str] | None,
                       statuses: tuple[str, ...] = ("dead", "failed")) -> list[str]:
        """Forget settled-for-good notifications (dead letters, refusals): those `ids`, or all
        with `statuses`. Pending ones are never discarded: they may be on the wire."""
        allowed = tuple(s for s in statuses if s in ("dead", "failed", "unmatched"))
        with self._tx() as db:
            gone = self._settled_ids(db, ids, allowed)
            db.executemany("DELETE FROM outbox WHERE id=?", [(i,) for i in gone])
        return gone

    def outbox_counts(self) -> dict[str, int]:
        rows = self._all("SELECT status, COUNT(*) FROM outbox GROUP BY status")
        return {r[0]: r[1] for r in rows}

    @staticmethod
    def _outbox(r: sqlite3.Row) -> dict[str, Any]:
        d = dict(r)
        d["cause"] = json.loads(d["cause"]) if d["cause"] else {}
        return d

    # -- inbox (receiver side, exactly once) -------------------------------------------------
    def inbox_accept(
        self, nid: str, sender: str, resource: str, action: str, hops: int, cause: dict[str, Any],
        run: tuple[str, dict[str, Any] | None] | None = None,
    ) -> bool:
        """Record a received notification. False if this id was already received.

        `run` (run id, cause): when fresh, also start the reaction's run in the same commit
        (what start_run does), for a reaction that starts at once."""
        with self._tx() as db:
            now = time.time()
            cur = db.execute(
                "INSERT OR IGNORE INTO inbox (id, sender, resource, action, hops, cause, status,"
                " received) VALUES (?,?,?,?,?,?,?,?)",
                (nid, sender, resource, action, hops, _json(cause), "pending", now),
            )
            fresh = cur.rowcount == 1
            if fresh and run is not None:
                run_id, run_cause = run
                db.execute(
                    "INSERT OR REPLACE INTO runs (id, kind, status, started, cause)"
                    " VALUES (?,?,?,?,?)",
                    (run_id, "reaction", "running", now, _json(run_cause) if run_cause else None),
                )
            return fresh

    def inbox_accept_many(self, rows: list[tuple[Any, ...]]) -> list[bool]:
        """inbox_accept for many (nid, sender, resource, action, hops, cause) in one commit."""
        now = time.time()
        fresh = []
        with self._tx() as db:
            for nid, sender, resource, action, hops, cause in rows:
                cur = db.execute(
                    "INSERT OR IGNORE INTO inbox (id, sender, resource, action, hops, cause,"
                    " status, received) VALUES (?,?,?,?,?,?,?,?)",
                    (nid, sender, resource, action, hops, _json(cause), "pending", now),
                )
                fresh.append(cur.rowcount == 1)
        return fresh

    def inbox_pending(self) -> list[dict[str, Any]]:
        rows = self._all("SELECT * FROM inbox WHERE status='pending' ORDER BY received")
        out = []
        for r in rows:
            d = dict(r)
            d["cause"] = json.loads(d["cause"])
            out.append(d)
        return out

    def inbox_recover(self) -> list[dict[str, Any]]:
        """After a restart: the pending notifications to run again.

        A reaction killed after its action was recorded (the action's result and its outbox
        rows commit together) but before the inbox row was closed must not run twice: close
        it from that record. Only one killed before its action was recorded, or whose action
        was cut short by the stop timeout (INTERRUPTED), runs again.
        """
        todo = []
        for n in self.inbox_pending():
            # Runs already opened for it: each was cut by a stop or a crash. The next is attempt
            # k + 1, and its commands are told (FLOCK_ATTEMPT) so they can check their effect.
            tried = self._one(
                "SELECT COUNT(*) FROM runs WHERE kind = 'reaction' "
                "AND json_extract(cause, '$.notification') = ?",
                (n["id"],),
            )
            n["attempt"] = 1 + (tried[0] if tried else 0)
            r = self._one(
                "SELECT runs.id, rr.result, rr.error FROM runs JOIN run_resources rr "
                "ON rr.run_id = runs.id AND rr.seq = 1 WHERE runs.kind = 'reaction' "
                "AND json_extract(runs.cause, '$.notification') = ? "
                "ORDER BY runs.started DESC LIMIT 1",
                (n["id"],),
            )
            if r is None or (r["error"] or "").startswith((STOPPED_BEFORE_ACTION, INTERRUPTED)):
                todo.append(n)
            else:
                self.inbox_done(n["id"], r["id"], r["result"] != "failed", r["error"])
        return todo

    def inbox_done(self, nid: str, run_id: str | None, ok: bool, error: str | None) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE inbox SET status=?, run_id=?, error=? WHERE id=?",
                ("applied" if ok else "failed", run_id, error, nid),
            )

    def inbox_get(self, nid: str) -> dict[str, Any] | None:
        r = self._one("SELECT * FROM inbox WHERE id=?", (nid,))
        return dict(r) if r else None

    # -- subscriptions held by others on our resources ---------------------------------------
    def add_subscription(
        self, resource: str, subscriber: str, subscriber_resource: str, action: str
    ) -> str:
        sid = subscription_id(self.node, resource, subscriber, subscriber_resource, action)
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO subscriptions VALUES (?,?,?,?,?,?)",
                (sid, resource, subscriber, subscriber_resource, action, time.time()),
            )
        return sid

    def remove_subscription(self, sid: str) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM subscriptions WHERE id=?", (sid,)).rowcount > 0

    def subscriptions(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._all("SELECT * FROM subscriptions ORDER BY created")]

    def subscribers_of(self, resource: str) -> list[dict[str, Any]]:
        return [
            dict(r) for r in self._all("SELECT * FROM subscriptions WHERE resource=?", (resource,))
        ]

    # -- subscriptions we want on other nodes' resources -------------------------------------
    def set_recipe_subscriptions(self, wanted: list[dict[str, str]]) -> None:
        """Make the recipe-declared subscriptions exactly `wanted`; others are marked removing.

        Each dict: resource, action, node, remote_resource.
        """
        now = time.time()
        with self._tx() as db:
            ids = set()
            for w in wanted:
                sid = self.wanted_id(w["node"], w["remote_resource"], w["resource"], w["action"])
                ids.add(sid)
                db.execute(
                    "INSERT INTO wanted_subscriptions VALUES (?,?,?,?,?,?,?,?,?) "
                    "ON CONFLICT(id) DO UPDATE SET state=CASE WHEN state='removing' "
                    "THEN 'pending' ELSE state END",
                    (sid, w["resource"], w["action"], w["node"], w["remote_resource"],
                     "recipe", "pending", None, now),
                )
            for r in db.execute(
                "SELECT id FROM wanted_subscriptions WHERE origin='recipe'"
            ).fetchall():
                if r[0] not in ids:
                    db.execute(
                        "UPDATE wanted_subscriptions SET state='removing', updated=? WHERE id=?",
                        (now, r[0]),
                    )

    def recheck_recipe_subscriptions(self) -> None:
        """After a converge: register the recipe's subscriptions again (idempotent on the
        publisher), so one removed on the publisher's side comes back, as the recipe says."""
        with self._tx() as db:
            db.execute("UPDATE wanted_subscriptions SET state='recheck' "
                       "WHERE origin='recipe' AND state='registered'")

    def wanted_id(self, node: str, remote_resource: str, resource: str, action: str) -> str:
        """Our row id: the remote node's subscription id, qualified by the remote node."""
        return subscription_id(node, remote_resource, self.node, resource, action) + "@" + node

    def add_wanted(self, node: str, remote_resource: str, resource: str, action: str) -> str:
        """A subscription wired by hand (CLI or console): kept until unsubscribed."""
        wid = self.wanted_id(node, remote_resource, resource, action)
        with self._tx() as db:
            db.execute(
                "INSERT INTO wanted_subscriptions VALUES (?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT(id) DO UPDATE SET state='pending'",
                (wid, resource, action, node, remote_resource, "manual", "pending", None,
                 time.time()),
            )
        return wid

    def wanted_subscriptions(self, states: Iterable[str] | None = None) -> list[dict[str, Any]]:
        rows = self._all("SELECT * FROM wanted_subscriptions ORDER BY updated")
        st = set(states) if states else None
        return [dict(r) for r in rows if st is None or r["state"] in st]

    def wanted_state(self, wid: str, state: str, error: str | None = None) -> None:
        with self._tx() as db:
            if state == "removed":
                db.execute("DELETE FROM wanted_subscriptions WHERE id=?", (wid,))
            else:
                db.execute(
                    "UPDATE wanted_subscriptions SET state=?, last_error=?, updated=? WHERE id=?",
                    (state, error, time.time(), wid),
                )


class _Tx:
    def __init__(self, store: Store):
        self.store = store

    def __enter__(self) -> sqlite3.Connection:
        self.store._lock.acquire()
        self.store._db.execute("BEGIN IMMEDIATE")
        return self.store._db

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: Any) -> None:
        try:
            if exc_type is None:
                self.store._db.execute("COMMIT")
            else:
                self.store._db.execute("ROLLBACK")
        finally:
            self.store._lock.release()
