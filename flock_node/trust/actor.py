"""`trust`: the audit trail and the revocation list, over RPC."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from flock_node.actors import BadRequest, as_maps, int_arg
from flock_node.store.audit import AuditLog
from flock_node.trust.revocation import RevocationError
from flock_node.trust.tls import Gate


class TrustApi:
    NAME = "trust"
    METHODS = ("audit", "crl", "install_crl")

    def __init__(self, node: str, audit: AuditLog, gate: Gate | None):
        self.node = node
        self._audit = audit
        self.gate = gate

    async def audit(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest `limit` audit rows, newest first."""
        n = int_arg(limit, "limit")
        if not 0 < n <= 10_000:
            raise BadRequest("limit must be between 1 and 10000")
        return as_maps(self._audit.recent(n))

    async def crl(self) -> dict[str, Any]:
        """Our revocation list: its version and the signed list, base64 (None without one)."""
        if self.gate is None or self.gate.blob is None:
            return {"version": 0, "list": None, "revoked": []}
        return {"version": self.gate.version, "list": base64.b64encode(self.gate.blob).decode(),
                "revoked": sorted(self.gate.revoked)}

    async def install_crl(self, list: bytes | str) -> dict[str, Any]:
        """Take a revocation list signed by our CA (bytes, or base64 as `crl` gives it) if it
        is newer than ours."""
        if self.gate is None:
            raise BadRequest(f"{self.node} does not use TLS: it has no revocation list")
        if isinstance(list, str):
            try:
                list = base64.b64decode(list, validate=True)
            except (binascii.Error, ValueError):
                raise BadRequest("list must be the signed revocation list") from None
        if not isinstance(list, bytes):
            raise BadRequest("list must be the signed revocation list (bytes)")
        try:
            installed = self.gate.offer(list)
        except RevocationError as e:
            raise BadRequest(f"{self.node}: {e}") from None
        return {"version": self.gate.version, "installed": installed}
