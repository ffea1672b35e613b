"""Subscriptions: those other nodes hold on our resources, and those we want on theirs."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterable

import msgspec

from flock_node.store.db import (
    Db,
)


class SubscriptionRow(msgspec.Struct):
    """Another node's subscription to one of our resources."""

    id: str
    resource: str  # our resource being watched
    subscriber: str  # the node that wants to hear
    subscriber_resource: str
    action: str
    created: float


class WantedSpec(msgspec.Struct):
    """A subscription a recipe declares (`remote_subscribes`): our `resource` runs `action`
    when `node`'s `remote_resource` is updated."""

    resource: str
    action: str
    node: str
    remote_resource: str


class WantedRow(WantedSpec, kw_only=True):
    """A subscription we want on another node, and how far registering it got."""

    id: str  # the publisher's subscription id, qualified with '@node'
    origin: str  # recipe | manual
    state: str  # pending | registered | recheck | removing | failed
    last_error: str | None = None
    updated: float


def _wanted(r: sqlite3.Row) -> WantedRow:
    return WantedRow(id=r["id"], resource=r["resource"], action=r["action"], node=r["node"],
                     remote_resource=r["remote_resource"], origin=r["origin"],
                     state=r["state"], last_error=r["last_error"], updated=r["updated"])


def subscription_id(publisher: str, resource: str, subscriber: str, subscriber_resource: str,
                    action: str) -> str:
    """A stable id so registering the same subscription twice is a no-op; both nodes and
    both resources are in it, so subscriptions to the same path on two nodes differ."""
    key = "\x1f".join((publisher, resource, subscriber, subscriber_resource, action))
    return "sub-" + uuid.uuid5(uuid.NAMESPACE_URL, "flock:" + key).hex[:16]


class Subscriptions:
    """The `subscriptions` table: other nodes' subscriptions to our resources."""

    def __init__(self, db: Db, node: str):
        self.db = db
        self.node = node

    def add(
        self, resource: str, subscriber: str, subscriber_resource: str, action: str
    ) -> str:
        sid = subscription_id(self.node, resource, subscriber, subscriber_resource, action)
        with self.db.tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO subscriptions VALUES (?,?,?,?,?,?)",
                (sid, resource, subscriber, subscriber_resource, action, time.time()),
            )
        return sid

    def remove(self, sid: str) -> bool:
        with self.db.tx() as db:
            return db.execute("DELETE FROM subscriptions WHERE id=?", (sid,)).rowcount > 0

    def all(self) -> list[SubscriptionRow]:
        return [SubscriptionRow(*r) for r in self.db.all(
            "SELECT id, resource, subscriber, subscriber_resource, action, created"
            " FROM subscriptions ORDER BY created")]

    def of(self, resource: str) -> list[SubscriptionRow]:
        return [SubscriptionRow(*r) for r in self.db.all(
            "SELECT id, resource, subscriber, subscriber_resource, action, created"
            " FROM subscriptions WHERE resource=?", (resource,))]

    def subscriber_of(self, sid: str) -> str | None:
        """The node holding subscription `sid` (None: no such subscription)."""
        r = self.db.one("SELECT subscriber FROM subscriptions WHERE id=?", (sid,))
        return r[0] if r else None


class Wanted:
    """The `wanted_subscriptions` table: our subscriptions to other nodes' resources."""

    def __init__(self, db: Db, node: str):
        self.db = db
        self.node = node

    def set_recipe(self, wanted: list[WantedSpec]) -> None:
        """Make the recipe-declared subscriptions exactly `wanted`; others are marked removing."""
        now = time.time()
        with self.db.tx() as db:
            ids = set()
            for w in wanted:
                sid = self.id_for(w.node, w.remote_resource, w.resource, w.action)
                ids.add(sid)
                db.execute(
                    "INSERT INTO wanted_subscriptions VALUES (?,?,?,?,?,?,?,?,?) "
                    "ON CONFLICT(id) DO UPDATE SET state=CASE WHEN state='removing' "
                    "THEN 'pending' ELSE state END",
                    (sid, w.resource, w.action, w.node, w.remote_resource,
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

    def recheck_recipe(self) -> None:
        """After a converge: register the recipe's subscriptions again (idempotent on the
        publisher), so one removed on the publisher's side comes back, as the recipe says."""
        with self.db.tx() as db:
            db.execute("UPDATE wanted_subscriptions SET state='recheck' "
                       "WHERE origin='recipe' AND state='registered'")

    def id_for(self, node: str, remote_resource: str, resource: str, action: str) -> str:
        """Our row id: the remote node's subscription id, qualified by the remote node."""
        return subscription_id(node, remote_resource, self.node, resource, action) + "@" + node

    def add(self, node: str, remote_resource: str, resource: str, action: str) -> str:
        """A subscription wired by hand (CLI or console): kept until unsubscribed."""
        wid = self.id_for(node, remote_resource, resource, action)
        with self.db.tx() as db:
            db.execute(
                "INSERT INTO wanted_subscriptions VALUES (?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT(id) DO UPDATE SET state='pending'",
                (wid, resource, action, node, remote_resource, "manual", "pending", None,
                 time.time()),
            )
        return wid

    def all(self, states: Iterable[str] | None = None) -> list[WantedRow]:
        rows = self.db.all("SELECT * FROM wanted_subscriptions ORDER BY updated")
        st = set(states) if states else None
        return [_wanted(r) for r in rows if st is None or r["state"] in st]

    def get(self, wid: str) -> WantedRow | None:
        r = self.db.one("SELECT * FROM wanted_subscriptions WHERE id=?", (wid,))
        return _wanted(r) if r else None

    def set_state(self, wid: str, state: str, error: str | None = None) -> None:
        with self.db.tx() as db:
            if state == "removed":
                db.execute("DELETE FROM wanted_subscriptions WHERE id=?", (wid,))
            else:
                db.execute(
                    "UPDATE wanted_subscriptions SET state=?, last_error=?, updated=? WHERE id=?",
                    (state, error, time.time(), wid),
                )
