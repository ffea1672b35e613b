"""An Ansible callback plugin: one JSON line per task result, for the `playbook` resource.

Loaded by ansible-playbook from this directory (ANSIBLE_CALLBACK_PLUGINS), never imported by
the agent; writes to the file named by FLOCK_ANSIBLE_EVENTS.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: flock_events
    type: aggregate
    short_description: task results as JSON lines for Flock
    description: one JSON line per task result, in the file named by FLOCK_ANSIBLE_EVENTS
"""

_KEEP = ("msg", "diff", "rc", "warnings", "skip_reason")
_LIMIT = 4096


class CallbackModule(CallbackBase):  # type: ignore[misc]  # Ansible is untyped
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "flock_events"
    CALLBACK_NEEDS_ENABLED = True

    def _event(self, result: Any, status: str) -> None:
        task = result._task
        res: dict[str, Any] = dict(result._result)
        hidden = bool(getattr(task, "no_log", False)) or "censored" in res
        if status == "ok" and res.get("changed"):
            status = "changed"
        event: dict[str, Any] = {
            "task": task.get_name(),
            "tags": sorted(str(t) for t in (task.tags or [])),
            "status": status,
        }
        if hidden:
            event["censored"] = True
        else:
            for key in _KEEP:
                if key in res:
                    text = json.dumps(res[key], default=str)
                    event[key] = res[key] if len(text) <= _LIMIT else text[:_LIMIT] + "..."
        path = os.environ.get("FLOCK_ANSIBLE_EVENTS")
        if path:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(event, default=str) + "\n")

    def v2_runner_on_ok(self, result: Any) -> None:
        self._event(result, "ok")

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._event(result, "ignored" if ignore_errors else "failed")

    def v2_runner_on_skipped(self, result: Any) -> None:
        self._event(result, "skipped")

    def v2_runner_on_unreachable(self, result: Any) -> None:
        self._event(result, "failed")
