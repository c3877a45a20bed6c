"""Watches (GET /v1/watch) on real `kv serve` processes: long polls, history, failover,
a history too short for the revision asked, restarts, and a stopping node.

Every wait has a deadline; a long poll's own timeout is always shorter than the
HTTP request's.
"""
from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor

import aiohttp
import pytest

from kvpaxos.aioclient import AsyncClient
from kvpaxos.client import Client, Compacted
from support.cluster import Cluster, module_cluster, request, wait_until


@pytest.fixture
def clusters(make_cluster):
    """make(serve_args): a started 3-node cluster with a leader, its nodes given those options."""
    def make(serve_args: list[str] = ()) -> Cluster:
        cluster = make_cluster(3, serve_args=serve_args)
        cluster.wait_for_leader()
        return cluster

    return make


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    yield from module_cluster(tmp_path_factory, "watch")


def watch(cluster: Cluster, node: int, http_timeout: float = 15.0, **query) -> object:
    path = "/v1/watch?" + urllib.parse.urlencode(query)
    return request(cluster.ports[node], "GET", path, timeout=http_timeout)


def events_of(resp) -> list[tuple]:
    assert resp.status == 200, resp
    return [(e["revision"], e["type"], e["key"], e.get("value")) for e in resp.body["events"]]


def fresh() -> str:
    return f"w-{uuid.uuid4().hex[:10]}/"


async def read_stream(url: str, count: int, headers: dict | None = None, timeout_s: float = 20.0,
                      ready: asyncio.Event | None = None) -> list[tuple[str, str | None, str]]:
    """Open a watch stream and read `count` events as (event name, id, data), or fewer if
    the stream ends first; `ready` is set once the stream's first bytes arrived."""
    events: list[tuple[str, str | None, str]] = []
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            fields: dict[str, str] = {}
            async for raw in resp.content:
                if ready is not None:
                    ready.set()
                line = raw.decode("utf-8").rstrip("\n")
                if line and not line.startswith(":"):
                    name, _, value = line.partition(":")
                    fields[name] = value.lstrip(" ")
                    continue
                if "data" in fields:
                    events.append((fields.get("event", "message"), fields.get("id"), fields["data"]))
                    if len(events) == count:
                        break
                fields = {}
    return events


def test_a_waiting_watch_answers_a_change_made_through_another_node(shared):
    prefix = fresh()
    start = watch(shared, 1, prefix=prefix, timeout=0).body["next"]
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(watch, shared, 2, prefix=prefix, timeout=20, **{"from": start})
        time.sleep(0.3)  # the poll is waiting (an early answer would have no event below)
        put = shared.put(3, prefix + "x", "one")
        assert put.status == 200, put
        answer = pending.result(timeout=15)
    assert events_of(answer) == [(put.body["version"], "put", prefix + "x", "one")]
    assert answer.body["next"] == put.body["version"] + 1
    assert answer.elapsed_s < 15  # woken by the change, not by its timeout


def test_every_node_reports_the_same_changes_with_the_versions_writes_returned(shared):
    prefix = fresh()
    start = watch(shared, 1, prefix=prefix, timeout=0).body["next"]
    want = []
    for n in range(12):
        key = prefix + f"k{n % 4}"
        if n % 5 == 4:
            resp = shared.delete(1 + n % 3, key)
            assert resp.status == 200, resp
            want.append((resp.body["version"], "delete", key, None))
        else:
            resp = shared.put(1 + n % 3, key, f"v{n}")
            assert resp.status == 200, resp
            want.append((resp.body["version"], "put", key, f"v{n}"))
    assert [w[0] for w in want] == sorted(w[0] for w in want)
    for node in shared.ids:
        # A follower may not have applied the last slot yet: its long poll waits for it.
        seen = []
        at = start
        deadline = time.monotonic() + 15
        while len(seen) < len(want) and time.monotonic() < deadline:
            resp = watch(shared, node, prefix=prefix, timeout=5, limit=5, consistency="stale", **{"from": at})
            seen += events_of(resp)
            at = resp.body["next"]
        assert seen == want, node
    # One key's watch sees that key's changes only.
    one = watch(shared, 2, key=prefix + "k1", timeout=0, **{"from": start})
    assert events_of(one) == [w for w in want if w[2] == prefix + "k1"]


def test_a_watch_without_from_starts_after_every_acknowledged_write(shared):
    prefix = fresh()
    for node in shared.ids:
        put = shared.put(1 + node % 3, prefix + "k", f"before-{node}")
        assert put.status == 200, put
        # Through any node at once: the write just acknowledged is not reported as new.
        resp = watch(shared, node, prefix=prefix, timeout=0)
        assert events_of(resp) == []
        assert resp.body["next"] > put.body["version"], (resp, put)


