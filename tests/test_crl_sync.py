"""CrlSync without sockets: a member's higher version fetches the list once, a newer list
closes what revoked identities hold, and a failed fetch lets the next heartbeat try again."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

from flock_node.trust import ca
from flock_node.trust.crl_sync import CrlSync
from flock_node.trust.tls import Gate


class FakeRpc:
    def __init__(self, blob: bytes | None):
        self.blob = blob
        self.calls: list[tuple[str, str, str]] = []

    async def call(self, addr, actor, method, args=None, timeout=None):
        self.calls.append((addr, actor, method))
        await asyncio.sleep(0)
        if self.blob is None:
            raise ConnectionError("unreachable")
        return {"version": 1, "list": base64.b64encode(self.blob).decode()}


class Holder:
    def __init__(self, n: int):
        self.n = n

    def close_revoked(self) -> int:
        return self.n


def _revoked_list(tmp_path: Path) -> tuple[Gate, bytes]:
    ca.init(tmp_path / "ca")
    ca.issue(tmp_path / "ca", "eve", "node", tmp_path / "eve")
    blob = ca.revoke(tmp_path / "ca", "eve")
    return Gate(ca.load(tmp_path / "ca").cert), blob


def test_a_higher_version_is_fetched_once_and_closes_revoked_connections(tmp_path):
    gate, blob = _revoked_list(tmp_path)
    rpc = FakeRpc(blob)
    sync = CrlSync(gate, rpc, tmp_path)
    holders = [Holder(2), Holder(1)]
    closed: list[int] = []
    sync.holders += holders
    gate.listeners.append(lambda: closed.append(sum(h.n for h in holders)))

    async def main() -> None:
        sync.seen(0, "addr-a")  # not newer than ours: nothing asked
        sync.seen(1, "addr-a")
        sync.seen(1, "addr-b")  # one fetch at a time
        for _ in range(20):
            await asyncio.sleep(0)
    asyncio.run(main())
    assert rpc.calls == [("addr-a", "trust", "crl")]
    assert gate.version == 1 and "node:eve" in gate.revoked
    assert (tmp_path / "revoked.list").read_bytes() == blob  # persisted for the next start
    assert closed == [3]


def test_a_failed_fetch_is_tried_again_at_the_next_sighting(tmp_path):
    gate, blob = _revoked_list(tmp_path)
    rpc = FakeRpc(None)
    sync = CrlSync(gate, rpc, tmp_path)

    async def main() -> None:
        sync.seen(1, "addr-a")
        for _ in range(5):
            await asyncio.sleep(0)
        rpc.blob = blob
        sync.seen(1, "addr-b")
        for _ in range(5):
            await asyncio.sleep(0)
    asyncio.run(main())
    assert [c[0] for c in rpc.calls] == ["addr-a", "addr-b"]
    assert gate.version == 1
