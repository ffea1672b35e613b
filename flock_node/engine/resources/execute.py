"""execute[name]: run (default); command, cwd, environment, creates, returns, timeout."""

from __future__ import annotations

import os
from typing import ClassVar

from flock_node.engine.errors import ResourceFailure
from flock_node.engine.resources.base import (
    Decision,
    Resource,
    command_env,
    converge_by,
    fail_os,
    up_to_date,
)
from flock_node.engine.resources.props import (
    _environment,
    _opt_seconds,
    _opt_str,
    _returns,
    _str,
)
from flock_node.engine.shell import run_command


class Execute(Resource):
    type = "execute"
    actions = ("run", "nothing")
    default_action = "run"
    props_spec: ClassVar = {
        "command": (_str, lambda r: r.name),
        "cwd": (_opt_str, None),
        "environment": (_environment, None),
        "creates": (_opt_str, None),
        "returns": (_returns, lambda r: [0]),
        "timeout": (_opt_seconds, 3600.0),  # Chef's default: a hung command cannot block forever
    }

    def load_current_resource(self, action: str) -> bool:
        """Whether the file named by `creates` exists (then the command does not run)."""
        creates = self.props["creates"]
        return bool(creates) and os.path.lexists(os.path.join(self.props["cwd"] or "", creates))

    def decide_run(self, created: bool) -> Decision:
        if created:
            made = f"{self.props['creates']} exists"
            return up_to_date(made, output=made)
        return converge_by(f"command would run: {self.props['command']}", self._run)

    def _run(self) -> str:
        p = self.props
        try:
            r = run_command(p["command"], cwd=p["cwd"], env=command_env(p["environment"]),
                            timeout=p["timeout"])
        except OSError as e:
            raise fail_os("cannot start the command", e) from None
        if r.timed_out:
            raise ResourceFailure(
                f"command timed out after {p['timeout']:g} s (process group killed)", r.output
            )
        if r.status not in p["returns"]:
            expected = " or ".join(str(x) for x in p["returns"])
            code = r.status if r.status is not None else -1
            status = code if code >= 0 else f"killed by signal {-code}"
            msg = f"command exited {status} (expected {expected})"
            if r.last_stderr_line:
                msg += f": {r.last_stderr_line}"
            raise ResourceFailure(msg, r.output)
        return r.output
