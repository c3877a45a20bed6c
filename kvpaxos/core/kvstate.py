"""The replicated key-value state machine: deterministic, applied slot by slot.

Owns the map key -> (value, version), the revision counter (every change gets
the next revision, which becomes the key's version, so versions only grow, even
across delete and re-create), the cluster clock (the highest leader timestamp
seen in applied batches) and the exactly-once table.

Exactly-once rule: a command with a client id and sequence number n is applied
only if n is above the client's last applied number; a repeat of the last number
gets the recorded result again; an older one gets `stale_sequence`. The writes
of one multi-operation request share n and are told apart by their part
number; the table keeps the result of each part of the client's last request. A client's
record expires when the cluster clock passes its last use by session_ttl_ms
(10 minutes by default): all replicas expire it at the same slot because the
clock is part of the log.

Keys with a time to live: a put with ttl_ms gives its key a deadline, the cluster
clock at that slot plus ttl_ms (another put or a refresh replaces it; a put
without ttl_ms, or a delete, removes it). A slot whose clock reaches a key's deadline deletes the
key before its own commands, as a change of its own (the next revision, a delete
that watches see). Every replica does so at the same slot, for the same reason.
The leader proposes an empty slot when a deadline has passed by its clock and
no other slot is on its way (Replica.nudge_clock), so keys expire when no one
writes too.

Leases (as etcd's): a grant makes a lease with a time to live and an id (the one
asked for, or one above every id granted before); its deadline is the slot's clock
plus the ttl, and each keepalive moves it to the keepalive's slot clock plus the
ttl. A put with a lease attaches its key to it (a key has one lease at most, and
then no ttl of its own; a put without the lease, or a delete, detaches it). When
the clock reaches the deadline, or on a revoke, the lease ends: all its keys are
deleted in that one slot, each a change of its own (so a lease holds at most
LEASE_KEYS_MAX keys), and its id is never granted again. One lease's keepalive is
one log entry however many keys it holds: that is what leases are for, beside a
ttl per key. A new leader's first slot (Batch.lead) starts every lease's ttl again,
as a keepalive of each would: keepalives sent while there was no leader could not
be applied, and must not cost the lease (keys with a ttl of their own get no such
grace).
"""
from __future__ import annotations

import heapq
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable, Iterator

from kvpaxos.core import txn as txns
from kvpaxos.core.commands import (DELETE, DELETE_PREFIX, DELETE_PREFIX_MAX, LEASE_GRANT, LEASE_ID_MAX, LEASE_KEEPALIVE,
                                   LEASE_KEYS_MAX, LEASE_OPS, LEASE_REVOKE, PUT, REFRESH, TXN, Batch, Command, Result)
from kvpaxos.core.membership import Membership
from kvpaxos.core.sortedkeys import SortedKeys

SESSION_TTL_MS = 10 * 60 * 1000
EXPIRE_PER_SLOT = 250  # keys a slot deletes for their time to live, at most


@dataclass
class Lease:
    ttl_ms: int
    deadline: int  # cluster ms
    keys: set[str]


@dataclass
class Session:
    seq: int
    results: list[Result]  # one per part of the request `seq`, in part order
    last_ms: int


