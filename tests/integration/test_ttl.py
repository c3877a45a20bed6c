"""Keys with a time to live on real `kv serve` processes: a put's "ttl" deletes the key
on every node once it runs out, with no other writes to carry the clock; puts
refresh or clear it; batches take it too; deadlines survive a whole-cluster crash
and restart from snapshots, and a new leader expires what the old one left; bad
input is a 400 in JSON.

Every wait has a deadline.
"""
from __future__ import annotations

import signal
import time
import urllib.parse
import uuid

import pytest

from kvpaxos.client import Client
from kvpaxos.core.kvstate import EXPIRE_PER_SLOT
from support.cluster import Cluster, module_cluster, wait_until


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    yield from module_cluster(tmp_path_factory, "ttl")


def fresh() -> str:
    return f"ttl-{uuid.uuid4().hex[:10]}"


def test_a_key_expires_on_every_node_with_no_other_writes(shared: Cluster) -> None:
    key = fresh()
    started = time.monotonic()
    put = shared.put(2, key, "soon", ttl=2.0)
    assert put.status == 200, put
    got = shared.get(3, key)
    assert got.status == 200 and got.body["value"] == "soon" and 0 < got.body["ttl"] <= 2.0, got
    shared.wait_gone(key)
    assert time.monotonic() - started >= 1.9  # not at once: it lived its two seconds
    # The expiry is a change of its own, which a watch sees as a delete.
    resp = shared.request(1, "GET", "/v1/watch?" + urllib.parse.urlencode(
        {"key": key, "from": put.body["version"], "timeout": "5"}), timeout=10)
    assert resp.status == 200, resp
    events = [(e["type"], e["revision"]) for e in resp.body["events"]]
    assert len(events) == 2 and events[0] == ("put", put.body["version"]), resp.body
    assert events[1][0] == "delete" and events[1][1] > put.body["version"], resp.body
    # Every node counts it, in its status and its metrics.
    for i in shared.ids:
        assert shared.status(i)["ttl"]["expired"] >= 1
        metrics = shared.request(i, "GET", "/metrics").text
        expired = [line for line in metrics.splitlines() if line.startswith("kvpaxos_keys_expired_total ")]
        assert expired and float(expired[0].split()[1]) >= 1, metrics[-600:]


def test_a_put_refreshes_or_clears_the_time_to_live(shared: Cluster) -> None:
    refreshed, cleared, other = fresh(), fresh(), fresh()
    for key in (refreshed, cleared):
        assert shared.put(1, key, "v", ttl=1.0).status == 200
    assert shared.put(2, refreshed, "v2", ttl=60).status == 200
    assert shared.put(3, cleared, "forever").status == 200
    assert shared.put(1, other, "x", ttl=0.5).status == 200
    shared.wait_gone(other)  # past the first deadline of the two others
    time.sleep(0.7)
    got = shared.get(1, refreshed)
    assert got.status == 200 and got.body["value"] == "v2" and 55 < got.body["ttl"] <= 60, got
    got = shared.get(2, cleared)
    assert got.status == 200 and got.body["value"] == "forever" and "ttl" not in got.body, got
    # A list shows the same.
    items = {i["key"]: i for i in shared.list(3, "ttl-").body["items"]}
    assert 55 < items[refreshed]["ttl"] <= 60 and "ttl" not in items[cleared], items


def test_a_batch_put_takes_a_ttl(shared: Cluster) -> None:
    short, longer, kept = fresh(), fresh(), fresh()
    resp = shared.request(2, "POST", "/v1/batch", {"ops": [
        {"op": "put", "key": short, "value": "a", "ttl": 0.5},
        {"op": "put", "key": longer, "value": "c", "ttl": 60},
        {"op": "put", "key": kept, "value": "b"}]})
    assert resp.status == 200 and all(r["ok"] for r in resp.body["results"]), resp
    resp = shared.request(1, "POST", "/v1/batch", {"ops": [{"op": "get", "key": longer}, {"op": "get", "key": kept}]})
    assert resp.status == 200 and 55 < resp.body["results"][0]["ttl"] <= 60, resp  # a batch's get shows it too
    assert "ttl" not in resp.body["results"][1], resp
    shared.wait_gone(short)
    assert shared.get(3, kept).status == 200


@pytest.mark.parametrize("body", [
    {"value": "v", "ttl": 0}, {"value": "v", "ttl": -1}, {"value": "v", "ttl": "5"},
    {"value": "v", "ttl": True}, {"value": "v", "ttl": 1e12}, {"value": "v", "ttl": [1]},
])
def test_a_bad_ttl_is_a_400_in_json(shared: Cluster, body: dict) -> None:
    key = fresh()
    resp = shared.request(1, "PUT", f"/v1/kv/{key}", body)
    assert resp.status == 400 and resp.body["error"] == "bad_request" and "ttl" in resp.body["message"], resp
    assert shared.get(1, key).status == 404  # nothing written


def test_a_ttl_on_a_delete_or_a_batch_delete_is_refused(shared: Cluster) -> None:
    key = fresh()
    assert shared.put(1, key, "v").status == 200
    resp = shared.request(1, "DELETE", f"/v1/kv/{key}", {"ttl": 5})
    assert resp.status == 400 and resp.body["error"] == "bad_request", resp
    resp = shared.request(1, "POST", "/v1/batch", {"ops": [{"op": "delete", "key": key, "ttl": 5}]})
    assert resp.status == 400 and "ops[0].ttl" in resp.body["message"], resp
    assert shared.get(1, key).status == 200


