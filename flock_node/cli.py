"""The `flockctl` scripting commands (the console itself lives in flock_tui).

Exit codes: 0 success, 1 the thing asked for failed (a run failed, a wait timed out),
2 usage error, 3 a node could not be reached.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from fnmatch import fnmatchcase
from typing import Any, TextIO

from flock_node import __version__, paths
from flock_node.client import Flock
from flock_node.protocol import generate_key_file
from flock_node.transport import RpcError, rpc_for_bus, tcp_addresses

OK, FAILED, USAGE, UNREACHABLE = 0, 1, 2, 3
STATES = ("active", "idle", "alive", "down")
_UNREACHABLE_CODES = {"unreachable", "timeout", "unknown_node"}


class CliError(Exception):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def seed_url(text: str) -> str:
    """A --seed: the bus address of a node, tcp://HOST:PORT or ipc://PATH.bus."""
    try:
        if text.startswith("tcp://"):
            tcp_addresses(text)
        else:
            rpc_for_bus(text)
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a node's bus address (tcp://HOST:PORT or ipc://PATH.bus)"
        ) from None
    return text


def positive_seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive number of seconds")
    return v


def seconds_or_zero(text: str) -> float:
    """A number of seconds, 0 allowed (a splay)."""
    if text.strip() in ("0", "0.0"):
        return 0.0
    return positive_seconds(text)


