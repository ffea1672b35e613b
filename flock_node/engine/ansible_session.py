"""The agent's side of the Ansible worker: one worker process per run, started on the first
`ansible` resource and stopped when the run ends.

The worker (ansible_worker.py) runs in its own process group, recorded like a command's, so a
module that outlives its `timeout`, the agent's stop timeout, or the agent's death kills the
worker with everything the module started. A killed worker is replaced on the next call.
Also here, free of I/O: what of a module result is kept (bounded, no_log honoured) and how
secret-looking arguments are hidden before a resource's properties are persisted.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import IO, Any

from flock_node.engine.errors import ResourceFailure
from flock_node.engine.limits import Interrupted, current_kill
from flock_node.engine.shell import children, current_kill_check

EXTRA_HINT = "pip install 'flock-of-chefs[ansible]'"
OUTPUT_LIMIT = 16 * 1024  # characters of a result kept in the run's history
HIDDEN = "the output has been hidden due to no_log: true"
MASK = "********"
START_TIMEOUT = 60.0
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ansible_worker.py")

# Ansible's own heuristic for a password-like option name (module_utils/basic.py), widened to
# tokens and secrets: such values are never persisted with the resource.
_SECRET_KEY = re.compile(
    r"^(?:.+[-_\s])?(?:pass(?:[-_\s]?(?:word|phrase|wrd|wd)?)|secret|token|api[-_]?key|"
    r"private[-_]?key)(?:[-_\s].+)?$", re.I)


def ansible_missing() -> str | None:
    """Why Ansible cannot run here (naming the extra), or None when it can."""
    try:
        import ansible  # noqa: F401
    except ImportError:
        return f"ansible-core is not installed on this node ({EXTRA_HINT})"
    return None


def mask_args(args: Any, hide_all: bool = False) -> Any:
    """`args` with secret-looking values (every value when `hide_all`) replaced by a mask."""
    if isinstance(args, dict):
        return {k: (MASK if hide_all or _SECRET_KEY.match(str(k)) else mask_args(v))
                for k, v in args.items()}
    if isinstance(args, list):
        return [mask_args(v, hide_all) for v in args]
    return args


def has_mask(args: Any) -> bool:
    """True when persisted `args` lost a value to mask_args (it cannot run as restored)."""
    if isinstance(args, dict):
        return any(v == MASK or has_mask(v) for v in args.values())
    if isinstance(args, list):
        return any(has_mask(v) for v in args)
    return False


def keep_result(result: dict[str, Any], no_log: bool) -> dict[str, Any]:
    """What of a module result the history keeps: no `invocation` (the arguments again), and
    with no_log only whether it changed or failed."""
    if no_log:
        return {k: result[k] for k in ("changed", "failed", "skipped") if k in result} | {
            "censored": HIDDEN}
    return {k: v for k, v in result.items() if k != "invocation" and not k.startswith("_ansible")}


def render_output(summary: str, kept: dict[str, Any], extra: str = "") -> str:
    """The run record's output: a summary line, then the kept result as JSON, bounded."""
    body = json.dumps(kept, sort_keys=True, default=str, indent=1)
    text = "\n".join(x for x in (summary, extra, body) if x)
    if len(text) > OUTPUT_LIMIT:
        text = text[: OUTPUT_LIMIT - 40] + f"\n... ({len(text)} characters, cut)"
    return text


class _Worker:
    """One worker process, spoken to with one JSON line each way."""

    def __init__(self) -> None:
        current_kill_check()
        self.err = tempfile.TemporaryFile()
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", ANSIBLE_NOCOLOR="1")
        self.proc: subprocess.Popen[bytes] = subprocess.Popen(
            # By path, not -m: importing the flock_node.engine package costs 100 ms.
            [sys.executable, "-c", "import runpy, sys; runpy.run_path(sys.argv[1], "
             "run_name='__main__')", WORKER],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err,
            start_new_session=True, env=env,
        )
        children.add(self.proc.pid)
        self.sel = selectors.DefaultSelector()
        assert self.proc.stdout is not None
        self.sel.register(self.proc.stdout, selectors.EVENT_READ)
        self.buf = b""
        hello = self._read_line(START_TIMEOUT)
        if hello is None or not json.loads(hello).get("ready"):
            self.close()
            raise ResourceFailure(f"the Ansible worker did not start: {self.stderr_tail()}")

    def stderr_tail(self) -> str:
        self.err.seek(0, os.SEEK_END)
        self.err.seek(max(0, self.err.tell() - 2048))
        lines = self.err.read().decode("utf-8", "replace").strip().splitlines()
        return lines[-1] if lines else "no message"

    def _read_line(self, timeout: float | None) -> bytes | None:
        """One line from the worker; None on timeout or when it is gone."""
        out: IO[bytes] | None = self.proc.stdout
        assert out is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            if not self.sel.select(left):
                continue
            chunk = os.read(out.fileno(), 1 << 20)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def call(self, request: dict[str, Any], timeout: float | None) -> dict[str, Any] | None:
        """The worker's answer; None when the module ran out of time (the worker is killed)."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise ResourceFailure(f"the Ansible worker died: {self.stderr_tail()}") from None
        kill = current_kill()
        killed = threading.Event()

        def on_kill() -> None:
            killed.set()
            self.kill()

        with contextlib.nullcontext() if kill is None else kill.watch(on_kill):
            line = self._read_line(timeout)
        if killed.is_set() and kill is not None:
            self.close()
            raise Interrupted(kill.message)
        if line is None:
            alive = self.proc.poll() is None
            self.close()
            if alive:
                return None
            raise ResourceFailure(f"the Ansible worker died: {self.stderr_tail()}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def close(self) -> None:
        """Stop the worker (EOF first, then its whole group) and forget it."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(2.0)
        except subprocess.TimeoutExpired:
            pass
        self.kill()  # whatever a module left behind in the group goes too
        self.proc.wait()
        children.remove(self.proc.pid)
        self.sel.close()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.err.close()


class Session:
    """The worker of one run, started when first needed."""

    def __init__(self) -> None:
        self.worker: _Worker | None = None
        self.calls = 0

    def run_module(self, request: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        """Run one module; ResourceFailure when it cannot run or runs out of time."""
        if self.worker is None or not self.worker.alive():
            self.worker = _Worker()
        self.calls += 1
        answer = self.worker.call(request, timeout)
        if answer is None:
            self.worker = None
            raise ResourceFailure(
                f"module {request['module']} timed out after {timeout:g} s "
                "(its process group was killed)")
        return answer

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None


_SESSION: contextvars.ContextVar[Session | None] = contextvars.ContextVar(
    "flock_ansible_session", default=None)


@contextlib.contextmanager
def ansible_session() -> Iterator[Session]:
    """One worker for every module of the run inside; stopped when the run ends."""
    session = Session()
    token = _SESSION.set(session)
    try:
        yield session
    finally:
        _SESSION.reset(token)
        session.close()


def run_module(request: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    """Run one module in the current run's worker (a worker of its own outside a run)."""
    session = _SESSION.get()
    if session is not None:
        return session.run_module(request, timeout)
    with ansible_session() as own:
        return own.run_module(request, timeout)
