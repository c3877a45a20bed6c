"""Client.watch_page / watch and their AsyncClient twins against real `kv serve` processes.

Every wait has a deadline: generators that would poll for ever run in daemon threads
(or under asyncio.wait_for) and are given up on after a bound.
"""
from __future__ import annotations

import asyncio
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kvpaxos import AsyncClient, Client, Compacted
from kvpaxos.client import Event
from support.cluster import Cluster, module_cluster, wait_until

NODES = [1, 2, 3]
WAIT_S = 20.0  # how long any one expected event may take to show up


@pytest.fixture(scope="module")
def watched(tmp_path_factory):
    yield from module_cluster(tmp_path_factory, "watch")


def fresh(prefix: str = "w") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}/"


def put(cluster: Cluster, node: int, key: str, value: str) -> int:
    """PUT through node `node` alone; the version it answered."""
    with Client([cluster.url(node)], timeout_s=10) as kv:
        return kv.put(key, value)


def delete(cluster: Cluster, node: int, key: str) -> int:
    """DELETE through node `node`; the revision of the delete (its answer's version)."""
    resp = cluster.delete(node, key)
    assert resp.status == 200, resp
    return resp.body["version"]


def waiting_polls(cluster: Cluster, node: int) -> int:
    return cluster.status(node)["watch"]["waiting"]


def follow(events: Iterator[Event]) -> queue.Queue:
    """Read a (never ending) watch in a daemon thread, putting its events (or the error it
    ends with) on the queue returned, so the test can write meanwhile and give up in time."""
    found: queue.Queue[Any] = queue.Queue()

    def read() -> None:
        try:
            for event in events:
                found.put(event)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            found.put(exc)

    threading.Thread(target=read, daemon=True).start()
    return found


def take(events: Iterator[Event], count: int, timeout_s: float = WAIT_S) -> list[Event]:
    """The first `count` events of a watch; fails after timeout_s rather than hang."""
    return drain(follow(events), count, timeout_s)


def drain(found: queue.Queue, count: int, timeout_s: float = WAIT_S) -> list[Event]:
    """The first `count` events on the queue; AssertionError after timeout_s."""
    got: list[Event] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count:
        try:
            item = found.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"only {len(got)} of {count} events after {timeout_s:g}s: {got}") from None
        if isinstance(item, BaseException):
            raise item
        got.append(item)
    return got


def follow_async(make: Callable[[], AsyncClient], count: int, **watch: Any) -> queue.Queue:
    """Run an AsyncClient watch in a thread of its own (its own event loop), putting the
    first `count` events (or the error) on the queue returned."""
    found: queue.Queue[Any] = queue.Queue()

    async def run() -> None:
        async with make() as kv:
            seen = 0
            async for event in kv.watch(**watch):
                found.put(event)
                seen += 1
                if seen == count:
                    return

    def main() -> None:
        try:
            asyncio.run(asyncio.wait_for(run(), WAIT_S * 2))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            found.put(exc)

    threading.Thread(target=main, daemon=True).start()
    return found


def test_watch_page_sees_changes_made_through_other_nodes_in_order(watched):
    prefix = fresh()
    with Client([watched.url(1)], timeout_s=5) as kv:
        events, start = kv.watch_page(prefix=prefix, timeout_s=0)  # where "now" is
        assert events == [] and start >= 1
        v1 = put(watched, 2, prefix + "a", "one")
        v2 = put(watched, 3, prefix + "b", "two")
        put(watched, 2, "elsewhere-" + prefix, "not under the prefix")
        v3 = delete(watched, 3, prefix + "a")
        assert start <= v1 < v2 < v3
        got: list[Event] = []
        at = start
        deadline = time.monotonic() + WAIT_S
        while len(got) < 3 and time.monotonic() < deadline:  # node 1 may apply them a little later
            events, at = kv.watch_page(prefix=prefix, from_revision=at, timeout_s=5)
            got += events
        assert got == [Event(v1, "put", prefix + "a", "one"), Event(v2, "put", prefix + "b", "two"),
                       Event(v3, "delete", prefix + "a", None)]
        assert at == v3 + 1
        # One key: only its changes; from_revision replays the history kept.
        events, after = kv.watch_page(key=prefix + "a", from_revision=start, timeout_s=5)
        assert events == [got[0], got[2]] and after == v3 + 1
        events, _ = kv.watch_page(prefix=prefix, from_revision=start, timeout_s=5, limit=2)
        assert events == got[:2]