def positive_int(text: str) -> int:
    """A count on the command line (--limit, --nodes): a whole number of at least 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of at least 1")
    return v


def _global_flags(p: argparse.ArgumentParser, suppress: bool | None) -> None:
    """The flags every command takes. On the commands they default to SUPPRESS, so they may
    stand before or after the command (`flockctl --json nodes` = `flockctl nodes --json`)."""
    d = (lambda v: argparse.SUPPRESS) if suppress else (lambda v: v)
    p.add_argument("--seed", action="append", default=d([]), metavar="URL", type=seed_url,
                   help="bus address of a node (tcp://HOST:PORT); repeatable")
    p.add_argument("--runtime-dir", metavar="DIR", default=d(None),
                   help="where local nodes' sockets are")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--key-file", metavar="FILE", default=d(None),
                   help="the flock key (default: FLOCK_KEY_FILE, then the config dir's)")
    g.add_argument("--insecure", action="store_true", default=d(False),
                   help="no key: talk to nodes started with --insecure")
    p.add_argument("--json", action="store_true", default=d(False),
                   help="machine-readable output")
    p.add_argument("--connect-timeout", type=positive_seconds, default=d(5.0), metavar="S",
                   help="how long to wait for a node's answer (default 5)")
    p.add_argument("--read-only", action="store_true", default=d(False),
                   help="console: hide what changes anything")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flockctl",
        description="Watch and drive a flock of nodes. With no command, open the console.",
    )
    p.add_argument("--version", action="version", version=f"flockctl {__version__}")
    _global_flags(p, None)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    _global_flags(common, True)
    _add = sub.add_parser

    def add_parser(name: str, **kw: Any) -> argparse.ArgumentParser:
        return _add(name, parents=[common], **kw)

    sub.add_parser = add_parser  # type: ignore[method-assign]

    sub.add_parser("nodes", help="list the nodes of the flock")
    s = sub.add_parser("status", help="one node's status")
    s.add_argument("node")
    s = sub.add_parser("run-chef", help="start a converge on TARGET (name, glob or tag:TAG)")
    s.add_argument("target")
    s.add_argument("--wait", action="store_true", help="wait for the runs to finish")
    s.add_argument("--timeout", type=positive_seconds, default=3600.0, metavar="S")
    s = sub.add_parser("active", help="print true/false: is NODE converging")
    s.add_argument("node")
    s = sub.add_parser("resources", help="a node's persisted resources")
    s.add_argument("node")
    s = sub.add_parser("history", help="a node's recent runs")
    s.add_argument("node")
    s.add_argument("--limit", type=positive_int, default=10, metavar="N",
                   help="at most N runs, newest first (default 10)")
    s = sub.add_parser("outbox", help="NODE's remote notifications: pending, failed, dead")
    s.add_argument("node")
    s.add_argument("--status", choices=["held", "pending", "delivered", "failed", "dead"])
    s.add_argument("--limit", type=positive_int, default=50, metavar="N",
                   help="at most N notifications, newest first (default 50)")
    s = sub.add_parser("outbox-discard", help="written `outbox discard NODE (ID... | --dead | "
                       "--failed)`: forget dead-lettered or refused notifications")
    s.add_argument("node")
    s.add_argument("ids", nargs="*", metavar="ID")
    s.add_argument("--dead", action="store_true", help="all dead-lettered ones")
    s.add_argument("--failed", action="store_true", help="all refused ones")
    s = sub.add_parser("retry", help="send NODE's dead-lettered and refused notifications again")
    s.add_argument("node")
    s.add_argument("ids", nargs="*", metavar="ID", help="only these (default: all dead ones)")
    s = sub.add_parser("notify", help="run ACTION on RESOURCE of NODE, out of band")
    s.add_argument("node")
    s.add_argument("resource")
    s.add_argument("action")
    s = sub.add_parser(
        "subscribe",
        help="NODE's RESOURCE runs ACTION whenever REMOTE_NODE's REMOTE_RESOURCE is updated",
    )
    s.add_argument("node")
    s.add_argument("resource")
    s.add_argument("action")
    s.add_argument("--to", nargs=2, required=True, metavar=("REMOTE_NODE", "REMOTE_RESOURCE"))
    s = sub.add_parser("subscriptions", help="subscriptions of one node or of all")
    s.add_argument("node", nargs="?")
    s = sub.add_parser("unsubscribe", help="remove subscription ID from NODE")
    s.add_argument("node")
    s.add_argument("id")
    for name, what in (("wait-until", "until"), ("wait-while", "while")):
        s = sub.add_parser(name, help=f"wait {what} every node of TARGET is in STATE")
        s.add_argument("target")
        s.add_argument("state", choices=STATES)
        s.add_argument("--timeout", type=positive_seconds, default=300.0, metavar="S")
        s.add_argument("--interval", type=positive_seconds, default=0.25, metavar="S")
    s = sub.add_parser("macro", help="run a console macro headless")
    s.add_argument("name")
    s.add_argument("--node", help="value of {node} in the steps")
    s.add_argument("--marked", help="value of {marked} (comma-separated nodes)")
    s = sub.add_parser("keygen", help="write a new flock key (mode 0600)")
    s.add_argument("file", nargs="?")
    s.add_argument("--force", action="store_true", help="replace an existing key file")
    sub.add_parser("paths", help="where config, state and runtime files live")
    s = sub.add_parser("demo", help="start a local demo flock and open the console on it")
    s.add_argument("--nodes", type=positive_int, default=3, metavar="N")
    s.add_argument("--no-console", action="store_true",
                   help="keep the demo flock running without opening the console")
    return p


# --- helpers ---------------------------------------------------------------------------------


def is_group(target: str) -> bool:
    """A TARGET naming several nodes: a glob (`web-*`) or a tag (`tag:web`)."""
    return target.startswith("tag:") or any(ch in target for ch in "*?[")


def select(nodes: list[dict[str, Any]], target: str) -> list[str]:
    """Names of `nodes` a group TARGET matches."""
    if target.startswith("tag:"):
        tag = target[len("tag:"):]
        return [n["name"] for n in nodes if tag in n.get("tags", [])]
    return [n["name"] for n in nodes if fnmatchcase(n["name"], target)]


class Ctx:
    def __init__(self, args: argparse.Namespace, out: TextIO | None = None) -> None:
        self.args = args
        self.out = out or sys.stdout
        self._flock: Flock | None = None

    @property
    def flock(self) -> Flock:
        if self._flock is None:
            try:
                self._flock = Flock.connect(
                    seeds=self.args.seed, runtime_dir=self.args.runtime_dir,
                    key_file=self.args.key_file, insecure=self.args.insecure,
                    timeout=self.args.connect_timeout,
                )
            except RpcError as e:
                raise _cli_error(e) from None
        return self._flock

    def print(self, *a: Any) -> None:
        print(*a, file=self.out, flush=True)

    def emit_json(self, obj: Any) -> None:
        if getattr(self.args, "json_lines", False):  # a macro's steps: one document a line
            self.print(json.dumps(obj, sort_keys=True, default=str))
        else:
            self.print(json.dumps(obj, indent=2, sort_keys=True, default=str))

    def call(self, node: str, actor: str, method: str, /, **kw: Any) -> Any:
        try:
            return self.flock.call(node, actor, method, kw)
        except RpcError as e:
            raise _cli_error(e, node) from None

    def targets(self, pattern: str) -> list[str]:
        nodes = self.flock.nodes()
        if is_group(pattern):
            live = [n for n in nodes if n["state"] not in ("left", "down")]
            names = select(live, pattern)
            if not names:
                raise CliError(f"no live node matches {pattern!r}", UNREACHABLE)
            return names
        if not any(n["name"] == pattern for n in nodes):
            raise CliError(f"node {pattern!r} could not be reached: not in the flock "
                           f"(known: {', '.join(n['name'] for n in nodes) or 'none'})",
                           UNREACHABLE)
        return [pattern]

    def close(self) -> None:
        if self._flock is not None:
            self._flock.close()


def _cli_error(e: RpcError, node: str | None = None) -> CliError:
    where = f"{node}: " if node else ""
    if e.code in _UNREACHABLE_CODES:
        return CliError(f"{where}could not be reached ({e.message})", UNREACHABLE)
    if e.code == "unauthorized":
        return CliError(f"{where}{e.message}", UNREACHABLE)
    return CliError(f"{where}{e.code}: {e.message}", FAILED)


def ago(ts: float | None, now: float | None = None) -> str:
    if not ts:
        return "-"
    d = max(0.0, (now or time.time()) - ts)
    if d < 60:
        return f"{d:.0f}s ago"
    if d < 3600:
        return f"{d / 60:.0f}m ago"
    if d < 86400:
        return f"{d / 3600:.0f}h ago"
    return f"{d / 86400:.0f}d ago"


def activity(n: dict[str, Any]) -> str:
    if n.get("state") not in (None, "alive"):
        return "-"
    run = n.get("run")
    if n.get("active") and run:
        k, total = run.get("k", 0), run.get("n", 0)
        what = "reacting" if run.get("kind") == "reaction" else "converging"
        return f"{what} {k}/{total} {run.get('resource', '')}".rstrip()
    return "converging" if n.get("active") else "idle"


def last_run_text(lr: dict[str, Any] | None) -> str:
    if not lr:
        return "never"
    dur = lr.get("duration")
    d = f" in {dur:.1f}s" if isinstance(dur, int | float) else ""
    return f"{lr['status']} {ago(lr.get('started'))}{d}, {lr.get('updated', 0)} updated"


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=False)).rstrip()]
    for r in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)).rstrip())
    return "\n".join(lines)


# --- commands --------------------------------------------------------------------------------


def cmd_nodes(c: Ctx) -> int:
    nodes = c.flock.nodes()
    for addr in c.flock.refused:
        print(f"flock: {addr} refused our flock key (it runs with another key, or none)",
              file=sys.stderr)
    if c.args.json:
        c.emit_json(nodes)
        return OK
    if not nodes:
        c.print("no nodes found (runtime dir: "
                f"{paths.runtime_dir(c.args.runtime_dir)}; add --seed for remote nodes)")
        return OK
    rows = [[n["name"], n["state"], activity(n), last_run_text(n.get("last_run")),
             _outbox_text(n), n["address"], ",".join(n.get("tags", []))] for n in nodes]
    c.print(table(rows, ["NAME", "STATE", "ACTIVITY", "LAST RUN", "OUTBOX", "ADDRESS", "TAGS"]))
    return OK


def _outbox_text(n: dict[str, Any]) -> str:
    dead = n.get("dead_letters", 0)
    return f"{n.get('pending', 0)}" + (f" ({dead} dead)" if dead else "")


def cmd_status(c: Ctx) -> int:
    st = c.call(c.args.node, "flock_api", "status")
    if c.args.json:
        c.emit_json(st)
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
    lr = st.get("last_run")
    lines.append(f"last run:    {lr['id'] + ' ' + last_run_text(lr) if lr else 'never'}")
    if lr and lr.get("error"):
        lines.append(f"  error:     {lr['error']}")
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


def cmd_run_chef(c: Ctx) -> int:
    names = c.targets(c.args.target)
    started: dict[str, str] = {}
    errors: dict[str, CliError] = {}

    def start(n: str) -> None:
        try:
            started[n] = c.call(n, "flock_api", "run_chef")["run_id"]
        except CliError as e:
            errors[n] = e

    with ThreadPoolExecutor(min(32, len(names))) as ex:
        list(ex.map(start, names))
    if not c.args.wait:
        if c.args.json:
            c.emit_json({"runs": started, "errors": {n: str(e) for n, e in errors.items()}})
        else:
            for n in names:
                c.print(f"{n}: run {started[n]} started" if n in started else f"{n}: {errors[n]}")
        return _worst(errors, OK)
    results = _wait_runs(c, started, errors)
    if c.args.json:
        c.emit_json({"runs": results, "errors": {n: str(e) for n, e in errors.items()}})
    failed = [n for n, r in results.items() if r.get("status") != "ok"]
    if not c.args.json:
        ok = len(results) - len(failed)
        c.print(f"{ok} ok, {len(failed)} failed, {len(errors)} unreachable"
                f" ({len(names)} node{'s' if len(names) != 1 else ''})")
        for n in failed:
            c.print(f"  {n}: {results[n].get('error') or results[n].get('status')}")
        for n, e in errors.items():
            c.print(f"  {n}: {e}")
    code = FAILED if failed else OK
    return _worst(errors, code)


def _worst(errors: dict[str, CliError], code: int) -> int:
    if errors:
        return max(code, *(e.code for e in errors.values()))
    return code


def _wait_runs(c: Ctx, started: dict[str, str], errors: dict[str, CliError]) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + c.args.timeout
    results: dict[str, dict[str, Any]] = {}
    live: dict[str, str] = {}
    tty = c.out.isatty() and not c.args.json
    drawn = 0
    while len(results) + len([n for n in errors if n in started]) < len(started):
        for n, run_id in started.items():
            if n in results or n in errors:
                continue
            try:
                r = c.flock.call(n, "flock_api", "run", {"id": run_id}, timeout=2.0)
            except RpcError as e:
                if e.code in _UNREACHABLE_CODES and time.monotonic() < deadline:
                    live[n] = "unreachable, retrying"
                    continue
                errors[n] = _cli_error(e, n)
                continue
            if r and r["status"] in ("ok", "failed"):
                results[n] = r
                line = f"{n}: {r['status']} in {r['duration'] or 0:.1f}s, {r['updated']} updated"
                if r.get("error"):
                    line += f" - {r['error']}"
                live[n] = line
                if not tty and not c.args.json:
                    c.print(line)
            elif r is None and _lost(c, n, run_id):
                errors[n] = CliError(f"{n}: run {run_id} is gone: the node restarted before "
                                     "it started; run it again", FAILED)
                live[n] = f"{n}: lost (node restarted)"
            else:
                st = _progress(c, n)
                if st != live.get(n) and not tty and not c.args.json and st.startswith("converging"):
                    if not live.get(n, "").startswith("converging"):
                        c.print(f"{n}: converging")
                live[n] = st
        if tty:
            if drawn:
                c.out.write(f"\x1b[{drawn}F")
            for n in started:
                c.out.write("\x1b[2K" + live.get(n, f"{n}: queued") + "\n")
            drawn = len(started)
            c.out.flush()
        if time.monotonic() >= deadline:
            for n in started:
                if n not in results and n not in errors:
                    errors[n] = CliError(f"{n}: run {started[n]} did not finish within "
                                         f"{c.args.timeout:g}s", FAILED)
            break
        time.sleep(0.2)
    return results


def _lost(c: Ctx, n: str, run_id: str) -> bool:
    """A queued run lives only in the node's memory: a restart before it starts loses it."""
    try:
        st = c.flock.call(n, "flock_api", "status", timeout=2.0)
        if run_id in st.get("queued", []) or (st.get("current_run") or {}).get("id") == run_id:
            return False
        # It may have run and finished between the two calls.
        return c.flock.call(n, "flock_api", "run", {"id": run_id}, timeout=2.0) is None
    except RpcError:
        return False


