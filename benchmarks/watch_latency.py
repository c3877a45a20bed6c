"""How soon a watcher sees a write, and what watchers cost the nodes.

Starts a fresh local cluster (3 nodes, data on disk), puts W watchers on it (long polls of
GET /v1/watch on every key, spread over the nodes, each following `next`; or, with the
stream mode, one server-sent event stream each), and writes
single PUTs to the leader at a fixed rate for a while. For every write it takes the time
its PUT was sent and answered, and for every watcher the time the change reached it, and
reports, over every (write, watcher) pair:

- delay from the PUT's answer to the watcher's (p50, p90, p99, max): what an application
  that reacts to changes waits, beyond the write itself; it can be below zero, when a
  watcher hears of the change before the writer has read its answer;
- that every watcher saw every write, once, in order (the run fails otherwise);
- the nodes' CPU per write, and the same rate again with no watcher, for comparison.

    python benchmarks/watch_latency.py                       # 200 writes/s, 1 and 16 watchers, both forms
    python benchmarks/watch_latency.py --rate 500 --watchers 1,64 --duration 10 --modes stream

Writes benchmarks/results/watch_latency.json (--out-dir to change).
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
from kvpaxos.bench.stats import percentile  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def summarize(ms: list[float]) -> dict:
    values = sorted(ms)
    out = {name: round(percentile(values, pct), 3) for name, pct in (("p50", 50), ("p90", 90), ("p99", 99))}
    return {**out, "max": round(values[-1], 3), "count": len(values)}


async def watcher(session: aiohttp.ClientSession, url: str, start: int, seen: dict[int, float],
                  stop: asyncio.Event) -> None:
    at = start
    while not stop.is_set():
        async with session.get(f"{url}/v1/watch", params={"prefix": "", "from": str(at), "timeout": "1"}) as r:
            doc = await r.json()
            now = time.perf_counter()
            if r.status != 200:
                raise RuntimeError(f"watch on {url} answered {r.status}: {doc}")
        for event in doc["events"]:
            if event["revision"] in seen:
                raise RuntimeError(f"revision {event['revision']} seen twice on {url}")
            seen[event["revision"]] = now
        at = doc["next"]


async def stream_watcher(session: aiohttp.ClientSession, url: str, start: int, seen: dict[int, float],
                         stop: asyncio.Event) -> None:
    """The same as watcher(), through one server-sent event stream (GET /v1/watch?stream=true)."""
    params = {"prefix": "", "from": str(start), "stream": "true"}
    async with session.get(f"{url}/v1/watch", params=params) as r:
        if r.status != 200:
            raise RuntimeError(f"watch stream on {url} answered {r.status}: {await r.text()}")
        reading = asyncio.ensure_future(r.content.readline())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while True:
                await asyncio.wait((reading, stopping), return_when=asyncio.FIRST_COMPLETED)
                if not reading.done():
                    return
                line = reading.result()
                now = time.perf_counter()
                if not line:
                    raise RuntimeError(f"watch stream on {url} ended")
                if line.startswith(b"data: "):
                    revision = json.loads(line[6:])["revision"]
                    if revision in seen:
                        raise RuntimeError(f"revision {revision} seen twice on {url}")
                    seen[revision] = now
                elif line.startswith(b"event: stop"):
                    raise RuntimeError(f"watch stream on {url} stopped")
                reading = asyncio.ensure_future(r.content.readline())
        finally:
            for f in (reading, stopping):
                f.cancel()


async def run_level(cluster: BenchCluster, leader: int, watchers: int, rate: float, duration_s: float,
                    stream: bool = False) -> dict:
    leader_url = cluster.nodes[leader].url
    urls = [leader_url] + [u for u in cluster.urls if u != leader_url]  # watcher 0 on the leader
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{leader_url}/v1/status") as r:
            start = (await r.json())["watch"]["revision"] + 1
        seen: list[dict[int, float]] = [{} for _ in range(watchers)]
        stop = asyncio.Event()
        follow = stream_watcher if stream else watcher
        tasks = [asyncio.create_task(follow(session, urls[i % len(urls)], start, seen[i], stop))
                 for i in range(watchers)]
        await asyncio.sleep(0.5)  # every watcher is waiting
        cpu0 = cluster.cpu_seconds()
        answered: dict[int, float] = {}
        sent_at: dict[int, float] = {}
        writes, t0 = int(rate * duration_s), time.perf_counter()

        async def put(n: int) -> None:
            began = time.perf_counter()
            async with session.put(f"{leader_url}/v1/kv/w{n % 100}", json={"value": f"v{n}"}) as r:
                doc = await r.json()
                done = time.perf_counter()
            if r.status != 200:
                raise RuntimeError(f"PUT answered {r.status}: {doc}")
            answered[doc["version"]], sent_at[doc["version"]] = done, began

        puts = []
        for n in range(writes):
            await asyncio.sleep(max(0.0, t0 + n / rate - time.perf_counter()))
            puts.append(asyncio.create_task(put(n)))
        await asyncio.gather(*puts)
        cpu1 = cluster.cpu_seconds()
        last = max(answered)
        deadline = time.perf_counter() + 10
        while any(max(s, default=0) < last for s in seen) and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*tasks)
    delays: dict[str, list[float]] = {"leader": [], "follower": []}
    for i, s in enumerate(seen):
        if sorted(s) != list(range(start, last + 1)):
            raise RuntimeError(f"a watcher saw {len(s)} changes of {last - start + 1}, or not in order")
        role = "leader" if urls[i % len(urls)] == leader_url else "follower"
        delays[role] += [(s[v] - answered[v]) * 1e3 for v in answered]
    cpu = sum((cpu1[i] or 0) - (cpu0[i] or 0) for i in cpu1)
    out = {"watchers": watchers, "stream": stream and watchers > 0, "rate": rate, "writes": len(answered),
           "write_ms": summarize([(answered[v] - sent_at[v]) * 1e3 for v in answered]),
           "node_cpu_us_per_write": round(1e6 * cpu / len(answered), 1)}
    for role, ms in delays.items():
        if ms:
            out[f"seen_after_answer_ms_{role}"] = summarize(ms)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=200.0, help="writes per second")
    p.add_argument("--duration", type=float, default=5.0, help="seconds of writes per level")
    p.add_argument("--watchers", default="1,16", help="comma-separated watcher counts (0: none)")
    p.add_argument("--modes", default="poll,stream",
                   help="poll (long polls), stream (server-sent events) or both, comma-separated")
    p.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args(argv)
    try:
        levels = [int(x) for x in args.watchers.split(",")]
    except ValueError:
        p.error("--watchers takes whole numbers, as in 1,16")
    if args.rate <= 0 or args.duration <= 0 or any(n < 0 for n in levels):
        p.error("--rate and --duration must be above 0, and watcher counts at least 0")
    modes = args.modes.split(",")
    if not modes or not set(modes) <= {"poll", "stream"}:
        p.error("--modes takes poll, stream or poll,stream")
    runs = [(0, False)] + [(n, mode == "stream") for mode in modes for n in levels if n > 0]
    results = []
    with BenchCluster(3) as cluster:
        leader = cluster.leader()
        for watchers, stream in runs:
            level = asyncio.run(run_level(cluster, leader, watchers, args.rate, args.duration, stream))
            results.append(level)
            where = "; ".join(
                f"seen on the {role} after the PUT's answer p50 {d['p50']:.2f} ms, p99 {d['p99']:.2f} ms, "
                f"max {d['max']:.2f} ms" for role in ("leader", "follower")
                if (d := level.get(f"seen_after_answer_ms_{role}"))) or "no watcher"
            kind = "streams" if stream else "polls"
            print(f"{watchers:3d} {kind:7s}, {level['writes']} writes at {args.rate:g}/s: PUT p50 "
                  f"{level['write_ms']['p50']:.2f} ms; {where}; node CPU {level['node_cpu_us_per_write']:.0f} "
                  f"us/write", flush=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / "watch_latency.json"
    out.write_text(json.dumps({"rate": args.rate, "duration_s": args.duration, "levels": results}, indent=1))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
