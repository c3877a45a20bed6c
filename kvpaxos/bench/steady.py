"""Single PUTs to one node at a fixed rate, each timed: the writes of the moment that a
bulk operation (keys expiring by the thousand, a prefix delete) must not hold up.
Used by benchmarks/ttl_expiry.py and benchmarks/delete_prefix.py."""
from __future__ import annotations

import asyncio
import time

import aiohttp

from kvpaxos.bench.stats import percentile


class SteadyPuts:
    """PUT w0 .. w{keys-1} in turn to `url`, `rate` a second, until stop(); `latencies`
    holds (when sent, by time.perf_counter; milliseconds to the answer) of each."""

    def __init__(self, session: aiohttp.ClientSession, url: str, rate: float, keys: int = 100) -> None:
        self.session, self.url, self.rate, self.keys = session, url, rate, keys
        self.latencies: list[tuple[float, float]] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._write())

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    def between(self, start: float, end: float) -> list[float]:
        """The milliseconds of the PUTs sent from start to end (time.perf_counter)."""
        return [ms for at, ms in self.latencies if start <= at <= end]

    async def _put(self, n: int) -> None:
        began = time.perf_counter()
        async with self.session.put(f"{self.url}/v1/kv/w{n % self.keys}", json={"value": f"v{n}"}) as r:
            await r.read()
            if r.status != 200:
                raise RuntimeError(f"PUT answered {r.status}")
        self.latencies.append((began, (time.perf_counter() - began) * 1e3))

    async def _write(self) -> None:
        n, t0, puts = 0, time.perf_counter(), []
        while not self._stop.is_set():
            await asyncio.sleep(max(0.0, t0 + n / self.rate - time.perf_counter()))
            puts.append(asyncio.create_task(self._put(n)))
            n += 1
        await asyncio.gather(*puts)


def latency_ms(values: list[float]) -> dict:
    """p50, p99, max and count of latencies in milliseconds."""
    values = sorted(values)
    if not values:
        return {"count": 0}
    return {"p50": round(percentile(values, 50), 3), "p99": round(percentile(values, 99), 3),
            "max": round(values[-1], 3), "count": len(values)}