def _progress(c: Ctx, n: str) -> str:
    try:
        st = c.flock.call(n, "flock_api", "status", timeout=2.0)
    except RpcError:
        return f"{n}: unreachable, retrying"
    cur = st.get("current_run")
    if not cur:
        return f"{n}: queued"
    return f"{n}: converging {cur['k']}/{cur['n']} {cur['resource']}".rstrip()


def cmd_resources(c: Ctx) -> int:
    rs = c.call(c.args.node, "resource_manager", "resources")
    if c.args.json:
        c.emit_json(rs)
        return OK
    rows = [[r["id"], r["default_action"], ",".join(r["actions"]), r.get("last_result") or "-",
             ago(r.get("last_at")), r["source"]] for r in rs]
    c.print(table(rows, ["RESOURCE", "ACTION", "ACTIONS", "LAST RESULT", "WHEN", "SOURCE"]))
    return OK


def cmd_history(c: Ctx) -> int:
    hs = c.call(c.args.node, "flock_api", "history", limit=c.args.limit)
    if c.args.json:
        c.emit_json(hs)
        return OK
    for h in hs:
        dur = f"{h['duration']:.2f}s" if h.get("duration") is not None else "running"
        c.print(f"{h['id']}  {h['kind']:<9} {h['status']:<7} {ago(h['started'])}  {dur}  "
                f"{h['updated']} updated")
        cause = h.get("cause")
        if cause and cause.get("scheduled"):
            c.print("    scheduled (--interval)")
        elif cause:
            c.print(f"    caused by {cause.get('node')}:{cause.get('resource', '?')} "
                    f"(run {cause.get('run', '?')}, notification {cause.get('notification')}, "
                    f"hop {cause.get('hops', '?')})")
        if h.get("error"):
            c.print(f"    error: {h['error']}")
        for r in h.get("resources", []):
            err = f"  {r['error']}" if r.get("error") else ""
            c.print(f"    {r['result']:<10} {r['resource']} ({r['action']}, "
                    f"{r['duration']:.2f}s){err}")
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
    if c.args.json:
        c.emit_json(rows)
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
    if a.json:
        c.emit_json(r)
        return OK
    n = len(r["discarded"])
    c.print(f"{a.node}: {n} notification{'s' if n != 1 else ''} discarded")
    if a.ids and n < len(a.ids):
        missing = sorted(set(a.ids) - set(r["discarded"]))
        raise CliError(f"{a.node}: neither dead-lettered nor refused: {', '.join(missing)}",
                       FAILED)
    return OK


