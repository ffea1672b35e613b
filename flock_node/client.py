"""The Python client: reach any node's actors by name.

    from flock_node import Flock
    with Flock.connect() as flock:
        flock["bender0"].flock_api.run_chef()
        flock["bender0"].flock_api.active()

Long answers (`resources()`, `history()`, `outbox()`, `members()`) come in pages that each fit a frame;
called without `offset`, the client asks page after page and returns the whole list (at
most `limit` items); with `offset`, the one page as the node answers it (flock_node/paging.py).

Discovery: nodes listening in the local runtime dir, plus `seeds` (bus addresses such as
`tcp://db1:7600`; the RPC port is the next one). A node running SWIM answers `members()` for
the whole flock, so the client asks one (the first that answers, the next on failure); a
mesh agent knows only its peers, so with those every entry point is asked and the answers
merged.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable
from concurrent.futures import ThreadPoolExecutor
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from flock_node import api, paths
from flock_node.blocking import run_now
from flock_node.paging import PAGED, acollect, collect
from flock_node.protocol import Codec, load_key
from flock_node.transport import AsyncRpc, RpcError, SyncRpc, rpc_for_bus, scan_runtime_dir
from flock_node.trust.tls import TlsError, TlsIdentity, load_identity
from flock_node.trust.tls import tls_dir as default_tls_dir

FlockError = RpcError

Answer = list[dict[str, Any]] | RpcError
# The entry points asked one by one and their answers, then those to ask all at once.
Walked = tuple[list[str], list[Answer], list[str]]

# Positional parameter names, so `history(5)` works like `history(limit=5)`.
ACTORS = ("flock_api", "resource_manager")


def _args(method: str, args: tuple[Any, ...], kwargs: dict[str, Any],
          actor: str | None = None) -> dict[str, Any]:
    names = api.positional(method, actor)
    if len(args) > len(names):
        raise TypeError(f"{method}() takes at most {len(names)} positional arguments")
    out = dict(zip(names, args, strict=False))
    out.update(kwargs)
    return out


class SetupError(RpcError):
    """The client's own setup is wrong (a key file, a TLS directory): nothing was sent. The
    code stays `bad_request` for callers that catch RpcError by code."""

    def __init__(self, message: str):
        super().__init__("bad_request", message)


def resolve_key(key_file: str | None = None, insecure: bool = False) -> bytes | None:
    """The flock key for a client: --key-file, FLOCK_KEY_FILE, or the default key file."""
    if insecure:
        return None
    p = paths.key_file(key_file)
    if p is None:
        return None
    try:
        return load_key(p)
    except OSError as e:
        raise SetupError(f"cannot read key file {p} ({e.strerror}): pass --key-file FILE "
                         "(or set FLOCK_KEY_FILE) naming the flock key, or --insecure") from None
    except ValueError as e:
        raise SetupError(f"{e} (--key-file / FLOCK_KEY_FILE)") from None


def resolve_tls(tls_dir: str | Path | None, seeds: Iterable[str]) -> TlsIdentity | None:
    """The TLS identity for a client: with --tls-dir, or when a seed is `tls+tcp://` (then
    FLOCK_TLS_DIR or `<config dir>/tls`); None for ipc and keyed tcp."""
    if tls_dir is None and not any(s.startswith("tls+tcp://") for s in seeds):
        return None
    try:
        return load_identity(default_tls_dir(str(tls_dir) if tls_dir else None))
    except TlsError as e:
        raise SetupError(str(e)) from None


def _codec(key: bytes | None, tls: TlsIdentity | None) -> Codec:
    # On TLS the sender must be the verified name of our certificate, and frames are not
    # signed (TLS protects them).
    if tls is not None:
        return Codec(None, tls.me.name)
    return Codec(key, f"client-{os.getpid()}")


class _Discovery:
    """Who is in the flock, as the entry points tell it: one set of rules for `Flock` and
    `AsyncFlock` (they differ only in how they ask)."""

    def __init__(self, seeds: Iterable[str], runtime_dir: str | Path | None):
        self.seeds = [s for s in seeds]
        self.runtime_dir = paths.runtime_dir(str(runtime_dir) if runtime_dir else None)
        self.members: dict[str, dict[str, Any]] = {}
        self.refused: list[str] = []  # entry points that refused us (another flock key)
        # Each entry point's membership as its status said ("swim", "mesh"); forgotten when
        # it fails, so an agent restarted in the other mode is asked again.
        self.kinds: dict[str, str] = {}
        self.answered: str | None = None  # the SWIM member that answered last: asked first
        self.local: dict[str, str] = {}  # agents in the runtime dir at the last look: name → rpc

    def absorb(self, addrs: list[str],
               answers: list[list[dict[str, Any]] | RpcError]) -> list[dict[str, Any]]:
        """Take the entry points' answers to `members` (or their errors) as the new view.

        A node with another key must not hide the ones we can talk to: only when nobody
        answers is an error raised, a refusal before an unreachable seed. With no answer at
        all the last view stays (a blip must not empty the console's table)."""
        fresh: dict[str, dict[str, Any]] = {}
        refused: RpcError | None = None
        last: RpcError | None = None
        self.refused = []
        for addr, answer in zip(addrs, answers, strict=True):
            if isinstance(answer, RpcError):
                if answer.code == "unauthorized":
                    refused = answer
                    self.refused.append(addr)
                else:
                    last = answer
            else:
                self._merge(fresh, answer)
        if fresh or (refused is None and last is None):
            self.members = fresh
        if not self.members and refused is not None:
            raise refused
        if not self.members and last is not None and self.seeds:
            raise last
        return list(self.members.values())

    def plan(self) -> tuple[list[str], bool]:
        """The entry points in the order to ask them, and whether one answer is enough.

        One is enough when a SWIM member may answer: then they are asked one at a time, the
        one that answered last first, then those whose kind is unknown. When only mesh
        agents are known, all are asked at once, as each knows only its peers."""
        addrs = self.entry_points()
        kinds = [self.kinds.get(a) for a in addrs]
        if "swim" not in kinds and "mesh" in kinds:
            return addrs, False
        rank = {"swim": 0, None: 1}
        order = sorted(addrs, key=lambda a: (a != self.answered, rank.get(self.kinds.get(a), 2)))
        return order, True

    def learn(self, addr: str, status: dict[str, Any] | RpcError | None) -> None:
        """Note an entry point's membership from its status (an agent from before SWIM
        says nothing: mesh); an error forgets it."""
        if isinstance(status, RpcError):
            self.kinds.pop(addr, None)
        elif isinstance(status, dict):
            self.kinds[addr] = str(status.get("membership") or "mesh")

    def whole(self, addr: str) -> bool:
        """Whether the member at `addr` answers for the whole flock (it runs SWIM)."""
        return self.kinds.get(addr) == "swim"

    def walk(self) -> Generator[tuple[str, str], Any, Walked]:
        """One refresh's rules as a conversation: yields `(entry point, method)` to ask one at
        a time and is sent each answer (or its RpcError); returns the entry points asked with
        their answers, and those still to ask all at once (none once a SWIM member answered
        `members`: it speaks for the whole flock)."""
        addrs, one = self.plan()
        tried: list[str] = []
        answers: list[Answer] = []
        if not one:
            return tried, answers, addrs
        for addr in addrs:
            if addr not in self.kinds:
                status = yield addr, "status"
                self.learn(addr, status)
                if isinstance(status, RpcError):
                    tried.append(addr)
                    answers.append(status)
                    continue
            rows = yield addr, "members"
            tried.append(addr)
            answers.append(rows)
            if isinstance(rows, RpcError):
                self.learn(addr, rows)
                continue
            if self.whole(addr):
                self.answered = addr
                # A local agent it does not know yet (SWIM finds those every few seconds),
                # or a seed the operator named that is not among its members (not joined
                # yet, or another flock): ask them too, so what was named shows at once.
                known = {r.get("name") for r in rows}
                reached = {r.get("rpc") for r in rows}
                return tried, answers, (
                    [a for n, a in self.local.items() if n not in known and a not in tried]
                    + [a for a in self.seed_rpcs() if a not in reached and a not in tried])
            break  # a mesh agent: ask every entry point
        return tried, answers, [a for a in addrs if a not in tried]

    async def refresh(self, call: Callable[[str, str, dict[str, Any]], Awaitable[Any]],
                      ask_all: Callable[[Callable[[str], Coroutine[Any, Any, Answer]], list[str]],
                                        Awaitable[list[Answer]]]) -> list[dict[str, Any]]:
        """One refresh, for both clients: `call(addr, method, args)` asks one entry point
        (the blocking client's never suspends, so `run_now` drives this without a loop);
        `ask_all(ask, addrs)` asks the rest together (threads, or `gather`)."""

        async def ask(addr: str, method: str = "members") -> Answer:
            async def one(m: str, a: dict[str, Any]) -> Any:
                return await call(addr, m, a)

            try:
                # A flock of thousands answers `members` in pages: ask to the last one.
                got: Answer = await (acollect(one, method, {}) if method == "members"
                                     else one(method, {}))
                return got
            except RpcError as e:
                return e

        walk = self.walk()
        try:
            step = next(walk)
            while True:
                step = walk.send(await ask(*step))
        except StopIteration as done:
            tried, answers, rest = done.value
        answers += await ask_all(ask, rest)
        return self.absorb(tried + rest, answers)

    def entry_points(self) -> list[str]:
        """RPC addresses to ask for the member list: local nodes first, then seeds."""
        self.local = {n: rpc for n, (_, rpc) in sorted(scan_runtime_dir(self.runtime_dir).items())}
        return list(self.local.values()) + self.seed_rpcs()

    def seed_rpcs(self) -> list[str]:
        """The RPC addresses of the seeds (named by their bus addresses)."""
        return [rpc_for_bus(s) for s in self.seeds]

    @staticmethod
    def _merge(into: dict[str, dict[str, Any]], rows: list[dict[str, Any]]) -> None:
        """The freshest word on each node: its latest incarnation, most recently heard."""
        for r in rows:
            old = into.get(r["name"])
            if old is None or (r["incarnation"], -r.get("age", 0)) > (
                old["incarnation"], -old.get("age", 0)
            ):
                into[r["name"]] = r

    def address(self, name: str) -> str | None:
        m = self.members.get(name)
        if m is not None:
            return str(m["rpc"])
        local = scan_runtime_dir(self.runtime_dir).get(name)
        return local[1] if local else None


class _Actor:
    def __init__(self, call: Callable[..., Any], node: str, actor: str):
        self._call, self._node, self._actor = call, node, actor

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("_"):
            raise AttributeError(method)

        def invoke(*args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
            return self._call(self._node, self._actor, method, _args(method, args, kwargs, self._actor),
                              timeout)

        invoke.__name__ = method
        return invoke


class Node:
    """One node's actors: `node.flock_api.active()`, `node.resource_manager.resources()`."""

    def __init__(self, call: Callable[..., Any], name: str):
        self.name = name
        self.flock_api = _Actor(call, name, "flock_api")
        self.resource_manager = _Actor(call, name, "resource_manager")

    def __repr__(self) -> str:
        return f"<flock node {self.name}>"


class _Client:
    """What both clients share: a node's actors by name, and their bounded RPC sockets."""

    _rpc: SyncRpc | AsyncRpc

    def call(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def __getitem__(self, name: str) -> Node:
        return Node(self.call, name)

    def connections(self) -> int:
        """RPC sockets held (one connection to its node each), at most the bound."""
        return self._rpc.connections()

    def close(self) -> None:
        self._rpc.close()


class Flock(_Client):
    """Blocking client. Thread-safe; usable inside recipes (`flock["x"]` in the DSL)."""

    _rpc: SyncRpc

    def __init__(self, rpc: SyncRpc, resolver: Callable[[str], str | None],
                 discovery: _Discovery | None = None):
        self._rpc = rpc
        self._resolver = resolver
        self.refused: list[str] = []  # entry points that refused our key at the last refresh
        self._discovery = discovery
        self._refreshed = -1e9  # monotonic time of the last refresh

    @classmethod
    def connect(cls, seeds: Iterable[str] = (), runtime_dir: str | Path | None = None,
                key_file: str | None = None, insecure: bool = False,
                timeout: float = 5.0, tls_dir: str | Path | None = None,
                max_connections: int | None = None) -> Flock:
        """Find the flock through the local runtime dir and `seeds`; `tls_dir` (or a
        `tls+tcp://` seed) speaks mutual TLS with that certificate. At most
        `max_connections` (FLOCK_RPC_CONNECTIONS, 64) nodes' connections are held, the
        least recently called closed first."""
        seeds = list(seeds) or env_seeds()
        tls = resolve_tls(tls_dir, seeds)
        key = None if tls is not None else resolve_key(key_file, insecure)
        rpc = SyncRpc(_codec(key, tls), timeout=timeout, tls=tls, max_connections=max_connections)
        disc = _Discovery(seeds, runtime_dir)
        self = cls(rpc, disc.address, disc)
        self.refresh()
        return self

    def refresh(self) -> list[dict[str, Any]]:
        """Ask the flock who is in it: one SWIM member (the next when it fails), or every
        mesh entry point (errors from dead ones ignored)."""
        disc = self._discovery
        if disc is None:
            return []

        async def call(addr: str, method: str, args: dict[str, Any]) -> Any:
            return self._rpc.call(addr, "flock_api", method, args,
                                  timeout=min(self._rpc.timeout, 2.0))

        async def ask_all(ask: Callable[[str], Coroutine[Any, Any, Answer]],
                          rest: list[str]) -> list[Answer]:
            # In parallel: with tens of local nodes, one after the other costs a round trip
            # each. Every `ask` here blocks and never suspends: `run_now` runs it in a thread.
            if len(rest) <= 1:
                return [run_now(ask(a)) for a in rest]
            with ThreadPoolExecutor(min(8, len(rest))) as ex:
                return list(ex.map(lambda a: run_now(ask(a)), rest))

        try:
            return run_now(disc.refresh(call, ask_all))
        finally:
            self.refused = disc.refused
            self._refreshed = time.monotonic()

    def nodes(self) -> list[dict[str, Any]]:
        """Every known node, from the freshest view any entry point gave."""
        if self._discovery is not None and time.monotonic() - self._refreshed < 0.1:
            return sorted(self._discovery.members.values(), key=lambda m: m["name"])
        return sorted(self.refresh(), key=lambda m: m["name"])

    def match(self, pattern: str) -> list[str]:
        names = [m["name"] for m in self.nodes()]
        return [n for n in names if fnmatchcase(n, pattern)]

    def call(self, node: str, actor: str, method: str, args: dict[str, Any] | None = None,
             timeout: float | None = None) -> Any:
        addr = self._resolver(node)
        if addr is None and self._discovery is not None:
            self.refresh()
            addr = self._resolver(node)
        if addr is None:
            raise RpcError("unknown_node", f"no node named {node!r} in the flock")
        args = args or {}
        if (actor, method) in PAGED and "offset" not in args:
            return collect(lambda m, a: self._rpc.call(addr, actor, m, a, timeout, node), method,
                           args)
        return self._rpc.call(addr, actor, method, args, timeout, node)

    def __enter__(self) -> Flock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncFlock(_Client):
    """Asyncio flavour: `await flock["x"].flock_api.active()`."""

    _rpc: AsyncRpc

    def __init__(self, rpc: AsyncRpc, discovery: _Discovery):
        self._rpc = rpc
        self._discovery = discovery
        self.tls: TlsIdentity | None = None  # the identity in use on TLS

    @classmethod
    async def connect(cls, seeds: Iterable[str] = (), runtime_dir: str | Path | None = None,
                      key_file: str | None = None, insecure: bool = False,
                      timeout: float = 5.0, tls_dir: str | Path | None = None,
                      max_connections: int | None = None) -> AsyncFlock:
        """Like `Flock.connect`, for asyncio."""
        seeds = list(seeds) or env_seeds()
        tls = resolve_tls(tls_dir, seeds)
        key = None if tls is not None else resolve_key(key_file, insecure)
        self = cls(AsyncRpc(_codec(key, tls), timeout=timeout, tls=tls,
                            max_connections=max_connections),
                   _Discovery(seeds, runtime_dir))
        self.tls = tls
        await self.refresh()
        return self

    async def refresh(self) -> list[dict[str, Any]]:
        """Ask the flock who is in it, by `Flock.refresh`'s rules."""
        async def call(addr: str, method: str, args: dict[str, Any]) -> Any:
            return await self._rpc.call(addr, "flock_api", method, args,
                                        timeout=min(self._rpc.timeout, 2.0))

        async def ask_all(ask: Callable[[str], Coroutine[Any, Any, Answer]],
                          rest: list[str]) -> list[Answer]:
            return list(await asyncio.gather(*(ask(a) for a in rest)))

        return await self._discovery.refresh(call, ask_all)

    async def nodes(self) -> list[dict[str, Any]]:
        return sorted(await self.refresh(), key=lambda m: m["name"])

    async def call(self, node: str, actor: str, method: str, args: dict[str, Any] | None = None,
                   timeout: float | None = None) -> Any:
        addr = self._discovery.address(node)
        if addr is None:
            await self.refresh()
            addr = self._discovery.address(node)
        if addr is None:
            raise RpcError("unknown_node", f"no node named {node!r} in the flock")
        args = args or {}
        if (actor, method) in PAGED and "offset" not in args:
            return await acollect(lambda m, a: self._rpc.call(addr, actor, m, a, timeout, node),
                                  method, args)
        return await self._rpc.call(addr, actor, method, args, timeout, node)

    async def __aenter__(self) -> AsyncFlock:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()


def env_seeds() -> list[str]:
    raw = os.environ.get("FLOCK_SEEDS", "")
    return [s for s in raw.replace(",", " ").split() if s]