class KVState:
    def __init__(self, session_ttl_ms: int = SESSION_TTL_MS) -> None:
        self.data: dict[str, tuple[str, int]] = {}
        self.keys = SortedKeys()  # data's keys in order, for scans (kvpaxos/core/sortedkeys.py)
        # While an Export is open: the value each key changed since had when it began
        # (None: it had none), recorded before the change (see Export).
        self._before: dict[str, tuple[str, int] | None] | None = None
        # ... and the row each exactly-once record had before its first change or expiry.
        self._sessions_before: dict[str, list] | None = None
        self.revision = 0
        self.applied_slot = 0
        self.cluster_ms = 0
        self.session_ttl_ms = session_ttl_ms
        self.sessions: OrderedDict[str, Session] = OrderedDict()
        # key -> its deadline (cluster ms), for the keys put with a time to live; and the
        # deadlines in a heap, where an entry whose key no longer has it is passed over.
        self.expiry: dict[str, int] = {}
        self._deadlines: list[tuple[int, str]] = []
        # The cluster configuration as of applied_slot: the runtime keeps it here (the
        # replica computes it) so that a snapshot holds it with the data.
        self.membership: Membership | None = None
        # Leases by id; the lease of each key put with one; the deadlines in a heap (an entry
        # whose lease has another deadline now, or has ended, is passed over); the highest id
        # ever granted (kept in snapshots: no id is granted twice).
        self.leases: dict[int, Lease] = {}
        self.key_lease: dict[str, int] = {}
        self._lease_deadlines: list[tuple[int, int]] = []
        self.lease_last = 0
        self.last_expired = 0  # keys the last slot applied deleted for their time to live or lease
        self.last_leases_expired = 0  # leases whose time ran out at the last slot applied
        # The changes each transaction or prefix delete of the slot being applied made, by
        # id(its command).
        self._emitted: dict[int, list[tuple[Command, Result]]] = {}

    def apply(self, slot: int, batch: Batch) -> list[tuple[Command, Result]]:
        assert slot == self.applied_slot + 1, f"slot {slot} applied out of order after {self.applied_slot}"
        self.applied_slot = slot
        self.cluster_ms = max(self.cluster_ms, batch.ts_ms)
        if batch.lead and self.leases:
            self._renew_leases()  # before any ends: a new leader's first slot
        self._expire_sessions()
        expired: list[tuple[Command, Result]] = []
        if self._deadlines and self._deadlines[0][0] <= self.cluster_ms:
            expired = self._expire_keys()  # first: the slot's commands see the keys gone
        self.last_leases_expired = 0
        if self._lease_deadlines and self._lease_deadlines[0][0] <= self.cluster_ms:
            expired += self._expire_leases()
        self.last_expired = len(expired)
        applied = [(cmd, self._apply_once(cmd)) for cmd in batch.commands]
        if self._emitted:
            applied = self._with_emitted(applied)
        return expired + applied if expired else applied

    def _with_emitted(self, applied: list[tuple[Command, Result]]) -> list[tuple[Command, Result]]:
        """Each transaction's or prefix delete's changes, each reported as its own put or
        delete (without a client), just before the command's result: the changes in
        revision order."""
        out = []
        for pair in applied:
            out += self._emitted.pop(id(pair[0]), ())
            out.append(pair)
        self._emitted.clear()
        return out

    def next_deadline(self) -> int | None:
        """The earliest deadline of a key with a time to live or of a lease (cluster ms),
        or None."""
        heap, expiry = self._deadlines, self.expiry
        while heap and expiry.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)  # its key was put again, deleted or expired since
        key_deadline = heap[0][0] if heap else None
        lease_deadline = self._next_lease_deadline()
        if lease_deadline is None or (key_deadline is not None and key_deadline <= lease_deadline):
            return key_deadline
        return lease_deadline

    def _next_lease_deadline(self) -> int | None:
        heap, leases = self._lease_deadlines, self.leases
        while heap and (heap[0][1] not in leases or leases[heap[0][1]].deadline != heap[0][0]):
            heapq.heappop(heap)  # kept alive since, or ended
        return heap[0][0] if heap else None

    def lease_left_ms(self, lease_id: int, now_ms: int) -> int | None:
        """How long until the lease ends by a clock reading now_ms (0: due), or None if
        there is no such lease."""
        lease = self.leases.get(lease_id)
        return None if lease is None else max(0, lease.deadline - now_ms)

    def ttl_left_ms(self, key: str, now_ms: int) -> int | None:
        """How long until key expires by a clock reading now_ms (0: due), or None if it
        has no time to live."""
        deadline = self.expiry.get(key)
        return None if deadline is None else max(0, deadline - now_ms)

    def _expire_keys(self) -> list[tuple[Command, Result]]:
        """Delete the keys whose deadline the clock has reached, in deadline order (then
        key order), at most EXPIRE_PER_SLOT of them (the rest go with the next slots,
        which the leader proposes one after another while keys are due: many keys given
        one deadline must not hold every node's event loop in one slot):
        each a change of its own, reported as a delete without a client."""
        heap, expiry, out = self._deadlines, self.expiry, []
        while heap and heap[0][0] <= self.cluster_ms and len(out) < EXPIRE_PER_SLOT:
            deadline, key = heapq.heappop(heap)
            if expiry.get(key) == deadline:
                cmd = Command(DELETE, key)
                out.append((cmd, self._execute(cmd)))
        return out

    def _expire_leases(self) -> list[tuple[Command, Result]]:
        """End the leases whose deadline the clock has reached, in deadline order (then id
        order), each with all its keys; after the first, only while the slot has deleted
        fewer than EXPIRE_PER_SLOT keys and leases (the rest go with the next slots)."""
        heap, leases, out, cost = self._lease_deadlines, self.leases, [], 0
        while heap and heap[0][0] <= self.cluster_ms and cost < EXPIRE_PER_SLOT:
            deadline, lease_id = heapq.heappop(heap)
            lease = leases.get(lease_id)
            if lease is not None and lease.deadline == deadline:
                ended = self._end_lease(lease_id)
                out += ended
                cost += 1 + len(ended)
                self.last_leases_expired += 1
        return out

    def _renew_leases(self) -> None:
        """Start every lease's ttl again from the clock now (never shortening one): a new
        leader's first slot does, as etcd's new leader does, so that the keepalives no
        leader could apply meanwhile (an election, a lost majority) do not end a lease."""
        for lease in self.leases.values():
            lease.deadline = max(lease.deadline, self.cluster_ms + lease.ttl_ms)
        self._lease_deadlines = [(lease.deadline, i) for i, lease in self.leases.items()]
        heapq.heapify(self._lease_deadlines)

    def _end_lease(self, lease_id: int) -> list[tuple[Command, Result]]:
        """Delete the lease's keys in key order, each a change of its own, and the lease."""
        out = []
        for key in sorted(self.leases[lease_id].keys):
            cmd = Command(DELETE, key)
            out.append((cmd, self._execute(cmd)))  # detaches the key too
        del self.leases[lease_id]
        return out

    def _push_lease_deadline(self, lease_id: int, deadline: int) -> None:
        heap = self._lease_deadlines
        if len(heap) > 2 * len(self.leases) + 64:  # leases kept alive again and again: rebuild
            heap[:] = [(lease.deadline, i) for i, lease in self.leases.items()]
            heapq.heapify(heap)
        else:
            heapq.heappush(heap, (deadline, lease_id))

    def _lease_command(self, cmd: Command) -> Result:
        lease_id = int(cmd.key)
        if cmd.op == LEASE_GRANT:
            assert cmd.ttl_ms is not None, "a lease granted without a time to live"
            if lease_id == 0:
                lease_id = self.lease_last + 1  # above every id granted: never one granted before
                if lease_id > LEASE_ID_MAX:
                    return Result(False, "lease_ids_exhausted")
            elif lease_id <= self.lease_last:  # every lease there is, or was, has an id up to lease_last
                return Result(False, "lease_exists")  # an id names one lease only
            self.lease_last = lease_id
            deadline = self.cluster_ms + cmd.ttl_ms
            self.leases[lease_id] = Lease(cmd.ttl_ms, deadline, set())
            self._push_lease_deadline(lease_id, deadline)
            return Result(True, version=self.revision, value=str(lease_id))
        lease = self.leases.get(lease_id)
        if lease is None:
            return Result(False, "lease_not_found")
        if cmd.op == LEASE_KEEPALIVE:
            lease.deadline = self.cluster_ms + lease.ttl_ms  # nothing else changes: no revision
            self._push_lease_deadline(lease_id, lease.deadline)
            return Result(True, version=self.revision, value=str(lease.ttl_ms))
        assert cmd.op == LEASE_REVOKE
        ended = self._end_lease(lease_id)
        if ended:
            self._emitted[id(cmd)] = ended
        return Result(True, version=self.revision, value=str(len(ended)))

    def _attach(self, key: str, lease_id: int | None) -> None:
        """Move key to lease_id (None: to no lease), from the lease it had, if any."""
        old = self.key_lease.get(key)
        if old == lease_id:
            return
        if old is not None:
            self.leases[old].keys.discard(key)
            del self.key_lease[key]
        if lease_id is not None:
            self.leases[lease_id].keys.add(key)
            self.key_lease[key] = lease_id

    def _set_expiry(self, key: str, ttl_ms: int | None) -> None:
        expiry = self.expiry
        if ttl_ms is None:
            del expiry[key]
            return
        deadline = expiry[key] = self.cluster_ms + ttl_ms
        heap = self._deadlines
        if len(heap) > 2 * len(expiry) + 64:  # keys put again and again: rebuild, O(1) a put amortised
            heap[:] = [(d, k) for k, d in expiry.items()]
            heapq.heapify(heap)
        else:
            heapq.heappush(heap, (deadline, key))

    def get(self, key: str) -> tuple[str, int] | None:
        return self.data.get(key)

    def scan(self, prefix: str, limit: int, after: str | None = None, max_chars: int | None = None,
             keys_only: bool = False) -> tuple[list[tuple[str, str, int]], bool]:
        """Up to `limit` keys that start with prefix (and come after `after`, if given), in
        key order, with their values and versions; and whether there are more. With
        max_chars, the page also ends before an entry that would take its keys and values
        (only its keys, keys_only) past that many characters (it holds one entry at the
        least)."""
        data, items, chars = self.data, [], 0
        for key in self.keys.with_prefix(prefix, after):
            value, version = data[key]
            chars += len(key) if keys_only else len(key) + len(value)
            if len(items) == limit or (max_chars is not None and chars > max_chars and items):
                return items, True
            items.append((key, value, version))
        return items, False

    def _apply_once(self, cmd: Command) -> Result:
        if cmd.client_id is None:
            return self._execute(cmd)
        session = self.sessions.get(cmd.client_id)
        if session is not None and self._sessions_before is not None:
            self._remember_session(cmd.client_id, session)
        if session is not None and cmd.seq < session.seq:
            return Result(False, "stale_sequence")
        if session is not None and cmd.seq == session.seq:
            if cmd.part < len(session.results):
                return session.results[cmd.part]
            if cmd.part > len(session.results):
                return Result(False, "stale_sequence")  # an earlier part is missing
            result = self._execute(cmd)
            session.results.append(result)
        else:
            if cmd.part != 0:
                return Result(False, "stale_sequence")
            result = self._execute(cmd)
            if session is None:
                session = self.sessions[cmd.client_id] = Session(cmd.seq, [result], self.cluster_ms)
            else:  # the client's next request: its record moves on
                session.seq, session.results = cmd.seq, [result]
        session.last_ms = self.cluster_ms
        self.sessions.move_to_end(cmd.client_id)
        return result

    def _remember_session(self, client_id: str, session: Session) -> None:
        before = self._sessions_before
        if before is not None and client_id not in before:
            before[client_id] = session_row(client_id, session)  # first (see Export)

    def _expire_sessions(self) -> None:
        horizon = self.cluster_ms - self.session_ttl_ms
        while self.sessions:
            client_id, session = next(iter(self.sessions.items()))
            if session.last_ms >= horizon:
                break
            if self._sessions_before is not None:
                self._remember_session(client_id, session)
            del self.sessions[client_id]

    def _execute(self, cmd: Command) -> Result:
        current = self.data.get(cmd.key)
        version = current[1] if current else 0
        if cmd.if_version is not None and cmd.if_version != version:
            return Result(False, "precondition_failed", version=version)
        if cmd.if_value is not None and (current is None or current[0] != cmd.if_value):
            return Result(False, "precondition_failed", version=version)
        if cmd.op != PUT and cmd.op != DELETE:
            if cmd.op == TXN:
                return self._transact(cmd)
            if cmd.op == DELETE_PREFIX:
                return self._delete_prefix(cmd)
            if cmd.op in LEASE_OPS:
                return self._lease_command(cmd)
            if cmd.op == REFRESH:
                if current is None:
                    return Result(False, "not_found")
                if cmd.key in self.key_lease:
                    return Result(False, "key_has_lease", version=version)  # it goes with its lease
                assert cmd.ttl_ms is not None, "a refresh without a time to live"
                self._set_expiry(cmd.key, cmd.ttl_ms)  # nothing else changes: no revision
                return Result(True, version=version)
            return Result(True)  # a membership command: kvpaxos/core/membership.py decides it
        if current is None and cmd.op == DELETE:
            return Result(False, "not_found")
        if cmd.lease is not None:
            lease = self.leases.get(cmd.lease)
            if lease is None:
                return Result(False, "lease_not_found", version=version)
            if len(lease.keys) >= LEASE_KEYS_MAX and cmd.key not in lease.keys:
                return Result(False, "lease_full", version=version)
        before = self._before
        if before is not None and cmd.key not in before:
            before[cmd.key] = current  # first, for an Export's reader (see Export.rows)
        if cmd.op == PUT:
            assert cmd.value is not None
            self.revision += 1
            self.data[cmd.key] = (cmd.value, self.revision)
            if current is None:
                self.keys.add(cmd.key)
            if cmd.ttl_ms is not None or (self.expiry and cmd.key in self.expiry):
                self._set_expiry(cmd.key, cmd.ttl_ms)
            if cmd.lease is not None or self.key_lease:
                self._attach(cmd.key, cmd.lease)
            return Result(True, version=self.revision)
        self.revision += 1
        del self.data[cmd.key]
        self.keys.discard(cmd.key)
        if self.expiry:
            self.expiry.pop(cmd.key, None)
        if self.key_lease:
            self._attach(cmd.key, None)
        return Result(True, version=self.revision)

    def _transact(self, cmd: Command) -> Result:
        """Compare, then apply one branch of writes, in this one step (kvpaxos/core/txn.py)."""
        txn = txns.decode(cmd.value)
        if txn is None:
            return Result(False, "bad_txn")
        ok, compared = txn.holds(self.data)
        changes, results, room = [], [], txns.GETS_CHARS_MAX
        for write in txn.then if ok else txn.otherwise:
            if write.op == txns.GET:
                current = self.data.get(write.key)
                if current is None:
                    results.append((False, "not_found", 0, None))
                elif len(current[0]) > room:
                    results.append((False, "answer_too_large", current[1], None))
                else:
                    room -= len(current[0])
                    results.append((True, None, current[1], current[0]))
                continue
            result = self._execute(write)
            results.append((result.ok, result.error, result.version))
            if result.ok:
                changes.append((write, result))
        if changes:
            self._emitted[id(cmd)] = changes
        return Result(ok, None if ok else "compare_failed", self.revision, detail=(compared, tuple(results)))

    def _delete_prefix(self, cmd: Command) -> Result:
        """Delete the first N keys under the prefix `cmd.key`, in key order (N: cmd.value);
        Result.value is how many, Result.error "more" when keys are left under it."""
        limit = int(cmd.value) if cmd.value is not None and cmd.value.isascii() and cmd.value.isdigit() else 0
        if cmd.client_id is not None or not 0 < limit <= DELETE_PREFIX_MAX:
            return Result(False, "bad_command")  # the codec lets neither through
        keys, more = [], False
        for key in self.keys.with_prefix(cmd.key):  # listed first: deleting changes the index
            if len(keys) == limit:
                more = True
                break
            keys.append(key)
        changes = []
        for key in keys:
            delete = Command(DELETE, key)
            changes.append((delete, self._execute(delete)))
        if changes:
            self._emitted[id(cmd)] = changes
        return Result(True, "more" if more else None, self.revision, value=str(len(keys)))


