"""Running shell commands for `execute` and string guards.

Each command gets its own process group (a new session) so a timeout, the agent's stop timeout
or the agent's death kills everything it started, and its output is kept bounded (the tail is
what explains a failure).

Dying with the agent, even on `kill -9`, takes two layers:
- a watchdog in the command's process group: a background `read` on a pipe whose only writer
  is the agent. When the agent dies the kernel closes that pipe, the read sees EOF and the
  watchdog SIGKILLs its whole group (grandchildren included), without waiting for a restart.
  When the command ends normally the agent writes "done" first, so the watchdog leaves quietly
  and a daemon the command started on purpose survives, as it did before;
- each live group's id and its leader's start time in a file in the state dir: the next agent
  kills groups left over from its previous instance whose leader is still the same process
  (in case the watchdog itself was killed).
PR_SET_PDEATHSIG on the shell was a third layer; it cost 1.4 ms a command (an exec of
`setpriv`, or a full fork for a preexec_fn) for a case the two above cover, so it went.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, Unpack

from flock_node.engine.limits import Interrupted, current_kill

OUTPUT_LIMIT = 16 * 1024
KILL_GRACE = 2.0

# $1 is the command, fd 0 the watchdog pipe. The command gets /dev/null as stdin and keeps
# the shell's pid (exec), so its exit status and signals are its own.
_WRAPPER = (
    'exec 3<&0 </dev/null; '
    '(read -r w <&3; [ "$w" = done ] || kill -KILL 0) & '
    'exec 3<&-; exec /bin/sh -c "$1"'
)

def start_time(pid: int) -> str | None:
    """The start time of `pid` (field 22 of /proc/PID/stat), None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else None


class ChildGroups:
    """The process groups of the commands running now, recorded in a file if one is set."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[int, str] = {}
        self._path: Path | None = None

    def use_file(self, path: Path) -> list[int]:
        """Kill the groups a previous agent left in `path`, then record ours there."""
        killed = kill_leftovers(path)
        with self._lock:
            self._path = path
            self._save()
        return killed

    def add(self, pid: int) -> None:
        with self._lock:
            self._live[pid] = start_time(pid) or "?"
            self._save()

    def remove(self, pid: int) -> None:
        with self._lock:
            self._live.pop(pid, None)
            self._save()

    def _save(self) -> None:
        if self._path is None:
            return
        text = "".join(f"{pid} {st}\n" for pid, st in self._live.items())
        tmp = self._path.with_name(self._path.name + ".tmp")
        try:
            tmp.write_text(text)
            os.replace(tmp, self._path)
        except OSError:
            pass  # a full disk must not fail the command: the watchdog still covers it


children = ChildGroups()


def parse_groups(text: str) -> list[tuple[int, str]]:
    """(pgid, leader start time) pairs of a children file; bad lines are ignored."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            out.append((int(parts[0]), parts[1]))
    return out


def kill_leftovers(path: Path) -> list[int]:
    """SIGKILL the groups recorded in `path` whose leader is still the recorded process."""
    try:
        groups = parse_groups(path.read_text())
    except OSError:
        return []
    killed = []
    for pgid, st in groups:
        if pgid > 1 and start_time(pgid) == st:  # same start time: not a reused pid
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
                killed.append(pgid)
    return killed


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


def _pump(stream: Any, tail: _Tail, is_err: bool) -> None:
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


class CommandTimedOut(Exception):
    """A guard command passed its time limit (its process group was killed)."""

    def __init__(self, limit: float):
        super().__init__(f"timed out after {limit:g} s")
        self.limit = limit


def kill_group(proc: subprocess.Popen[bytes], grace: float = KILL_GRACE) -> None:
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


def _env(env: dict[str, str] | None) -> dict[str, str] | None:
    if not env:
        return None
    full = dict(os.environ)
    full.update({str(k): str(v) for k, v in env.items()})
    return full


