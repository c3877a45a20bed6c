"""Leases on real `kv serve` processes, through HTTP: a grant, keys put with the
lease, keepalives that keep them, and the lease's end (it runs out with no other
writes to carry the clock, or is revoked) deleting every key on every node at one
revision after another, which a watch sees; a lease outlives its leader and a
whole-cluster crash and restart from snapshots; exactly-once grants; bad input is
a 4xx in JSON.

Every wait has a deadline.
"""
from __future__ import annotations

import signal
import time
import urllib.parse
import uuid

import pytest

from support.cluster import Cluster, module_cluster, wait_until


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    yield from module_cluster(tmp_path_factory, "lease")


def fresh() -> str:
    return f"lease-{uuid.uuid4().hex[:10]}"


def grant(cluster: Cluster, i: int, ttl: float, **fields) -> int:
    resp = cluster.request(i, "POST", "/v1/leases", {"ttl": ttl, **fields})
    assert resp.status == 200 and resp.body["ttl"] == ttl, resp
    return resp.body["id"]


def test_a_lease_runs_out_with_all_its_keys_on_every_node(shared: Cluster) -> None:
    prefix = fresh()
    lease = grant(shared, 1, 2.0)
    keys = [f"{prefix}/{i}" for i in range(5)]
    started = time.monotonic()
    versions = [shared.put(1 + n % 3, key, "v", lease=lease).body["version"] for n, key in enumerate(keys)]
    other = shared.put(2, f"{prefix}/plain", "stays")
    assert other.status == 200
    got = shared.get(3, keys[0])
    assert got.status == 200 and got.body["lease"] == lease and "ttl" not in got.body, got
    info = shared.request(2, "GET", f"/v1/leases/{lease}?keys=true")
    assert info.status == 200 and info.body["keys"] == sorted(keys) and info.body["ttl"] == 2.0, info
    assert 0 < info.body["ttl_left"] <= 2.0, info
    items = {i["key"]: i for i in shared.list(1, prefix).body["items"]}
    assert [items[k]["lease"] for k in keys] == [lease] * 5 and "lease" not in items[f"{prefix}/plain"], items
    shared.wait_gone(*keys)
    assert time.monotonic() - started >= 1.9  # it lived its two seconds
    assert shared.get(1, f"{prefix}/plain").status == 200
    resp = shared.request(3, "GET", f"/v1/leases/{lease}")
    assert resp.status == 404 and resp.body["error"] == "lease_not_found", resp
    # One delete per key, at consecutive revisions: the keys went in one slot.
    watched = shared.request(1, "GET", "/v1/watch?" + urllib.parse.urlencode(
        {"prefix": prefix + "/", "from": min(versions), "timeout": "5", "limit": "100"}), timeout=10)
    deletes = [e for e in watched.body["events"] if e["type"] == "delete"]
    assert sorted(e["key"] for e in deletes) == sorted(keys), watched.body
    revisions = [e["revision"] for e in deletes]
    assert revisions == list(range(revisions[0], revisions[0] + len(keys))), revisions
    for i in shared.ids:
        status = shared.status(i)["leases"]
        assert status["expired"] >= 1, status
        metrics = shared.request(i, "GET", "/metrics").text
        assert [line for line in metrics.splitlines() if line.startswith("kvpaxos_leases_expired_total ")]


def test_keepalives_keep_a_lease_past_its_ttl(shared: Cluster) -> None:
    key = fresh()
    lease = grant(shared, 2, 1.0)
    assert shared.put(2, key, "kept", lease=lease).status == 200
    for n in range(6):  # three times its ttl
        time.sleep(0.5)
        resp = shared.request(1 + n % 3, "POST", f"/v1/leases/{lease}/keepalive")
        assert resp.status == 200 and resp.body == {"id": lease, "ttl": 1.0}, resp
    assert shared.get(3, key).body["value"] == "kept"
    shared.wait_gone(key)
    resp = shared.request(1, "POST", f"/v1/leases/{lease}/keepalive")
    assert resp.status == 404 and resp.body["error"] == "lease_not_found", resp


def test_a_revoke_deletes_the_keys_at_once(shared: Cluster) -> None:
    prefix = fresh()
    lease = grant(shared, 3, 600)
    for i in range(3):
        assert shared.put(1, f"{prefix}/{i}", "v", lease=lease).status == 200
    resp = shared.request(2, "DELETE", f"/v1/leases/{lease}")
    assert resp.status == 200 and resp.body["id"] == lease and resp.body["deleted"] == 3, resp
    # Linearizable: the next read through any node sees them gone.
    assert all(shared.get(i, f"{prefix}/0").status == 404 for i in shared.ids)
    assert shared.request(1, "DELETE", f"/v1/leases/{lease}").body["error"] == "lease_not_found"
    resp = shared.put(3, f"{prefix}/late", "v", lease=lease)
    assert resp.status == 404 and resp.body["error"] == "lease_not_found", resp
    assert shared.get(3, f"{prefix}/late").status == 404


