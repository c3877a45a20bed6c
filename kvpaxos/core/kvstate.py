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
"""
from __future__ import annotations

import heapq
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable, Iterator

from kvpaxos.core import txn as txns
from kvpaxos.core.commands import DELETE, DELETE_PREFIX, DELETE_PREFIX_MAX, PUT, REFRESH, TXN, Batch, Command, Result
from kvpaxos.core.membership import Membership
from kvpaxos.core.sortedkeys import SortedKeys

SESSION_TTL_MS = 10 * 60 * 1000
EXPIRE_PER_SLOT = 250  # keys a slot deletes for their time to live, at most


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
        self.last_expired = 0  # keys the last slot applied deleted for their time to live
        # The changes each transaction or prefix delete of the slot being applied made, by
        # id(its command).
        self._emitted: dict[int, list[tuple[Command, Result]]] = {}

    def apply(self, slot: int, batch: Batch) -> list[tuple[Command, Result]]:
        assert slot == self.applied_slot + 1, f"slot {slot} applied out of order after {self.applied_slot}"
        self.applied_slot = slot
        self.cluster_ms = max(self.cluster_ms, batch.ts_ms)
        self._expire_sessions()
        expired: list[tuple[Command, Result]] = []
        if self._deadlines and self._deadlines[0][0] <= self.cluster_ms:
            expired = self._expire_keys()  # first: the slot's commands see the keys gone
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
        """The earliest deadline of a key with a time to live (cluster ms), or None."""
        heap, expiry = self._deadlines, self.expiry
        while heap and expiry.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)  # its key was put again, deleted or expired since
        return heap[0][0] if heap else None

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
            if cmd.op == REFRESH:
                if current is None:
                    return Result(False, "not_found")
                assert cmd.ttl_ms is not None, "a refresh without a time to live"
                self._set_expiry(cmd.key, cmd.ttl_ms)  # nothing else changes: no revision
                return Result(True, version=version)
            return Result(True)  # a membership command: kvpaxos/core/membership.py decides it
        if current is None and cmd.op == DELETE:
            return Result(False, "not_found")
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
            return Result(True, version=self.revision)
        self.revision += 1
        del self.data[cmd.key]
        self.keys.discard(cmd.key)
        if self.expiry:
            self.expiry.pop(cmd.key, None)
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
    if r.detail is not None:
        return [r.ok, r.error, r.version, txns.detail_to_wire(r.detail)]
    return [r.ok, r.error, r.version]


def result_from_wire(x: list) -> Result:
    if not isinstance(x, list) or len(x) not in (3, 4):
        raise ValueError(f"bad result record {x!r}")
    ok, error, version = x[:3]
    if type(ok) is not bool or (error is not None and type(error) is not str) or type(version) is not int:
        raise ValueError(f"bad result record {x!r}")
    return Result(ok, error, version, detail=txns.detail_from_wire(x[3]) if len(x) == 4 else None)


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
    for row in sessions:
        cid, seq, results, last_ms = row
        if type(cid) is not str or type(seq) is not int or type(last_ms) is not int:
            raise ValueError(f"bad session record {row!r}")
        state.sessions[cid] = Session(seq, [result_from_wire(r) for r in results], last_ms)
    return state
