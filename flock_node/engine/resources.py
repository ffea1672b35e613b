"""Resource types, their properties and their actions (what Chef calls providers).

A resource is declared by the DSL during a compile, validated at once (unknown property or
action is a compile error) and later brought to an action by the runner. Actions return
(changed, output) or raise ResourceFailure; they never touch the store.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from flock_node.engine import collector
from flock_node.engine.errors import RecipeError, ResourceFailure
from flock_node.engine.limits import CallTimedOut, call_with_limit
from flock_node.engine.shell import run_command

ID_RE = re.compile(r"^([a-z_][a-z0-9_]*)\[(.+)\]$", re.S)
LOCAL_TIMINGS = ("immediately", "delayed")
REMOTE_TIMINGS = ("immediately", "delayed")
CALLABLE = "<callable>"  # what a callable property is persisted as

_umask = os.umask(0o022)
os.umask(_umask)
DEFAULT_FILE_MODE = 0o666 & ~_umask
DEFAULT_DIR_MODE = 0o777 & ~_umask

log = logging.getLogger("flock.recipe")

# What the run in progress tells the commands it starts (FLOCK_RUN_ID, FLOCK_NOTIFICATION...):
# set by the runner on the worker thread, read where commands are started.
RUN_ENV: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "flock_run_env", default=None)


def command_env(own: dict[str, str] | None) -> dict[str, str] | None:
    """The environment a command adds: the run's variables, then the resource's own."""
    extra = RUN_ENV.get()
    if not extra:
        return own
    return {**extra, **(own or {})}


def parse_id(rid: str) -> tuple[str, str] | None:
    m = ID_RE.match(rid)
    return (m.group(1), m.group(2)) if m else None


# -- property checkers: return the normalised value or raise ValueError ------------------------
def _any(v: Any) -> Any:
    return v


def _opt_str(v: Any) -> str | None:
    if v is not None and not isinstance(v, str):
        raise ValueError(f"must be a string, not {type(v).__name__}")
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"must be a string, not {type(v).__name__}")
    return v


def _content(v: Any) -> str | bytes | None:
    if v is not None and not isinstance(v, (str, bytes)):
        raise ValueError(f"must be a string or bytes, not {type(v).__name__}")
    return v


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"must be True or False, not {v!r}")
    return v


def _mode(v: Any) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool):
        raise ValueError(f"must be an octal mode like 0o644 or '0644', not {v!r}")
    if isinstance(v, int):
        n = v
    elif isinstance(v, str) and re.fullmatch(r"0?o?[0-7]{3,4}", v):
        n = int(v.replace("o", ""), 8)
    else:
        raise ValueError(f"must be an octal mode like 0o644 or '0644', not {v!r}")
    if not 0 <= n <= 0o7777:
        raise ValueError(f"must be between 0 and 0o7777, not {oct(n)}")
    return n


def _count(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"must be a non-negative integer, not {v!r}")
    return v


def _seconds(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
        raise ValueError(f"must be a non-negative number of seconds, not {v!r}")
    return float(v)


def _limit(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float("inf"):
        raise ValueError(f"must be a positive number of seconds, not {v!r}")
    return float(v)


def _opt_seconds(v: Any) -> float | None:
    return None if v is None else _seconds(v)


def _guard(v: Any) -> str | Callable[..., Any] | None:
    if v is None or isinstance(v, str) or callable(v):
        return cast("str | Callable[..., Any] | None", v)
    raise ValueError(f"must be a shell command string or a callable, not {type(v).__name__}")


def _callable(v: Any) -> Callable[..., Any] | None:
    if v is not None and not callable(v):
        raise ValueError(f"must be a callable, not {type(v).__name__}")
    return cast("Callable[..., Any] | None", v)


def _returns(v: Any) -> list[int]:
    vals = v if isinstance(v, (list, tuple)) else [v]
    for x in vals:
        if isinstance(x, bool) or not isinstance(x, int):
            raise ValueError(f"must be an exit status or a list of them, not {v!r}")
    return list(vals)


def _environment(v: Any) -> dict[str, str] | None:
    if v is None:
        return None
    if not isinstance(v, dict):
        raise ValueError(f"must be a dict of strings, not {type(v).__name__}")
    return {str(k): str(x) for k, x in v.items()}


_LEVELS = {"debug": 10, "info": 20, "warn": 30, "warning": 30, "error": 40, "fatal": 50}


def _level(v: Any) -> str:
    if not isinstance(v, str) or v.lower() not in _LEVELS:
        raise ValueError(f"must be one of {', '.join(_LEVELS)}, not {v!r}")
    return v.lower()


COMMON: dict[str, tuple[Callable[[Any], Any], Any]] = {
    "only_if": (_guard, None),
    "not_if": (_guard, None),
    "guard_timeout": (_limit, 300.0),  # a hung guard must not hold the node for ever
    "ignore_failure": (_bool, False),
    "retries": (_count, 0),
    "retry_delay": (_seconds, 2.0),
}


@dataclass
class Notify:
    action: str
    target: str
    timing: str
    source: str
    on: str | None = None  # only when this part of the resource changed (Resource.fires)


@dataclass
class RemoteNotify:
    action: str
    target: str
    node: str | None
    tag: str | None
    timing: str
    source: str
    on: str | None = None  # only when this part of the resource changed (Resource.fires)


@dataclass
class RemoteSubscribe:
    action: str
    target: str
    node: str
    source: str


@dataclass
class Wait:
    kind: str  # wait_until | wait_while
    cond: Callable[[], Any] | None  # None when restored from the store
    interval: float
    timeout: float
    text: str


def describe_condition(cond: Callable[..., Any]) -> str:
    """The source of a condition (usually a lambda in a recipe line), else its repr."""
    try:
        text = inspect.getsource(cond).strip()
    except (OSError, TypeError):
        return repr(cond)
    return " ".join(text.split())


_PLAIN = (str, int, float, bool, type(None))


def _json_safe(v: Any) -> Any:
    if type(v) in _PLAIN:
        return v
    if callable(v):
        return CALLABLE
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    return repr(v)


class Resource:
    """One declared resource: `type[name]` with validated properties and its notifications."""

    type = ""
    actions: tuple[str, ...] = ("nothing",)
    default_action = "nothing"
    props_spec: dict[str, tuple[Callable[[Any], Any], Any]] = {}

    def __init__(self, name: str, props: dict[str, Any], source: str):
        if not isinstance(name, str) or not name:
            raise RecipeError(f"{source}: {self.type}: the name must be a non-empty string")
        self.name = name
        self.id = f"{self.type}[{name}]"
        self.source = source
        self.seq = 0
        self.restored = False  # rebuilt from the store: callables are not available
        self.notifications: list[Notify] = []
        self.subscriptions: list[Notify] = []  # local subscribes, moved onto their targets
        self.remote_notifications: list[RemoteNotify] = []
        self.remote_subscriptions: list[RemoteSubscribe] = []
        self.waits: list[Wait] = []
        values: dict[str, Any] = {}
        action = props.pop("action", self.default_action)
        if action not in self.actions:
            raise RecipeError(
                f"{source}: {self.id}: unknown action {action!r} "
                f"(allowed: {', '.join(self.actions)})"
            )
        for key, value in props.items():
            spec = self.props_spec.get(key) or COMMON.get(key)
            if spec is None:
                raise RecipeError(f"{source}: {self.id}: unknown property {key!r}")
            try:
                values[key] = spec[0](value)
            except ValueError as e:
                raise RecipeError(f"{source}: {self.id}: property {key!r} {e}") from None
        for key, (_, default) in self.props_spec.items():
            if key not in values:
                values[key] = default(self) if callable(default) else default
        for key, (_, default) in COMMON.items():
            values.setdefault(key, default)
        self.action = action
        self.props = values
        self.setup()

    def setup(self) -> None:
        """Derive what the actions need from the validated properties."""

    # -- the DSL methods (chainable) ---------------------------------------------------------
    def _check_action_name(self, action: Any, src: str) -> None:
        if not isinstance(action, str) or not action:
            raise RecipeError(f"{src}: {self.id}: the action must be a non-empty string")

    def _check_target(self, target: Any, src: str) -> None:
        if not isinstance(target, str) or not ID_RE.match(target):
            raise RecipeError(f"{src}: {self.id}: target {target!r} is not of the form type[name]")

    def _check_timing(self, timing: Any, allowed: tuple[str, ...], src: str) -> None:
        if timing not in allowed:
            raise RecipeError(
                f"{src}: {self.id}: bad timing {timing!r} (use {' or '.join(allowed)})"
            )

    def notifies(self, action: str, target: str, timing: str = "delayed") -> Resource:
        """When this resource is updated, run `action` on local resource `target`."""
        collector.current()
        src = collector.caller_source()
        self._check_action_name(action, src)
        self._check_target(target, src)
        self._check_timing(timing, LOCAL_TIMINGS, src)
        self.notifications.append(Notify(action, target, timing, src))
        return self

    def subscribes(self, action: str, target: str, timing: str = "delayed") -> Resource:
        """When local resource `target` is updated, run `action` on this resource."""
        collector.current()
        src = collector.caller_source()
        self._check_action_name(action, src)
        self._check_target(target, src)
        self._check_timing(timing, LOCAL_TIMINGS, src)
        if action not in self.actions:
            raise RecipeError(
                f"{src}: {self.id}: unknown action {action!r} (allowed: {', '.join(self.actions)})"
            )
        self.subscriptions.append(Notify(action, target, timing, src))
        return self

    def remote_notifies(
        self,
        action: str,
        target: str,
        node: str | None = None,
        tag: str | None = None,
        timing: str = "immediately",
    ) -> Resource:
        """When this resource is updated, nodes matching `node` (name/glob) or `tag` run
        `action` on their persisted `target`."""
        collector.current()
        src = collector.caller_source()
        self._check_action_name(action, src)
        self._check_target(target, src)
        self._check_timing(timing, REMOTE_TIMINGS, src)
        if (node is None) == (tag is None):
            raise RecipeError(
                f"{src}: {self.id}: remote_notifies needs exactly one of node= or tag="
            )
        for what, v in (("node", node), ("tag", tag)):
            if v is not None and (not isinstance(v, str) or not v):
                raise RecipeError(f"{src}: {self.id}: {what}= must be a non-empty string")
        self.remote_notifications.append(RemoteNotify(action, target, node, tag, timing, src))
        return self

    def remote_subscribes(self, action: str, target: str, node: str) -> Resource:
        """Whenever `target` on node `node` is updated, run `action` on this resource."""
        collector.current()
        src = collector.caller_source()
        self._check_action_name(action, src)
        self._check_target(target, src)
        if not isinstance(node, str) or not node:
            raise RecipeError(f"{src}: {self.id}: remote_subscribes needs node=NAME")
        if action not in self.actions:
            raise RecipeError(
                f"{src}: {self.id}: unknown action {action!r} (allowed: {', '.join(self.actions)})"
            )
        self.remote_subscriptions.append(RemoteSubscribe(action, target, node, src))
        return self

    def _wait(self, kind: str, cond: Any, interval: Any, timeout: Any) -> Resource:
        collector.current()
        src = collector.caller_source()
        if not callable(cond):
            raise RecipeError(f"{src}: {self.id}: {kind} needs a callable condition")
        try:
            iv, to = _seconds(interval), _seconds(timeout)
        except ValueError as e:
            raise RecipeError(f"{src}: {self.id}: {kind} interval/timeout {e}") from None
        self.waits.append(Wait(kind, cond, max(iv, 0.01), to, describe_condition(cond)))
        return self

    def wait_until(
        self, cond: Callable[[], Any], interval: float = 1.0, timeout: float = 300
    ) -> Resource:
        """Before the action, poll `cond` until it is true (fail after `timeout` seconds)."""
        return self._wait("wait_until", cond, interval, timeout)

    def wait_while(
        self, cond: Callable[[], Any], interval: float = 1.0, timeout: float = 300
    ) -> Resource:
        """Before the action, poll `cond` until it is false (fail after `timeout` seconds)."""
        return self._wait("wait_while", cond, interval, timeout)

    # -- persistence -------------------------------------------------------------------------
    def properties(self) -> dict[str, Any]:
        """JSON-safe properties, with what is needed to rebuild the resource after a restart."""
        out = {k: _json_safe(v) for k, v in self.props.items()}
        out["action"] = self.action
        if self.notifications:
            out["notifies"] = [
                {"action": n.action, "target": n.target, "timing": n.timing}
                | ({"on": n.on} if n.on else {})
                for n in self.notifications
            ]
        if self.remote_notifications:
            out["remote_notifies"] = [
                {
                    "action": n.action,
                    "target": n.target,
                    "node": n.node,
                    "tag": n.tag,
                    "timing": n.timing,
                }
                | ({"on": n.on} if n.on else {})
                for n in self.remote_notifications
            ]
        if self.remote_subscriptions:
            out["remote_subscribes"] = [
                {"action": n.action, "target": n.target, "node": n.node}
                for n in self.remote_subscriptions
            ]
        if self.waits:
            out["waits"] = [
                {"kind": w.kind, "condition": w.text, "interval": w.interval, "timeout": w.timeout}
                for w in self.waits
            ]
        return out

    @classmethod
    def restore(cls, name: str, properties: dict[str, Any], source: str) -> Resource:
        """Rebuild a resource from its persisted properties (the recipe no longer compiles)."""
        res = cls.__new__(cls)
        res.name, res.id, res.source, res.seq, res.restored = (
            name,
            f"{cls.type}[{name}]",
            source,
            0,
            True,
        )
        p = dict(properties)
        res.notifications = [
            Notify(n["action"], n["target"], n["timing"], source, n.get("on"))
            for n in p.pop("notifies", [])
        ]
        res.remote_notifications = [
            RemoteNotify(n["action"], n["target"], n.get("node"), n.get("tag"), n["timing"], source,
                         n.get("on"))
            for n in p.pop("remote_notifies", [])
        ]
        res.remote_subscriptions = [
            RemoteSubscribe(n["action"], n["target"], n["node"], source)
            for n in p.pop("remote_subscribes", [])
        ]
        res.waits = [
            Wait(w["kind"], None, w["interval"], w["timeout"], w["condition"])
            for w in p.pop("waits", [])
        ]
        res.subscriptions = []
        res.action = p.pop("action", cls.default_action)
        values: dict[str, Any] = {}
        for key, (check, default) in {**COMMON, **cls.props_spec}.items():
            if key not in p:
                values[key] = default(res) if callable(default) else default
            elif p[key] == CALLABLE:
                values[key] = CALLABLE
            else:
                try:
                    values[key] = check(p[key])
                except ValueError:
                    values[key] = p[key]
        res.props = values
        res.setup()
        return res

    # -- actions -----------------------------------------------------------------------------
    def fires(self, on: str | None) -> bool:
        """Whether a notification declared for part `on` fires after the last action (a
        playbook's task); every notification fires for the types without parts."""
        return True

    def act(self, action: str) -> tuple[bool, str]:
        """Bring the resource to `action`: (changed, output) or raise ResourceFailure."""
        if action == "nothing":
            return False, ""
        act: Callable[[], tuple[bool, str]] = getattr(self, "action_" + action)
        return act()


def _fail_os(what: str, e: OSError) -> ResourceFailure:
    return ResourceFailure(f"{what}: {e.strerror or e}")


def _write_atomic(path: str, data: bytes, mode: int) -> None:
    """Write `data` to `path` through a temp file in the same directory and os.replace."""
    parent = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=".flock-", suffix=".tmp")
    except FileNotFoundError:
        raise ResourceFailure(f"parent directory {parent} does not exist") from None
    except OSError as e:
        raise _fail_os(f"cannot create a file in {parent}", e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), mode)
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise _fail_os(f"cannot write {path}", e) from None


