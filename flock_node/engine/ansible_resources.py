"""`ansible` and `playbook`: Ansible modules and playbooks as Flock resources.

    ansible("motd", module="ansible.builtin.copy", args={"content": "hi\\n", "dest": "/etc/motd"})
    playbook("web", path="/srv/web.yml", tags=["nginx"]).on_task("reload nginx").remote_notifies(
        "run", "execute[refresh lb]", tag="lb")

A module's `changed` is the resource's `updated`, `failed` its failure (with the module's
`msg`). Each has two steps kept apart: `inspect()` runs the module in check mode (nothing
changes; what would change is reported, with a diff when the module gives one) and `apply()`
runs it for real. Ansible is optional (the `[ansible]` extra): without it, a recipe declaring
these types fails to compile, saying which extra to install.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from flock_node.engine.ansible_session import (
    HIDDEN,
    OUTPUT_LIMIT,
    ansible_missing,
    has_mask,
    keep_result,
    mask_args,
    render_output,
    run_module,
)
from flock_node.engine.errors import RecipeError, ResourceFailure
from flock_node.engine.resources import Decision, Resource, command_env, converge_by, up_to_date
from flock_node.engine.shell import run_command

CALLBACK_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ansible_callback")


def _module(v: Any) -> str:
    if not isinstance(v, str) or not v or not all(p.isidentifier() for p in v.split(".")) or \
            len(v.split(".")) not in (1, 3):
        raise ValueError(f"must be a module name like 'ansible.builtin.copy', not {v!r}")
    return v


def _dict(v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ValueError(f"must be a dict, not {type(v).__name__}")
    try:
        json.dumps(v)
    except (TypeError, ValueError) as e:
        raise ValueError(f"must hold only JSON values (strings, numbers, lists, dicts): {e}"
                         ) from None
    return {str(k): x for k, x in v.items()}


def _flag(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"must be True or False, not {v!r}")
    return v


def _positive(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float("inf"):
        raise ValueError(f"must be a positive number of seconds, not {v!r}")
    return float(v)


def _path(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise ValueError(f"must be a path, not {v!r}")
    return v


def _tags(v: Any) -> list[str]:
    vals = [v] if isinstance(v, str) else v
    if not isinstance(vals, (list, tuple)) or not all(isinstance(x, str) and x for x in vals):
        raise ValueError(f"must be a tag or a list of tags, not {v!r}")
    return list(vals)


@dataclass
class Outcome:
    """What one module or playbook run did (or, in check mode, would do)."""

    changed: bool
    output: str
    result: dict[str, Any] = field(default_factory=dict)


class _AnsibleBase(Resource):
    actions = ("run", "nothing")
    default_action = "run"

    def setup(self) -> None:
        if not self.restored:
            missing = ansible_missing()
            if missing:
                raise RecipeError(f"{self.source}: {self.id}: {missing}")

    def act(self, action: str) -> tuple[bool, str]:
        if action == "run":
            if self.props["check"]:
                # A check run reports what would change but is not "updated": its
                # notifications would change things on this node and others.
                return False, self.inspect().output
            out = self.apply()
            return out.changed, out.output
        return super().act(action)

    def decide_run(self, current: Any) -> Decision:
        """Why-run: Ansible's own check mode says whether the run would change anything."""
        out = self.inspect()
        if out.changed and not self.props["check"]:
            first = (out.output.strip().splitlines() or ["changes"])[0]
            return converge_by(f"{self.type} would change: {first}", lambda: self.apply().output)
        return up_to_date("no change (check mode)", out.output)

    def inspect(self) -> Outcome:
        """Check mode: what the run would change, changing nothing."""
        return self._run(check=True)

    def apply(self) -> Outcome:
        """The real run."""
        return self._run(check=False)

    def _run(self, check: bool) -> Outcome:
        raise NotImplementedError


