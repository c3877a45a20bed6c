"""Transactions (POST /v1/txn) on real `kv serve` processes: all or nothing through any
node, the branch the comparisons pick, each write a change watches see, exactly-once
retries, concurrent transfers that keep a total, a restart that keeps the results, the
Python clients (and their prefix deletes), and bad input answered 400/413 with a JSON
error.

Every wait has a deadline.
"""
from __future__ import annotations

import asyncio
import random
import threading
import uuid

import pytest

from kvpaxos.aioclient import AsyncClient
from kvpaxos.client import Client, TxnResult
from support.cluster import Cluster, module_cluster


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    yield from module_cluster(tmp_path_factory, "txn")


def endpoints(cluster: Cluster) -> list[str]:
    return [cluster.url(i) for i in cluster.ids]


def fresh() -> str:
    return f"txn/{uuid.uuid4().hex[:10]}/"


def txn(cluster: Cluster, node: int, body: dict) -> dict:
    resp = cluster.request(node, "POST", "/v1/txn", body)
    assert resp.status == 200, resp
    return resp.body


def test_the_comparisons_pick_the_branch_and_every_write_is_a_change(shared: Cluster) -> None:
    p = fresh()
    leader = shared.wait_for_leader()
    follower = next(i for i in shared.ids if i != leader)
    v1 = shared.put(leader, p + "a", "1").body["version"]
    body = {"if": [{"key": p + "a", "version": v1}, {"key": p + "b", "exists": False}],
            "then": [{"op": "put", "key": p + "b", "value": "2"}, {"op": "delete", "key": p + "a"},
                     {"op": "delete", "key": p + "zz"}],
            "else": [{"op": "put", "key": p + "lost", "value": "x"}]}
    answer = txn(shared, follower, body)  # through a follower: forwarded, one slot
    assert answer["succeeded"] is True
    assert answer["compared"] == [{"key": p + "a", "version": v1}, {"key": p + "b", "version": 0}]
    revision = answer["revision"]
    assert answer["results"] == [
        {"op": "put", "key": p + "b", "ok": True, "version": revision - 1},
        {"op": "delete", "key": p + "a", "ok": True, "version": revision},
        {"op": "delete", "key": p + "zz", "ok": False, "error": "not_found"}]
    assert shared.get(leader, p + "a").status == 404 and shared.get(leader, p + "b").body["value"] == "2"
    # The same body again: "a" is gone, so the else branch runs.
    again = txn(shared, leader, body)
    assert again["succeeded"] is False and again["compared"][0]["version"] == 0
    assert again["results"] == [{"op": "put", "key": p + "lost", "ok": True, "version": again["revision"]}]
    # Watches see each write of the first one as its own change, with consecutive revisions.
    changes = shared.request(leader, "GET", f"/v1/watch?prefix={p}&from={revision - 1}&timeout=5").body["events"]
    assert [(c["type"], c["key"], c["revision"]) for c in changes][:2] == [
        ("put", p + "b", revision - 1), ("delete", p + "a", revision)]


def test_comparisons_other_than_equality_through_a_follower(shared: Cluster) -> None:
    """"Not modified since revision R" for several keys: version < R+1 each; etcd's
    Compare(ModRevision(k), "<", R+1)."""
    p = fresh()
    leader = shared.wait_for_leader()
    follower = next(i for i in shared.ids if i != leader)
    shared.put(leader, p + "a", "1")
    read_at = shared.put(leader, p + "b", "1").body["version"]
    body = {"if": [{"key": p + "a", "version": read_at + 1, "cmp": "<"},
                   {"key": p + "b", "version": read_at + 1, "cmp": "<"},
                   {"key": p + "b", "value": "0", "cmp": ">"},
                   {"key": p + "c", "exists": True, "cmp": "!="}],
            "then": [{"op": "put", "key": p + "c", "value": "done"}]}
    assert txn(shared, follower, body)["succeeded"] is True
    shared.put(leader, p + "a", "2")  # moved since the read: the same transaction fails now
    body["if"] = body["if"][:2]
    answer = txn(shared, follower, body)
    assert answer["succeeded"] is False and answer["compared"][0]["version"] > read_at


