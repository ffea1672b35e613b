"""The audit trail: every call that changes something and every refusal, with the verified
caller, its role, the call, the outcome and the time. A table of its own in the node's
store: a repository over the store's connection and lock, as the others are."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import msgspec

from flock_node.store.db import Db

AUDIT_KEEP = 100_000  # rows kept; the oldest go first

# How a caller was known (`via`): its certificate (mutual TLS), a flock key that verified the
# frame, a local socket with no key (nobody holds a key there: the 0700 runtime dir is the
# guard), or a TCP frame nobody checked (`--insecure`).
CERTIFICATE, KEY, LOCAL, INSECURE = "certificate", "key", "local", "insecure"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    caller TEXT NOT NULL,
    role TEXT NOT NULL,
    verified INTEGER NOT NULL,
    call TEXT NOT NULL,
    args TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT,
    via TEXT
);
"""


class AuditEntry(msgspec.Struct):
    """One audited call: who (as verified), as which role, what, and how it ended."""

    seq: int
    at: float
    caller: str
    role: str
    verified: bool
    call: str
    args: Any  # the call's arguments; a string when cut at 2000 characters
    outcome: str  # ok | refused | an error code
    detail: str | None = None
    via: str | None = None  # certificate | key | local | insecure; None: written before it was


def _args(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:  # cut at 2000 characters: shown as it is
        return text


class AuditLog:
    """Append and read the node's audit trail."""

    def __init__(self, db: Db):
        self.db = db
        with db.lock:
            db.conn.executescript(_SCHEMA)
            cols = {r[1] for r in db.conn.execute("PRAGMA table_info(audit)")}
            if "via" not in cols:  # a trail kept by an older version: its rows say nothing
                db.conn.execute("ALTER TABLE audit ADD COLUMN via TEXT")
        self._since_trim = 0

    def record(self, caller: str, role: str, verified: bool, call: str, args: dict[str, Any],
               outcome: str, detail: str | None = None, via: str | None = None) -> None:
        """One row: `outcome` is ok, refused, or an error code; `via` how the caller was
        known (a certificate when verified)."""
        with self.db.lock:
            self.db.conn.execute(
                "INSERT INTO audit (at, caller, role, verified, call, args, outcome, detail, "
                "via) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (time.time(), caller, role, int(verified), call,
                 json.dumps(args, default=repr, sort_keys=True)[:2000], outcome, detail,
                 via or (CERTIFICATE if verified else None)))
            self._since_trim += 1
            if self._since_trim >= 1000:
                self._since_trim = 0
                self.db.conn.execute(
                    "DELETE FROM audit WHERE seq <= (SELECT MAX(seq) FROM audit) - ?",
                    (AUDIT_KEEP,))

    def recent(self, limit: int = 50) -> list[AuditEntry]:
        """The newest `limit` rows, newest first."""
        with self.db.lock:
            rows = self.db.conn.execute(
                "SELECT * FROM audit ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
        return [AuditEntry(seq=r["seq"], at=r["at"], caller=r["caller"], role=r["role"],
                           verified=bool(r["verified"]), call=r["call"], args=_args(r["args"]),
                           outcome=r["outcome"], detail=r["detail"], via=r["via"])
                for r in rows]


def caller_label(row: Mapping[str, Any]) -> str:
    """An audit row's caller as people read it: a certificate's identity as it is, anyone
    else with how they were known: `client-1 (key)`, `(local)`, `(insecure)`."""
    who = str(row.get("caller") or "?")
    if row.get("verified"):
        return who
    how = row.get("via")
    return f"{who} ({how if how in (KEY, LOCAL, INSECURE) else 'unverified'})"
