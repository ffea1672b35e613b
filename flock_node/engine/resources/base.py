"""The base of every resource type: declaration (validated properties, notifications, waits),
persistence, and the three steps of an action, as Chef's providers have them:

- `load_current_resource(action)`: look at the system, change nothing;
- `decide_<action>(current)`: what would change and why ("content differs", "mode 0644 ->
  0600", "command would run"), as a `Decision` whose `converge` callable would do it;
- `converge`: do it (Chef's `converge_by`). Why-run stops after deciding.

A type is a subclass with a `type` name: it registers itself (`TYPES`), no table to keep.
Actions raise ResourceFailure; they never touch the store.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from flock_node.engine import collector
from flock_node.engine.errors import RecipeError, ResourceFailure
from flock_node.engine.resources.props import COMMON, _seconds
from flock_node.names import is_name, is_pattern

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


@dataclass(slots=True)  # one per resource per run: cheap to make
class Decision:
    """What an action would do. `why` says it for a person ("content differs", "mode 0644 ->
    0600", "command would run"); `converge` does it and returns the output to record; None
    means up to date, with `output` recorded as it is."""

    why: str
    converge: Callable[[], str] | None = None
    updates: bool = True  # converging counts as an update (writing a log line does not)
    output: str = ""

    @property
    def would_converge(self) -> bool:
        return self.converge is not None


def converge_by(why: str, fn: Callable[[], str], updates: bool = True) -> Decision:
    """A decision to change something (Chef's converge_by): `fn` does it, returns its output."""
    return Decision(why, fn, updates)


def up_to_date(why: str, output: str = "") -> Decision:
    """A decision that nothing needs doing, and why."""
    return Decision(why, None, output=output)


# Every resource type, by name: filled by subclassing Resource with a `type`.
TYPES: dict[str, type[Resource]] = {}


class Resource:
    """One declared resource: `type[name]` with validated properties and its notifications."""

    type: ClassVar[str] = ""
    actions: ClassVar[tuple[str, ...]] = ("nothing",)
    default_action: ClassVar[str] = "nothing"
    props_spec: ClassVar[dict[str, tuple[Callable[[Any], Any], Any]]] = {}

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if not cls.type:
            return  # an abstract base for other types
        missing = [a for a in cls.actions if a != "nothing" and not hasattr(cls, "decide_" + a)]
        if missing:
            raise TypeError(f"{cls.__name__}: no decide_{missing[0]} for action {missing[0]!r}")
        prev = TYPES.get(cls.type)
        if prev is not None and prev.__qualname__ != cls.__qualname__:
            raise TypeError(f"resource type {cls.type!r} is already {prev.__qualname__}")
        TYPES[cls.type] = cls

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

    def _local_link(self, action: str, target: str, timing: str) -> str:
        """Check a `notifies`/`subscribes` declaration; the recipe line it is on."""
        collector.current()
        src = collector.caller_source()
        self._check_action_name(action, src)
        self._check_target(target, src)
        self._check_timing(timing, LOCAL_TIMINGS, src)
        return src

    def notifies(self, action: str, target: str, timing: str = "delayed") -> Resource:
        """When this resource is updated, run `action` on local resource `target`."""
        src = self._local_link(action, target, timing)
        self.notifications.append(Notify(action, target, timing, src))
        return self

    def subscribes(self, action: str, target: str, timing: str = "delayed") -> Resource:
        """When local resource `target` is updated, run `action` on this resource."""
        src = self._local_link(action, target, timing)
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
        if node is not None and not is_pattern(node):
            raise RecipeError(f"{src}: {self.id}: node={node!r} is not a node name or glob "
                              "(letters, digits, '.', '_', '-', and * ? [ ])")
        self.remote_notifications.append(RemoteNotify(action, target, node, tag, timing, src))
        return self

    def remote_subscribes(self, action: str, target: str, node: str | None = None) -> Resource:
        """Whenever `target` on node `node` is updated, run `action` on this resource."""
        collector.current()
        src = collector.caller_source()
        self._check_action_name(action, src)
        self._check_target(target, src)
        if not isinstance(node, str) or not is_name(node):
            raise RecipeError(f"{src}: {self.id}: remote_subscribes needs node=NAME (one node's "
                              f"name; got {node!r})")
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

    # -- the three steps of an action ----------------------------------------------------------
    def load_current_resource(self, action: str) -> Any:
        """Look at the system as it is now, changing nothing; handed to `decide_<action>`."""
        return None

    def decide(self, action: str) -> Decision:
        """What `action` would change and why (nothing is changed); ResourceFailure if it cannot
        be done at all (a directory where a file goes)."""
        if action == "nothing":
            return up_to_date("action nothing")
        decide: Callable[[Any], Decision] = getattr(self, "decide_" + action)
        return decide(self.load_current_resource(action))

    def fires(self, on: str | None) -> bool:
        """Whether a notification declared for part `on` fires after the last action (a
        playbook's task); every notification fires for the types without parts."""
        return True

    def act(self, action: str) -> tuple[bool, str]:
        """Bring the resource to `action`: (changed, output) or raise ResourceFailure."""
        d = self.decide(action)
        if d.converge is None:
            return False, d.output
        return d.updates, d.converge()


def fail_os(what: str, e: OSError) -> ResourceFailure:
    """A failure naming what could not be done and the system's reason."""
    return ResourceFailure(f"{what}: {e.strerror or e}")