def test_a_list_of_leases_pages_in_id_order(shared: Cluster) -> None:
    ids = [grant(shared, 1, 300) for _ in range(3)]
    assert shared.put(1, fresh(), "v", lease=ids[1]).status == 200
    listed = shared.request(2, "GET", "/v1/leases").body
    mine = {x["id"]: x for x in listed["leases"] if x["id"] in ids}
    assert [mine[i]["keys"] for i in ids] == [0, 1, 0] and all(mine[i]["ttl"] == 300 for i in ids), listed
    page = shared.request(3, "GET", f"/v1/leases?after={ids[0]}&limit=1").body
    assert [x["id"] for x in page["leases"]] == [ids[1]] and page["more"] is True, page


def test_a_grant_with_a_client_id_is_applied_once(shared: Cluster) -> None:
    body = {"ttl": 60, "client_id": fresh(), "seq": 1}
    first = shared.request(1, "POST", "/v1/leases", body)
    again = shared.request(2, "POST", "/v1/leases", body)  # a retry: the same lease, not a second
    assert first.status == again.status == 200 and first.body["id"] == again.body["id"], (first, again)
    wanted = first.body["id"] + 1000
    asked = shared.request(3, "POST", "/v1/leases", {"ttl": 60, "id": wanted})
    assert asked.status == 200 and asked.body["id"] == wanted, asked
    taken = shared.request(3, "POST", "/v1/leases", {"ttl": 60, "id": wanted})
    assert taken.status == 409 and taken.body["error"] == "lease_exists", taken


def test_a_lease_outlives_its_leader(make_cluster) -> None:
    cluster = make_cluster(3)
    leader = cluster.wait_for_leader()
    key = fresh()
    lease = grant(cluster, leader, 3.0)
    assert cluster.put(leader, key, "v", lease=lease).status == 200
    others = [i for i in cluster.ids if i != leader]
    cluster.wait_caught_up(others[0])
    cluster.kill(leader, signal.SIGKILL)
    cluster.wait_for_leader(ids=others, timeout=20)
    resp = cluster.request(others[1], "POST", f"/v1/leases/{lease}/keepalive", timeout=10)
    assert resp.status == 200, resp
    assert cluster.get(others[0], key).body["lease"] == lease
    cluster.wait_gone(key, ids=others, timeout=15)  # the new leader ends it too


def test_a_lease_outlives_a_lost_majority_longer_than_its_ttl(make_cluster) -> None:
    # No keepalive can be applied while no leader is: the new leader's first slot starts
    # every lease's ttl again (as etcd's new leader does), so a lease whose keeper went on
    # trying is not lost to the outage.
    cluster = make_cluster(3)
    leader = cluster.wait_for_leader()
    key = fresh()
    lease = grant(cluster, leader, 1.5)
    assert cluster.put(leader, key, "v", lease=lease).status == 200
    others = [i for i in cluster.ids if i != leader]
    cluster.wait_caught_up(others[0])
    cluster.kill_many([leader, others[1]], signal.SIGKILL)
    time.sleep(2.5)  # past the lease's deadline, with no majority to apply a keepalive
    cluster.start([others[1]])
    cluster.wait_for_leader(ids=others, timeout=20)
    resp = cluster.request(others[0], "POST", f"/v1/leases/{lease}/keepalive", timeout=10)
    assert resp.status == 200, resp
    got = cluster.get(others[1], key)
    assert got.status == 200 and got.body["lease"] == lease, got
    cluster.wait_gone(key, ids=others, timeout=15)  # and without keepalives it ends


def test_leases_survive_a_crash_of_every_node_and_restart_from_snapshots(make_cluster) -> None:
    cluster = make_cluster(3, serve_args=["--snapshot-every", "5", "--compact-keep", "2"])
    leader = cluster.wait_for_leader()
    key, long_key = fresh(), fresh()
    short, long = grant(cluster, leader, 6.0), grant(cluster, leader, 600)
    assert cluster.put(leader, key, "v", lease=short).status == 200
    assert cluster.put(leader, long_key, "v", lease=long).status == 200
    for i in range(30):  # past a snapshot and a compaction on every node
        assert cluster.put(leader, f"{key}-fill-{i}", "x").status == 200
    wait_until(lambda: all(s["snapshot"]["slot"] >= 10 for s in cluster.statuses().values()), 15,
               "a snapshot on every node")
    cluster.kill_many(list(cluster.ids), signal.SIGKILL)
    cluster.start()
    cluster.wait_for_leader(timeout=20)
    cluster.wait_gone(key, timeout=15)
    got = cluster.get(2, long_key)
    assert got.status == 200 and got.body["lease"] == long, got
    # Ids already granted are not granted again after the restart.
    assert grant(cluster, 3, 10) > long