def test_bad_watch_requests_get_clear_errors(shared):
    for query in ({}, {"key": "a", "prefix": "b"}, {"key": "a", "from": "0"}, {"key": "a", "from": "x"},
                  {"key": "a", "timeout": "301"}, {"key": "a", "timeout": "nan"}, {"key": "a", "timeout": " 5"},
                  {"key": "a", "timeout": "1e1"}, {"key": "a", "timeout": "\u0663"}, {"key": "a", "limit": "0"},
                  {"key": "a", "limit": "10001"}, {"key": ""}, {"key": "a", "consistency": "eventual"},
                  {"key": "a", "from": "1", "consistency": "eventual"}):
        resp = watch(shared, 1, **query)
        assert resp.status == 400, (query, resp)
        assert resp.body["error"] in ("bad_request", "invalid_key") and resp.body["message"], (query, resp)
    assert shared.status(1)["role"] in ("leader", "follower")  # the node is fine


def test_a_watcher_following_next_sees_every_acknowledged_write_across_a_leader_kill(clusters):
    cluster = clusters()
    prefix = fresh()
    start = watch(cluster, 1, prefix=prefix, timeout=0).body["next"]
    seen: list[tuple] = []
    stop = threading.Event()

    def watcher() -> None:
        at, node = start, 1
        while not stop.is_set() or seen_behind():
            try:
                resp = watch(cluster, node, http_timeout=10, prefix=prefix, timeout=1, **{"from": at})
            except OSError:
                node = node % 3 + 1  # that node is down: ask the next one from the same revision
                continue
            if resp.status != 200:
                node = node % 3 + 1
                continue
            seen.extend(events_of(resp))
            at = resp.body["next"]

    acked: dict[int, tuple] = {}

    def seen_behind() -> bool:
        return bool(acked) and (not seen or seen[-1][0] < max(acked))

    def writer(w: int) -> None:
        deadline = time.monotonic() + 45
        for n in range(40):
            key, value = prefix + f"{w}-{n}", f"v{n}"
            node = 1 + (w + n) % 3
            while time.monotonic() < deadline:  # through the election: 503s, the dead node
                try:
                    resp = cluster.put(node, key, value, timeout=5)
                except OSError:
                    resp = None
                if resp is not None and resp.status == 200:
                    acked[resp.body["version"]] = ("put", key, value)
                    break
                node = node % 3 + 1
                time.sleep(0.05)

    watching = threading.Thread(target=watcher, daemon=True)
    watching.start()
    with ThreadPoolExecutor(3) as pool:
        writes = [pool.submit(writer, w) for w in range(3)]
        wait_until(lambda: len(acked) >= 30, 30, "a quarter of the writes")  # the rest go across the kill
        leader = cluster.wait_for_leader()
        cluster.kill(leader)
        for f in writes:
            f.result(timeout=60)
    stop.set()
    watching.join(timeout=30)
    assert not watching.is_alive()
    revisions = [e[0] for e in seen]
    assert revisions == sorted(set(revisions)), "each change once, in order"
    by_revision = {e[0]: e[1:] for e in seen}
    for version, change in acked.items():
        assert by_revision.get(version) == change, (version, change)
    assert len(acked) == 120


def test_a_short_history_answers_compacted_and_a_list_then_watch_goes_on(clusters):
    cluster = clusters(["--watch-history", "20"])
    prefix = fresh()
    for n in range(50):
        assert cluster.put(1 + n % 3, prefix + f"k{n % 7}", f"v{n}").status == 200
    wait_until(lambda: all(cluster.status(i)["watch"]["revision"] == 50 for i in cluster.ids), 10,
               "every node to apply the writes")
    for node in cluster.ids:
        old = watch(cluster, node, prefix=prefix, timeout=0, **{"from": 1})
        assert old.status == 410, old
        assert old.body["error"] == "compacted" and old.body["oldest"] == 31 and old.body["revision"] == 50, old
        as_stream = watch(cluster, node, prefix=prefix, stream="true", **{"from": 1})
        assert as_stream.status == 410 and as_stream.body["oldest"] == 31, as_stream  # before the stream begins
        held = watch(cluster, node, prefix=prefix, timeout=0, **{"from": 31})
        assert [e[0] for e in events_of(held)] == list(range(31, 51))
    # What a watcher does then: read the keys, watch from after that read.
    other = cluster.put(1, fresh() + "elsewhere", "y")  # the list's revision is the store's, not the prefix's
    listed = cluster.list(2, prefix)
    assert listed.status == 200 and len(listed.body["items"]) == 7
    assert listed.body["revision"] == other.body["version"] > max(i["version"] for i in listed.body["items"])
    put = cluster.put(3, prefix + "new", "x")
    resp = watch(cluster, 2, prefix=prefix, timeout=10, **{"from": listed.body["revision"] + 1})
    assert events_of(resp) == [(put.body["version"], "put", prefix + "new", "x")]


