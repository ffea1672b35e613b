"""Keeping the revocation list current across the flock: a member that holds a newer version
(its heartbeat or gossiped record says so) is asked for it, and a newer list closes what the
revoked identities still hold open."""

from __future__ import annotations

import asyncio
import base64
import logging
from pathlib import Path
from typing import Any, Protocol

from flock_node.trust.tls import Gate

log = logging.getLogger("flock.trust")


class Caller(Protocol):
    """What fetching needs of an RPC client."""

    async def call(self, addr: str, actor: str, method: str, args: dict[str, Any] | None = None,
                   timeout: float | None = None) -> Any: ...


class Revocable(Protocol):
    """Something holding connections: a socket, a client, a datagram pool."""

    def close_revoked(self) -> int: ...


class CrlSync:
    """Fetch newer revocation lists from members; on a new one, close revoked connections."""

    def __init__(self, gate: Gate, rpc: Caller, state_dir: Path):
        self.gate = gate
        self.rpc = rpc
        self.holders: list[Revocable] = []  # added as the agent opens them
        self._fetching = False
        gate.persist_in(state_dir / "revoked.list")
        gate.listeners.append(self.revoked)

    def seen(self, version: int, rpc: str) -> None:
        """A member holds revocation list `version`: fetch it from there if it is newer."""
        if version > self.gate.version and not self._fetching:
            self._fetching = True
            asyncio.get_running_loop().create_task(self.fetch(rpc), name="fetch-crl")

    async def fetch(self, addr: str) -> None:
        """A peer has a newer revocation list: take it (it is signed, so from anyone)."""
        try:
            got = await self.rpc.call(addr, "trust", "crl", timeout=2.0)
            if isinstance(got, dict) and isinstance(got.get("list"), str):
                self.gate.offer(base64.b64decode(got["list"]))
        except Exception as e:  # noqa: BLE001 - the next heartbeat tries again
            log.warning("could not fetch the revocation list from %s: %s", addr, e)
        finally:
            self._fetching = False

    def revoked(self) -> None:
        """A newer revocation list: close what the revoked identities still hold open."""
        n = sum(h.close_revoked() for h in self.holders)
        if n:
            log.warning("closed %d connection(s) of revoked identities", n)