def test_the_python_client_puts_with_a_ttl(shared: Cluster) -> None:
    key = fresh()
    with Client([shared.url(i) for i in shared.ids]) as kv:
        kv.put(key, "v", ttl=30)
        entry = kv.get(key)
        assert entry.value == "v" and entry.ttl is not None and 25 < entry.ttl <= 30
        assert [e.ttl is not None and 25 < e.ttl <= 30 for e in kv.list(key)] == [True]
        kv.put(key, "w")
        assert kv.get(key).ttl is None and kv.list(key)[0].ttl is None


def test_deadlines_survive_a_crash_of_every_node_and_restart_from_snapshots(make_cluster) -> None:
    cluster = make_cluster(3, serve_args=["--snapshot-every", "5", "--compact-keep", "2"])
    leader = cluster.wait_for_leader()
    key, keeper = fresh(), fresh()
    put_at = time.monotonic()
    assert cluster.put(leader, key, "v", ttl=6).status == 200
    assert cluster.put(leader, keeper, "v").status == 200
    for i in range(30):  # past a snapshot and a compaction on every node
        assert cluster.put(leader, f"{key}-fill-{i}", "x").status == 200
    wait_until(lambda: all(s["snapshot"]["slot"] >= 10 for s in cluster.statuses().values()), 15,
               "a snapshot on every node")
    cluster.kill_many(list(cluster.ids), signal.SIGKILL)
    cluster.start()
    cluster.wait_for_leader(timeout=20)
    got = cluster.get(1, key)
    if time.monotonic() - put_at < 5:  # the restart was quick enough to see it still there
        assert got.status == 200 and 0 < got.body["ttl"] <= 6, got
    cluster.wait_gone(key, timeout=15)
    assert cluster.get(2, keeper).status == 200


def test_a_new_leader_expires_what_the_old_one_left(make_cluster) -> None:
    cluster = make_cluster(3)
    leader = cluster.wait_for_leader()
    key = fresh()
    assert cluster.put(leader, key, "v", ttl=1.5).status == 200
    cluster.wait_caught_up(next(i for i in cluster.ids if i != leader))
    cluster.kill(leader, signal.SIGKILL)
    others = [i for i in cluster.ids if i != leader]
    cluster.wait_for_leader(ids=others, timeout=20)
    cluster.wait_gone(key, ids=others, timeout=15)


def test_a_refresh_keeps_the_value_and_version_and_watches_see_nothing(shared: Cluster) -> None:
    key = fresh()
    put = shared.put(1, key, "held", ttl=2.0)
    assert put.status == 200, put
    version = put.body["version"]
    resp = shared.request(2, "PUT", f"/v1/kv/{key}", {"refresh": True, "ttl": 60})
    assert resp.status == 200 and resp.body == {"key": key, "version": version}, resp
    time.sleep(2.3)  # past the first deadline
    got = shared.get(3, key)
    assert got.status == 200 and got.body["value"] == "held" and got.body["version"] == version, got
    assert 55 < got.body["ttl"] <= 60, got
    watched = shared.request(1, "GET", "/v1/watch?" + urllib.parse.urlencode(
        {"key": key, "from": version + 1, "timeout": "0.5"}), timeout=10)
    assert watched.status == 200 and watched.body["events"] == [], watched
    # Through a batch too, and the Python client, with a precondition.
    resp = shared.request(3, "POST", "/v1/batch", {"ops": [{"op": "refresh", "key": key, "ttl": 5}]})
    assert resp.status == 200 and resp.body["results"] == [{"ok": True, "version": version}], resp
    with Client([shared.url(i) for i in shared.ids]) as kv:
        assert kv.refresh(key, 0.5, if_value="held") == version
    shared.wait_gone(key)


@pytest.mark.parametrize("body, status, code", [
    ({"refresh": True, "ttl": 5}, 404, "not_found"),  # no such key
    ({"refresh": True, "ttl": 5, "value": "v"}, 400, "bad_request"),
    ({"refresh": True}, 400, "bad_request"),
    ({"refresh": "yes", "ttl": 5}, 400, "bad_request"),
])
def test_a_refresh_of_a_missing_key_or_with_a_bad_body_is_refused(shared: Cluster, body, status, code) -> None:
    key = fresh()
    resp = shared.request(2, "PUT", f"/v1/kv/{key}", body)
    assert resp.status == status and resp.body["error"] == code, resp
    assert shared.get(2, key).status == 404


def test_more_keys_than_a_slot_deletes_expire_with_no_other_writes(shared: Cluster) -> None:
    prefix = fresh() + "/"
    count = 2 * EXPIRE_PER_SLOT + 100  # three slots' worth at the least
    resp = shared.request(1, "POST", "/v1/batch", {"ops": [
        {"op": "put", "key": f"{prefix}{i:04}", "value": "x", "ttl": 1.0} for i in range(count)]})
    assert resp.status == 200 and all(r["ok"] for r in resp.body["results"]), resp
    before = shared.status(1)["ttl"]["expired"]

    def gone() -> bool:
        return all(shared.list(i, prefix, stale=True).body["items"] == [] for i in shared.ids)
    wait_until(gone, 15, f"{count} keys to expire on every node")
    assert shared.status(1)["ttl"]["expired"] - before >= count
