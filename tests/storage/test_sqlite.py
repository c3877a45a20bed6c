"""Acceptor storage: the contract both engines keep, and SQLite on a real disk.

SQLite-only: state survives SIGKILL of a process in the middle of saving,
synchronous=FULL is live on the connection, and a foreign or damaged file is
refused with StorageError (and `kv serve` exits instead of running on it).
"""
from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest

from kvpaxos.core.ballot import ZERO, Ballot
from kvpaxos.core.commands import Batch, Command
from storage import DurableState, MemoryStorage, SqliteStorage, StorageError, Writes
from storage.base import Pacer
from storage.sqlite import FILE_NAME
from support.cluster import free_ports

REPO_ROOT = Path(__file__).resolve().parents[2]


def batch(slot: int, size: int = 20) -> Batch:
    return Batch((Command("put", f"key/{slot}", "v" * size + "é✓", None, None, "client-a", slot, f"1.b.{slot}"),
                  Command("put", f"other/{slot}", "x", "old", 3, None, 0, f"1.b.{slot}x"),
                  Command("delete", f"gone/{slot}", None, None, None, None, 0, f"1.b.{slot}d")),
                 ts_ms=1_700_000_000_000 + slot)


class Engine:
    """Opens (and reopens) one store; MemoryStorage's "disk" is the object itself."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind, self.dir, self.current = kind, tmp_path / "data", None

    def open(self):
        if self.kind == "sqlite":
            self.current = SqliteStorage(str(self.dir), 1)
        elif self.current is None:
            self.current = MemoryStorage()
        return self.current

    def reopen(self):
        if self.kind == "sqlite":
            self.current.close()
        return self.open()


@pytest.fixture(params=["memory", "sqlite"])
def engine(request, tmp_path):
    eng = Engine(request.param, tmp_path)
    yield eng
    if eng.current is not None:
        eng.current.close()


# -- the contract, for both engines ---------------------------------------------


def test_empty_store_loads_empty(engine):
    state = engine.open().load()
    assert state == DurableState()
    assert state.promised == ZERO


def test_save_load_round_trip(engine):
    store = engine.open()
    store.save(Writes(Ballot(1, 2), {1: (Ballot(1, 2), batch(1)), 2: (Ballot(1, 2), Batch())}, {}))
    store.save(Writes(None, {3: (Ballot(1, 2), batch(3))}, {1: batch(1), 2: Batch()}))
    store.save(Writes(Ballot(4, 3), {3: (Ballot(4, 3), batch(103))}, {}))  # re-accepted later
    expected = DurableState(
        Ballot(4, 3),
        {1: (Ballot(1, 2), batch(1)), 2: (Ballot(1, 2), Batch()), 3: (Ballot(4, 3), batch(103))},
        {1: batch(1), 2: Batch()})
    assert store.load() == expected
    assert engine.reopen().load() == expected


def test_load_returns_a_copy(engine):
    store = engine.open()
    store.save(Writes(Ballot(1, 1), {1: (Ballot(1, 1), batch(1))}, {1: batch(1)}))
    state = store.load()
    state.accepted.clear()
    state.chosen[9] = batch(9)
    assert store.load() == DurableState(Ballot(1, 1), {1: (Ballot(1, 1), batch(1))}, {1: batch(1)})


def test_large_slots_and_values(engine):
    store = engine.open()
    big = Batch((Command("put", "k" * 1024, "é" * 300_000, cmd_id="1.x.1"),), ts_ms=5)
    slots = [1, 999_999_999_999, 10**12 + 7]
    store.save(Writes(Ballot(2**40, 5), {s: (Ballot(2**40, 5), big) for s in slots}, {slots[0]: big}))
    state = engine.reopen().load()
    assert state.promised == Ballot(2**40, 5)
    assert sorted(state.accepted) == slots
    assert state.accepted[slots[-1]] == (Ballot(2**40, 5), big)
    assert state.chosen == {1: big}


def test_compact_drops_the_log_up_to_a_slot_and_keeps_the_rest(engine):
    store = engine.open()
    b = Ballot(3, 1)
    store.save(Writes(b, {s: (b, batch(s)) for s in (2, 5, 6, 7, 300)}, {s: batch(s) for s in (2, 5, 6)}))
    store.compact(6)
    expected = DurableState(b, {7: (b, batch(7)), 300: (b, batch(300))}, {})
    assert store.load() == expected
    store.compact(6)  # again: nothing left to drop
    store.compact(1)  # below what is gone
    assert engine.reopen().load() == expected


def test_pacer_grows_quick_steps_and_shrinks_slow_ones():
    pacer = Pacer(0.004, step=8, most=32)
    pacer.took(0.0009)  # under a quarter of the target: twice the step
    assert pacer.step == 16
    pacer.took(0.002)   # about right: unchanged
    assert pacer.step == 16
    pacer.took(0.0001), pacer.took(0.0001)
    assert pacer.step == 32  # never past `most`
    for _ in range(10):
        pacer.took(1.0)
    assert pacer.step == 1   # never below one


def test_group_commits_go_between_the_steps_of_a_long_compaction(tmp_path):
    # A compaction of many large slots must not hold every write behind one long delete:
    # writes queued while it runs are committed before it ends.
    store = SqliteStorage(str(tmp_path), 1)
    try:
        b = Ballot(1, 1)
        big = Batch(tuple(Command("put", f"k{i}", "v" * 200, cmd_id=f"c{i}") for i in range(400)))
        for first in range(1, 121, 20):
            store.save(Writes(b, {s: (b, big) for s in range(first, first + 20)},
                              {s: big for s in range(first, first + 20)}))
        committed: list[float] = []
        ended: list[float] = []

        def compact() -> None:
            store.compact(120)
            ended.append(time.monotonic())

        compactor = threading.Thread(target=compact)
        compactor.start()
        slot = 1000
        while compactor.is_alive():
            slot += 1
            done = threading.Event()
            store.submit(Writes(None, {slot: (b, batch(slot))}, {}), done.set)
            assert done.wait(30)
            store.check()
            committed.append(time.monotonic())
        compactor.join()
        during = [t for t in committed if t < ended[0]]
        assert len(during) >= 4, f"only {len(during)} of {len(committed)} writes were committed during compaction"
        state = store.load()
        assert not [s for s in state.accepted if s <= 120] and not state.chosen
        assert sorted(state.accepted) == list(range(1001, slot + 1))
    finally:
        store.close()


def test_compaction_rests_between_its_steps(tmp_path):
    """Each delete step is followed by a rest COMPACT_REST_RATIO times as long, so a
    compaction takes a share of the disk and the cores instead of all of them (its
    group commits still go between the steps, above)."""
    from storage.sqlite import COMPACT_REST_RATIO
    assert COMPACT_REST_RATIO >= 3
    store = SqliteStorage(str(tmp_path), 1)
    try:
        b = Ballot(1, 1)
        big = Batch(tuple(Command("put", f"k{i}", "v" * 200, cmd_id=f"c{i}") for i in range(400)))
        for first in range(1, 121, 20):
            store.save(Writes(b, {s: (b, big) for s in range(first, first + 20)}, {}))
        rests: list[float] = []
        steps: list[float] = []
        store._rest = rests.append  # record the rests instead of taking them
        pace = store._pacer.took
        store._pacer.took = lambda took: (steps.append(took), pace(took))
        store.compact(120)
        assert len(steps) >= 3, "one delete for the whole range"
        # After every step but the last, a rest COMPACT_REST_RATIO times as long as that
        # step took (checked step by step: a sum against the wall time fails on a
        # loaded machine, where the time between steps varies).
        assert rests == [took * COMPACT_REST_RATIO for took in steps[:-1]]
        assert all(took > 0 for took in steps)
        assert not [s for s in store.load().accepted if s <= 120]
    finally:
        store.close()


def test_describe_names_the_engine(engine):
    assert engine.open().describe()["engine"] == engine.kind


# -- SQLite on disk ---------------------------------------------------------------


def test_sqlite_is_wal_and_synchronous_full_on_the_live_connection(tmp_path):
    store = SqliteStorage(str(tmp_path), 3)
    try:
        assert store.synchronous() == "FULL"
        store.save(Writes(Ballot(1, 3), {1: (Ballot(1, 3), batch(1))}, {}))
        assert store.synchronous() == "FULL"  # still, after a commit
        described = store.describe()
        assert described == {"engine": "sqlite", "path": str(tmp_path / FILE_NAME),
                             "synchronous": "FULL", "journal_mode": "wal", "secure_delete": False}
    finally:
        store.close()
    with sqlite3.connect(tmp_path / FILE_NAME) as conn:  # WAL is a property of the file
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    reopened = SqliteStorage(str(tmp_path), 3)
    try:
        assert reopened.synchronous() == "FULL"
    finally:
        reopened.close()


def _chosen_rows(path: Path) -> dict[int, str]:
    with closing(sqlite3.connect(path / FILE_NAME)) as conn:
        return {int(k[2:]): v for k, v in conn.execute("SELECT key, value FROM paxos WHERE key LIKE 'c/%'")}


def test_sqlite_writes_a_chosen_value_it_accepted_as_a_reference(tmp_path):
    store = SqliteStorage(str(tmp_path), 1)
    b = Ballot(2, 1)
    mine = {s: batch(s, size=500) for s in (1, 2, 3, 4)}
    store.save(Writes(b, {s: (b, v) for s, v in mine.items()}, {}))
    learned = batch(40, size=500)  # from a peer, not what this node accepted for slot 4
    store.save(Writes(None, {5: (b, batch(5))}, {1: mine[1], 2: batch(2, size=500), 3: mine[3],
                                                 4: learned, 5: batch(5)}))
    rows = _chosen_rows(tmp_path)
    assert {s: json.loads(rows[s]) for s in (1, 2, 3, 5)} == {s: {"b": [2, 1]} for s in (1, 2, 3, 5)}
    assert json.loads(rows[4])["c"][0][1] == "key/40"  # written in full
    # Slot 3 accepted again later (a new leader re-proposing it, with the chosen value):
    # the reference no longer names the a/ record, and the shortcut is dropped, not
    # resolved to whatever the slot holds now.
    store.save(Writes(Ballot(7, 2), {3: (Ballot(7, 2), mine[3])}, {}))
    store.close()
    state = SqliteStorage(str(tmp_path), 1).load()
    assert state.chosen == {1: mine[1], 2: mine[2], 4: learned, 5: batch(5)}
    assert state.accepted[3] == (Ballot(7, 2), mine[3])


def test_sqlite_writes_in_full_the_chosen_value_of_an_acceptance_long_ago(tmp_path):
    from storage.sqlite import ACCEPTS_REMEMBERED
    store = SqliteStorage(str(tmp_path), 1)
    b = Ballot(1, 1)
    try:
        store.save(Writes(b, {1: (b, batch(1))}, {}))
        store.save(Writes(None, {s: (b, batch(s, size=1)) for s in range(2, ACCEPTS_REMEMBERED + 3)}, {}))
        store.save(Writes(None, {}, {1: batch(1), 2: batch(2, size=1), ACCEPTS_REMEMBERED + 2: batch(7)}))
        rows = _chosen_rows(tmp_path)
        assert "b" not in json.loads(rows[1]) and "b" not in json.loads(rows[2])  # forgotten: in full
        assert "b" not in json.loads(rows[ACCEPTS_REMEMBERED + 2])  # another value than accepted
        assert store.load().chosen == {1: batch(1), 2: batch(2, size=1), ACCEPTS_REMEMBERED + 2: batch(7)}
    finally:
        store.close()


def test_sqlite_lets_go_of_the_values_of_compacted_slots(tmp_path):
    # submit() remembers recent acceptances to write chosen records as references; a
    # compaction past them (a snapshot holds those slots now) must release their values.
    store = SqliteStorage(str(tmp_path), 1)
    b = Ballot(1, 1)
    try:
        store.save(Writes(b, {s: (b, batch(s)) for s in range(1, 11)}, {}))
        assert sorted(store._accepts) == list(range(1, 11))
        store.compact(6)
        store.save(Writes(None, {11: (b, batch(11))}, {7: batch(7)}))
        assert sorted(store._accepts) == [8, 9, 10, 11]
        assert json.loads(_chosen_rows(tmp_path)[7]) == {"b": [1, 1]}
    finally:
        store.close()


def test_a_group_commit_that_fails_is_reported_and_not_stored(tmp_path):
    # A group commit whose transaction fails at its commit (here a deferred foreign-key
    # check; on a real machine a full disk or an I/O error) still reports its end to the
    # callback, as sqlitedict does for any statement: check() must say it failed, so the
    # node stops instead of answering for writes that are not on disk.
    store = SqliteStorage(str(tmp_path), 3)
    try:
        conn = store.db.conn
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("CREATE TABLE dangling (k TEXT REFERENCES paxos(key) DEFERRABLE INITIALLY DEFERRED)")
        conn.execute("CREATE TRIGGER break_commit AFTER INSERT ON paxos WHEN NEW.key = 'promised' "
                     "BEGIN INSERT INTO dangling VALUES ('no such record'); END")
        store.db.commit(blocking=True)
        store.check()  # the set-up itself went through
        done = threading.Event()
        store.submit(Writes(Ballot(7, 3), {5: (Ballot(7, 3), Batch(()))}, {}), done.set)
        assert done.wait(10), "the failed group commit never reported its end"
        with pytest.raises(StorageError, match="a write failed: FOREIGN KEY constraint failed"):
            store.check()
    finally:
        store.close()
    reopened = SqliteStorage(str(tmp_path), 3)
    try:
        state = reopened.load()
        assert state.promised == ZERO and 5 not in state.accepted  # all of the group or none
    finally:
        reopened.close()


def test_sqlite_refuses_another_nodes_data_dir(tmp_path):
    SqliteStorage(str(tmp_path), 1).close()
    with pytest.raises(StorageError, match=r"belongs to node 1 .*not node 2"):
        SqliteStorage(str(tmp_path), 2)
    SqliteStorage(str(tmp_path), 1).close()  # the refused open changed nothing


CHILD = textwrap.dedent("""
    import random, sys
    from kvpaxos.core.ballot import Ballot
    from kvpaxos.core.commands import Batch, Command
    from storage import SqliteStorage, Writes
    store = SqliteStorage(sys.argv[1], 1)
    state = store.load()
    slot = max(state.accepted, default=0)
    rnd = random.Random(int(sys.argv[2]))
    while True:
        slot += 1
        value = Batch((Command("put", f"k{slot}", "v" * rnd.randrange(1, 20000), cmd_id=f"c{slot}"),), slot)
        store.save(Writes(Ballot(slot, 1), {slot: (Ballot(slot, 1), value)}, {slot: value}))
        print(f"saved {slot}", flush=True)
