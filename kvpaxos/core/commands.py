"""Client commands and the values Paxos chooses for a slot.

A slot's value is a Batch: the commands the leader packed into it (possibly none,
which is a no-op) and the leader's clock reading, which the state machine uses
as cluster time for expiring exactly-once records and keys put with a time to live.
"""
from __future__ import annotations

from dataclasses import dataclass

PUT = "put"
DELETE = "delete"
REFRESH = "refresh"  # a new time to live for a key, its value and version kept (no change)
TXN = "txn"  # comparisons, then one list of writes or another, atomically (kvpaxos/core/txn.py)
DELETE_PREFIX = "delete_prefix"  # the first N keys (value: N) under a prefix (key), each a change
# Leases (kvpaxos/core/kvstate.py): key names the lease by its id, in decimal ("0": a new
# one, its id chosen where it is applied).
LEASE_GRANT = "lease_grant"  # a new lease of ttl_ms
LEASE_KEEPALIVE = "lease_keepalive"  # a lease's deadline moved to ttl_ms from now (its own ttl_ms)
LEASE_REVOKE = "lease_revoke"  # a lease ended now: its keys deleted, each a change
LEASE_OPS = (LEASE_GRANT, LEASE_KEEPALIVE, LEASE_REVOKE)
OPS = (PUT, DELETE, REFRESH, TXN, DELETE_PREFIX) + LEASE_OPS
DELETE_PREFIX_MAX = 10_000  # keys one delete_prefix command may delete, at most
LEASE_KEYS_MAX = 10_000  # keys one lease may hold: its expiry deletes them all in one slot
LEASE_ID_MAX = 2**63 - 1  # as etcd's (a signed 64-bit integer)

KEY_BYTES_MAX = 1024
VALUE_BYTES_MAX = 1024 * 1024
TTL_MS_MAX = 366 * 24 * 3600 * 1000  # a key's time to live: at most a year (and a day)


# Command and Result are never changed once made, and hash by value, but are not
# frozen: a frozen dataclass sets each field through object.__setattr__, which made
# creating one 7x dearer, and every node creates both for every write.
@dataclass(slots=True, unsafe_hash=True)
class Command:
    """One mutation. A put with if_value or if_version is a compare-and-set.

    cmd_id identifies this submission so the node that waits for it can match
    its result; (client_id, seq) make retries of one request apply once; part
    numbers the writes of one multi-operation request (they share client_id and
    seq, and are always placed in one slot, in order). A put with ttl_ms makes a key
    that the state machine deletes once the cluster clock has passed ttl_ms after
    the put was applied (kvpaxos/core/kvstate.py); a put without it, none that expires.
    A refresh (ttl_ms required, no value) gives an existing key a new deadline and
    changes nothing else: no revision, nothing for watches. A txn holds its
    comparisons and writes in `value` (kvpaxos/core/txn.py); its key names the
    first key it touches, for display. A delete_prefix deletes the first N keys
    (N in `value`, a decimal) that start with `key`, in key order; it carries no
    client id (deleting again what is left is the retry). A put with `lease` attaches
    its key to that lease (which must exist; no ttl_ms then): the key goes when the
    lease does. The lease commands name their lease in `key` (kvpaxos/core/kvstate.py).
    """

    op: str
    key: str
    value: str | None = None
    if_value: str | None = None
    if_version: int | None = None
    client_id: str | None = None
    seq: int = 0
    cmd_id: str = ""
    part: int = 0
    ttl_ms: int | None = None
    lease: int | None = None

    def size_bytes(self) -> int:
        return len(self.key) + (len(self.value) if self.value is not None else 0) + 64


@dataclass(frozen=True, slots=True)
class Batch:
    commands: tuple[Command, ...] = ()
    ts_ms: int = 0
    # The first fresh slot a new leader proposes (its barrier): applying it starts every
    # lease's ttl again, so that keepalives no leader could take do not cost a lease.
    lead: bool = False

    @property
    def is_noop(self) -> bool:
        return not self.commands


NOOP = Batch()


@dataclass(slots=True, unsafe_hash=True)
class Result:
    """The outcome of applying one command (computed at apply time, never at propose time)."""

    ok: bool
    error: str | None = None
    version: int = 0
    value: str | None = None
    # A transaction's: the compared keys' versions, and (ok, error, version) per write applied.
    detail: tuple | None = None