def test_gets_in_a_branch_through_a_follower_and_a_retry(shared: Cluster) -> None:
    """A read-modify-write in one step: the old value, the write, the new value; a retry
    with the same client_id/seq answers the same values though the key moved since."""
    p = fresh()
    leader = shared.wait_for_leader()
    follower = next(i for i in shared.ids if i != leader)
    shared.put(leader, p + "n", "1")
    body = {"if": [{"key": p + "n", "value": "1"}],
            "then": [{"op": "get", "key": p + "n"}, {"op": "put", "key": p + "n", "value": "2"},
                     {"op": "get", "key": p + "n"}, {"op": "get", "key": p + "none"}],
            "else": [{"op": "get", "key": p + "n"}],
            "client_id": p + "reader", "seq": 1}
    answer = txn(shared, follower, body)
    r = answer["revision"]
    assert answer["succeeded"] is True and answer["results"] == [
        {"op": "get", "key": p + "n", "ok": True, "version": r - 1, "value": "1"},
        {"op": "put", "key": p + "n", "ok": True, "version": r},
        {"op": "get", "key": p + "n", "ok": True, "version": r, "value": "2"},
        {"op": "get", "key": p + "none", "ok": False, "error": "not_found"}]
    shared.put(leader, p + "n", "3")
    assert txn(shared, leader, body) == answer
    body.update(client_id=p + "reader", seq=2)
    again = txn(shared, follower, body)  # a new request: the else branch reads "3"
    assert again["succeeded"] is False and again["results"][0]["value"] == "3"


def test_a_retried_transaction_is_applied_once(shared: Cluster) -> None:
    p = fresh()
    leader = shared.wait_for_leader()
    body = {"if": [{"key": p + "n", "exists": False}], "then": [{"op": "put", "key": p + "n", "value": "1"}],
            "else": [{"op": "put", "key": p + "n", "value": "again"}], "client_id": f"c-{p}", "seq": 1}
    first = txn(shared, leader, body)
    for node in shared.ids:
        assert txn(shared, node, body) == first  # the retry's answer, not a second run
    assert shared.get(leader, p + "n").body["value"] == "1"
    stale = shared.request(leader, "POST", "/v1/txn", {**body, "seq": 0})
    assert stale.status == 400 and stale.body["error"] == "bad_request", stale


def test_concurrent_transfers_keep_the_total(shared: Cluster) -> None:
    """Clients move amounts between accounts with read-then-transaction (retried when
    a version moved meanwhile): no update is lost, so the total never changes."""
    p = fresh()
    accounts = [p + f"acct{i}" for i in range(4)]
    with Client(endpoints(shared)) as kv:
        for a in accounts:
            kv.put(a, "100")
    done: list[int] = []
    failures: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        moved = 0
        try:
            with Client(endpoints(shared), timeout_s=10) as kv:
                while moved < 12:
                    src, dst = rng.sample(accounts, 2)
                    a, b = kv.get(src), kv.get(dst)
                    amount = rng.randrange(1, 10)
                    r = kv.txn(compare=[{"key": src, "version": a.version}, {"key": dst, "version": b.version}],
                               then=[{"op": "put", "key": src, "value": str(int(a.value) - amount)},
                                     {"op": "put", "key": dst, "value": str(int(b.value) + amount)}])
                    moved += r.succeeded
            done.append(moved)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    assert not failures and len(done) == 4, failures
    for node in shared.ids:
        listed = shared.list(node, p, stale=False).body["items"]
        assert sum(int(item["value"]) for item in listed) == 400, listed


def test_the_python_clients_run_transactions(shared: Cluster) -> None:
    p = fresh()
    with Client(endpoints(shared)) as kv:
        r = kv.txn(compare=[{"key": p + "k", "version": 0}], then=[{"op": "put", "key": p + "k", "value": "v",
                                                                      "ttl": 60}])
        assert isinstance(r, TxnResult) and r.succeeded and r.versions == {p + "k": 0}
        assert r.results == [{"op": "put", "key": p + "k", "ok": True, "version": r.revision}]
        assert kv.get(p + "k").ttl is not None  # the write's ttl is kept

    async def run() -> TxnResult:
        async with AsyncClient(endpoints(shared)) as akv:
            return await akv.txn(compare=[{"key": p + "k", "value": "other"}], otherwise=[{"op": "delete",
                                                                                            "key": p + "k"}])
    r = asyncio.run(run())
    assert not r.succeeded and r.results[0]["ok"] and shared.get(1, p + "k").status == 404