class Ansible(_AnsibleBase):
    """ansible[name]: one Ansible module run on this node."""

    type = "ansible"
    props_spec: ClassVar[dict[str, tuple[Callable[[Any], Any], Any]]] = {
        "module": (_module, None),
        "args": (_dict, lambda r: {}),
        "vars": (_dict, lambda r: {}),  # template variables
        "check": (_flag, False),
        "diff": (_flag, True),
        "no_log": (_flag, False),
        "timeout": (_positive, 3600.0),
    }

    def setup(self) -> None:
        if self.props["module"] is None and not self.restored:
            raise RecipeError(f"{self.source}: {self.id}: property 'module' is required "
                              "(e.g. module='ansible.builtin.copy')")
        super().setup()

    def properties(self) -> dict[str, Any]:
        out = super().properties()
        hide = bool(self.props["no_log"])
        out["args"] = mask_args(self.props["args"], hide)
        out["vars"] = mask_args(self.props["vars"], hide)
        return out

    def _run(self, check: bool) -> Outcome:
        p = self.props
        if self.restored and (has_mask(p["args"]) or has_mask(p["vars"])):
            raise ResourceFailure(
                "the module's arguments were not persisted (secret or no_log) and the recipe "
                "does not compile: fix the recipe")
        if ansible_missing():
            raise ResourceFailure(str(ansible_missing()))
        request = {"module": p["module"], "args": p["args"], "vars": p["vars"],
                   "check": check, "diff": p["diff"], "no_log": p["no_log"],
                   "env": command_env(None) or {}}
        answer = run_module(request, p["timeout"])
        result: dict[str, Any] = answer.get("result") or {}
        no_log = bool(p["no_log"])
        kept = keep_result(result, no_log)
        extra = "" if no_log else "\n".join(
            f"{name}: {answer[key]}" for key, name in (("noise", "stdout"), ("stderr", "stderr"))
            if answer.get(key))
        changed = bool(result.get("changed"))
        if result.get("failed"):
            msg = HIDDEN if no_log else str(result.get("msg") or "module failed")
            raise ResourceFailure(f"{p['module']} failed: {msg}",
                                  render_output("", kept, extra))
        verb = ("would change" if changed else "would not change") if check else (
            "changed" if changed else "ok")
        return Outcome(changed, render_output(f"{p['module']}: {verb}", kept, extra), kept)


class TaskView:
    """`playbook(...).on_task(name)`: notifications sent only when that task changed."""

    def __init__(self, res: Playbook, selector: str):
        self.res = res
        self.selector = selector

    def notifies(self, action: str, target: str, timing: str = "delayed") -> TaskView:
        """When the task changed, run `action` on local resource `target`."""
        self.res.notifies(action, target, timing)
        self.res.notifications[-1].on = self.selector
        return self

    def remote_notifies(self, action: str, target: str, node: str | None = None,
                        tag: str | None = None, timing: str = "immediately") -> TaskView:
        """When the task changed, nodes matching `node` or `tag` run `action` on `target`."""
        self.res.remote_notifies(action, target, node, tag, timing)
        self.res.remote_notifications[-1].on = self.selector
        return self


def fired_selectors(events: list[dict[str, Any]]) -> set[str]:
    """`task=NAME` and `tag=TAG` for every task that changed."""
    out: set[str] = set()
    for e in events:
        if e.get("status") == "changed":
            out.add(f"task={e.get('task')}")
            out.update(f"tag={t}" for t in e.get("tags") or [])
    return out


def parse_events(text: str) -> list[dict[str, Any]]:
    """The callback's JSON lines; a torn last line (a killed run) is ignored."""
    events = []
    for line in text.splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if isinstance(e, dict):
            events.append(e)
    return events


def summarize(events: list[dict[str, Any]]) -> str:
    """One line per task result, then the results' details as JSON (bounded)."""
    lines = [f"{e.get('status')}: {e.get('task')}" for e in events]
    details = [e for e in events if set(e) - {"task", "tags", "status"}]
    text = "\n".join(lines)
    if details:
        text += "\n" + json.dumps(details, sort_keys=True, default=str, indent=1)
    if len(text) > OUTPUT_LIMIT:
        text = text[: OUTPUT_LIMIT - 40] + f"\n... ({len(text)} characters, cut)"
    return text