def test_a_long_poll_outlasts_the_clients_request_timeout_and_wakes_on_a_change(watched):
    prefix = fresh()
    with Client([watched.url(2)], timeout_s=1) as kv:
        _, start = kv.watch_page(prefix=prefix, timeout_s=0)
        began = time.monotonic()
        events, after = kv.watch_page(prefix=prefix, from_revision=start, timeout_s=2.5)
        took = time.monotonic() - began
        # Nothing changed: an empty page after the poll's own timeout, longer than the
        # client's 1 s, and no Unavailable for a socket that timed out first.
        assert events == [] and after >= start
        assert 2.0 <= took < 10, took

        answered: queue.Queue[Any] = queue.Queue()

        def poll() -> None:
            with Client([watched.url(2)], timeout_s=1) as other:
                answered.put(other.watch_page(key=prefix + "k", from_revision=after, timeout_s=60))

        threading.Thread(target=poll, daemon=True).start()
        wait_until(lambda: waiting_polls(watched, 2) >= 1, 10, "the poll to wait on node 2")
        version = put(watched, 1, prefix + "k", "v")
        events, _ = answered.get(timeout=WAIT_S)  # long before the poll's 60 s
        assert events == [Event(version, "put", prefix + "k", "v")]


def test_watch_follows_every_change_sync_and_async(watched):
    prefix = fresh()
    urls = [watched.url(i) for i in NODES]
    with Client(urls) as kv:
        _, start = kv.watch_page(prefix=prefix, timeout_s=0)
        sync_found = follow(kv.watch(prefix=prefix, from_revision=start, timeout_s=5))
        async_found = follow_async(lambda: AsyncClient(urls), 4, prefix=prefix, from_revision=start, timeout_s=5)
        expected = []
        for n, node in enumerate([2, 3, 1]):
            key = f"{prefix}{n}"
            expected.append(Event(put(watched, node, key, f"value {n}"), "put", key, f"value {n}"))
        expected.append(Event(delete(watched, 2, f"{prefix}0"), "delete", f"{prefix}0", None))
        assert [e.revision for e in expected] == sorted({e.revision for e in expected})
        assert drain(sync_found, 4) == expected
        assert drain(async_found, 4) == expected


def test_the_streams_carry_big_values_and_long_polls_still_work(watched):
    """A change of a 1 MiB value is one line of the event stream (aiohttp's own line
    reader refuses lines past 512 KiB); stream=False keeps the long polls."""
    prefix = fresh("big")
    urls = [watched.url(i) for i in NODES]
    big = "B" * (1024 * 1024 - 16)
    with Client(urls, timeout_s=10) as kv:
        _, start = kv.watch_page(prefix=prefix, timeout_s=0)
        streamed = follow(kv.watch(prefix=prefix, from_revision=start))
        polled = follow(Client(urls).watch(prefix=prefix, from_revision=start, timeout_s=5, stream=False))
        async_found = follow_async(lambda: AsyncClient(urls, timeout_s=10), 2, prefix=prefix, from_revision=start)
        expected = [Event(put(watched, 2, prefix + "a", big), "put", prefix + "a", big),
                    Event(put(watched, 3, prefix + "b", "small"), "put", prefix + "b", "small")]
        assert drain(streamed, 2) == expected
        assert drain(polled, 2) == expected
        assert drain(async_found, 2) == expected


def test_watch_from_a_revision_replays_then_carries_on(watched):
    key = fresh("replay") + "k"
    versions = [put(watched, 1 + n % 3, key, str(n)) for n in range(3)]
    with Client([watched.url(3)]) as kv:
        found = follow(kv.watch(key=key, from_revision=versions[0], timeout_s=5))
        got = drain(found, 3)
        assert got == [Event(v, "put", key, str(n)) for n, v in enumerate(versions)]
        later = put(watched, 1, key, "later")
        assert drain(found, 1) == [Event(later, "put", key, "later")]

    async def replay_async() -> list[Event]:
        async with AsyncClient([watched.url(2)]) as kv:
            events, at = [], versions[1]
            while at <= later:  # node 2 may apply the last ones a little later
                page, at = await kv.watch_page(key=key, from_revision=at, timeout_s=5)
                events += page
            assert at == later + 1
            return events
    assert asyncio.run(asyncio.wait_for(replay_async(), WAIT_S)) == got[1:] + [Event(later, "put", key, "later")]


