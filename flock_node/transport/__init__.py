"""The only package that touches nng sockets.

- `base`: addresses (ipc, tcp, tls+tcp), the runtime dir's name locks, listening, `RpcError`.
- `bus`: Bus0 for heartbeats, departures and events (best effort, one hop, full mesh).
- `server`: `RpcServer`, Rep0 with one context per in-flight call, so a slow handler blocks
  nobody; repeated call ids (Req0 re-sends after a reconnect) get the first call's answer,
  kept within bounds (`AnswerCache`); an answer too big for a frame is answered `too_large`.
- `rpc`: `AsyncRpc` / `SyncRpc`, Req0 clients with deadlines; errors come back as `RpcError`.
- `pool`: the RPC clients' sockets, at most FLOCK_RPC_CONNECTIONS (64), least recently used
  closed first. `pipes`: closed pipes pynng keeps in a socket's list, swept out.
- `tls`: `tls+tcp://` endpoints with our certificate, each connection's gate (a flock identity,
  not revoked), and the verified identity that is the only sender its frames may name.
"""

from flock_node.transport.base import (
    BUS_BUFFER,
    RPC_CONTEXTS,
    AddressInUse,
    Handler,
    RpcError,
    cancel_and_wait,
    ipc_addresses,
    ipc_alive,
    ipc_path,
    lock_name,
    name_locked,
    rpc_for_bus,
    scan_runtime_dir,
    tcp_addresses,
)
from flock_node.transport.bus import Bus
from flock_node.transport.rpc import AsyncRpc, SyncRpc
from flock_node.transport.server import RERUN, AnswerCache, RpcServer
from flock_node.transport.tls import dial

__all__ = [
    "BUS_BUFFER", "RERUN", "RPC_CONTEXTS", "AddressInUse", "AnswerCache", "AsyncRpc", "Bus",
    "Handler", "RpcError", "RpcServer", "SyncRpc", "cancel_and_wait", "dial", "ipc_addresses",
    "ipc_alive", "ipc_path", "lock_name", "name_locked", "rpc_for_bus", "scan_runtime_dir",
    "tcp_addresses",
]
