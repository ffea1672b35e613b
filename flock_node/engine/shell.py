"""Running shell commands for `execute` and string guards.

Each command gets its own process group so a timeout kills everything it started, and its
output is kept bounded (the tail is what explains a failure).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass

OUTPUT_LIMIT = 16 * 1024
KILL_GRACE = 2.0


class _Tail:
    """The last OUTPUT_LIMIT bytes of a process's combined output, plus its last stderr line."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.err = bytearray()
        self.lock = threading.Lock()

    def add(self, chunk: bytes, is_err: bool) -> None:
        with self.lock:
            self.buf += chunk
            if len(self.buf) > OUTPUT_LIMIT:
                del self.buf[: len(self.buf) - OUTPUT_LIMIT]
            if is_err:
                self.err += chunk
                if len(self.err) > 4096:
                    del self.err[: len(self.err) - 4096]


def _pump(stream, tail: _Tail, is_err: bool) -> None:
    try:
        while True:
            chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
            if not chunk:
                break
            tail.add(chunk, is_err)
    except (OSError, ValueError):
        pass
    finally:
        try:
            stream.close()
        except OSError:
            pass


@dataclass
class CommandResult:
    status: int | None  # None when it timed out
    output: str
    last_stderr_line: str
    timed_out: bool = False


def kill_group(proc: subprocess.Popen, grace: float = KILL_GRACE) -> None:
    """SIGTERM the process group, then SIGKILL it if the leader is still there after `grace`."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    # SIGKILL the group regardless: children may ignore SIGTERM even when the shell obeyed.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def run_command(
    command: str,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> CommandResult:
    """Run `/bin/sh -c command` in a new session; on timeout kill its whole process group."""
    full_env = None
    if env:
        full_env = dict(os.environ)
        full_env.update({str(k): str(v) for k, v in env.items()})
    proc = subprocess.Popen(
        ["/bin/sh", "-c", command],
        cwd=cwd,
        env=full_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    tail = _Tail()
    readers = [
        threading.Thread(target=_pump, args=(proc.stdout, tail, False), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, tail, True), daemon=True),
    ]
    for t in readers:
        t.start()
    timed_out = False
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        kill_group(proc)
    except BaseException:
        kill_group(proc)
        raise
    # A background child may keep the pipes open after the shell exits: do not wait forever.
    deadline = time.monotonic() + 1.0
    for t in readers:
        t.join(max(0.0, deadline - time.monotonic()))
    with tail.lock:
        output = bytes(tail.buf).decode("utf-8", "replace")
        err_lines = bytes(tail.err).decode("utf-8", "replace").strip().splitlines()
    return CommandResult(
        status=None if timed_out else proc.returncode,
        output=output,
        last_stderr_line=err_lines[-1].strip() if err_lines else "",
        timed_out=timed_out,
    )


def run_guard(command: str, cwd: str | None = None, env: dict[str, str] | None = None) -> bool:
    """A string guard is true when `/bin/sh -c command` exits 0."""
    full_env = None
    if env:
        full_env = dict(os.environ)
        full_env.update({str(k): str(v) for k, v in env.items()})
    r = subprocess.run(
        ["/bin/sh", "-c", command],
        cwd=cwd,
        env=full_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return r.returncode == 0
