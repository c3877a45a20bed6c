"""Deleting every key under a prefix, or every key of a lease: how long it takes, and
what it costs the writes going on meanwhile.

Starts a fresh local cluster (3 nodes, data on disk), puts K keys under one prefix
(through batches of 1,000), keeps single PUTs of another key going to the leader at a
fixed rate, and sends DELETE /v1/kv?prefix=... to the leader, which deletes the keys
in rounds of 1,000 (one slot each). Reports how long the delete took and the PUTs'
latency (p50, p99, max) before it and while it ran (the max stands for the longest
the leader's event loop was held by one round).

    python benchmarks/delete_prefix.py                       # 100,000 keys, 200 writes/s
    python benchmarks/delete_prefix.py --keys 20000 --rate 500
    python benchmarks/delete_prefix.py --lease --keys 10000  # the keys on one lease, revoked

With --lease the keys are put on one lease and DELETE /v1/leases/ID ends it: all
its keys in one slot (a lease holds at most 10,000), where a prefix delete goes in
rounds.

Writes benchmarks/results/delete_prefix.json (--out-dir to change).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kvpaxos.bench.cluster import BenchCluster  # noqa: E402
from kvpaxos.bench.steady import SteadyPuts, latency_ms  # noqa: E402
from kvpaxos.core.commands import LEASE_KEYS_MAX  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BATCH = 1000
PREFIX = "gone/"
BEFORE_S = 1.0  # PUTs timed before the delete starts


async def run(cluster: BenchCluster, keys: int, rate: float, lease: bool = False) -> dict:
    leader_url = cluster.nodes[cluster.leader()].url
    async with aiohttp.ClientSession() as session:
        on = {}
        if lease:
            async with session.post(f"{leader_url}/v1/leases", json={"ttl": 3600}) as r:
                on = {"lease": (await r.json())["id"]}
        for start in range(0, keys, BATCH):
            ops = [{"op": "put", "key": f"{PREFIX}{i:07}", "value": "x" * 100, **on}
                   for i in range(start, min(keys, start + BATCH))]
            async with session.post(f"{leader_url}/v1/batch", json={"ops": ops}) as r:
                if r.status != 200:
                    raise RuntimeError(f"batch answered {r.status}: {await r.text()}")
        writes = SteadyPuts(session, leader_url, rate, keys=1)
        writes.start()
        await asyncio.sleep(BEFORE_S)
        began = time.perf_counter()
        url, params = ((f"{leader_url}/v1/leases/{on['lease']}", {}) if lease
                       else (f"{leader_url}/v1/kv", {"prefix": PREFIX}))
        async with session.delete(url, params=params) as r:
            answer = await r.json()
            if r.status != 200:
                raise RuntimeError(f"the delete answered {r.status}: {answer}")
        ended = time.perf_counter()
        await writes.stop()
        left = {}
        for url in cluster.urls:
            async with session.get(f"{url}/v1/kv", params={"prefix": PREFIX, "limit": "1"}) as r:  # linearizable
                left[url] = len((await r.json())["items"])
    return {"keys": keys, "rate": rate, "by": "lease" if lease else "prefix", "deleted": answer["deleted"], "took_ms": round((ended - began) * 1e3, 1),
            "keys_left_on_nodes_after": left,
            "write_ms_before": latency_ms(writes.between(0.0, began)),
            "write_ms_while_deleting": latency_ms(writes.between(began, ended))}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keys", type=int, default=100_000, help="keys under the prefix")
    p.add_argument("--rate", type=float, default=200.0, help="single PUTs a second meanwhile")
    p.add_argument("--lease", action="store_true", help="put the keys on one lease and revoke it")
    p.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args(argv)
    if args.keys < 1 or args.rate <= 0 or (args.lease and args.keys > LEASE_KEYS_MAX):
        p.error(f"--keys must be at least 1 (at most {LEASE_KEYS_MAX} with --lease), --rate above 0")
    with BenchCluster(3) as cluster:
        result = asyncio.run(run(cluster, args.keys, args.rate, args.lease))
    b, d = result["write_ms_before"], result["write_ms_while_deleting"]
    print(f"deleted {result['deleted']} keys {'of one lease' if args.lease else 'under one prefix'} in {result['took_ms']:.0f} ms; PUTs at {args.rate:g}/s "
          f"p50/p99/max before {b.get('p50', 0):.2f}/{b.get('p99', 0):.2f}/{b.get('max', 0):.2f} ms, while deleting "
          f"{d.get('p50', 0):.2f}/{d.get('p99', 0):.2f}/{d.get('max', 0):.2f} ms ({d['count']} PUTs)", flush=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / ("delete_lease.json" if args.lease else "delete_prefix.json")
    out.write_text(json.dumps(result, indent=1))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
