"""The resources of the latest compile, with each one's last result."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from flock_node.store.db import (
    Db,
    dump,
)


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


class Resources:
    """The `resources` table."""

    def __init__(self, db: Db):
        self.db = db
        self._actions: dict[str, tuple[str, ...] | None] = {}  # resource id → allowed actions

    def save(self, rows: list[ResourceRow]) -> None:
        """Replace the persisted resources with those of the latest compile, keeping results."""
        with self.db.tx() as db:
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
                        r.id, r.type, r.name, r.seq, dump(r.actions), r.default_action,
                        dump(r.properties), r.source,
                        prev["last_result"] if prev else None,
                        prev["last_action"] if prev else None,
                        prev["last_run"] if prev else None,
                        prev["last_at"] if prev else None,
                    ),
                )

    def all(self) -> list[ResourceRow]:
        rows = self.db.all("SELECT * FROM resources ORDER BY seq")
        return [self._row(r) for r in rows]

    def get(self, rid: str) -> ResourceRow | None:
        r = self.db.one("SELECT * FROM resources WHERE id=?", (rid,))
        return self._row(r) if r else None

    def actions(self, rid: str) -> tuple[str, ...] | None:
        """The actions a persisted resource allows (None: no such resource); cached until the
        next save, since every received notification checks its target."""
        with self.db.lock:
            if rid not in self._actions:
                r = self.db.conn.execute("SELECT actions FROM resources WHERE id=?", (rid,)).fetchone()
                if len(self._actions) > 100_000:
                    self._actions.clear()
                self._actions[rid] = tuple(json.loads(r[0])) if r else None
            return self._actions[rid]

    @staticmethod
    def _row(r: sqlite3.Row) -> ResourceRow:
        return ResourceRow(
            id=r["id"], type=r["type"], name=r["name"], seq=r["seq"],
            actions=json.loads(r["actions"]), default_action=r["default_action"],
            properties=json.loads(r["properties"]), source=r["source"],
            last_result=r["last_result"], last_action=r["last_action"],
            last_run=r["last_run"], last_at=r["last_at"],
        )
