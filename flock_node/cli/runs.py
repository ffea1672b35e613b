"""`run-chef` (with --wait) and `wait-until`/`wait-while`: commands that follow runs over time."""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from flock_node.api import Member, State
from flock_node.cli.args import FAILED, OK, UNREACHABLE, USAGE, CliError
from flock_node.cli.context import (
    _UNREACHABLE_CODES,
    Ctx,
    _cli_error,
    gone,
    is_group,
    node_line,
    select,
)
from flock_node.cli.rolling import cmd_rolling
from flock_node.cli.whyrun import cmd_why_run
from flock_node.transport import RpcError


def cmd_run_chef(c: Ctx) -> int:
    """Start a converge on every target node; --why-run only plans, --max-parallel rolls."""
    if c.args.why_run and c.args.max_parallel is not None:
        # A plan changes nothing, so there is nothing to roll out one batch at a time.
        raise CliError("--why-run and --max-parallel do not go together: a why-run plans "
                       "every target at once and changes nothing; drop one of them", USAGE)
    if c.args.why_run:
        return cmd_why_run(c)
    if c.args.max_parallel is not None:
        return cmd_rolling(c)
    if c.args.max_fail is not None:
        raise CliError("--max-fail goes with --max-parallel N (a rolling run)", USAGE)
    names = c.targets(c.args.target)
    started: dict[str, str] = {}
    states: dict[str, str] = {}
    errors: dict[str, CliError] = {}

    def start(n: str) -> None:
        try:
            r = c.call(n, "flock_api", "run_chef")
            started[n], states[n] = r["run_id"], start_state(r)
        except CliError as e:
            errors[n] = e

    with ThreadPoolExecutor(min(32, len(names))) as ex:
        list(ex.map(start, names))
    if not c.args.wait:
        if c.args.json:
            c.emit_json({"runs": started, "states": states,
                         "errors": {n: str(e) for n, e in errors.items()}})
        else:
            for n in names:
                c.print(start_line(n, started[n], states[n]) if n in started
                        else node_line(n, errors[n]))
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
            c.print(f"  {node_line(n, e)}")
    code = FAILED if failed else OK
    return _worst(errors, code)


def start_state(answer: dict[str, Any]) -> str:
    """What a node did with a run_chef: `started` it, `queued` it behind the run in
    progress, or `joined` the one already waiting (agents that predate the flags: started)."""
    if answer.get("joined"):
        return "joined"
    return "queued" if answer.get("queued") else "started"


def start_line(node: str, run: str, state: str) -> str:
    """One node's answer to run-chef, for a person."""
    if state == "joined":
        return f"{node}: joined (run {run}, already queued)"
    if state == "queued":
        return f"{node}: run {run} queued (starts when the run in progress ends)"
    return f"{node}: run {run} started"


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


def _state_holds(state: str, member: Member | None, reached: bool = True) -> bool:
    """Does `member` hold `state` (`reached`: it answered when asked directly)?"""
    if state == "down":
        return member is None or gone(member)
    if member is None or member.state != State.ALIVE or not reached:
        return False
    if state == "alive":
        return True
    return member.active == (state == "active")


def unknown_target(pattern: str, members: dict[str, Member]) -> str | None:
    """What is wrong with a TARGET no known node matches (None if some node does)."""
    if is_group(pattern):
        if select(list(members.values()), pattern):
            return None
        return f"no node matches {pattern!r}"
    return None if pattern in members else f"no node {pattern!r} in the flock"


def _check_target(word: str, pattern: str, state: str, members: dict[str, Member]) -> None:
    """A wait on nodes that do not exist fails at once, as `kubectl wait` does, rather than
    running out its timeout; `alive` waits for them to join (they may be starting) and says
    so; `down` already holds."""
    what = unknown_target(pattern, members)
    if what is None or state == "down":
        return
    known = ", ".join(sorted(members)) or "none"
    if state == "alive":
        how = "waiting for nodes to match" if is_group(pattern) else "waiting for it to join"
        print(f"flockctl: {word} {pattern} alive: {what} yet, {how} (known: {known})",
              file=sys.stderr, flush=True)
        return
    raise CliError(f"{word} {pattern} {state}: {what} (known: {known})", UNREACHABLE)


def cmd_wait(c: Ctx) -> int:
    until = c.args.command == "wait-until"
    word = "wait-until" if until else "wait-while"
    pattern, state = c.args.target, c.args.state
    deadline = time.monotonic() + c.args.timeout
    last = ""
    looked = False
    while True:
        try:
            members = {m.name: m for m in c.members()}
        except (RpcError, CliError) as e:  # no node reachable yet: "not yet", keep waiting
            members, last = {}, str(e)
        else:
            if not looked:
                looked = True
                _check_target(word, pattern, state, members)
        if is_group(pattern):
            names = select(list(members.values()), pattern)
        else:
            names = [pattern]
        unreached: set[str] = set()
        if state in ("active", "idle"):
            # Ask the nodes themselves: membership lags by a heartbeat.
            for n in names:
                m = members.get(n)
                if m is not None and m.state == State.ALIVE:
                    try:
                        m.active = bool(c.flock.call(n, "flock_api", "active", timeout=2.0))
                    except RpcError as e:
                        unreached.add(n)
                        last = f"{n}: {e}"
        holds = [_state_holds(state, members.get(n), n not in unreached) for n in names]
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
