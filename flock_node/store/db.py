"""The node's state database: one SQLite connection (WAL: survives kill -9), its schema, and
the transaction every repository writes through.

Everything a converge records about one resource is written in a single transaction, outbox
rows included, so a crash never separates "updated" from "notification queued".
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
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


STATE_LOCK = "agent.lock"


def lock_state(directory: Path, node: str) -> int:
    """Hold the state directory for this agent's lifetime (the kernel drops the lock when the
    process dies, even by kill -9). Two agents on one database would each deliver the other's
    outbox and run the other's inbox, so a second one is refused (OSError EADDRINUSE), naming
    the holder; a lock file we may not open is a StoreError."""
    path = directory / STATE_LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        raise StoreError(f"cannot open {path} ({e.strerror or e}); check that this user may "
                         "read and write the state directory, or choose another --state-dir"
                         ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 200).decode("utf-8", "replace").split()
        os.close(fd)
        who = f" (node {holder[1]}, pid {holder[0]})" if len(holder) == 2 else ""
        raise OSError(errno.EADDRINUSE, f"the state directory {directory} is in use by another "
                      f"running agent{who}: give each node its own --state-dir") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {node}\n".encode())
    return fd


def _json(obj: Any) -> str:
    return json.dumps(obj, default=repr, sort_keys=True)


def dump(obj: Any) -> str:
    """JSON for a TEXT column."""
    return json.dumps(obj, default=repr, sort_keys=True)


class Db:
    """One SQLite connection shared by the repositories, serialised by one lock."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():  # 0600: SQLite gives its -wal and -shm files the same mode
                os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            self.conn = sqlite3.connect(str(self.path), check_same_thread=False,
                                        isolation_level=None)
        except (OSError, sqlite3.Error) as e:
            raise StoreError(_open_error(self.path, e)) from None
        try:
            # Read the header before anything writes: a file that is not a database (or
            # one we may not read) is left exactly as it was.
            self.conn.execute("PRAGMA schema_version").fetchone()
            self.conn.row_factory = sqlite3.Row
            self.conn.execute("PRAGMA journal_mode=WAL")
            # FULL: the WAL is synced at every commit, so what we acknowledged or are about
            # to send survives the machine going down, not only our process (NORMAL syncs at
            # checkpoints). About 60 µs a commit on this disk.
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute("PRAGMA busy_timeout=5000")
            with self.lock:
                self.conn.executescript(_SCHEMA)
                self._migrate()
                self.conn.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
                )
        except (OSError, sqlite3.Error) as e:
            self.conn.close()
            raise StoreError(_open_error(self.path, e)) from None

    def _migrate(self) -> None:
        """Bring a database made by an older version up to this schema (additive only)."""
        cols = {r[1] for r in self.conn.execute("PRAGMA table_info(outbox)")}
        if "run_id" not in cols:
            self.conn.execute("ALTER TABLE outbox ADD COLUMN run_id TEXT")
        self.conn.execute("CREATE INDEX IF NOT EXISTS outbox_run ON outbox(run_id)")

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    def tx(self) -> _Tx:
        """`with db.tx() as conn:` one write transaction (BEGIN IMMEDIATE ... COMMIT)."""
        return _Tx(self)

    def all(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self.lock:
            return self.conn.execute(sql, tuple(args)).fetchall()

    def one(self, sql: str, args: Iterable[Any] = ()) -> sqlite3.Row | None:
        with self.lock:
            row: sqlite3.Row | None = self.conn.execute(sql, tuple(args)).fetchone()
            return row

    def next_incarnation(self, now: float | None = None) -> int:
        """Bump and return the incarnation: every agent start is a new one. Wall-clock
        milliseconds, so a node whose state dir was wiped still starts above its last life."""
        now_ms = int((time.time() if now is None else now) * 1000)
        with self.tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key='incarnation'").fetchone()
            inc = max(int(row[0]) + 1 if row else 1, now_ms)
            if inc > now_ms + 60_000:
                # Stored by a clock that was ahead: peers would refuse it as from the future
                # for as long. The instance id tells them this is a new process anyway.
                inc = now_ms
            db.execute("INSERT OR REPLACE INTO meta VALUES ('incarnation', ?)", (str(inc),))
        return inc


class _Tx:
    def __init__(self, db: Db):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.lock.acquire()
        self.db.conn.execute("BEGIN IMMEDIATE")
        return self.db.conn

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: Any) -> None:
        try:
            if exc_type is None:
                self.db.conn.execute("COMMIT")
            else:
                self.db.conn.execute("ROLLBACK")
        finally:
            self.db.lock.release()
