"""The ordered key index behind prefix scans agrees with sorting the map's keys, through
random adds, removals, chunk splits and merges, replayable from the seed."""
from __future__ import annotations

import random

import pytest

from kvpaxos.core.commands import DELETE, PUT, Batch, Command
from kvpaxos.core.kvstate import Export, KVState, import_rows, session_row
from kvpaxos.core.sortedkeys import SortedKeys

ALPHABET = ["", "a", "b", "/", "é", "\U0001f600", "0", "9", "\U0010ffff", "\ud7ff"]


def random_key(rng: random.Random) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 4)))


@pytest.mark.parametrize("seed", range(12))
def test_index_matches_sorted_keys_through_adds_and_removals(seed: int) -> None:
    rng = random.Random(seed)
    chunk = rng.choice([1, 2, 3, 8])  # small chunks: many splits and emptied chunks
    initial = {random_key(rng) for _ in range(rng.randint(0, 30))}
    index, model = SortedKeys(initial, chunk=chunk), set(initial)
    for _ in range(600):
        key = random_key(rng)
        if rng.random() < 0.55:
            if key not in model:
                index.add(key)
                model.add(key)
        else:
            index.discard(key)  # also for keys that are not there
            model.discard(key)
        assert len(index) == len(model)
        if rng.random() < 0.2:
            prefix = random_key(rng)[:2]
            assert list(index.with_prefix(prefix)) == sorted(k for k in model if k.startswith(prefix)), \
                (seed, prefix)
            assert index.count_prefix(prefix) == sum(1 for k in model if k.startswith(prefix)), (seed, prefix)
    assert list(index) == sorted(model)
    assert all(len(c) <= 2 * chunk for c in index._chunks) and all(index._chunks)
    assert index._firsts == [c[0] for c in index._chunks]


@pytest.mark.parametrize("seed", range(6))
def test_scan_agrees_with_a_pass_over_every_key(seed: int) -> None:
    """Puts and deletes through the state machine, then every prefix and limit."""
    rng = random.Random(seed)
    state, slot = KVState(), 0
    for _ in range(400):
        key = random_key(rng)
        cmd = Command(PUT, key, "v") if rng.random() < 0.6 else Command(DELETE, key)
        slot += 1
        state.apply(slot, Batch((cmd,)))
    export = Export(state)  # a snapshot's state builds its index
    restored = import_rows(export.header, (list(row) for row in export.rows()), list(export.session_rows()))
    export.close()
    for s in (state, restored):
        for prefix in ["", "a", "a/", "é", "\U0001f600", "zz"]:
            keys = sorted(k for k in s.data if k.startswith(prefix))
            for limit in (1, 2, 5, 1000):
                items, more = s.scan(prefix, limit)
                assert [k for k, _, _ in items] == keys[:limit], (seed, prefix, limit)
                assert [(v, ver) for _, v, ver in items] == [s.data[k] for k in keys[:limit]]
                assert more == (len(keys) > limit)
                # Paging: after any key (one of them, or one between them, or outside the prefix).
                for after in [*keys[::3], *(random_key(rng) for _ in range(3)), prefix, prefix + "\U0010ffff"]:
                    want = [k for k in keys if k > after]
                    items, more = s.scan(prefix, limit, after)
                    assert [k for k, _, _ in items] == want[:limit], (seed, prefix, limit, after)
                    assert more == (len(want) > limit)
                # A budget of characters ends a page early, but never before its first entry.
                for budget in (0, 5, 12, 40):
                    items, more = s.scan(prefix, limit, None, budget)
                    taken, chars = [], 0
                    for k in keys[:limit]:
                        chars += len(k) + len(s.data[k][0])
                        if taken and chars > budget:
                            break
                        taken.append(k)
                    assert [k for k, _, _ in items] == taken, (seed, prefix, limit, budget)
                    assert more == (len(keys) > len(taken))


# -- a snapshot's export while the state moves on ------------------------------------


def _random_command(rng: random.Random, state: KVState) -> Command:
    existing = list(state.data)
    roll = rng.random()
    if existing and roll < 0.35:
        cmd = Command(DELETE, rng.choice(existing))
    elif existing and roll < 0.7:
        cmd = Command(PUT, rng.choice(existing), f"v{rng.random():.6f}")  # a rewrite
    else:
        cmd = Command(PUT, random_key(rng) + str(rng.randint(0, 50)), "new")  # often a new key
    if rng.random() < 0.5:  # an exactly-once client: new, next request, a repeat or a stale one
        client = f"c{rng.randint(0, 12)}"
        session = state.sessions.get(client)
        seq = max(1, (session.seq if session else 1) + rng.choice([-1, 0, 1, 1]))
        cmd = Command(cmd.op, cmd.key, cmd.value, client_id=client, seq=seq)
    return cmd


