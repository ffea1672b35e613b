"""The one-call commands: nodes, status, resources, history, outbox, notify, subscriptions, keys."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from flock_node import paths
from flock_node.api import State
from flock_node.cli.args import FAILED, OK, USAGE, CliError, resource_id
from flock_node.cli.context import Ctx, as_members, node_line
from flock_node.cli.runs import _worst
from flock_node.cli.text import (
    _outbox_text,
    activity,
    ago,
    cause_text,
    converge_text,
    health,
    last_reaction,
    last_run_text,
    last_runs,
    output_excerpt,
    table,
)
from flock_node.protocol import generate_key_file


def cmd_nodes(c: Ctx) -> int:
    wire = c.flock.nodes()
    for addr in c.flock.refused:
        print(f"flockctl: {addr} refused our flock key (it runs with another key, or none)",
              file=sys.stderr)
    if c.emitted(wire):
        return OK
    if not wire:
        c.print("no nodes found (runtime dir: "
                f"{paths.runtime_dir(c.args.runtime_dir)}; add --seed for remote nodes)")
        return OK
    rows = [[n.name, n.state, health(n.last_converge), activity(n), converge_text(n),
             _outbox_text(n), n.address, ",".join(n.tags)] for n in as_members(wire)]
    c.print(table(rows, ["NAME", "STATE", "HEALTH", "ACTIVITY", "LAST CONVERGE", "OUTBOX",
                         "ADDRESS", "TAGS"]))
    return OK


def cmd_status(c: Ctx) -> int:
    st = c.call(c.args.node, "flock_api", "status")
    if c.emitted(st):
        return OK
    cur = st.get("current_run")
    lines = [
        f"name:        {st['name']} (version {st['version']}, incarnation {st['incarnation']})",
        f"address:     {st['address']}",
        f"tags:        {', '.join(st['tags']) or '-'}",
        f"active:      {'true' if st['active'] else 'false'}",
    ]
    if cur:
        lines.append(f"current run: {cur['id']} ({cur['kind']}) {cur['k']}/{cur['n']} "
                     f"{cur['resource']}")
    lc, lr = last_runs(st)
    lines.append(f"health:      {health(lc)}"
                 + (f" (last converge {lc.id}, {last_run_text(lc, status=False)})" if lc else ""))
    if lc and lc.error:
        lines.append(f"  error:     {lc.error}")
    lr = last_reaction(lr, lc)
    if lr:
        lines.append(f"last reaction: {lr.id} {last_run_text(lr)}")
        if lr.error:
            lines.append(f"  error:     {lr.error}")
    lines.append(f"outbox:      {st['pending']} pending, {st['dead_letters']} dead-lettered, "
                 f"{st.get('failed_notifications', 0)} refused")
    if st.get("compile_error"):
        lines.append(f"recipe:      {st['compile_error']}")
    if st.get("ready") is False:
        lines.append("ready:       no, compiling its recipe (notifications are retried)")
    for lf in st.get("loop_failures") or ():
        state = "restarted" if lf.get("running") else "restarting"
        lines.append(f"loop:        {lf['loop']} crashed {lf['crashes']}x ({state}), last "
                     f"{ago(lf['last_at'])}: {lf['last_error']}")
    for nc in st.get("name_clashes") or ():
        lines.append(f"name clash:  {nc['name']}: {nc['why']} ({nc['count']}x, last "
                     f"{ago(nc['at'])})")
    if st.get("next_run"):
        lines.append(f"next run:    in {max(0.0, st['next_run'] - time.time()):.0f}s "
                     "(scheduled, --interval)")
    lines.append(f"uptime:      {st['uptime']:.0f}s")
    c.print("\n".join(lines))
    return OK


def cmd_active(c: Ctx) -> int:
    a = c.call(c.args.node, "flock_api", "active")
    c.print(json.dumps(bool(a)) if c.args.json else ("true" if a else "false"))
    return OK


def cmd_resources(c: Ctx) -> int:
    rs = c.call(c.args.node, "resource_manager", "resources")
    if c.emitted(rs):
        return OK
    rows = [[r["id"], r["default_action"], ",".join(r["actions"]), r.get("last_result") or "-",
             ago(r.get("last_at")), r["source"]] for r in rs]
    c.print(table(rows, ["RESOURCE", "ACTION", "ACTIONS", "LAST RESULT", "WHEN", "SOURCE"]))
    return OK


def cmd_history(c: Ctx) -> int:
    hs = c.call(c.args.node, "flock_api", "history", limit=c.args.limit)
    if c.emitted(hs):
        return OK
    for h in hs:
        dur = f"{h['duration']:.2f}s" if h.get("duration") is not None else "running"
        would = "would update" if h["kind"] == "why-run" else "updated"
        c.print(f"{h['id']}  {h['kind']:<9} {h['status']:<7} {ago(h['started'])}  {dur}  "
                f"{h['updated']} {would}")
        cause = h.get("cause")
        why = cause_text(cause)
        if why:
            c.print(f"    {why}")
        if h.get("error"):
            c.print(f"    error: {h['error']}")
        for r in h.get("resources", []):
            err = f"  {r['error']}" if r.get("error") else ""
            c.print(f"    {r['result']:<10} {r['resource']} ({r['action']}, "
                    f"{r['duration']:.2f}s){err}")
            for line in output_excerpt(r.get("output"), r["result"] == "failed"):
                c.print(f"      | {line}")
        for n in h.get("notifications", []):
            if n["status"] == "unmatched":
                c.print(f"    → {n['target']} {n['resource']} {n['action']}: not sent, "
                        f"{n.get('error') or 'no node matched'}")
                continue
            err = f": {n['error']}" if n.get("error") and n["status"] != "delivered" else ""
            c.print(f"    → {n['target']} {n['resource']} {n['action']}: {n['status']}"
                    f" after {n['attempts']} attempt(s){err}")
    return OK


def cmd_outbox(c: Ctx) -> int:
    rows = c.call(c.args.node, "flock_api", "outbox", status=c.args.status, limit=c.args.limit)
    if c.emitted(rows):
        return OK
    if not rows:
        c.print(f"{c.args.node}: no notifications" + (f" {c.args.status}" if c.args.status else ""))
        return OK
    c.print(table([[r["id"], r["status"], r["target"], f"{r['resource']} {r['action']}",
                    str(r["attempts"]), ago(r["created"]), r.get("last_error") or ""]
                   for r in rows],
                  ["ID", "STATUS", "TARGET", "ACTION", "ATTEMPTS", "QUEUED", "LAST ERROR"]))
    return OK


def cmd_outbox_discard(c: Ctx) -> int:
    a = c.args
    if bool(a.ids) == bool(a.dead or a.failed):
        raise CliError("outbox discard: give notification ids, or --dead and/or --failed",
                       USAGE)
    statuses = [s for s, on in (("dead", a.dead), ("failed", a.failed)) if on]
    r = c.call(a.node, "flock_api", "discard", ids=a.ids or None, statuses=statuses or None)
    _only_settled(a.node, a.ids, r["discarded"], "discarded")
    if a.json:
        c.emit_json(r)
        return OK
    n = len(r["discarded"])
    c.print(f"{a.node}: {n} notification{'s' if n != 1 else ''} discarded")
    return OK


def _only_settled(node: str, asked: list[str], done: list[str], verb: str) -> None:
    """Ids asked for that were not dead or refused: one error, no success line before it."""
    missing = sorted(set(asked) - set(done))
    if not missing:
        return
    n = len(done)
    so_far = f"{n} {verb}, but " if n else f"nothing {verb}: "
    raise CliError(f"{node}: {so_far}neither dead-lettered nor refused (unknown, pending or "
                   f"delivered): {', '.join(missing)}; `flockctl outbox {node}` shows each "
                   "one's status", FAILED)


def cmd_retry(c: Ctx) -> int:
    r = c.call(c.args.node, "flock_api", "retry", ids=c.args.ids or None)
    _only_settled(c.args.node, c.args.ids, r["retried"], "sent again")
    if c.emitted(r):
        return OK
    n = len(r["retried"])
    c.print(f"{c.args.node}: {n} dead-lettered or refused notification{'s' if n != 1 else ''} "
            "sent again")
    return OK


def cmd_notify(c: Ctx) -> int:
    r = c.call(c.args.node, "resource_manager", "notify", resource=c.args.resource,
               action=c.args.action, sender="flockctl")
    if c.args.json:
        c.emit_json(r)
    else:
        c.print(f"{c.args.node}: {c.args.action} on {c.args.resource} queued (notification {r['id']})")
    return OK


def cmd_subscribe(c: Ctx) -> int:
    remote_node, remote_resource = c.args.to
    try:
        resource_id(remote_resource)
    except argparse.ArgumentTypeError as e:
        raise CliError(f"subscribe --to: {e}", USAGE) from None
    r = c.call(c.args.node, "resource_manager", "subscribe_to", resource=c.args.resource,
               action=c.args.action, node=remote_node, remote_resource=remote_resource)
    if c.args.json:
        c.emit_json(r)
    else:
        how = "registered" if r["state"] == "registered" else f"{r['state']} ({r.get('error')})"
        c.print(f"{c.args.node}: {c.args.resource} runs {c.args.action} when {remote_node}'s "
                f"{remote_resource} is updated — subscription {r['id']} {how}")
    return OK


def cmd_subscriptions(c: Ctx) -> int:
    names = [c.args.node] if c.args.node else [
        n.name for n in c.members() if n.state == State.ALIVE]
    out: dict[str, Any] = {}
    errors: dict[str, CliError] = {}
    for n in names:
        try:
            out[n] = c.call(n, "resource_manager", "subscriptions")
        except CliError as e:
            if c.args.node:
                raise
            errors[n] = e
    if c.args.json:
        c.emit_json(out[c.args.node] if c.args.node else out)
        return _worst(errors, OK)
    rows = []
    for n, subs in out.items():
        for s in subs["outgoing"]:
            rows.append([s["id"], n, f"{s['resource']} runs {s['action']}",
                         f"when {s['node']}:{s['remote_resource']} updates", s["state"]])
        for s in subs["incoming"]:
            rows.append([s["id"], n, f"{s['subscriber']}:{s['subscriber_resource']} runs "
                         f"{s['action']}", f"when {n}:{s['resource']} updates", "held here"])
    if rows:
        c.print(table(rows, ["ID", "NODE", "REACTION", "TRIGGER", "STATE"]))
    else:
        c.print("no subscriptions")
    for n, err in errors.items():
        c.print(node_line(n, err))
    return _worst(errors, OK)


def cmd_unsubscribe(c: Ctx) -> int:
    r = c.call(c.args.node, "resource_manager", "unsubscribe", id=c.args.id)
    if c.args.json:
        c.emit_json(r)
    else:
        c.print(f"{c.args.node}: subscription {c.args.id} removed ({r['removed']})")
        if r.get("note"):
            c.print(f"  note: {r['note']}")
    return OK


def cmd_keygen(c: Ctx) -> int:
    target = c.args.file or str(paths.default_key_file())
    if os.path.exists(target):
        if not c.args.force:
            raise CliError(f"{target} already exists; pass --force to replace it "
                           "(every node of the flock needs the new key)", FAILED)
        os.unlink(target)
    generate_key_file(target)
    if c.args.json:
        c.emit_json({"key_file": target})
    else:
        c.print(f"wrote a new flock key to {target} (mode 0600); copy it to every node and "
                "pass --key-file, or put it at the default path")
        if not c.args.file:
            c.print("note: `flockctl` and nodes started from now on use this key by default; "
                    "nodes already running keep theirs until restarted")
    return OK


def cmd_paths(c: Ctx) -> int:
    d = {
        "config_dir": str(paths.config_dir()),
        "console_config": str(paths.console_config()),
        "key_file": str(paths.key_file(c.args.key_file) or paths.default_key_file()),
        "runtime_dir": str(paths.runtime_dir(c.args.runtime_dir)),
        "state_dir": str(paths.state_dir("NAME")),
    }
    if c.args.json:
        c.emit_json(d)
    else:
        for k, v in d.items():
            c.print(f"{k + ':':16}{v}")
    return OK