""")


def expected_value(slot: int, rnd_sizes: dict[int, int]) -> Batch:
    return Batch((Command("put", f"k{slot}", "v" * rnd_sizes[slot], cmd_id=f"c{slot}"),), slot)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sqlite_keeps_every_reported_save_across_sigkill(tmp_path, seed):
    """A child saves in a loop and reports each save; SIGKILL it anywhere, several times."""
    rnd = random.Random(seed)
    reported: set[int] = set()
    for round_ in range(3):
        child_seed = seed * 100 + round_
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), str(child_seed)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT,
                                start_new_session=True)
        watchdog = threading.Timer(30, lambda: os.killpg(proc.pid, signal.SIGKILL))
        watchdog.start()
        try:
            target = rnd.randrange(1, 120)
            count = 0
            for line in proc.stdout:
                assert line.startswith("saved "), line
                reported.add(int(line.split()[1]))
                count += 1
                if count >= target:
                    break
            time.sleep(rnd.random() * 0.02)  # land somewhere inside a later save
            os.killpg(proc.pid, signal.SIGKILL)
            # Read the rest through the same buffered file: lines it already holds
            # were reported too (communicate() would read past them).
            rest = proc.stdout.read()
            err = proc.stderr.read()
            proc.wait(timeout=10)
        finally:
            watchdog.cancel()
        assert proc.returncode == -signal.SIGKILL, err
        reported.update(int(line.split()[1]) for line in rest.splitlines())
        assert count >= target, f"the child stopped early: {err}"

        store = SqliteStorage(str(tmp_path), 1)
        try:
            state = store.load()
        finally:
            store.close()
        last = max(reported)
        assert set(range(1, last + 1)) <= set(state.accepted), f"seed {seed}: a reported save is missing"
        # At most the one save in flight at the kill went further, and each save is atomic.
        assert sorted(state.accepted) == list(range(1, len(state.accepted) + 1))
        assert len(state.accepted) in (last, last + 1)
        assert sorted(state.chosen) == sorted(state.accepted)
        assert state.promised == Ballot(len(state.accepted), 1)
        for slot, (ballot, value) in state.accepted.items():
            assert ballot == Ballot(slot, 1)
            assert value == state.chosen[slot]
            assert value.ts_ms == slot and value.commands[0].key == f"k{slot}"
        reported.update(state.accepted)  # the next child goes on from here


# -- damaged files -----------------------------------------------------------------


def filled_dir(path: Path, records: int = 200) -> Path:
    store = SqliteStorage(str(path), 1)
    for slot in range(1, records + 1):
        store.save(Writes(Ballot(slot, 1), {slot: (Ballot(slot, 1), batch(slot, 1000))}, {slot: batch(slot)}))
    store.close()
    assert not (path / (FILE_NAME + "-wal")).exists() or (path / (FILE_NAME + "-wal")).stat().st_size == 0
    return path


def garbage_in_the_middle(path: Path, seed: int = 0) -> None:
    file = path / FILE_NAME
    size = file.stat().st_size
    with open(file, "r+b") as f:
        f.seek(size // 2 // 4096 * 4096)
        f.write(random.Random(seed).randbytes(8192))


def truncated(path: Path) -> None:
    file = path / FILE_NAME
    os.truncate(file, file.stat().st_size // 2 + 100)


def not_a_database(path: Path) -> None:
    (path / FILE_NAME).write_bytes(b"this is not an SQLite file at all\n" * 300)


def value_not_utf8(path: Path) -> None:
    # Structurally sound, so quick_check passes; but a text cell is not UTF-8.
    with sqlite3.connect(path / FILE_NAME) as conn:
        conn.execute("UPDATE paxos SET value = CAST(? AS TEXT) WHERE key = 'c/000000000007'", (b'{"c":[],"ts":\xff}',))


def meta_not_json(path: Path) -> None:
    with sqlite3.connect(path / FILE_NAME) as conn:
        conn.execute("UPDATE paxos SET value = '{\"format\": 1, ' WHERE key = 'meta'")


def meta_not_object(path: Path) -> None:
    with sqlite3.connect(path / FILE_NAME) as conn:
        conn.execute("UPDATE paxos SET value = '[1, 2]' WHERE key = 'meta'")


def record_not_decodable(path: Path) -> None:
    with sqlite3.connect(path / FILE_NAME) as conn:
        conn.execute("UPDATE paxos SET value = '[\"not\", \"a ballot\"]' WHERE key = 'a/000000000003'")


DAMAGE = [garbage_in_the_middle, truncated, not_a_database, value_not_utf8, meta_not_json,
          meta_not_object, record_not_decodable]


def open_and_load(path: Path, node_id: int = 1, timeout: float = 20.0) -> BaseException | None:
    """Open and load in a thread, so a hang fails the test instead of stalling it."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            store = SqliteStorage(str(path), node_id)
            try:
                store.load()
            finally:
                store.close()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert outcome, f"opening {path} hung for {timeout:g}s"
    return outcome[0]