def test_the_python_clients_delete_a_prefix(shared: Cluster) -> None:
    p = fresh()
    with Client(endpoints(shared)) as kv:
        for n in range(5):
            kv.put(f"{p}{n}", "v")
        kv.put(p[:-1], "beside")
        assert kv.delete_prefix(p) == 5 and kv.list(p) == [] and kv.get(p[:-1]).value == "beside"
        kv.put(p + "again", "v")

    async def run() -> int:
        async with AsyncClient(endpoints(shared)) as akv:
            return await akv.delete_prefix(p)
    assert asyncio.run(run()) == 1


def test_a_transaction_outlives_a_restart_of_every_node(make_cluster) -> None:
    cluster = make_cluster(3)
    leader = cluster.wait_for_leader()
    body = {"if": [{"key": "a", "exists": False}], "then": [{"op": "put", "key": "a", "value": "1"},
                                                             {"op": "put", "key": "b", "value": "2"}],
            "client_id": "restart", "seq": 3}
    first = txn(cluster, leader, body)
    cluster.kill_many(cluster.ids)
    cluster.start()
    leader = cluster.wait_for_leader()
    assert txn(cluster, leader, body) == first  # its exactly-once record came back from disk
    assert [cluster.get(leader, k).body["value"] for k in ("a", "b")] == ["1", "2"]


@pytest.mark.parametrize("body, status, code", [
    ({}, 400, "bad_request"),  # nothing to compare or write
    ({"if": [{"key": "a"}]}, 400, "bad_request"),  # a comparison of nothing
    ({"if": [{"key": "a", "version": 1, "value": "x"}]}, 400, "bad_request"),  # two at once
    ({"if": [{"key": "a", "version": -1}]}, 400, "bad_request"),
    ({"if": [{"key": "a", "exists": "yes"}]}, 400, "bad_request"),
    ({"if": [{"key": "", "exists": True}]}, 400, "invalid_key"),
    ({"if": "a"}, 400, "bad_request"),
    ({"if": [{"key": "a", "version": 1, "cmp": "<="}]}, 400, "bad_request"),
    ({"if": [{"key": "a", "exists": True, "cmp": ">"}]}, 400, "bad_request"),
    ({"if": [{"key": "a", "value": "x", "cmp": ["<"]}]}, 400, "bad_request"),
    ({"if": [{"key": "a", "cmp": "<"}]}, 400, "bad_request"),
    ({"then": [{"op": "cas", "key": "a", "value": "x"}]}, 400, "bad_request"),
    ({"then": [{"op": "get", "key": "a", "value": "x"}]}, 400, "bad_request"),
    ({"then": [{"op": "get", "key": "a", "ttl": 5}]}, 400, "bad_request"),
    ({"then": [{"op": "get"}]}, 400, "bad_request"),
    ({"then": [{"op": "put", "key": "a"}]}, 400, "bad_request"),  # no value
    ({"then": [{"op": "delete", "key": "a", "value": "x"}]}, 400, "bad_request"),
    ({"then": [{"op": "put", "key": "a", "value": "x", "ttl": 0}]}, 400, "bad_request"),
    ({"then": [{"op": "put", "key": "a", "value": "x"}] * 129}, 400, "bad_request"),  # too many writes
    ({"if": [{"key": "a", "exists": True}] * 65}, 400, "bad_request"),
    ({"then": [{"op": "put", "key": "a", "value": "x"}], "when": "now"}, 400, "bad_request"),
    ({"then": [{"op": "put", "key": "a", "value": "x"}], "client_id": "c"}, 400, "bad_request"),
    ({"then": [{"op": "put", "key": f"k{i}", "value": "x" * 300_000} for i in range(4)]}, 413, "value_too_large"),
])
def test_bad_transactions_are_refused_with_a_json_error(shared: Cluster, body, status, code) -> None:
    resp = shared.request(1, "POST", "/v1/txn", body)
    assert (resp.status, resp.error) == (status, code), resp
    assert shared.status(1)["id"] == 1