class File(Resource):
    type = "file"
    actions = ("create", "create_if_missing", "delete", "touch", "nothing")
    default_action = "create"
    props_spec = {"content": (_content, None), "mode": (_mode, None)}

    def setup(self) -> None:
        c = self.props["content"]
        self._data = c.encode() if isinstance(c, str) else c

    def _create(self, if_missing: bool) -> tuple[bool, str]:
        path, data, mode = self.name, self._data, self.props["mode"]
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                same = if_missing or data is None or (st.st_size == len(data) and f.read() == data)
        except FileNotFoundError:
            _write_atomic(path, data or b"", DEFAULT_FILE_MODE if mode is None else mode)
            return True, f"created {path}"
        except IsADirectoryError:
            raise ResourceFailure(f"{path} is a directory") from None
        except OSError as e:
            raise _fail_os(f"cannot read {path}", e) from None
        cur_mode = stat.S_IMODE(st.st_mode)
        if not same:
            _write_atomic(path, data, cur_mode if mode is None else mode)
            return True, "content changed" + (
                f", mode {cur_mode:04o} -> {mode:04o}"
                if mode is not None and mode != cur_mode
                else ""
            )
        if mode is not None and cur_mode != mode:
            try:
                os.chmod(path, mode)
            except OSError as e:
                raise _fail_os(f"cannot chmod {path}", e) from None
            return True, f"mode {cur_mode:04o} -> {mode:04o}"
        return False, ""

    def action_create(self) -> tuple[bool, str]:
        return self._create(False)

    def action_create_if_missing(self) -> tuple[bool, str]:
        return self._create(True)

    def action_delete(self) -> tuple[bool, str]:
        try:
            st = os.lstat(self.name)
        except FileNotFoundError:
            return False, ""
        if stat.S_ISDIR(st.st_mode):
            raise ResourceFailure(f"{self.name} is a directory")
        try:
            os.unlink(self.name)
        except OSError as e:
            raise _fail_os(f"cannot delete {self.name}", e) from None
        return True, f"deleted {self.name}"

    def action_touch(self) -> tuple[bool, str]:
        created = False
        if not os.path.lexists(self.name):
            self._create(False)
            created = True
        try:
            os.utime(self.name)
        except OSError as e:
            raise _fail_os(f"cannot touch {self.name}", e) from None
        return True, f"created {self.name}" if created else f"touched {self.name}"