class Playbook(_AnsibleBase):
    """playbook[name]: a whole playbook run on this node (`-c local`)."""

    type = "playbook"
    props_spec: ClassVar[dict[str, tuple[Callable[[Any], Any], Any]]] = {
        "path": (_path, lambda r: r.name),
        "tags": (_tags, lambda r: []),
        "skip_tags": (_tags, lambda r: []),
        "extra_vars": (_dict, lambda r: {}),
        "check": (_flag, False),
        "diff": (_flag, True),
        "timeout": (_positive, 3600.0),
    }

    def setup(self) -> None:
        self.fired: set[str] = set()
        super().setup()

    def on_task(self, name: str | None = None, tag: str | None = None) -> TaskView:
        """Notifications declared on the view fire only when task `name` (or a task tagged
        `tag`) changed."""
        if (name is None) == (tag is None) or not isinstance(name or tag, str) or not (name or tag):
            raise RecipeError(f"{self.source}: {self.id}: on_task needs a task name or tag=")
        return TaskView(self, f"task={name}" if name is not None else f"tag={tag}")

    def fires(self, on: str | None) -> bool:
        return on is None or on in self.fired

    def properties(self) -> dict[str, Any]:
        out = super().properties()
        out["extra_vars"] = mask_args(self.props["extra_vars"])
        return out

    def command(self, check: bool, vars_file: str) -> list[str]:
        """The ansible-playbook command line for this resource."""
        p = self.props
        cmd = [sys.executable, "-m", "ansible.cli.playbook", "-i", "localhost,", "-c", "local",
               "-e", "@" + vars_file, p["path"]]
        if p["tags"]:
            cmd += ["--tags", ",".join(p["tags"])]
        if p["skip_tags"]:
            cmd += ["--skip-tags", ",".join(p["skip_tags"])]
        if check:
            cmd.append("--check")
        if p["diff"]:
            cmd.append("--diff")
        return cmd

    def _run(self, check: bool) -> Outcome:
        p = self.props
        self.fired = set()
        if self.restored and has_mask(p["extra_vars"]):
            raise ResourceFailure("extra_vars were not persisted (secret) and the recipe does "
                                  "not compile: fix the recipe")
        if ansible_missing():
            raise ResourceFailure(str(ansible_missing()))
        if not os.path.isfile(p["path"]):
            raise ResourceFailure(f"playbook {p['path']} does not exist")
        with tempfile.TemporaryDirectory(prefix="flock-playbook-") as tmp:
            vars_file = os.path.join(tmp, "extra_vars.json")
            fd = os.open(vars_file, os.O_WRONLY | os.O_CREAT, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(p["extra_vars"], f)
            events_file = os.path.join(tmp, "events")
            env = {
                "ANSIBLE_CALLBACK_PLUGINS": CALLBACK_DIR,
                "ANSIBLE_CALLBACKS_ENABLED": "flock_events",
                "FLOCK_ANSIBLE_EVENTS": events_file,
                "ANSIBLE_LOCAL_TEMP": os.path.join(tmp, "local"),
                "ANSIBLE_REMOTE_TEMP": os.path.join(tmp, "remote"),
                "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
                "ANSIBLE_NOCOLOR": "1",
                "ANSIBLE_PIPELINING": "1",  # modules through stdin: no file per task
                "ANSIBLE_RETRY_FILES_ENABLED": "0",
                "ANSIBLE_LOCALHOST_WARNING": "0",
                "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0",
            }
            r = run_command(shlex.join(self.command(check, vars_file)),
                            cwd=os.path.dirname(os.path.abspath(p["path"])),
                            env=command_env(env), timeout=p["timeout"])
            try:
                with open(events_file, encoding="utf-8") as f:
                    events = parse_events(f.read())
            except FileNotFoundError:
                events = []
        output = summarize(events)
        if r.timed_out:
            raise ResourceFailure(f"playbook timed out after {p['timeout']:g} s "
                                  "(process group killed)", output)
        if r.status != 0:
            failed = [e for e in events if e.get("status") == "failed"]
            if failed:
                e = failed[0]
                msg = HIDDEN if e.get("censored") else str(e.get("msg") or "failed")
                why = f"task {e.get('task')!r} failed: {msg}"
            else:
                lines = r.output.strip().splitlines()
                why = f"ansible-playbook exited {r.status}" + (f": {lines[-1]}" if lines else "")
            raise ResourceFailure(f"playbook {p['path']}: {why}",
                                  output + "\n" + r.output[-4096:])
        fired = fired_selectors(events)
        if not check:
            self.fired = fired
        return Outcome(bool(fired), output, {"tasks": events})


