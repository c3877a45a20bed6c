"""Acceptor state in one SQLite file, through sqlitedict, encoded as JSON.

Layout: one table `paxos` with text keys, so one connection and one transaction
cover every kind of record (sqlitedict gives each table its own connection):
  "meta"          {"format": 1, "node_id": N, "rebuilding": R or null}
  "genesis"       the membership the log starts from (kvpaxos/core/membership.py)
  "promised"      [round, node]
  "a/<slot:012>"  [[round, node], batch]   an accepted value
  "c/<slot:012>"  batch                    a chosen value this node learned, or
                  {"b": [round, node]}     "the value of my a/ record if it has this
                                           ballot": most chosen values are ones this
                                           node accepted, and need not be written twice

Durability: sqlitedict opens its connection with PRAGMA synchronous=OFF. We
switch that connection to WAL with synchronous=FULL before any write, and read
it back (describe() reports it, and the node serves it in /v1/status), because
an acceptor that answers before its write is on disk can break Paxos safety.

The connection is in autocommit mode: every statement is its own transaction,
committed and fsynced before sqlitedict's thread takes the next one. A group
commit is one multi-row REPLACE (several only past _ROWS_PER_STATEMENT rows,
the promise in the first), whose completion notice comes from that same
request: one hand-off to the writer thread per group, not one for the rows and
one for a COMMIT.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from contextlib import closing
from typing import Callable

from sqlitedict import _REQUEST_COMMIT, SqliteDict

from kvpaxos.core.ballot import Ballot
from kvpaxos.core.commands import Batch
from kvpaxos.core.codec import (WireError, ballot_from_wire, ballot_json, ballot_to_wire, batch_from_wire,
                                batch_json, compact_json)
from storage.base import DurableState, Pacer, StorageError, Writes

FORMAT = 1
FILE_NAME = "acceptor.sqlite"
# How many slots' last written acceptances submit() remembers, to write their chosen
# records as references ({"b": ballot}); an older slot's chosen record is written in full.
ACCEPTS_REMEMBERED = 1024
COMPACT_STEP_S = 0.005  # compaction deletes in steps of about this long (see compact)
COMPACT_REST_RATIO = 3.0  # and rests this many times as long after each
_ROWS_PER_STATEMENT = 16_000  # two bound parameters a row; SQLite allows 32,766
_SYNC_NAMES = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


_encode = compact_json  # records as compact JSON text


class _Notice:
    """Stands in for sqlitedict's response queue: put() means "the statement ran" (and,
    in autocommit mode, its transaction is committed), or that it failed: sqlitedict
    reports the end of a statement either way, so the receiver must call check()."""

    def __init__(self, on_durable: Callable[[], None], pending: set) -> None:
        self.on_durable = on_durable
        self.pending = pending
        pending.add(self)  # sqlitedict keeps only a weak reference to it

    def put(self, _item: object) -> None:
        self.pending.discard(self)
        self.on_durable()


class SqliteStorage:
    def __init__(self, data_dir: str, node_id: int) -> None:
        os.makedirs(data_dir, exist_ok=True)
        self.path = os.path.join(data_dir, FILE_NAME)
        self.node_id = node_id
        self._notices: set[_Notice] = set()
        # slot -> the (ballot, value) of its a/ record most recently queued; see submit
        self._accepts: dict[int, tuple[Ballot, Batch]] = {}
        self._compacted_through = 0  # set by compact (disk thread), read by submit
        self._rest: Callable[[float], None] = time.sleep  # between compaction steps
        # Slots per compaction step, kept from one compaction to the next: a slot holds one
        # command or a 4 MiB batch.
        self._pacer = Pacer(COMPACT_STEP_S, most=65_536)
        self._check_integrity()
        try:
            self.db = SqliteDict(self.path, tablename="paxos", journal_mode="WAL", autocommit=True,
                                 encode=_encode, decode=json.loads, outer_stack=False)
            self.db.conn.execute("PRAGMA synchronous=FULL")
            # Many builds (Debian's among them) default to secure_delete=ON, which
            # overwrites every freed page with zeros: compacting behind a snapshot then
            # wrote (and fsynced) every deleted batch again, 3x slower, and the other
            # nodes' fsyncs on the same disk waited too. Deleted log records are no secret
            # from anyone who can read this file: its snapshot holds the same data.
            self.db.conn.execute("PRAGMA secure_delete=OFF")
            self.db.conn.commit()
        except (RuntimeError, sqlite3.Error) as e:
            raise StorageError(f"cannot open {self.path}: {e}") from e
        try:
            if self.synchronous() != "FULL":
                raise StorageError(f"{self.path}: SQLite refused synchronous=FULL")
            self._check_meta()
        except BaseException:
            self.db.close()  # do not leave the connection and its thread behind
            raise

    def _check_integrity(self) -> None:
        if not os.path.exists(self.path):
            return
        try:
            with closing(sqlite3.connect(self.path)) as conn:
                conn.text_factory = bytes
                verdict = conn.execute("PRAGMA quick_check").fetchone()[0].decode("utf-8", "replace")
                if verdict == "ok":
                    self._check_text(conn)
        except (sqlite3.Error, UnicodeDecodeError) as e:  # garbage can reach an error message
            raise StorageError(f"{self.path} is not a readable SQLite database: {e}") from e
        if verdict != "ok":
            raise StorageError(f"{self.path} is damaged ({verdict}); refusing to start")

    def _check_text(self, conn: sqlite3.Connection) -> None:
        """Every stored key and value must be UTF-8: sqlitedict's reader thread dies on
        one that is not, and its caller then waits forever (quick_check does not look)."""
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='paxos'").fetchone() is None:
            return
        for row in conn.execute('SELECT key, value FROM "paxos"'):
            for cell in row:
                if isinstance(cell, bytes):
                    try:
                        cell.decode("utf-8")
                    except UnicodeDecodeError as e:
                        raise StorageError(f"{self.path} is damaged (a record is not UTF-8 text: {e}); "
                                           "refusing to start") from e

    def _check_meta(self) -> None:
        try:
            meta = self.db.get("meta")
        except ValueError as e:
            raise StorageError(f"{self.path} is damaged (the meta record does not decode: {e}); "
                               "refusing to start") from e
        if meta is None:
            self.db["meta"] = {"format": FORMAT, "node_id": self.node_id}
            self.db.commit()
        elif not isinstance(meta, dict):
            raise StorageError(f"{self.path} is damaged (bad meta record {meta!r}); refusing to start")
        elif meta.get("node_id") != self.node_id or meta.get("format") != FORMAT:
            raise StorageError(f"{self.path} belongs to node {meta.get('node_id')} "
                               f"(format {meta.get('format')}), not node {self.node_id}")

    def synchronous(self) -> str:
        row = self.db.conn.select_one("PRAGMA synchronous")
        return _SYNC_NAMES.get(row[0], str(row[0])) if row else "unknown"

    def load(self) -> DurableState:
        state = DurableState()
        same_as_accepted: dict[int, Ballot] = {}
        try:
            for key, value in self.db.items():  # in row order, not key order
                if key == "promised":
                    state.promised = ballot_from_wire(value)
                elif key.startswith("a/"):
                    state.accepted[int(key[2:])] = (ballot_from_wire(value[0]), batch_from_wire(value[1]))
                elif key.startswith("c/"):
                    if isinstance(value, dict) and "b" in value:
                        same_as_accepted[int(key[2:])] = ballot_from_wire(value["b"])
                    else:
                        state.chosen[int(key[2:])] = batch_from_wire(value)
        except (WireError, ValueError, TypeError, IndexError, sqlite3.Error) as e:
            raise StorageError(f"{self.path} holds a record that does not decode: {e}") from e
        for slot, ballot in same_as_accepted.items():
            accepted = state.accepted.get(slot)
            # A later acceptance of the slot (by a new leader, of the same chosen value)
            # replaced the record this one names: the chosen record is only a shortcut,
            # so it is dropped and the node learns the slot again from its peers.
            if accepted is not None and accepted[0] == ballot:
                state.chosen[slot] = accepted[1]
        return state

    def save(self, writes: Writes) -> None:
        """Write and fsync in one transaction; blocks until durable."""
        done = threading.Event()
        self.submit(writes, done.set)
        done.wait()
        self.db.conn.check_raise_error()

    def submit(self, writes: Writes, on_durable: Callable[[], None]) -> None:
        """Queue the writes on sqlitedict's thread without waiting.

        on_durable() is called from that thread once the statements have run:
        committed and fsynced, or failed, so call check() before trusting it. The
        event loop calls this directly: queueing costs no I/O, and the completion
        comes back without a second thread hop (sqlitedict hands a statement's
        "no more rows" to any object with put()).

        Each statement commits by itself. Past _ROWS_PER_STATEMENT rows a group
        takes several, in order, the promise in the first: a crash between them
        leaves some of its records durable and none reported, as if the node had
        stopped after handling fewer messages, and never an acceptance without
        the promise it implies.
        """
        rows: list[tuple[str, str]] = []
        if writes.promised is not None:
            rows.append(("promised", _encode(ballot_to_wire(writes.promised))))
        accepts = self._accepts
        while accepts and next(iter(accepts)) <= self._compacted_through:
            del accepts[next(iter(accepts))]  # slots a snapshot holds: let their values go
        for slot, (ballot, value) in writes.accepted.items():
            rows.append((f"a/{slot:012d}", f"[{ballot_json(ballot)},{batch_json(value)}]"))
            accepts.pop(slot, None)
            accepts[slot] = (ballot, value)  # newest last: the oldest go first below
        while len(accepts) > ACCEPTS_REMEMBERED:
            del accepts[next(iter(accepts))]
        for slot, value in writes.chosen.items():
            # The a/ record this names is queued before this row on the same serial
            # writer, so it is durable no later than this reference to it.
            accepted = accepts.pop(slot, None)
            if accepted is not None and (accepted[1] is value or accepted[1] == value):
                rows.append((f"c/{slot:012d}", f'{{"b":{ballot_json(accepted[0])}}}'))
            else:
                rows.append((f"c/{slot:012d}", batch_json(value)))
        # One multi-row statement rather than one queued request per row: each request
        # costs sqlitedict's thread a turn at the GIL.
        conn = self.db.conn
        if not rows:
            conn.execute(_REQUEST_COMMIT, None, _Notice(on_durable, self._notices))
            return
        for i in range(0, len(rows), _ROWS_PER_STATEMENT):
            chunk = rows[i:i + _ROWS_PER_STATEMENT]
            last = i + _ROWS_PER_STATEMENT >= len(rows)
            conn.execute('REPLACE INTO "paxos" (key, value) VALUES ' + ",".join(["(?,?)"] * len(chunk)),
                         [x for row in chunk for x in row],
                         _Notice(on_durable, self._notices) if last else None)

    def check(self) -> None:
        """Raise StorageError if a statement failed on sqlitedict's thread (its commit
        found the disk full, an I/O error, a broken constraint) or if that thread is
        gone. A failed statement still reports its end to submit()'s callback, so the
        node calls this before trusting a group commit, and on every tick while one
        is in flight (see Node._tick_forever)."""
        try:
            self.db.conn.check_raise_error()
        except sqlite3.Error as e:
            raise StorageError(f"{self.path}: a write failed: {e}") from e
        if not self.db.conn.is_alive():
            raise StorageError(f"{self.path}: the SQLite writer stopped (a commit failed: "
                               "disk full or an I/O error?)")

    def compact(self, through_slot: int) -> None:
        """Drop records at or below through_slot (runs on the disk thread). SQLite reuses
        the freed pages, so the file stops growing once compaction starts.

        The records go in steps, each its own statement and transaction, sized to take
        about COMPACT_STEP_S: group commits queued meanwhile run between the steps
        instead of waiting for one large delete (slots of big batches made one delete
        take over half a second, and every write waited for it). A crash between steps
        leaves records a durable snapshot covers, which the next compaction drops."""
        lowest = self._lowest_slot()
        while lowest is not None and lowest <= through_slot:
            last = min(through_slot, lowest + self._pacer.step - 1)
            started = time.perf_counter()
            self.db.conn.execute(
                'DELETE FROM "paxos" WHERE (key >= ? AND key <= ?) OR (key >= ? AND key <= ?)',
                (f"a/{lowest:012d}", f"a/{last:012d}", f"c/{lowest:012d}", f"c/{last:012d}"))
            self.db.commit(blocking=True)  # waits for the delete; queued group commits go next
            took = time.perf_counter() - started
            self._pacer.took(took)
            lowest = last + 1
            if lowest <= through_slot:
                self._rest(took * COMPACT_REST_RATIO)
        self._compacted_through = max(self._compacted_through, through_slot)
        self.check()

    def _lowest_slot(self) -> int | None:
        """The lowest slot with an accepted or chosen record, or None."""
        slots = []
        for prefix, end in (("a/", "a0"), ("c/", "c0")):  # "0" follows "/" in ASCII
            row = self.db.conn.select_one('SELECT MIN(key) FROM "paxos" WHERE key > ? AND key < ?',
                                          (prefix, end))
            if row and row[0] is not None:
                slots.append(int(row[0][2:]))
        return min(slots, default=None)

    def rebuilding(self) -> int | None:
        return (self.db.get("meta") or {}).get("rebuilding")

    def set_rebuilding(self, round_: int | None) -> None:
        meta = dict(self.db.get("meta") or {})
        meta["rebuilding"] = round_
        self.db["meta"] = meta
        self.db.commit(blocking=True)

    def genesis(self) -> dict | None:
        value = self.db.get("genesis")
        return value if isinstance(value, dict) else None

    def set_genesis(self, membership: dict) -> None:
        self.db["genesis"] = membership
        self.db.commit(blocking=True)

    def close(self) -> None:
        if self.db.conn.is_alive():  # closing waits for the writer's answer, which a dead one never gives
            self.db.close()

    def describe(self) -> dict:
        return {"engine": "sqlite", "path": self.path, "synchronous": self.synchronous(),
                "journal_mode": (self.db.conn.select_one("PRAGMA journal_mode") or ["?"])[0],
                "secure_delete": bool((self.db.conn.select_one("PRAGMA secure_delete") or [1])[0])}


def promised_of(path: str) -> Ballot | None:
    """Read the promised ballot straight from a file (for tests and tools)."""
    with sqlite3.connect(path) as conn:
        row = conn.execute("SELECT value FROM paxos WHERE key='promised'").fetchone()
    return ballot_from_wire(json.loads(row[0])) if row else None