class Directory(Resource):
    type = "directory"
    actions = ("create", "delete", "nothing")
    default_action = "create"
    props_spec = {"mode": (_mode, None), "recursive": (_bool, False)}

    def action_create(self) -> tuple[bool, str]:
        path, mode = self.name, self.props["mode"]
        try:
            st = os.stat(path)
        except FileNotFoundError:
            try:
                if self.props["recursive"]:
                    os.makedirs(path)
                else:
                    os.mkdir(path)
                if mode is not None:
                    os.chmod(path, mode)
            except FileNotFoundError:
                raise ResourceFailure(
                    f"parent directory {os.path.dirname(os.path.abspath(path))} does not exist "
                    "(use recursive=True)"
                ) from None
            except OSError as e:
                raise _fail_os(f"cannot create {path}", e) from None
            return True, f"created {path}"
        if not stat.S_ISDIR(st.st_mode):
            raise ResourceFailure(f"{path} exists and is not a directory")
        cur = stat.S_IMODE(st.st_mode)
        if mode is not None and cur != mode:
            try:
                os.chmod(path, mode)
            except OSError as e:
                raise _fail_os(f"cannot chmod {path}", e) from None
            return True, f"mode {cur:04o} -> {mode:04o}"
        return False, ""

    def action_delete(self) -> tuple[bool, str]:
        path = self.name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return False, ""
        if not stat.S_ISDIR(st.st_mode):
            raise ResourceFailure(f"{path} is not a directory")
        try:
            if self.props["recursive"]:
                shutil.rmtree(path)
            else:
                os.rmdir(path)
        except OSError as e:
            hint = " (use recursive=True)" if e.errno in (39, 66) else ""
            raise _fail_os(f"cannot delete {path}{hint}", e) from None
        return True, f"deleted {path}"