@pytest.mark.parametrize("method, path, body, status, code", [
    ("POST", "/v1/leases", {}, 400, "bad_request"),  # no ttl
    ("POST", "/v1/leases", {"ttl": 0}, 400, "bad_request"),
    ("POST", "/v1/leases", {"ttl": "5"}, 400, "bad_request"),
    ("POST", "/v1/leases", {"ttl": 5, "id": 0}, 400, "bad_request"),
    ("POST", "/v1/leases", {"ttl": 5, "id": 2**63}, 400, "bad_request"),
    ("POST", "/v1/leases", {"ttl": 5, "keys": []}, 400, "bad_request"),
    ("POST", "/v1/leases", None, 400, "invalid_json"),
    ("GET", "/v1/leases/abc", None, 400, "bad_request"),
    ("GET", "/v1/leases/0", None, 400, "bad_request"),
    ("GET", "/v1/leases/99999999999", None, 404, "lease_not_found"),
    ("GET", "/v1/leases?limit=0", None, 400, "bad_request"),
    ("GET", "/v1/leases?prefix=x", None, 400, "bad_request"),
    ("POST", "/v1/leases/99999999999/keepalive", None, 404, "lease_not_found"),
    ("POST", "/v1/leases/1/keepalive", {"ttl": 5}, 400, "bad_request"),
    ("DELETE", "/v1/leases/99999999999", None, 404, "lease_not_found"),
    ("PUT", "/v1/kv/lease-bad", {"value": "v", "lease": 99999999999}, 404, "lease_not_found"),
    ("PUT", "/v1/kv/lease-bad", {"value": "v", "lease": 5, "ttl": 5}, 400, "bad_request"),
    ("PUT", "/v1/kv/lease-bad", {"value": "v", "lease": "5"}, 400, "bad_request"),
    ("PUT", "/v1/kv/lease-bad", {"value": "v", "lease": -1}, 400, "bad_request"),
    ("PUT", "/v1/kv/lease-bad", {"refresh": True, "ttl": 5, "lease": 1}, 400, "bad_request"),
    ("DELETE", "/v1/kv/lease-bad", {"lease": 1}, 400, "bad_request"),
])
def test_bad_lease_input_is_a_4xx_in_json(shared: Cluster, method, path, body, status, code) -> None:
    resp = shared.request(1, method, path, body)
    assert resp.status == status and resp.body["error"] == code, resp
    assert shared.get(1, "lease-bad").status == 404


def test_a_refresh_of_a_key_on_a_lease_is_a_409(shared: Cluster) -> None:
    key = fresh()
    lease = grant(shared, 1, 300)
    assert shared.put(1, key, "v", lease=lease).status == 200
    resp = shared.request(2, "PUT", f"/v1/kv/{key}", {"refresh": True, "ttl": 5})
    assert resp.status == 409 and resp.body["error"] == "key_has_lease", resp


def test_batches_and_transactions_put_keys_on_a_lease(shared: Cluster) -> None:
    a, b, c = fresh(), fresh(), fresh()
    lease = grant(shared, 1, 300)
    resp = shared.request(2, "POST", "/v1/batch", {"ops": [
        {"op": "put", "key": a, "value": "x", "lease": lease}, {"op": "get", "key": a},
        {"op": "put", "key": c, "value": "x", "lease": 99999999999}]})
    assert resp.status == 200, resp
    assert resp.body["results"][1]["lease"] == lease, resp
    assert resp.body["results"][2] == {"ok": False, "version": 0, "error": "lease_not_found"}, resp
    resp = shared.request(3, "POST", "/v1/txn", {"if": [{"key": b, "exists": False}],
                                                 "then": [{"op": "put", "key": b, "value": "y", "lease": lease}]})
    assert resp.status == 200 and resp.body["succeeded"], resp
    info = shared.request(1, "GET", f"/v1/leases/{lease}?keys=true").body
    assert info["keys"] == sorted([a, b]), info
    bad = shared.request(1, "POST", "/v1/txn", {"then": [{"op": "put", "key": b, "value": "y", "lease": lease,
                                                          "ttl": 5}]})
    assert bad.status == 400 and bad.body["error"] == "bad_request", bad