def session_row(client_id: str, s: Session) -> list:
    return [client_id, s.seq, [result_to_wire(r) for r in s.results], s.last_ms]


def result_to_wire(r: Result) -> list:
    """[ok, error, version], then a transaction's detail (or null) and the value (a lease
    command's: the lease's id, ttl or keys deleted) where there is one."""
    if r.value is not None:
        return [r.ok, r.error, r.version, None if r.detail is None else txns.detail_to_wire(r.detail), r.value]
    if r.detail is not None:
        return [r.ok, r.error, r.version, txns.detail_to_wire(r.detail)]
    return [r.ok, r.error, r.version]


def result_from_wire(x: list) -> Result:
    if not isinstance(x, list) or len(x) not in (3, 4, 5):
        raise ValueError(f"bad result record {x!r}")
    ok, error, version = x[:3]
    if type(ok) is not bool or (error is not None and type(error) is not str) or type(version) is not int:
        raise ValueError(f"bad result record {x!r}")
    value = x[4] if len(x) == 5 else None
    if value is not None and type(value) is not str:
        raise ValueError(f"bad result record {x!r}")
    detail = x[3] if len(x) >= 4 else None
    return Result(ok, error, version, value=value, detail=None if detail is None else txns.detail_from_wire(detail))


_UNSET = object()