class Execute(Resource):
    type = "execute"
    actions = ("run", "nothing")
    default_action = "run"
    props_spec = {
        "command": (_str, lambda r: r.name),
        "cwd": (_opt_str, None),
        "environment": (_environment, None),
        "creates": (_opt_str, None),
        "returns": (_returns, lambda r: [0]),
        "timeout": (_opt_seconds, 3600.0),  # Chef's default: a hung command cannot block forever
    }

    def action_run(self) -> tuple[bool, str]:
        p = self.props
        creates = p["creates"]
        if creates:
            full = os.path.join(p["cwd"] or "", creates)
            if os.path.lexists(full):
                return False, f"{creates} exists"
        try:
            r = run_command(p["command"], cwd=p["cwd"], env=command_env(p["environment"]),
                            timeout=p["timeout"])
        except OSError as e:
            raise _fail_os("cannot start the command", e) from None
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
        return True, r.output


class Log(Resource):
    type = "log"
    actions = ("write", "nothing")
    default_action = "write"
    props_spec = {"message": (_str, lambda r: r.name), "level": (_level, "info")}

    def action_write(self) -> tuple[bool, str]:
        msg = self.props["message"]
        log.log(_LEVELS[self.props["level"]], "%s", msg)
        # Not "updated" (Chef's count_log_resource_updates=false): a log line changes nothing,
        # and a second converge of an unchanged recipe should update nothing.
        return False, msg


