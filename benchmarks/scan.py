"""What a prefix scan (GET /v1/kv?prefix=P&limit=L) and the start of a snapshot cost
the node's event loop, against the number of keys in the map.

A scan runs on the event loop between two applied slots, so its time is time no
request, Accept or heartbeat on that node is served. This builds the state
machine's map (kvpaxos.core.kvstate.KVState, keys put through apply() in random
order, as writes arrive) and times `KVState.scan` against a pass over every key
that sorts what it filtered (the scan before the ordered key index), for a
narrow prefix, a prefix no key has, and the whole map, each with limit 10. And
what a snapshot takes from the loop before its writer thread starts (an Export:
its header, the ids of the exactly-once records, the key index frozen) against
what it did before: a shallow copy of the map and a row per exactly-once record.
A tenth of the keys are written with a client id of their own, so the map holds
one exactly-once record per ten keys.

    python benchmarks/scan.py                        # 10k, 100k and 1M keys
    python benchmarks/scan.py --sizes 1000,10000 --repeat 20
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kvpaxos.core.commands import PUT, Batch, Command  # noqa: E402
from kvpaxos.core.kvstate import Export, KVState, session_row  # noqa: E402

BATCH = 1000  # commands per applied slot while filling


def fill(n: int, seed: int) -> tuple[KVState, float]:
    """A map of n keys key/0000000.. put in random order, a tenth of them by clients of
    their own (one exactly-once record each); seconds per key added."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    state, slot = KVState(), 0
    started = time.perf_counter()
    for i in range(0, n, BATCH):
        slot += 1
        state.apply(slot, Batch(tuple(Command(PUT, f"key/{k:07d}", "v" * 16,
                                              client_id=f"client-{k}" if k % 10 == 0 else None,
                                              seq=1 if k % 10 == 0 else 0) for k in order[i:i + BATCH])))
    return state, (time.perf_counter() - started) / max(1, n)


def every_key(state: KVState, prefix: str, limit: int) -> tuple[list, bool]:
    keys = sorted(k for k in state.data if k.startswith(prefix))
    return [(k, *state.data[k]) for k in keys[:limit]], len(keys) > limit


def timed(fn, repeat: int) -> dict[str, float]:  # noqa: ANN001 - a scan call
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {"p50_ms": round(statistics.median(times), 4), "max_ms": round(times[-1], 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    try:
        sizes = [int(x) for x in args.sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes must be comma-separated key counts, not {args.sizes!r}")
    if min(sizes) < 1 or args.repeat < 1:
        parser.error("--sizes and --repeat must be at least 1")
    rows = []
    print(f"{'keys':>9} | {'prefix':<14} | {'index p50 ms':>12} | {'every key p50 ms':>16} | {'ratio':>7}"
          "   (snapshot start: an Export against a copy of the map)")
    for n in sizes:
        state, per_key = fill(n, args.seed)
        for name, prefix in (("narrow", "key/00001"), ("absent", "nope/"), ("whole map", "")):
            assert state.scan(prefix, 10) == every_key(state, prefix, 10)
            index = timed(lambda: state.scan(prefix, 10), args.repeat)
            naive = timed(lambda: every_key(state, prefix, 10), args.repeat)
            ratio = naive["p50_ms"] / index["p50_ms"] if index["p50_ms"] else float("inf")
            rows.append({"keys": n, "prefix": name, "index": index, "every_key": naive, "ratio": round(ratio, 1),
                         "put_us_per_key": round(per_key * 1e6, 2)})
            print(f"{n:>9,} | {name:<14} | {index['p50_ms']:>12.4f} | {naive['p50_ms']:>16.2f} | {ratio:>7.0f}x")

        def export() -> None:
            Export(state).close()
        start = timed(export, args.repeat)
        def copy_then() -> None:
            dict(state.data)
            [session_row(cid, s) for cid, s in state.sessions.items()]
        copy = timed(copy_then, args.repeat)
        ratio = copy["p50_ms"] / start["p50_ms"] if start["p50_ms"] else float("inf")
        rows.append({"keys": n, "prefix": "snapshot start", "index": start, "every_key": copy,
                     "ratio": round(ratio, 1), "put_us_per_key": round(per_key * 1e6, 2)})
        print(f"{n:>9,} | {'snapshot start':<14} | {start['p50_ms']:>12.4f} | {copy['p50_ms']:>16.2f} | {ratio:>7.0f}x")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "scan.json").write_text(json.dumps({"benchmark": "scan", "repeat": args.repeat,
                                                       "rows": rows}, indent=2))
    print(f"results: {args.out_dir / 'scan.json'}")


if __name__ == "__main__":
    main()