def _as_exported(live, before: dict, key: str):  # noqa: ANN001, ANN202 - a value or a record's row
    """What an Export holds for key: the entry read live, unless a record of what it was
    is found AFTER that read (see Export), which wins."""
    old = before.get(key, _UNSET)
    value = live if old is _UNSET else old
    assert value is not None, f"{key!r} of the export has no entry"
    return value


class Export:
    """The state as of one applied slot, readable on another thread (a snapshot's
    writer) while the event loop goes on applying slots: the header, rows() for the
    keys in key order, session_rows() for the exactly-once records in their order
    (which decides expiry: it must be kept). close() when done with it.

    Nothing big is copied (a shallow copy of a million keys held the event loop for
    30-120 ms, the rows of 100,000 exactly-once records 200-330 ms). The key index
    freezes its chunks (SortedKeys.freeze) and the records' ids are listed; while
    the export is open the state records, before it changes a key or an
    exactly-once record for the first time (or expires one), what it was
    (KVState._before, _sessions_before). A reader reads the live entry and THEN
    looks for a recorded one, which wins: the loop records before it changes
    anything, and the GIL orders the two threads' steps, so whatever the reader read
    after a change, it finds the record. While one export is open, another is a
    plain copy (rare: a write cancelled at shutdown).
    """

    def __init__(self, state: KVState) -> None:
        self.header = {"slot": state.applied_slot, "revision": state.revision, "keys": len(state.data),
                       "cluster_ms": state.cluster_ms, "session_ttl_ms": state.session_ttl_ms}
        if state.membership is not None:
            self.header["membership"] = state.membership.to_json()
        if state.expiry:
            # Copied whole (a C-speed dict copy; the keys with a time to live are few
            # beside the map): what the deadlines were at this slot.
            self.header["expiry"] = dict(state.expiry)
        if state.lease_last:
            # Likewise copied whole: each lease with its keys (sorted: a snapshot is the
            # same text on every replica), and the highest id granted.
            self.header["lease_last"] = state.lease_last
            self.header["leases"] = [[i, lease.ttl_ms, lease.deadline, sorted(lease.keys)]
                                     for i, lease in sorted(state.leases.items())]
        self._state = state
        self._data: dict[str, tuple[str, int]] = state.data
        self._sessions: dict[str, Session] = state.sessions
        self._session_ids = list(state.sessions)
        self.session_count = len(self._session_ids)
        self._before: dict = {}
        self._sessions_before: dict = {}
        self._open = state._before is None and state._sessions_before is None and not state.keys.frozen
        if self._open:
            self._chunks = state.keys.freeze()
            state._before, state._sessions_before = self._before, self._sessions_before
        else:
            self._data = dict(state.data)
            self._chunks = [sorted(self._data)]
            self._sessions_before = {cid: session_row(cid, s) for cid, s in state.sessions.items()}

    def rows(self) -> Iterator[tuple[str, str, int]]:
        data, before = self._data, self._before
        for chunk in self._chunks:
            for key in chunk:
                value = _as_exported(data.get(key), before, key)
                yield key, value[0], value[1]

    def session_rows(self) -> Iterator[list]:
        sessions, before = self._sessions, self._sessions_before
        for cid in self._session_ids:
            session = sessions.get(cid)
            yield _as_exported(session_row(cid, session) if session is not None else None, before, cid)

    def close(self) -> None:
        """Stop recording (callable from the reader's thread)."""
        if self._open:
            self._open = False
            state = self._state
            if state._before is self._before:
                state._before = None
            if state._sessions_before is self._sessions_before:
                state._sessions_before = None
            state.keys.thaw()