def _apply_random(rng: random.Random, state: KVState, slot: int) -> int:
    """Apply one slot of 1-2 random commands, its clock 0-300 ms on: records of clients
    idle for a second (the state's session_ttl_ms below) expire."""
    slot += 1
    ts = state.cluster_ms + rng.randint(0, 300)
    state.apply(slot, Batch(tuple(_random_command(rng, state) for _ in range(rng.randint(1, 2))), ts))
    return slot


def _sessions_now(state: KVState) -> list[list]:
    return [session_row(cid, s) for cid, s in state.sessions.items()]


@pytest.mark.parametrize("seed", range(20))
def test_an_export_reads_the_state_of_its_slot_while_slots_are_applied(seed: int) -> None:
    """Rows read one at a time, with slots applied between them (new keys, rewrites,
    deletes, chunk splits and emptied chunks), are the map as it was when the export began."""
    rng = random.Random(seed)
    state, slot = KVState(session_ttl_ms=1000), 0
    for _ in range(rng.randint(0, 120)):
        slot = _apply_random(rng, state, slot)
    state.keys = SortedKeys(state.data, chunk=rng.choice([1, 2, 4]))
    expected = sorted((k, v, ver) for k, (v, ver) in state.data.items())
    expected_sessions = _sessions_now(state)
    export = Export(state)
    assert export.header["slot"] == slot and export.header["keys"] == len(expected)
    assert export.session_count == len(expected_sessions)
    rows, reader = [], export.rows()
    for row in reader:
        rows.append(row)
        for _ in range(rng.randint(0, 3)):
            slot = _apply_random(rng, state, slot)
    sessions = []
    for row in export.session_rows():
        sessions.append(row)
        for _ in range(rng.randint(0, 3)):
            slot = _apply_random(rng, state, slot)
    export.close()
    assert rows == expected, seed
    assert sessions == expected_sessions, seed  # in their order, which decides expiry
    assert state._sessions_before is None
    assert state._before is None and not state.keys.frozen
    # The index and the map still agree, and the next export sees the state of now.
    assert list(state.keys) == sorted(state.data)
    again = Export(state)
    assert list(again.rows()) == sorted((k, v, ver) for k, (v, ver) in state.data.items())
    assert list(again.session_rows()) == _sessions_now(state)
    again.close()


def test_a_second_export_while_one_is_open_is_a_copy() -> None:
    state = KVState()
    for n, key in enumerate(["b", "a", "c"], 1):
        state.apply(n, Batch((Command(PUT, key, key),)))
    first = Export(state)
    second = Export(state)
    state.apply(4, Batch((Command(DELETE, "a"), Command(PUT, "d", "d"), Command(PUT, "b", "B"))))
    assert [k for k, _, _ in second.rows()] == ["a", "b", "c"]
    assert [(k, v) for k, v, _ in first.rows()] == [("a", "a"), ("b", "b"), ("c", "c")]
    second.close()
    assert state.keys.frozen  # the second did not end the first
    first.close()
    assert not state.keys.frozen and state._before is None


def test_a_snapshot_written_on_another_thread_holds_its_slot(tmp_path) -> None:
    """The node's case: the writer thread walks the export while the event loop's
    thread applies slots as fast as it can; the file read back is the state at its slot."""
    import threading

    from kvpaxos import snapshot

    rng = random.Random(7)
    state, slot = KVState(session_ttl_ms=60_000), 0
    for base in range(0, 20_000, 500):
        slot += 1
        state.apply(slot, Batch(tuple(Command(PUT, f"k/{n:06d}", "v0", client_id=f"c{n}", seq=1)
                                      for n in range(base, base + 500)), ts_ms=base))
    expected, expected_sessions = dict(state.data), _sessions_now(state)
    path = str(tmp_path / "snapshot.json")
    export = Export(state)
    writer = threading.Thread(target=snapshot.write_export, args=(path, export))
    writer.start()
    applied = 0
    while writer.is_alive() or applied < 200:
        slot += 1
        n = rng.randrange(25_000)
        cmd = Command(DELETE, f"k/{n:06d}") if n % 3 == 0 else Command(PUT, f"k/{n:06d}", f"v{slot}")
        # The next request of an old client, and a clock that expires the oldest records.
        cmd = Command(cmd.op, cmd.key, cmd.value, client_id=f"c{n}", seq=2)
        state.apply(slot, Batch((cmd,), ts_ms=20_000 + 40 * applied))
        applied += 1
    writer.join()
    assert applied > 200 and not state.keys.frozen
    loaded = snapshot.read(path)
    assert loaded.applied_slot == export.header["slot"] and loaded.data == expected
    assert _sessions_now(loaded) == expected_sessions
    assert list(loaded.keys) == sorted(expected)
