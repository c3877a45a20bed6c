"""Overload: more writes than a node will hold waiting are refused, not timed out.

Real `kv serve` processes with --max-pending-bytes 1MiB and 64 clients each
putting 200 KB values at once through one node: the node takes in what fits,
refuses the rest at once with 503 `overloaded` and Retry-After (the write was
certainly not applied), answers everything it took in, and stays healthy; the
Python client, which retries a 503 elsewhere or later, gets every write through.
"""
from __future__ import annotations

import asyncio
import threading

import aiohttp

from kvpaxos.client import Client

VALUE = "o" * 200_000


def test_writes_past_the_pending_limit_are_refused_with_503_and_the_rest_answered(make_cluster) -> None:
    cluster = make_cluster(serve_args=["--max-pending-bytes", "1MiB"])
    leader = cluster.wait_for_leader()

    async def flood() -> list[tuple[str, int, str, str | None]]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            async def put(i: int) -> tuple[str, int, str, str | None]:
                key = f"flood/{i}"
                async with session.put(f"{cluster.url(leader)}/v1/kv/{key}", json={"value": f"{i}{VALUE}"}) as r:
                    body = await r.json()
                    return key, r.status, body.get("error", ""), r.headers.get("Retry-After")
            return await asyncio.gather(*(put(i) for i in range(64)))

    answers = asyncio.run(flood())
    statuses = sorted({status for _, status, _, _ in answers})
    assert statuses == [200, 503], answers  # neither all taken nor any timeout (504)
    refused = [a for a in answers if a[1] == 503]
    assert all(error == "overloaded" and retry == "1" for _, _, error, retry in refused), refused
    for key, status, _, _ in answers:  # what was answered 200 is there; what was refused is not
        got = cluster.get(leader, key)
        assert got.status == (200 if status == 200 else 404), (key, status, got)
    metrics = cluster.request(leader, "GET", "/metrics").text
    assert f"kvpaxos_requests_overloaded_total {len(refused)}" in metrics, metrics[:2000]
    assert "kvpaxos_pending_bytes 0" in metrics
    # The Python client takes a 503 as "not applied, try again": every write gets through.
    endpoints = [cluster.url(i) for i in cluster.ids]
    failures: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            with Client(endpoints, timeout_s=30) as kv:
                for j in range(4):
                    kv.put(f"retried/{n}/{j}", VALUE)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)
    threads = [threading.Thread(target=writer, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not failures and not any(t.is_alive() for t in threads), failures
    with Client(endpoints) as kv:
        assert sum(1 for _ in kv.iter_keys("retried/", page=10)) == 64
    def refusals() -> int:
        return sum(int(line.rsplit(" ", 1)[1]) for i in cluster.ids
                   for line in cluster.request(i, "GET", "/metrics").text.splitlines()
                   if line.startswith("kvpaxos_requests_overloaded_total "))
    assert refusals() > len(refused)  # the clients were refused too, and went on
    assert not any(cluster.logged_errors(i) for i in cluster.ids)
