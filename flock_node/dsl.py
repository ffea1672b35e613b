"""The recipe language: declare resources in a recipe compiled by the engine.

    from flock_node.dsl import file, directory, execute, log, python_block, flock

    fubar = file("/tmp/fubar", action="create", content="foobar")
    fubar.remote_notifies("run", "execute[kill all humans]", node="bender1")
    execute("kill all humans", command="echo done >> /tmp/humans", action="nothing")

Each function returns the resource (its methods — notifies, subscribes, remote_notifies,
remote_subscribes, wait_until, wait_while — return it too, so calls chain). Declaring outside
a compile raises RecipeError.
"""

from __future__ import annotations

import threading
from typing import Any, cast

from flock_node.engine.ansible_resources import Playbook
from flock_node.engine.errors import RecipeError
from flock_node.engine.recipe import declare
from flock_node.engine.resources import Resource

__all__ = [
    "file",
    "directory",
    "execute",
    "log",
    "python_block",
    "ansible",
    "playbook",
    "flock",
    "bind_flock",
    "RecipeError",
]


def file(name: str, **props: Any) -> Resource:
    """file[name]: create (default), create_if_missing, delete, touch; content, mode."""
    return declare("file", name, props)


def directory(name: str, **props: Any) -> Resource:
    """directory[name]: create (default), delete; mode, recursive."""
    return declare("directory", name, props)


def execute(name: str, **props: Any) -> Resource:
    """execute[name]: run (default); command, cwd, environment, creates, returns, timeout."""
    return declare("execute", name, props)


def log(name: str, **props: Any) -> Resource:
    """log[name]: write (default); message (default: the name), level."""
    return declare("log", name, props)


def python_block(name: str, **props: Any) -> Resource:
    """python_block[name]: run (default) the callable `block`."""
    return declare("python_block", name, props)


def ansible(name: str, **props: Any) -> Resource:
    """ansible[name]: run (default) Ansible `module` with `args` on this node; vars (for
    templates), check, diff, no_log, timeout. Needs the `[ansible]` extra."""
    return declare("ansible", name, props)


def playbook(name: str, **props: Any) -> Playbook:
    """playbook[name]: run (default) the playbook at `path` (default: the name) on this node;
    tags, skip_tags, extra_vars, check, diff, timeout; `.on_task(NAME)` for one task's change.
    Needs the `[ansible]` extra."""
    return cast(Playbook, declare("playbook", name, props))


_bound_obj: Any = None
_bind_lock = threading.Lock()


def bind_flock(obj: Any) -> None:
    """Make `flock[...]` use `obj` (the agent binds its own client; None unbinds)."""
    global _bound_obj
    with _bind_lock:
        _bound_obj = obj


def _bound() -> Any:
    global _bound_obj
    with _bind_lock:
        if _bound_obj is None:
            from flock_node.client import Flock  # lazy: the client pulls in the transport

            _bound_obj = Flock.connect()
        return _bound_obj


class _FlockProxy:
    """`flock["NAME"].flock_api.active()` inside recipes, through the bound client."""

    def __getitem__(self, name: str) -> Any:
        return _bound()[name]

    def __getattr__(self, attr: str) -> Any:
        return getattr(_bound(), attr)

    def __repr__(self) -> str:
        return "<flock proxy>"


flock = _FlockProxy()
