"""kvpaxos: a replicated, linearizable key-value store on Multi-Paxos.

    from kvpaxos import Client, AsyncClient

The clients are imported on first use, so `import kvpaxos` stays cheap for the
node and the command line.
"""
from __future__ import annotations

from typing import Any

__all__ = ["Client", "AsyncClient", "KvError", "NotFound", "PreconditionFailed", "Unavailable",
           "OutcomeUnknown", "BadRequest", "Conflict", "Compacted", "Entry", "Event", "TxnResult", "LeaseInfo",
           "LockTimeout", "LockTooSlow", "Lease", "AsyncLease"]


def __getattr__(name: str) -> Any:
    if name == "AsyncClient":
        from kvpaxos.aioclient import AsyncClient
        return AsyncClient
    if name in ("LockTimeout", "LockTooSlow"):
        from kvpaxos import lock
        return getattr(lock, name)
    if name in ("Lease", "AsyncLease"):
        from kvpaxos import lease
        return getattr(lease, name)
    if name in __all__:
        from kvpaxos import client
        return getattr(client, name)
    raise AttributeError(f"module 'kvpaxos' has no attribute {name!r}")