class PythonBlock(Resource):
    type = "python_block"
    actions = ("run", "nothing")
    default_action = "run"
    # Like execute's default: a block stuck in a loop cannot hold the node for ever.
    props_spec = {"block": (_callable, None), "timeout": (_limit, 3600.0)}

    def setup(self) -> None:
        if self.props["block"] is None and not self.restored:
            raise RecipeError(
                f"{self.source}: {self.id}: property 'block' (a callable) is required"
            )

    def action_run(self) -> tuple[bool, str]:
        block = self.props["block"]
        if not callable(block):
            raise ResourceFailure(
                "the block is not available: the recipe does not compile, and a python_block "
                "cannot be restored from the store"
            )
        limit = self.props["timeout"]
        try:
            result = call_with_limit(block, limit)
        except CallTimedOut as e:
            how = "the block was stopped" if e.stopped else (
                "the block did not stop: it is stuck in a call Python cannot interrupt, "
                "and goes on in the background"
            )
            raise ResourceFailure(f"timed out after {limit:g} s ({how})") from None
        except ResourceFailure:
            raise  # Interrupted: the stop timeout ran out
        except Exception as e:
            raise ResourceFailure(f"block raised {type(e).__name__}: {e}") from None
        return True, "" if result is None else str(result)


TYPES: dict[str, type[Resource]] = {c.type: c for c in (File, Directory, Execute, Log, PythonBlock)}