@pytest.mark.parametrize("damage", DAMAGE, ids=[d.__name__ for d in DAMAGE])
def test_sqlite_refuses_a_damaged_file(tmp_path, damage):
    path = filled_dir(tmp_path)
    assert open_and_load(path) is None
    damage(path)
    exc = open_and_load(path)
    assert isinstance(exc, StorageError), repr(exc)
    message = str(exc)
    assert str(path / FILE_NAME) in message and "\n" not in message.strip(), message
    assert any(w in message for w in ("damaged", "not a readable", "does not decode")), message


@pytest.mark.parametrize("seed", range(5))
def test_sqlite_garbage_anywhere_in_a_page_is_refused(tmp_path, seed):
    path = filled_dir(tmp_path, records=50)
    garbage_in_the_middle(path, seed)
    assert isinstance(open_and_load(path), StorageError)


def run_serve(data_dir: Path, node_id: int = 1) -> subprocess.CompletedProcess:
    spec = ",".join(f"{i}=127.0.0.1:{port}" for i, port in enumerate(free_ports(3), start=1))
    return subprocess.run([sys.executable, "-m", "cli.main", "serve", "--id", str(node_id), "--cluster", spec,
                           "--data-dir", str(data_dir), "--log-level", "info"],
                          capture_output=True, text=True, timeout=30, cwd=REPO_ROOT, stdin=subprocess.DEVNULL)


