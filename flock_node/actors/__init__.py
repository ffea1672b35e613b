"""The actors a node serves over RPC, each a class with a declared method table.

`flock_api` (public: run_chef, active, status, history, members...) and `resource_manager`
(notifications and subscriptions between nodes). `Dispatcher` turns a decoded Request into a
call of the right method with its arguments and every failure into an error code: the
caller's mistakes are `bad_request`, our own database's trouble a retryable code.
Actors run on the agent's loop.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import msgspec

from flock_node.api import CALLS, BadArgs, decode_args
from flock_node.protocol import Envelope, Error, Request, Response
from flock_node.store import store_error
from flock_node.transport import RpcError
from flock_node.trust.guard import Guard
from flock_node.trust.identity import UNVERIFIED, Caller

log = logging.getLogger("flock.actors")


class BadRequest(Exception):
    """The caller sent arguments of the wrong shape."""


def as_map(row: msgspec.Struct) -> dict[str, Any]:
    """A typed store row as the RPC answers it (the clients' contract is plain maps)."""
    out: dict[str, Any] = msgspec.to_builtins(row)
    return out


def as_maps(rows: Sequence[msgspec.Struct]) -> list[dict[str, Any]]:
    """Typed store rows as the RPC answers them."""
    out: list[dict[str, Any]] = msgspec.to_builtins(rows)
    return out


class NodeFacts(Protocol):
    """What the actors read about the node that serves them."""

    name: str
    incarnation: int
    rpc_addr: str
    bus_addr: str
    started: float
    ready: bool  # the first compile ended

    @property
    def next_run(self) -> float | None:
        """Wall clock of the next scheduled converge (--interval)."""

    @property
    def tags(self) -> list[str]: ...

    def dropped_frames(self) -> dict[str, int]: ...

    def loop_failures(self) -> list[dict[str, Any]]: ...

    def name_clashes(self) -> list[dict[str, Any]]: ...


class Actor(Protocol):
    NAME: str
    METHODS: tuple[str, ...]


def int_arg(v: Any, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise BadRequest(f"{name} must be an integer, got {v!r}")
    return v


class Dispatcher:
    """Calls `actor.method(**args)` for a Request; answers a Response, never raises."""

    def __init__(self, node: str, actors: list[Any], guard: Guard | None = None):
        self.node = node
        self.guard = guard  # who may call what, and the audit trail
        self.methods: dict[tuple[str, str], Callable[..., Awaitable[Any]]] = {
            (a.NAME, m): getattr(a, m) for a in actors for m in a.METHODS
        }

    async def handle(self, req: Request, env: Envelope, caller: Caller = UNVERIFIED) -> Response:
        fn = self.methods.get((req.actor, req.method))
        if fn is None:
            known = sorted(f"{a}.{m}" for a, m in self.methods)
            return Response(req.call_id, False, error=Error(
                "unknown_method", f"no method {req.actor}.{req.method}; known: {', '.join(known)}"))
        if self.guard is None:
            return await self._call(req, fn, req.args)
        return await self.guard.run(caller, env, req, lambda args: self._call(req, fn, args))

    async def _call(self, req: Request, fn: Callable[..., Awaitable[Any]],
                    args: dict[str, Any]) -> Response:
        try:
            if (req.actor, req.method) in CALLS:
                args = decode_args(req.actor, req.method, args)
            result = await fn(**args)
        except (sqlite3.InterfaceError, sqlite3.ProgrammingError, sqlite3.DataError) as e:
            # A value SQLite cannot take (a list where a string goes): the caller's mistake.
            return Response(req.call_id, False, error=Error("bad_request", f"{req.method}: {e}"))
        except sqlite3.Error as e:
            # Our own trouble (disk full, database locked...), never the caller's: retryable.
            code, msg = store_error(e)
            log.error("%s.%s: %s", req.actor, req.method, msg)
            return Response(req.call_id, False, error=Error(code, f"{self.node}: {msg}"))
        except BadArgs as e:  # names the method itself
            return Response(req.call_id, False, error=Error("bad_request", str(e)))
        except (TypeError, ValueError, OverflowError) as e:
            # Arguments of the wrong shape: the caller's mistake, answered, not a crash.
            return Response(req.call_id, False, error=Error("bad_request", f"{req.method}: {e}"))
        except BadRequest as e:
            return Response(req.call_id, False, error=Error("bad_request", str(e)))
        except RpcError as e:
            return Response(req.call_id, False, error=Error(e.code, e.message))
        return Response(req.call_id, True, result=msgspec.to_builtins(result))