def cmd_retry(c: Ctx) -> int:
    r = c.call(c.args.node, "flock_api", "retry", ids=c.args.ids or None)
    if c.args.json:
        c.emit_json(r)
        return OK
    n = len(r["retried"])
    c.print(f"{c.args.node}: {n} dead-lettered or refused notification{'s' if n != 1 else ''} "
            "sent again")
    if c.args.ids and n < len(c.args.ids):
        missing = sorted(set(c.args.ids) - set(r["retried"]))
        raise CliError(f"{c.args.node}: neither dead-lettered nor refused: {', '.join(missing)}",
                       FAILED)
    return OK


def cmd_notify(c: Ctx) -> int:
    r = c.call(c.args.node, "resource_manager", "notify", resource=c.args.resource,
               action=c.args.action, sender="flock-cli")
    if c.args.json:
        c.emit_json(r)
    else:
        c.print(f"{c.args.node}: {c.args.action} on {c.args.resource} queued (notification {r['id']})")
    return OK


def cmd_subscribe(c: Ctx) -> int:
    remote_node, remote_resource = c.args.to
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
        n["name"] for n in c.flock.nodes() if n["state"] == "alive"]
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
        c.print(f"{n}: {err}")
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


def _state_holds(state: str, member: dict[str, Any] | None) -> bool:
    if state == "down":
        return member is None or member["state"] in ("down", "left")
    if member is None or member["state"] != "alive":
        return False
    if state == "alive":
        return True
    return bool(member.get("active")) == (state == "active")


