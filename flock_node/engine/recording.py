"""Where a run's results go: the store (a converge or a reaction, resource by resource), or a
plan kept in memory (a why-run, saved to history once at the end without touching the
persisted resources or the outbox)."""

from __future__ import annotations

from typing import Any

from flock_node.engine.resources import Notify
from flock_node.store import OutboxItem, ResultTuple, Store

BATCH_LIMIT = 512  # up-to-date results buffered before one store transaction
WOULD = {"updated": "would_update"}  # a why-run's result names, where they differ


class Recorder:
    """Writes results to the store; quiet up-to-date results are batched into one transaction.

    Any result carrying information (updated, failed, outbox rows) first flushes the batch, so
    the store always sees results in seq order.
    """

    def __init__(self, store: Store, run_id: str):
        self.store = store
        self.run_id = run_id
        self.batch: list[ResultTuple] = []

    def record(self, seq: int, rid: str, action: str, result: str, duration: float,
               error: str | None, output: str | None, outbox: list[OutboxItem],
               notifies: list[Notify]) -> None:
        if result == "up_to_date" and not outbox and not error:
            self.batch.append((seq, rid, action, result, duration, error, output))
            if len(self.batch) >= BATCH_LIMIT:
                self.flush()
            return
        self.flush()
        self.store.runs.record_result(
            self.run_id, seq, rid, action, result, duration, error, output, outbox=outbox
        )

    def flush(self) -> None:
        if not self.batch:
            return
        batch, self.batch = self.batch, []
        self.store.runs.record_results(self.run_id, batch)


def remote_plan(item: OutboxItem) -> dict[str, Any]:
    """One remote notification a why-run would send: to which node (resolved against the
    membership, as delivery does), or why it would reach none."""
    via = "subscription" if "subscription" in item.cause else "remote_notifies"
    return {"action": item.action, "resource": item.resource,
            "node": None if item.unmatched else item.target, "timing": item.timing,
            "via": via, "unmatched": item.unmatched}


def plan_text(why: str, notifies: list[dict[str, Any]], remote: list[dict[str, Any]]) -> str:
    """A plan row as history shows it: the reason, then what it would set off."""
    lines = [why] if why else []
    lines += [f"would notify {n['action']} {n['target']} ({n['timing']})" for n in notifies]
    for r in remote:
        if r["node"] is None:
            lines.append(f"would send {r['action']} {r['resource']} to no node: {r['unmatched']}")
        else:
            lines.append(f"would send {r['action']} {r['resource']} to {r['node']} "
                         f"({r['timing']}{', subscription' if r['via'] == 'subscription' else ''})")
    return "\n".join(lines)


class PlanRecorder:
    """Keeps a why-run's plan: each resource's would-be result and why, the local
    notifications it would fire and the remote ones it would send, with their nodes."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def record(self, seq: int, rid: str, action: str, result: str, duration: float,
               error: str | None, output: str | None, outbox: list[OutboxItem],
               notifies: list[Notify]) -> None:
        local = [{"action": n.action, "target": n.target, "timing": n.timing} for n in notifies]
        self.rows.append({
            "resource": rid, "action": action, "result": WOULD.get(result, result),
            "why": output or "", "error": error, "notifies": local,
            "remote": [remote_plan(i) for i in outbox],
        })

    def flush(self) -> None:
        """Nothing to do: the plan is saved once, at the end."""

    def history_rows(self) -> list[ResultTuple]:
        """(seq, resource, action, result, duration, error, output) rows for the store."""
        return [(k, r["resource"], r["action"], r["result"], 0.0, r["error"],
                 plan_text(r["why"], r["notifies"], r["remote"]) or None)
                for k, r in enumerate(self.rows, 1)]