SERVE_CASES = [("garbage", garbage_in_the_middle, 1), ("truncated", truncated, 1),
               ("not_utf8", value_not_utf8, 1), ("other_node", lambda p: None, 2)]


@pytest.mark.parametrize("name,damage,node_id", SERVE_CASES, ids=[c[0] for c in SERVE_CASES])
def test_kv_serve_exits_with_a_one_line_error_on_a_bad_data_dir(tmp_path, name, damage, node_id):
    path = filled_dir(tmp_path, records=50)
    damage(path)
    result = run_serve(path, node_id)  # bounded by subprocess.run's timeout: it must not hang
    assert result.returncode == 1, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert str(path / FILE_NAME) in lines[0], result.stderr


def test_an_acceptance_written_from_its_leaders_text_reads_back_as_the_batch(tmp_path):
    """A follower's acceptance record holds the batch's text as its leader sent it
    (kvpaxos.core.codec keeps it while decoding the Accept): any layout of it reads
    back as the batch the acceptor accepted, and the chosen record still refers to it."""
    from kvpaxos.core import codec
    sent = '{ "c" : [["put","k","v\\u00e9",null,null,"c1",4,"1.b.9",0]], "ts": 7 }'
    _, (accept,) = codec.decode_frame('{"src":1,"msgs":[{"t":"Accept","ballot":[2,1],"slot":9,"value":%s}]}' % sent)
    assert accept.value == Batch((Command("put", "k", "v\u00e9", None, None, "c1", 4, "1.b.9"),), 7)
    store = SqliteStorage(str(tmp_path), 2)
    store.save(Writes(Ballot(2, 1), {9: (accept.ballot, accept.value)}, {9: accept.value}))
    store.close()
    with closing(sqlite3.connect(tmp_path / FILE_NAME)) as conn:
        rows = dict(conn.execute("SELECT key, value FROM paxos WHERE key IN ('a/000000000009', 'c/000000000009')"))
    assert rows == {"a/000000000009": f"[[2,1],{sent}]", "c/000000000009": '{"b":[2,1]}'}
    store = SqliteStorage(str(tmp_path), 2)
    try:
        assert store.load() == DurableState(Ballot(2, 1), {9: (Ballot(2, 1), accept.value)}, {9: accept.value})
    finally:
        store.close()