def cmd_wait(c: Ctx) -> int:
    until = c.args.command == "wait-until"
    word = "wait-until" if until else "wait-while"
    pattern, state = c.args.target, c.args.state
    deadline = time.monotonic() + c.args.timeout
    last = ""
    while True:
        try:
            members = {m["name"]: m for m in c.flock.nodes()}
        except (RpcError, CliError) as e:  # no node reachable yet: "not yet", keep waiting
            members, last = {}, str(e)
        if is_group(pattern):
            names = select(list(members.values()), pattern)
        else:
            names = [pattern]
        if state in ("active", "idle"):
            # Ask the nodes themselves: membership lags by a heartbeat.
            for n in names:
                m = members.get(n)
                if m is not None and m["state"] == "alive":
                    try:
                        m["active"] = c.flock.call(n, "flock_api", "active", timeout=2.0)
                    except RpcError as e:
                        m["state"] = "unreachable"
                        last = f"{n}: {e}"
        holds = [_state_holds(state, members.get(n)) for n in names]
        done = (all(holds) and bool(names)) if until else not any(holds)
        if state == "down" and until and not names:
            done = True
        if done:
            if not c.args.json:
                c.print(f"{word} {pattern} {state}: done")
            else:
                c.emit_json({"target": pattern, "state": state, "done": True})
            return OK
        if time.monotonic() >= deadline:
            waiting = [n for n, h in zip(names, holds, strict=False) if h != until] or [pattern]
            msg = (f"{word} {pattern} {state}: timed out after {c.args.timeout:g}s "
                   f"(still waiting on {', '.join(waiting)})")
            if last:
                msg += f"; last error: {last}"
            raise CliError(msg, FAILED)
        time.sleep(c.args.interval)


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