def _import_leases(state: KVState, header: dict) -> None:
    last, leases = header.get("lease_last", 0), header.get("leases") or []
    if type(last) is not int or not 0 <= last <= LEASE_ID_MAX or not isinstance(leases, list):
        raise ValueError("bad lease records")
    state.lease_last = last
    for row in leases:
        if not (isinstance(row, list) and len(row) == 4 and all(type(x) is int for x in row[:3])
                and 0 < row[0] <= last and row[0] not in state.leases and row[1] > 0 and isinstance(row[3], list)
                and len(row[3]) <= LEASE_KEYS_MAX):
            raise ValueError(f"bad lease record {row!r}")
        lease_id, ttl_ms, deadline, keys = row
        for k in keys:
            if type(k) is not str or k not in state.data or k in state.key_lease or k in state.expiry:
                raise ValueError(f"bad lease record: key {k!r} of lease {lease_id}")
            state.key_lease[k] = lease_id
        state.leases[lease_id] = Lease(ttl_ms, deadline, set(keys))
    state._lease_deadlines = [(lease.deadline, i) for i, lease in state.leases.items()]
    heapq.heapify(state._lease_deadlines)


def import_rows(header: dict, keys: Iterable[list], sessions: Iterable[list]) -> KVState:
    """Rebuild a state from a snapshot's header, key rows and session rows (an Export's);
    raises ValueError on anything malformed."""
    state = KVState(int(header.get("session_ttl_ms", SESSION_TTL_MS)))
    state.applied_slot = int(header["slot"])
    state.revision = int(header["revision"])
    state.cluster_ms = int(header["cluster_ms"])
    if header.get("membership") is not None:
        state.membership = Membership.from_json(header["membership"])
    for row in keys:
        k, v, ver = row
        if type(k) is not str or type(v) is not str or type(ver) is not int:
            raise ValueError(f"bad key record {row!r}")
        state.data[k] = (v, ver)
    state.keys = SortedKeys(state.data)
    expiry = header.get("expiry") or {}
    if not isinstance(expiry, dict):
        raise ValueError("bad expiry record")
    for k, deadline in expiry.items():
        if k not in state.data or type(deadline) is not int:
            raise ValueError(f"bad expiry record for {k!r}")
    state.expiry = dict(expiry)
    state._deadlines = [(d, k) for k, d in expiry.items()]
    heapq.heapify(state._deadlines)
    _import_leases(state, header)
    for row in sessions:
        cid, seq, results, last_ms = row
        if type(cid) is not str or type(seq) is not int or type(last_ms) is not int:
            raise ValueError(f"bad session record {row!r}")
        state.sessions[cid] = Session(seq, [result_from_wire(r) for r in results], last_ms)
    return state