def test_watch_without_a_start_sees_the_changes_after_it_began(watched):
    """No from_revision: the first step pins "now" on the node; a change made once the
    watch waits is seen, one made before is not."""
    key = fresh("now") + "k"
    before = put(watched, 1, key, "before")
    with Client([watched.url(3)]) as kv:
        events = kv.watch(key=key, timeout_s=10)
        found: queue.Queue[Any] = queue.Queue()
        threading.Thread(target=lambda: found.put(next(events)), daemon=True).start()
        wait_until(lambda: waiting_polls(watched, 3) >= 1, 10, "the watch to wait on node 3")
        after = put(watched, 2, key, "after")
        assert after > before
        assert found.get(timeout=WAIT_S) == Event(after, "put", key, "after")


def test_bad_arguments_fail_at_the_call():
    kv = Client(["127.0.0.1:9"])  # never contacted: the arguments are checked first
    for bad in ({}, {"key": "k", "prefix": "p"}):
        with pytest.raises(ValueError):
            kv.watch_page(**bad)
        with pytest.raises(ValueError):
            kv.watch(**bad)
        with pytest.raises(ValueError):
            AsyncClient(["127.0.0.1:9"]).watch(**bad)


def test_watch_fails_over_when_its_node_dies(cluster):
    """Both clients poll node 1 (their first endpoint) when it is killed; they carry on
    through the others and miss nothing. The sync one starts without a revision."""
    cluster.wait_for_leader()
    urls = [cluster.url(i) for i in NODES]
    prefix = fresh("failover")
    with Client(urls) as kv:
        _, start = kv.watch_page(prefix=prefix, timeout_s=0)
        sync_found = follow(kv.watch(prefix=prefix, timeout_s=10))
        async_found = follow_async(lambda: AsyncClient(urls), 3, prefix=prefix, from_revision=start,
                                   timeout_s=10)
        wait_until(lambda: waiting_polls(cluster, 1) >= 2, 10, "both watches to wait on node 1")
        expected = [put(cluster, 2, prefix + "a", "1")]
        cluster.kill(1)
        expected.append(put(cluster, 3, prefix + "b", "2"))
        expected.append(put(cluster, 2, prefix + "c", "3"))
        sync_events = drain(sync_found, 3, WAIT_S * 2)
    assert [e.revision for e in sync_events] == expected
    assert [e.key for e in sync_events] == [prefix + k for k in "abc"]
    assert drain(async_found, 3, WAIT_S * 2) == sync_events


def test_a_revision_no_longer_kept_raises_compacted(tmp_path):
    cluster = Cluster(tmp_path / "small", n=1, serve_args=["--watch-history", "5"])  # the last 5 changes
    try:
        cluster.start()
        cluster.wait_for_leader()
        with Client([cluster.url(1)]) as kv:
            versions = [kv.put(f"k{n}", str(n)) for n in range(8)]
            assert versions == list(range(1, 9))  # a new cluster: revisions from 1
            with pytest.raises(Compacted) as caught:
                kv.watch_page(prefix="", from_revision=1, timeout_s=0)
            assert (caught.value.oldest, caught.value.revision, caught.value.status) == (4, 8, 410)
            assert caught.value.code == "compacted"
            with pytest.raises(Compacted):
                take(kv.watch(prefix="", from_revision=3, timeout_s=5), 1)
            # The revisions still kept are answered.
            events, after = kv.watch_page(prefix="", from_revision=4, timeout_s=0)
            assert [e.revision for e in events] == [4, 5, 6, 7, 8] and after == 9

        async def compacted_async() -> Compacted:
            async with AsyncClient([cluster.url(1)]) as kv:
                with pytest.raises(Compacted) as raised:
                    async for _ in kv.watch(key="k0", from_revision=2, timeout_s=5):
                        pass
                return raised.value
        assert asyncio.run(asyncio.wait_for(compacted_async(), WAIT_S)).oldest == 4
    finally:
        cluster.stop_all()
