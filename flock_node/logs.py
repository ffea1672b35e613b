"""The agent's log: one line per event with `key=value` fields, no colour, to stderr or to
`--log-file` (appended; reopened on SIGHUP, so logrotate's rename-then-signal works).

Under journald (stderr is the journal stream) each line carries its syslog priority as a
`<N>` prefix and no timestamp of its own: the journal adds both, and keeps the line whole.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flock_node.store import Received

# syslog priorities for journald's `<N>` line prefix (SyslogLevelPrefix=yes is its default).
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}


def kv(**fields: Any) -> str:
    """`key=value` fields in logfmt style: values with spaces, quotes or `=` are quoted, and
    nothing ever spans two lines. None values are left out."""
    parts = []
    for k, v in fields.items():
        if v is None:
            continue
        s = v if isinstance(v, str) else (f"{v:.2f}" if isinstance(v, float) else str(v))
        if not s or any(ch in s for ch in ' "=\\\n\r\t'):
            s = '"' + (s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
                       .replace("\r", "\\r").replace("\t", "\\t")) + '"'
        parts.append(f"{k}={s}")
    return " ".join(parts)


def cause_word(kind: str, cause: dict[str, Any] | None) -> str:
    """Why a run started, in one word: scheduled, run_chef, or the notification's sender."""
    if kind == "reaction":
        return "notification"
    if cause and cause.get("scheduled"):
        return "scheduled"
    return "run_chef"


def run_started(kind: str, run_id: str, cause: dict[str, Any] | None,
                notification: Received | None) -> str:
    """The log line of a converge or reaction that starts."""
    return f"{kind} started " + kv(run=run_id, **_what(kind, cause, notification))


def run_finished(kind: str, run_id: str, cause: dict[str, Any] | None,
                 notification: Received | None, result: dict[str, Any],
                 duration: float) -> str:
    """The log line of a converge or reaction that ended: how it went and what it updated."""
    ok = result.get("status") == "ok"
    updated = result.get("updated", 0)
    fields: dict[str, Any] = {"run": run_id, "status": "ok" if ok else "failed"}
    if kind == "reaction":
        fields["result"] = "failed" if not ok else ("updated" if updated else "up_to_date")
    else:
        fields["updated"] = f"{updated}/{result.get('total', 0)}"
    fields["duration"] = f"{duration:.2f}s"
    fields.update(_what(kind, cause, notification))
    fields["error"] = result.get("error")
    return f"{kind} finished " + kv(**fields)


def _what(kind: str, cause: dict[str, Any] | None,
          notification: Received | None) -> dict[str, Any]:
    if kind != "reaction":
        return {"cause": cause_word(kind, cause)}
    n = notification
    if n is None:
        return {"notification": None, "sender": None, "resource": None, "action": None,
                "hops": None}
    return {"notification": n.id, "sender": n.sender, "resource": n.resource,
            "action": n.action, "hops": n.hops}


class LineFormatter(logging.Formatter):
    """Every record on one line (a traceback's newlines become `\\n`), optionally with
    journald's priority prefix."""

    def __init__(self, fmt: str, journald: bool = False):
        super().__init__(fmt)
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record).replace("\r", "").replace("\n", "\\n")
        if self.journald:
            return f"<{_PRIORITY.get(record.levelno, 6)}>{line}"
        return line


class ReopenableFileHandler(logging.FileHandler):
    """A log file opened for appending that `reopen()` closes and opens again by name."""

    def reopen(self) -> None:
        """After logrotate renamed the file: write to a new one under the old name."""
        self.acquire()
        try:
            if self.stream is not None:
                self.stream.close()
            self.stream = self._open()
        finally:
            self.release()


def under_journald() -> bool:
    """Is stderr connected to the journal (systemd sets JOURNAL_STREAM to its dev:inode)?"""
    want = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return bool(want) and want == f"{st.st_dev}:{st.st_ino}"


def setup(node: str, level: str, log_file: str | None = None) -> None:
    """Configure the agent's logging: stderr, or `log_file` (OSError if it cannot be opened)."""
    handler: logging.Handler
    if log_file:
        handler = ReopenableFileHandler(log_file, mode="a", encoding="utf-8")
        formatter = LineFormatter(f"%(asctime)s {node} %(levelname)s %(name)s: %(message)s")
    else:
        handler = logging.StreamHandler(sys.stderr)
        if under_journald():
            formatter = LineFormatter("%(name)s: %(message)s", journald=True)
        else:
            formatter = LineFormatter(f"%(asctime)s {node} %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))


def has_log_file() -> bool:
    """Was the log sent to a file (then SIGHUP reopens it)?"""
    return any(isinstance(h, ReopenableFileHandler) for h in logging.getLogger().handlers)


def reopen() -> None:
    """SIGHUP: reopen the log file(s), after logrotate moved them away."""
    for h in logging.getLogger().handlers:
        if isinstance(h, ReopenableFileHandler):
            h.reopen()
