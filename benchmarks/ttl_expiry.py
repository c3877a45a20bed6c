"""Many keys expiring at once: how long they take to go, and what it costs the writes
going on meanwhile.

Starts a fresh local cluster (3 nodes, data on disk), puts K keys with one and the same
time to live (through batches of 1,000, so that they share a deadline to within a few
milliseconds), and keeps single PUTs going to the leader at a fixed rate from before
the deadline until every key is gone. Reports:

- how long after the last deadline the last key was gone from the leader (it deletes at
  most 1,000 keys a slot, and proposes an empty slot each tick while more are due);
- the PUTs' latency (p50, p99, max) before the deadline and while the keys went (the
  max stands for the longest the leader's event loop was held by one slot's expiries).

    python benchmarks/ttl_expiry.py                          # 20,000 keys, 200 writes/s
    python benchmarks/ttl_expiry.py --keys 100000 --rate 500

Writes benchmarks/results/ttl_expiry.json (--out-dir to change).
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

REPO = Path(__file__).resolve().parent.parent
BATCH = 1000
PREFIX = "exp/"


async def count_left(session: aiohttp.ClientSession, url: str) -> int:
    """Keys with a time to live still on the node at url (its status: cheap to ask often,
    where listing thousands of keys every few milliseconds would load the leader itself)."""
    async with session.get(f"{url}/v1/status") as r:
        return (await r.json())["ttl"]["keys"]


async def run(cluster: BenchCluster, keys: int, ttl_s: float, rate: float) -> dict:
    leader_url = cluster.nodes[cluster.leader()].url
    async with aiohttp.ClientSession() as session:
        loaded_at = time.perf_counter()
        for start in range(0, keys, BATCH):
            ops = [{"op": "put", "key": f"{PREFIX}{i:07}", "value": "x" * 100, "ttl": ttl_s}
                   for i in range(start, min(keys, start + BATCH))]
            async with session.post(f"{leader_url}/v1/batch", json={"ops": ops}) as r:
                if r.status != 200:
                    raise RuntimeError(f"batch answered {r.status}: {await r.text()}")
        deadline = loaded_at + ttl_s  # no key's deadline is earlier; the last one's is later by the load time
        last_deadline = time.perf_counter() + ttl_s
        if time.perf_counter() > deadline:
            raise RuntimeError(f"loading {keys} keys took longer than their ttl ({ttl_s:g} s): give a longer --ttl")
        writes = SteadyPuts(session, leader_url, rate)
        writes.start()
        gone_at = None
        give_up = last_deadline + 60
        while time.perf_counter() < give_up:
            await asyncio.sleep(0.02)
            if time.perf_counter() >= deadline and await count_left(session, leader_url) == 0:
                gone_at = time.perf_counter()
                break
        await writes.stop()
        if gone_at is None:
            raise RuntimeError("keys still left 60 s after their deadline")
        left_elsewhere = {u: await count_left(session, u) for u in cluster.urls}
    before = writes.between(0.0, deadline - 0.1)
    during = writes.between(deadline, gone_at)
    return {"keys": keys, "ttl_s": ttl_s, "rate": rate,
            "gone_after_last_deadline_ms": round(max(0.0, gone_at - last_deadline) * 1e3, 1),
            "gone_after_first_deadline_ms": round((gone_at - deadline) * 1e3, 1),
            "keys_left_on_nodes_after": left_elsewhere,
            "write_ms_before": latency_ms(before), "write_ms_while_expiring": latency_ms(during)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keys", type=int, default=20_000, help="keys given one deadline")
    p.add_argument("--ttl", type=float, default=5.0, help="their time to live, seconds (longer than loading them)")
    p.add_argument("--rate", type=float, default=200.0, help="single PUTs a second meanwhile")
    p.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args(argv)
    if args.keys < 1 or args.ttl <= 0 or args.rate <= 0:
        p.error("--keys must be at least 1, --ttl and --rate above 0")
    with BenchCluster(3) as cluster:
        result = asyncio.run(run(cluster, args.keys, args.ttl, args.rate))
    b, d = result["write_ms_before"], result["write_ms_while_expiring"]
    print(f"{args.keys} keys with one ttl of {args.ttl:g} s: all gone {result['gone_after_last_deadline_ms']:.0f} ms "
          f"after the last deadline; PUTs at {args.rate:g}/s p50/p99/max before "
          f"{b.get('p50', 0):.2f}/{b.get('p99', 0):.2f}/{b.get('max', 0):.2f} ms, while expiring "
          f"{d.get('p50', 0):.2f}/{d.get('p99', 0):.2f}/{d.get('max', 0):.2f} ms ({d['count']} PUTs)", flush=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / "ttl_expiry.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
