"""The ordered key index behind prefix scans agrees with sorting the map's keys, through
random adds, removals, chunk splits and merges, replayable from the seed."""
from __future__ import annotations

import random

import pytest

from kvpaxos.core.commands import DELETE, PUT, Batch, Command
from kvpaxos.core.kvstate import KVState, export_rows, import_rows
from kvpaxos.core.sortedkeys import SortedKeys

ALPHABET = ["", "a", "b", "/", "é", "\U0001f600", "0", "9"]


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
    header, data, sessions = export_rows(state)  # a snapshot's state builds its index
    restored = import_rows(header, ([k, v, ver] for k, (v, ver) in data.items()), sessions)
    for s in (state, restored):
        for prefix in ["", "a", "a/", "é", "\U0001f600", "zz"]:
            keys = sorted(k for k in s.data if k.startswith(prefix))
            for limit in (1, 2, 5, 1000):
                items, more = s.scan(prefix, limit)
                assert [k for k, _, _ in items] == keys[:limit], (seed, prefix, limit)
                assert [(v, ver) for _, v, ver in items] == [s.data[k] for k in keys[:limit]]
                assert more == (len(keys) > limit)
