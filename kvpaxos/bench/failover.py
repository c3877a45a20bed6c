"""Failover: kill -9 the leader, time until a write is acknowledged again.

A fresh cluster serves a steady open-loop stream of PUTs (`rate` per second,
spread over the nodes that are not about to die, each with a short timeout, no
client_id so nothing is retried for us). Each trial: wait for an agreed leader,
let writes flow, SIGKILL the leader, and take the time from the kill to the
first acknowledgement of a write that was *sent after* the kill through a
surviving node (a write sent before could have been chosen by the old leader).
Then restart the killed node with its data, wait until it has caught up, and
go again.
"""
from __future__ import annotations

import asyncio
import signal
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field

import aiohttp
from yarl import URL

from kvpaxos.bench.cluster import BenchCluster
from kvpaxos.bench.loadgen import value_of
from kvpaxos.bench.stats import percentile


@dataclass
class _Writer:
    """Open-loop writes to a changing set of nodes, on an event loop in a thread."""
    rate: float
    timeout_s: float
    value: str
    targets: list[str] = field(default_factory=list)
    acks: list[tuple[float, float, str]] = field(default_factory=list)  # (sent, acked, url)
    failures: int = 0
    _stop: bool = False

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        body = ('{"value":"%s"}' % self.value).encode()
        headers = {"Content-Type": "application/json"}
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        interval = 1.0 / self.rate
        pending: set[asyncio.Task] = set()
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async def one(base: str, i: int) -> None:
                sent = time.monotonic()
                try:
                    async with session.put(URL(f"{base}/v1/kv/failover-{i % 100}", encoded=True),
                                           data=body, headers=headers) as resp:
                        await resp.read()
                        ok = resp.status == 200
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                    ok = False
                if ok:
                    self.acks.append((sent, time.monotonic(), base))
                else:
                    self.failures += 1

            i = 0
            next_at = time.monotonic()
            while not self._stop:
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                targets = self.targets
                if targets:
                    i += 1
                    task = asyncio.create_task(one(targets[i % len(targets)], i))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
            if pending:
                await asyncio.wait(pending, timeout=self.timeout_s + 1)

    def stop(self) -> None:
        self._stop = True


def run_failover(nodes: int = 3, trials: int = 10, rate: float = 200.0, timeout_s: float = 1.0,
                 settle_s: float = 1.0, show_progress: bool = True, max_wait_s: float = 30.0) -> dict:
    """Run the trials on a fresh cluster; a summary dict with per-trial times in ms."""
    results: list[dict] = []
    with BenchCluster(nodes) as cluster:
        writer = _Writer(rate, timeout_s, value_of(100, 7))
        thread = threading.Thread(target=writer.run, daemon=True)
        thread.start()
        try:
            for trial in range(1, trials + 1):
                leader = cluster.leader(timeout_s=max_wait_s)
                survivors = [n.url for i, n in cluster.nodes.items() if i != leader]
                writer.targets = survivors
                time.sleep(settle_s)
                before = len(writer.acks)
                killed_at = time.monotonic()
                cluster.kill(leader, signal.SIGKILL)
                deadline = killed_at + max_wait_s
                first = None
                while time.monotonic() < deadline:
                    after = [a for a in writer.acks[before:] if a[0] >= killed_at]
                    if after:
                        first = min(after, key=lambda a: a[1])
                        break
                    time.sleep(0.005)
                row = {"trial": trial, "killed": leader,
                       "recovery_ms": None if first is None else round(1000 * (first[1] - killed_at), 1),
                       "via": first[2] if first else None}
                try:
                    row["new_leader"] = cluster.leader(timeout_s=max_wait_s, among=[
                        i for i in cluster.nodes if i != leader])
                except TimeoutError:
                    row["new_leader"] = None
                results.append(row)
                if show_progress:
                    took = "no write acknowledged" if first is None else f"{row['recovery_ms']:.0f} ms"
                    print(f"  failover trial {trial}/{trials}: killed leader {leader}, "
                          f"writes acknowledged again after {took} (new leader {row['new_leader']})",
                          file=sys.stderr, flush=True)
                cluster.start_node(leader)
                cluster.wait_caught_up(leader, timeout_s=max_wait_s)
                writer.targets = cluster.urls
        finally:
            writer.stop()
            thread.join(timeout=timeout_s + 5)
    times = [r["recovery_ms"] for r in results if r["recovery_ms"] is not None]
    ordered = sorted(times)
    return {
        "nodes": nodes, "trials": trials, "write_rate": rate, "request_timeout_s": timeout_s,
        "recovered": len(times),
        "median_ms": round(statistics.median(ordered), 1) if times else None,
        "p90_ms": percentile(ordered, 90) if times else None,
        "max_ms": ordered[-1] if times else None,
        "min_ms": ordered[0] if times else None,
        "runs": results,
        "failed_writes": writer.failures,
    }