COMMANDS: dict[str, Callable[[Ctx], int]] = {
    "nodes": cmd_nodes, "status": cmd_status, "run-chef": cmd_run_chef, "active": cmd_active,
    "resources": cmd_resources, "history": cmd_history, "notify": cmd_notify,
    "outbox": cmd_outbox, "outbox-discard": cmd_outbox_discard, "retry": cmd_retry,
    "subscribe": cmd_subscribe, "subscriptions": cmd_subscriptions,
    "unsubscribe": cmd_unsubscribe, "wait-until": cmd_wait, "wait-while": cmd_wait,
    "keygen": cmd_keygen, "paths": cmd_paths,
}


def run_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run one scripting command; errors print one line to stderr and set the exit code."""
    c = Ctx(args, out)
    try:
        return COMMANDS[args.command](c)
    except CliError as e:
        print(f"flock: {e}", file=sys.stderr)
        if args.json:  # scripts reading stdout get an answer too
            c.emit_json({"error": str(e), "exit_code": e.code})
        return e.code
    except KeyboardInterrupt:
        if args.command == "run-chef":
            print("\nflock: interrupted; the runs already started go on on their nodes "
                  "(`flockctl nodes` shows them)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `flockctl history x | head`: the reader is gone, so are we
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        c.close()


def two_word_commands(argv: list[str]) -> list[str]:
    """`outbox discard NODE ...` is parsed as the command `outbox-discard`."""
    argv = list(argv)
    for i, word in enumerate(argv[:-1]):
        if word == "outbox" and argv[i + 1] == "discard":
            argv[i:i + 2] = ["outbox-discard"]
            break
    return argv


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(two_word_commands(sys.argv[1:] if argv is None else argv))