def _spawn(command: str, cwd: str | None, env: dict[str, str] | None, capture: bool
           ) -> tuple[subprocess.Popen[bytes], int]:
    """Start `command` under the watchdog wrapper: (process, the watchdog pipe's write end)."""
    current_kill_check()
    r, w = os.pipe()
    out = subprocess.PIPE if capture else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(
            ["/bin/sh", "-c", _WRAPPER, "flock-command", command],
            cwd=cwd,
            env=_env(env),
            stdin=r,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    except BaseException:
        os.close(w)
        raise
    finally:
        os.close(r)
    children.add(proc.pid)
    return proc, w


def current_kill_check() -> None:
    kill = current_kill()
    if kill is not None:
        kill.check()


class Where(TypedDict, total=False):
    """Where and how long a shell command runs: its directory, its environment (None: ours)
    and its timeout in seconds (None: none)."""

    cwd: str | None
    env: dict[str, str] | None
    timeout: float | None


@contextlib.contextmanager
def _supervised(command: str, where: Where, capture: bool) -> Iterator[subprocess.Popen[bytes]]:
    """`command` running under the watchdog while the block runs; when it ends, the
    watchdog is sent home and the group forgotten."""
    proc, w = _spawn(command, where.get("cwd"), where.get("env"), capture)
    try:
        yield proc
    finally:
        with contextlib.suppress(OSError):
            os.write(w, b"done\n")
        os.close(w)
        children.remove(proc.pid)


def _wait(proc: subprocess.Popen[bytes], timeout: float | None) -> bool:
    """Wait for the command; kill its group at `timeout` (True) or when the run's Kill fires
    (Interrupted)."""
    kill = current_kill()
    killed = threading.Event()

    def on_kill() -> None:
        killed.set()
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

    with contextlib.nullcontext() if kill is None else kill.watch(on_kill):
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            return True
        except BaseException:
            kill_group(proc)
            raise
    if killed.is_set() and kill is not None:
        kill_group(proc, 0.0)  # the leader may have gone before its children
        raise Interrupted(kill.message)
    return False


def run_command(command: str, **where: Unpack[Where]) -> CommandResult:
    """Run `/bin/sh -c command` in a new session; on timeout kill its whole process group.

    Raises Interrupted (with the output so far) if the run's Kill fires meanwhile."""
    tail = _Tail()
    interrupted: Interrupted | None = None
    with _supervised(command, where, capture=True) as proc:
        readers = [
            threading.Thread(target=_pump, args=(proc.stdout, tail, False), daemon=True),
            threading.Thread(target=_pump, args=(proc.stderr, tail, True), daemon=True),
        ]
        for t in readers:
            t.start()
        try:
            timed_out = _wait(proc, where.get("timeout"))
        except Interrupted as e:
            interrupted, timed_out = e, False
    # A background child may keep the pipes open after the shell exits: do not wait forever.
    deadline = time.monotonic() + 1.0
    for t in readers:
        t.join(max(0.0, deadline - time.monotonic()))
    with tail.lock:
        output = bytes(tail.buf).decode("utf-8", "replace")
        err_lines = bytes(tail.err).decode("utf-8", "replace").strip().splitlines()
    if interrupted is not None:
        raise Interrupted(str(interrupted), output)
    return CommandResult(
        status=None if timed_out else proc.returncode,
        output=output,
        last_stderr_line=err_lines[-1].strip() if err_lines else "",
        timed_out=timed_out,
    )


def run_guard(command: str, **where: Unpack[Where]) -> bool:
    """A string guard is true when `/bin/sh -c command` exits 0; CommandTimedOut after
    `timeout` seconds, Interrupted if the run's Kill fires (its group is killed either way)."""
    timeout = where.get("timeout")
    with _supervised(command, where, capture=False) as proc:
        if _wait(proc, timeout):
            raise CommandTimedOut(timeout or 0.0)
    return proc.returncode == 0