def test_a_restarted_node_holds_the_changes_after_its_snapshot(clusters):
    cluster = clusters(["--snapshot-every", "20", "--compact-keep", "5"])
    prefix = fresh()
    for n in range(80):
        assert cluster.put(1 + n % 3, prefix + f"k{n % 9}", f"v{n}").status == 200
    wait_until(lambda: cluster.status(2)["snapshot"]["slot"] > 0, 15, "node 2 to take a snapshot")
    cluster.kill(2)
    cluster.restart(2)
    cluster.wait_caught_up(2)
    st = cluster.status(2)["watch"]
    assert 1 < st["first"] <= st["revision"] == cluster.status(1)["watch"]["revision"], st
    resp = watch(cluster, 2, prefix=prefix, timeout=0, **{"from": 1})
    assert resp.status == 410 and resp.body["oldest"] == st["first"], resp
    # What it holds is what a node that never stopped reports for those revisions.
    mine = watch(cluster, 2, prefix=prefix, timeout=0, **{"from": st["first"]})
    theirs = watch(cluster, 1, prefix=prefix, timeout=0, **{"from": st["first"]})
    assert events_of(mine) == events_of(theirs) and events_of(mine)


def test_the_client_asks_the_other_nodes_before_it_says_compacted(clusters):
    cluster = clusters(["--snapshot-every", "20", "--compact-keep", "5"])
    prefix = fresh()
    for n in range(60):
        assert cluster.put(1 + n % 3, prefix + f"k{n % 9}", f"v{n}").status == 200
    for i in (2, 3):
        wait_until(lambda: cluster.status(i)["snapshot"]["slot"] > 0, 15, f"node {i} to take a snapshot")
    cluster.restart(2)  # it holds only the changes after its snapshot now
    cluster.wait_caught_up(2)
    assert cluster.status(2)["watch"]["first"] > 1
    urls = [cluster.url(2), cluster.url(3), cluster.url(1)]
    with Client(urls, timeout_s=5) as kv:
        events, _ = kv.watch_page(prefix=prefix, from_revision=1, timeout_s=0)
        assert [e.revision for e in events][:3] == [1, 2, 3]  # from node 3, which never restarted

    async def through_async() -> list[int]:
        async with AsyncClient(urls, timeout_s=5) as kv:
            return [e.revision for e in (await kv.watch_page(prefix=prefix, from_revision=1, timeout_s=0))[0]]
    assert asyncio.run(through_async())[:3] == [1, 2, 3]
    cluster.restart(3)
    cluster.restart(1)
    cluster.wait_for_leader()
    oldest = min(cluster.status(i)["watch"]["first"] for i in cluster.ids)
    assert oldest > 1
    with Client(urls, timeout_s=5) as kv, pytest.raises(Compacted) as caught:
        kv.watch_page(prefix=prefix, from_revision=1, timeout_s=0)
    assert caught.value.oldest == oldest  # the most any node holds


def test_a_stopping_node_answers_its_waiting_watches_at_once(clusters):
    cluster = clusters()
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(watch, cluster, 3, http_timeout=30, prefix="", timeout=60)
        time.sleep(0.5)
        proc = cluster.procs[3]
        cluster.kill(3, signal.SIGTERM)  # waits for the process to end
        resp = pending.result(timeout=25)
    assert resp.status == 200 and resp.body["events"] == [], resp
    assert resp.elapsed_s < 10, resp  # not the poll's minute
    assert proc.returncode == 0


def test_a_node_cut_off_from_the_others_sends_its_watchers_elsewhere(clusters):
    """A watch waiting on a node that loses its leader answers 503 no_quorum (not an empty
    page after its whole timeout), and so does a new one while it has none: the watcher
    asks another node, which hears of the changes this one cannot."""
    cluster = clusters()
    start = watch(cluster, 3, prefix="", timeout=0).body["next"]
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(watch, cluster, 3, http_timeout=40, prefix="", timeout=30, **{"from": start})
        wait_until(lambda: cluster.status(3)["watch"]["waiting"] == 1, 10, "the watch to wait")
        cluster.kill_many([1, 2])  # node 3 alone: no majority, so no leader
        resp = pending.result(timeout=35)
    assert resp.status == 503 and resp.body["error"] == "no_quorum", resp
    assert resp.elapsed_s < 20, resp  # well before the poll's 30 s
    again = watch(cluster, 3, prefix="", timeout=10, **{"from": start})
    assert again.status == 503 and again.elapsed_s < 5, again  # at once, while it has no leader
    cluster.start([1, 2])
    cluster.wait_for_leader()
    put = cluster.put(1, "after", "x")
    resp = watch(cluster, 3, prefix="", timeout=10, **{"from": start})
    assert events_of(resp) == [(put.body["version"], "put", "after", "x")]


def test_a_watch_stream_sends_each_change_as_an_event_and_resumes_after_the_last_id(shared):
    prefix = fresh()
    start = watch(shared, 1, prefix=prefix, timeout=0).body["next"]
    url = f"{shared.url(2)}/v1/watch?" + urllib.parse.urlencode({"prefix": prefix, "from": start, "stream": "true"})

    async def main() -> tuple[list, list]:
        ready = asyncio.Event()
        reading = asyncio.ensure_future(read_stream(url, 3, ready=ready))
        await asyncio.wait_for(ready.wait(), 10)
        want = []
        for node, (method, value) in zip((1, 3, 1), (("put", "a"), ("put", "b"), ("delete", None))):
            resp = await asyncio.to_thread(shared.put if value else shared.delete, node, prefix + "k",
                                           *([value] if value else []))
            assert resp.status == 200, resp
            want.append((resp.body["version"], method, value))
        got = await asyncio.wait_for(reading, 20)
        # Reconnecting with the last id it got (as an EventSource does) goes on after it.
        again = await read_stream(url, 2, headers={"Last-Event-ID": got[0][1]})
        return want, [got, again]

    want, (got, again) = asyncio.run(main())
    assert [(int(i), json.loads(d)["type"], json.loads(d).get("value")) for _, i, d in got] == want
    assert all(name == "message" and json.loads(d)["revision"] == int(i) for name, i, d in got)
    assert [int(i) for _, i, _ in again] == [want[1][0], want[2][0]]


def test_a_watch_stream_stops_when_its_node_loses_its_leader_and_ends_when_it_stops(clusters):
    cluster = clusters()
    url = f"{cluster.url(3)}/v1/watch?prefix=&stream=true"

    async def lose_leader() -> list:
        ready = asyncio.Event()
        reading = asyncio.ensure_future(read_stream(url, 1, ready=ready, timeout_s=30))
        await asyncio.wait_for(ready.wait(), 10)
        await asyncio.to_thread(cluster.kill_many, [1, 2])
        return await asyncio.wait_for(reading, 25)

    [(name, _, data)] = asyncio.run(lose_leader())
    assert name == "stop" and json.loads(data)["error"] == "no_quorum", data
    cluster.start([1, 2])
    cluster.wait_for_leader()

    async def node_stops() -> tuple[list, float]:
        ready = asyncio.Event()
        reading = asyncio.ensure_future(read_stream(url, 1, ready=ready, timeout_s=30))
        await asyncio.wait_for(ready.wait(), 10)
        began = time.monotonic()
        await asyncio.to_thread(cluster.kill, 3, signal.SIGTERM)
        return await asyncio.wait_for(reading, 25), time.monotonic() - began

    events, took = asyncio.run(node_stops())
    assert events == [] and took < 10  # the stream ended with the node, not at a timeout


def test_closing_an_async_client_from_another_task_ends_its_watch(shared):
    async def run() -> tuple[list, float]:
        async with AsyncClient([shared.url(1), shared.url(2)], timeout_s=5) as kv:
            before = sum(shared.status(i)["watch"]["waiting"] for i in (1, 2))

            async def follow() -> list:
                return [event async for event in kv.watch(prefix=fresh(), timeout_s=60)]

            watching = asyncio.create_task(follow())
            while sum(shared.status(i)["watch"]["waiting"] for i in (1, 2)) <= before:
                assert not watching.done(), watching
                await asyncio.sleep(0.05)
            began = time.monotonic()
            await kv.close()
            events = await asyncio.wait_for(watching, 30)
            took = time.monotonic() - began
            await kv.put(fresh() + "after", "v")  # a client closed once can be used again
            return events, took

    events, took = asyncio.run(run())
    assert events == [] and took < 20  # it ended quietly with the close, not at its 60 s poll


def test_closing_a_client_from_another_thread_ends_its_watch(shared):
    ended: list = []
    with Client([shared.url(1), shared.url(2)], timeout_s=5) as kv:
        before = sum(shared.status(i)["watch"]["waiting"] for i in (1, 2))

        def follow() -> None:
            try:
                ended.append(list(kv.watch(prefix=fresh(), timeout_s=2)))
            except BaseException as exc:  # noqa: BLE001 - the test thread looks at it
                ended.append(exc)

        thread = threading.Thread(target=follow, daemon=True)
        thread.start()
        wait_until(lambda: sum(shared.status(i)["watch"]["waiting"] for i in (1, 2)) > before, 10,
                   "the watch to wait")
        kv.close()
        thread.join(timeout=15)
    assert not thread.is_alive() and ended == [[]], ended  # it ended quietly, with no event
