"""The HTTP API of real `kv serve` processes: reads, writes, CAS, lists, errors."""
from __future__ import annotations

import codecs
import json
import urllib.parse
import uuid

import pytest

from support.cluster import Cluster, key_path, module_cluster, wait_until

NODES = [1, 2, 3]
VALUE_MAX = 1024 * 1024


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    yield from module_cluster(tmp_path_factory, "api")


def fresh(prefix: str = "k") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def assert_error(resp, status: int, code: str) -> None:
    assert resp.status == status, resp
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    assert isinstance(resp.body, dict) and set(resp.body) == {"error", "message"}, resp
    assert resp.body["error"] == code, resp
    assert resp.body["message"], resp


@pytest.mark.parametrize("node", NODES)
def test_put_get_delete_through_every_node(api, node):
    key = fresh()
    put = api.put(node, key, "hello")
    assert put.status == 200, put
    assert put.body == {"key": key, "version": put.body["version"]}
    version = put.body["version"]
    assert version >= 1
    for other in NODES:
        got = api.get(other, key)
        assert got.status == 200, got
        assert got.body == {"key": key, "value": "hello", "version": version}

    deleted = api.delete(node, key)
    assert deleted.status == 200, deleted
    assert deleted.body["key"] == key and deleted.body["deleted"] is True
    assert deleted.body["version"] > version
    for other in NODES:
        assert_error(api.get(other, key), 404, "not_found")
    assert_error(api.delete(node, key), 404, "not_found")


def test_versions_only_grow(api):
    key = fresh()
    versions = []
    for n, node in enumerate(NODES * 2):
        resp = api.put(node, key, f"v{n}")
        assert resp.status == 200, resp
        versions.append(resp.body["version"])
    assert versions == sorted(set(versions)), versions
    deleted = api.delete(2, key)
    assert deleted.body["version"] > versions[-1]
    again = api.put(3, key, "back")
    assert again.status == 200 and again.body["version"] > deleted.body["version"], again
    assert api.get(1, key).body == {"key": key, "value": "back", "version": again.body["version"]}


@pytest.mark.parametrize("node", NODES)
def test_cas_if_value(api, node):
    key = fresh()
    assert_error(api.put(node, key, "x", if_value="anything"), 412, "precondition_failed")
    assert_error(api.get(node, key), 404, "not_found")  # a failed CAS creates nothing

    v1 = api.put(node, key, "a").body["version"]
    assert_error(api.put(node, key, "b", if_value="not-a"), 412, "precondition_failed")
    assert api.get(node % 3 + 1, key).body == {"key": key, "value": "a", "version": v1}

    ok = api.put(node, key, "b", if_value="a")
    assert ok.status == 200 and ok.body["version"] > v1, ok
    assert api.get(node % 3 + 1, key).body == {"key": key, "value": "b", "version": ok.body["version"]}


@pytest.mark.parametrize("node", NODES)
def test_cas_if_version(api, node):
    key = fresh()
    created = api.put(node, key, "first", if_version=0)  # 0: only if absent
    assert created.status == 200, created
    v1 = created.body["version"]
    assert_error(api.put(node, key, "again", if_version=0), 412, "precondition_failed")
    assert_error(api.put(node, key, "stale", if_version=v1 + 1000), 412, "precondition_failed")
    assert api.get(node, key).body == {"key": key, "value": "first", "version": v1}

    ok = api.put(node, key, "second", if_version=v1)
    assert ok.status == 200, ok
    v2 = ok.body["version"]
    assert_error(api.put(node, key, "third", if_version=v1), 412, "precondition_failed")

    assert_error(api.delete(node, key, if_version=v1), 412, "precondition_failed")
    assert api.get(node, key).body == {"key": key, "value": "second", "version": v2}
    deleted = api.delete(node, key, if_version=v2)
    assert deleted.status == 200, deleted
    assert_error(api.get(node, key), 404, "not_found")


def test_list_prefix_limit_in_key_order(api):
    prefix = fresh("list") + "/"
    names = ["d", "a", "c/x", "b", "c", "é", "A"]
    for n, name in enumerate(names):
        assert api.put(NODES[n % 3], prefix + name, f"val-{name}").status == 200
    assert api.put(1, prefix[:-1], "outside the prefix").status == 200
    expected = sorted(prefix + name for name in names)

    for node in NODES:
        whole = api.list(node, prefix)
        assert whole.status == 200, whole
        assert [item["key"] for item in whole.body["items"]] == expected
        assert whole.body["more"] is False
        for item in whole.body["items"]:
            assert item["value"] == "val-" + item["key"][len(prefix):]
            assert isinstance(item["version"], int) and item["version"] > 0

        first = api.list(node, prefix, limit=3)
        assert [item["key"] for item in first.body["items"]] == expected[:3]
        assert first.body["more"] is True
        exact = api.list(node, prefix, limit=len(expected))
        assert [item["key"] for item in exact.body["items"]] == expected
        assert exact.body["more"] is False

    empty = api.list(2, fresh("nothing-here")).body
    assert empty == {"items": [], "more": False, "revision": empty["revision"]} and empty["revision"] >= 1


def test_a_list_page_of_large_values_stops_near_four_mib(api):
    """Without a bound, 10,000 values of 1 MiB would make one 10 GiB answer."""
    from kvpaxos import Client

    prefix = fresh("big") + "/"
    for n in range(6):
        assert api.put(1 + n % 3, f"{prefix}{n}", str(n) * 900_000, timeout=30).status == 200
    page = api.list(2, prefix).body  # limit 1000 by default
    assert [item["key"] for item in page["items"]] == [f"{prefix}{n}" for n in range(4)] and page["more"]
    single = api.list(3, prefix + "5").body  # one entry always fits
    assert len(single["items"]) == 1 and not single["more"]
    with Client([api.url(i) for i in NODES], timeout_s=30) as kv:
        assert [e.key for e in kv.iter_keys(prefix)] == [f"{prefix}{n}" for n in range(6)]


def test_list_pages_on_after_the_last_key(api):
    import asyncio

    from kvpaxos import AsyncClient, Client

    prefix = fresh("pages") + "/"
    batch = {"ops": [{"op": "put", "key": f"{prefix}{n:04d}", "value": str(n)} for n in range(250)]}
    assert api.request(1, "POST", "/v1/batch", batch).status == 200
    expected = [f"{prefix}{n:04d}" for n in range(250)]
    seen, after = [], None
    while True:  # pages of 100 through the raw API, each asking after the last key so far
        query = {"prefix": prefix, "limit": "100", **({"after": after} if after else {})}
        page = api.request(2, "GET", "/v1/kv?" + urllib.parse.urlencode(query)).body
        seen += [item["key"] for item in page["items"]]
        if not page["more"]:
            break
        after = seen[-1]
    assert seen == expected
    with Client([api.url(i) for i in NODES]) as kv:
        assert [e.key for e in kv.iter_keys(prefix, page=64)] == expected
        assert [e.key for e in kv.list(prefix, 3, after=expected[10])] == expected[11:14]

    async def walk() -> list[str]:
        async with AsyncClient([api.url(i) for i in NODES]) as kv:
            assert [e.key for e in await kv.list(prefix, 2, after=expected[-3])] == expected[-2:]
            return [e.key async for e in kv.iter_keys(prefix, page=100)]
    assert asyncio.run(walk()) == expected


def test_keys_only_and_count(api):
    """keys_only pages carry keys and versions, not values (so a page holds more of big
    ones); count=true counts the keys under a prefix without listing them."""
    import asyncio

    from kvpaxos import AsyncClient, Client

    prefix = fresh("counted") + "/"
    big = "b" * 900_000
    for n in range(6):
        assert api.put(1 + n % 3, f"{prefix}{n}", big, timeout=30).status == 200
    assert api.put(1, prefix[:-1] + "0", "beside").status == 200  # not under the prefix
    page = api.request(2, "GET", "/v1/kv?" + urllib.parse.urlencode({"prefix": prefix, "keys_only": "true"})).body
    assert [sorted(item) for item in page["items"]] == [["key", "version"]] * 6 and not page["more"]
    assert api.request(3, "GET", "/v1/kv?" + urllib.parse.urlencode({"prefix": prefix, "count": "true"})).body[
        "count"] == 6
    with Client([api.url(i) for i in NODES], timeout_s=30) as kv:
        assert kv.count(prefix) == 6 and kv.count(prefix + "5") == 1 and kv.count(prefix + "x") == 0
        assert kv.count() >= 7
        entries = list(kv.iter_keys(prefix, page=4, keys_only=True))
        assert [e.key for e in entries] == [f"{prefix}{n}" for n in range(6)] and {e.value for e in entries} == {None}

    async def counted() -> tuple[int, list[str]]:
        async with AsyncClient([api.url(i) for i in NODES]) as kv:
            return await kv.count(prefix), [e.key async for e in kv.iter_keys(prefix, keys_only=True)]
    assert asyncio.run(counted()) == (6, [f"{prefix}{n}" for n in range(6)])


def test_stale_reads(api):
    key = fresh()
    version = api.put(1, key, "s").body["version"]
    for node in NODES:
        # A stale read may lag behind, but the node catches up without further writes.
        got = wait_until(lambda: (r := api.get(node, key, stale=True)).status == 200 and r,
                         10, f"node {node} to apply {key}")
        assert got.body == {"key": key, "value": "s", "version": version}
        assert_error(api.get(node, fresh("missing"), stale=True), 404, "not_found")
    listed = wait_until(lambda: api.list(3, key, stale=True).body["items"], 10, "stale list")
    assert listed == [{"key": key, "value": "s", "version": version}]


def test_keys_with_slashes_spaces_and_unicode(api):
    key = fresh("dir") + "/sub dir/ключ?&=%#"
    put = api.put(2, key, "ok")
    assert put.status == 200 and put.body["key"] == key, put
    assert api.get(3, key).body == {"key": key, "value": "ok", "version": put.body["version"]}
    longest = fresh("é") + "é" * ((1024 - 15) // 2)
    longest += "x" * (1024 - len(longest.encode()))
    assert len(longest.encode()) == 1024
    assert api.put(1, longest, "long key").status == 200
    assert api.get(2, longest).body["value"] == "long key"


def test_exactly_once_by_client_id_and_seq(api):
    key, client = fresh(), fresh("client")
    first = api.put(1, key, "one", client_id=client, seq=1)
    assert first.status == 200, first
    v1 = first.body["version"]

    # The same request again, through the same node and through others: same
    # answer, applied once (the version does not move, the value is the first one).
    for node in NODES:
        again = api.put(node, key, "one", client_id=client, seq=1)
        assert again.status == 200 and again.body["version"] == v1, again
    impostor = api.put(2, key, "different value", client_id=client, seq=1)
    assert impostor.status == 200 and impostor.body["version"] == v1, impostor
    assert api.get(3, key).body == {"key": key, "value": "one", "version": v1}

    second = api.put(2, key, "two", client_id=client, seq=2)
    assert second.status == 200 and second.body["version"] > v1, second
    v2 = second.body["version"]
    # An older sequence number is refused, and changes nothing.
    assert_error(api.put(3, key, "old", client_id=client, seq=1), 400, "bad_request")
    assert api.get(1, key).body == {"key": key, "value": "two", "version": v2}

    # A retried delete is answered with its first result, not 404.
    gone = api.delete(1, key, client_id=client, seq=3)
    assert gone.status == 200, gone
    retried = api.delete(2, key, client_id=client, seq=3)
    assert retried.status == 200 and retried.body == gone.body, retried
    assert_error(api.get(1, key), 404, "not_found")
    # The retried delete did not take a revision: the next write gets the very next
    # one (tests in this module run one at a time against their cluster).
    assert api.put(1, fresh(), "x").body["version"] == gone.body["version"] + 1


BAD_REQUESTS = [
    # (method, path, raw body, status, code)
    ("PUT", "/v1/kv/k", b"{bad json", 400, "invalid_json"),
    ("PUT", "/v1/kv/k", b"[1, 2]", 400, "invalid_json"),
    ("PUT", "/v1/kv/k", b'"just a string"', 400, "invalid_json"),
    ("PUT", "/v1/kv/k", b"", 400, "invalid_json"),
    ("PUT", "/v1/kv/k", b"\xff\xfe\x00", 400, "invalid_json"),
    ("DELETE", "/v1/kv/k", b"{", 400, "invalid_json"),
    ("PUT", "/v1/kv/k", b'{"value": 5}', 400, "bad_request"),
    ("PUT", "/v1/kv/k", b'{"value": null}', 400, "bad_request"),
    ("PUT", "/v1/kv/k", b'{"value": ["x"]}', 400, "bad_request"),
    ("PUT", "/v1/kv/k", b'{"other": "x"}', 400, "bad_request"),
    ("PUT", "/v1/kv/k", b'{"value": "x", "if_version": "1"}', 400, "bad_request"),
    ("PUT", "/v1/kv/k", b'{"value": "x", "if_version": -1}', 400, "bad_request"),
    ("PUT", "/v1/kv/k", b'{"value": "x", "if_version": true}', 400, "bad_request"),
    ("PUT", "/v1/kv/k", b'{"value": "x", "if_version": 1.5}', 400, "bad_request"),
    ("PUT", "/v1/kv/k", b'{"value": "x", "if_version": NaN}', 400, "bad_request"),
    ("PUT", "/v1/kv/k", b'{"value": "x", "if_version": 1e999}', 400, "bad_request"),
    ("PUT", "/v1/kv/k", b'{"value": "x", "if_value": 3}', 400, "bad_request"),
    ("PUT", "/v1/kv/k", b'{"value": "\\ud800"}', 400, "bad_request"),
    ("PUT", "/v1/kv/k", b'{"value": "x", "seq": 1}', 400, "bad_request"),
    ("PUT", "/v1/kv/k", b'{"value": "x", "client_id": "c"}', 400, "bad_request"),
    ("PUT", "/v1/kv/k", b'{"value": "x", "client_id": "", "seq": 1}', 400, "bad_request"),
    ("PUT", "/v1/kv/k", b'{"value": "x", "client_id": "c", "seq": 0}', 400, "bad_request"),
    ("PUT", "/v1/kv/k", b'{"value": "x", "client_id": 7, "seq": 1}', 400, "bad_request"),
    ("DELETE", "/v1/kv/k", b'{"seq": 2}', 400, "bad_request"),
    ("DELETE", "/v1/kv/k", b'{"if_version": "2"}', 400, "bad_request"),
    ("GET", "/v1/kv/k?consistency=eventual", None, 400, "bad_request"),
    ("GET", "/v1/kv?limit=0", None, 400, "bad_request"),
    ("GET", "/v1/kv?limit=10001", None, 400, "bad_request"),
    ("GET", "/v1/kv?limit=-1", None, 400, "bad_request"),
    ("GET", "/v1/kv?limit=ten", None, 400, "bad_request"),
    ("GET", "/v1/kv?consistency=sometimes", None, 400, "bad_request"),
    ("GET", "/v1/kv?prefx=a", None, 400, "bad_request"),  # a misspelt parameter is no list of everything
    ("GET", "/v1/kv?keys_only=yes", None, 400, "bad_request"),
    ("GET", "/v1/kv?count=1", None, 400, "bad_request"),
    ("GET", "/v1/kv?count=true&limit=5", None, 400, "bad_request"),
    ("GET", "/v1/kv?count=true&keys_only=true", None, 400, "bad_request"),
    ("PUT", "/v1/kv/", b'{"value": "x"}', 400, "invalid_key"),
    ("GET", "/v1/kv/", None, 400, "invalid_key"),
    ("DELETE", "/v1/kv/", None, 400, "invalid_key"),
    ("PUT", key_path("k" * 1025), b'{"value": "x"}', 400, "invalid_key"),
    ("GET", key_path("k" * 1025), None, 400, "invalid_key"),
    ("PUT", key_path("é" * 513), b'{"value": "x"}', 400, "invalid_key"),  # 1026 bytes
    ("GET", "/v1/nothing-here", None, 404, "no_route"),
    ("GET", "/v2/kv/k", None, 404, "no_route"),
    ("PUT", "/v1/kvx/k", b'{"value": "x"}', 404, "no_route"),
    ("POST", "/v1/kv/k", b'{"value": "x"}', 405, "method_not_allowed"),
    ("PUT", "/v1/status", b"{}", 405, "method_not_allowed"),
]


@pytest.mark.parametrize("method,path,raw,status,code", BAD_REQUESTS,
                         ids=[f"{m} {p[:30]} {(r or b'')[:30]!r}" for m, p, r, *_ in BAD_REQUESTS])
def test_bad_requests_get_json_errors(api, method, path, raw, status, code):
    resp = api.request(2, method, path, raw=raw)
    assert_error(resp, status, code)


def test_bodies_in_any_encoding_json_reads_are_accepted(api):
    """UTF-8 (with or without a byte-order mark), UTF-16 and UTF-32, as JSON's own
    detection reads them; invalid UTF-8 is a 400."""
    key = fresh()
    text = '{"value": "v\u00e9"}'
    for raw in (text.encode(), codecs.BOM_UTF8 + text.encode(), text.encode("utf-16"),
                text.encode("utf-16-le"), text.encode("utf-32")):
        resp = api.request(1, "PUT", key_path(key), raw=raw)
        assert resp.status == 200, (raw[:8], resp)
        assert api.request(2, "GET", key_path(key)).body["value"] == "v\u00e9"
    assert_error(api.request(1, "PUT", key_path(key), raw=b'{"value": "\xff"}'), 400, "invalid_json")


def test_method_not_allowed_names_the_methods_the_path_has(api):
    # Every route answers through one error wrapper and unrouted requests through a
    # last catch-all route: the path's own methods must still be found and named.
    resp = api.request(1, "POST", key_path("k"), raw=b'{"value": "x"}')
    assert_error(resp, 405, "method_not_allowed")
    assert set(resp.headers["allow"].split(",")) == {"GET", "HEAD", "PUT", "DELETE", "OPTIONS"}
    resp = api.request(1, "DELETE", "/v1/status")
    assert_error(resp, 405, "method_not_allowed")
    assert set(resp.headers["allow"].split(",")) == {"GET", "HEAD", "OPTIONS"}
    assert api.request(1, "HEAD", "/v1/status").status == 200


def test_delete_every_key_under_a_prefix(api):
    """DELETE /v1/kv?prefix=P through a follower: every key under P goes, in rounds of
    250 (each one slot), each delete a change watches see; keys beside it stay."""
    p = fresh("del") + "/"
    leader = api.wait_for_leader()
    follower = next(i for i in NODES if i != leader)
    body = {"ops": [{"op": "put", "key": f"{p}{n:05d}", "value": "x"} for n in range(2_500)]}
    assert api.request(leader, "POST", "/v1/batch", body).status == 200
    beside = [p[:-1], p[:-1] + "0", p[:-1] + "~"]
    for key in beside:
        assert api.put(leader, key, "stays").status == 200
    before = api.status(leader)["watch"]["revision"]
    resp = api.request(follower, "DELETE", "/v1/kv?" + urllib.parse.urlencode({"prefix": p}))
    assert resp.status == 200 and resp.body["deleted"] == 2_500 and resp.body["prefix"] == p, resp
    assert resp.body["revision"] == before + 2_500
    for node in NODES:
        listed = api.list(node, p).body
        assert listed["items"] == [] and not listed["more"], listed
        assert [api.get(node, key).status for key in beside] == [200, 200, 200]
    events = api.request(leader, "GET", f"/v1/watch?prefix={p}&from={before + 1}&timeout=5&limit=10000").body
    assert [(e["type"], e["key"]) for e in events["events"]] == [("delete", f"{p}{n:05d}") for n in range(2_500)]
    again = api.request(leader, "DELETE", "/v1/kv?" + urllib.parse.urlencode({"prefix": p}))
    assert again.status == 200 and again.body["deleted"] == 0
    assert_error(api.request(leader, "DELETE", "/v1/kv"), 400, "bad_request")  # no prefix: not every key
    assert_error(api.request(leader, "DELETE", "/v1/kv?prefix=a&limit=3"), 400, "bad_request")
    assert_error(api.request(leader, "DELETE", "/v1/kv?prefix=" + "k" * 1025), 400, "invalid_key")


def test_oversized_values_are_413(api):
    key = fresh()
    assert api.put(1, key, "small").status == 200
    big = "v" * (VALUE_MAX + 1)
    assert_error(api.put(1, key, big), 413, "value_too_large")
    assert_error(api.put(2, key, "x", if_value=big), 413, "value_too_large")
    assert_error(api.put(3, key, "é" * (VALUE_MAX // 2 + 1)), 413, "value_too_large")
    assert api.get(1, key).body["value"] == "small"


def test_raw_body_over_the_size_limit_is_413(api):
    raw = b'{"value": "' + b"x" * (13 * VALUE_MAX) + b'"}'
    try:
        resp = api.request(1, "PUT", key_path(fresh()), raw=raw, timeout=30)
    except (BrokenPipeError, ConnectionResetError):
        pytest.fail("the node dropped the connection instead of answering 413")
    assert_error(resp, 413, "value_too_large")


AT_THE_LIMIT = {"ascii": "a" * VALUE_MAX, "latin1": "é" * (VALUE_MAX // 2),
                "cjk": "一" * (VALUE_MAX // 3), "control": "\x01" * VALUE_MAX}


def test_values_at_the_limit_are_accepted_however_json_escapes_them(make_cluster):
    # json.dumps escapes non-ASCII as \\uXXXX (the Python client sends that), so a
    # value at the limit takes up to six times its size on the wire ("\\u0001").
    # One node: this is about the HTTP layer and storage, not replication (below).
    single = make_cluster(1)
    single.wait_for_leader()
    for name, value in AT_THE_LIMIT.items():
        body = json.dumps({"value": value}).encode()
        resp = single.request(1, "PUT", key_path(name), raw=body, timeout=30)
        assert resp.status == 200, (name, resp)
        got = single.get(1, name, timeout=30)
        assert got.status == 200 and got.body["value"] == value, name
        assert got.body["version"] == resp.body["version"]
    single.kill(1)
    single.restart(1)  # and they load back from SQLite (the last chosen records may be
    single.wait_for_leader()  # missing: the node chooses its accepted values again)
    for name, value in AT_THE_LIMIT.items():
        assert single.get(1, name, timeout=30).body["value"] == value, name


def test_large_values_replicate_without_elections(make_cluster):
    cluster = make_cluster(3)
    leader = cluster.wait_for_leader()
    elections = sum(s["elections"] for s in cluster.statuses().values())
    value = AT_THE_LIMIT["latin1"]
    resp = cluster.put(leader % 3 + 1, "big", value, timeout=10)
    assert resp.status == 200, resp
    got = cluster.get(leader % 3 + 1, "big", timeout=10)
    assert got.status == 200 and got.body["value"] == value
    assert sum(s["elections"] for s in cluster.statuses().values()) == elections


def test_storage_is_durable_on_every_node(api):
    for node in NODES:
        storage = api.status(node)["storage"]
        assert storage["engine"] == "sqlite"
        assert storage["synchronous"] == "FULL", storage
        assert storage["journal_mode"] == "wal", storage
        assert storage["path"].startswith(str(api.data_dir(node))), storage


def test_status_document(api):
    leader = api.wait_for_leader()
    def follows(n: int) -> bool:
        st = api.status(n)
        return st["leader"] == leader and all(p["reachable"] for p in st["peers"].values())
    wait_until(lambda: all(follows(n) for n in NODES), 10, "every node to follow the leader")
    for node in NODES:
        st = api.status(node)
        assert st["id"] == node
        assert st["address"] == f"127.0.0.1:{api.ports[node]}"
        assert st["leader"] == leader
        assert st["role"] == ("leader" if node == leader else "follower")
        assert set(st["peers"]) == {str(p) for p in NODES if p != node}
        assert all(p["reachable"] for p in st["peers"].values()), st["peers"]
        assert st["applied"] <= st["chosen"]


def test_nodes_keep_serving_and_never_500(api):
    """Runs last in this module: after all the bad input above, every node still works."""
    for node in NODES:
        key = fresh()
        assert api.put(node, key, "still here").status == 200
        assert api.get(node % 3 + 1, key).body["value"] == "still here"
        assert api.is_alive(node)
        log = api.log_path(node).read_text(errors="replace")
        assert "Traceback" not in log and "Error handling request" not in log, api.log_tail(node, 60)


def test_server_option_lowers_the_value_limit(tmp_path):
    """`kv serve --max-value-bytes` lowers the 1 MiB limit; larger values get 413 and are not stored."""
    cluster = Cluster(tmp_path / "limited", n=1, serve_args=["--max-value-bytes", "100"])
    try:
        cluster.start()
        cluster.wait_for_leader()
        assert cluster.put(1, "fits", "x" * 100).status == 200
        too_big = cluster.put(1, "big", "é" * 51)  # 102 bytes of UTF-8
        assert too_big.status == 413 and too_big.body["error"] == "value_too_large", too_big
        assert cluster.get(1, "big").status == 404
    finally:
        cluster.stop_all()


def test_every_kind_of_answer_names_the_leader(api):
    """X-Kv-Leader is on every answer a route gives: successes, every error the API
    answers in JSON (its own, and aiohttp's turned into JSON), streams and pages; and
    CORS headers go with it for a cross-origin caller."""
    import http.client

    leader = api.wait_for_leader()
    wait_until(lambda: all(api.status(n)["leader"] == leader for n in NODES), 10,
               "every node to follow the leader")
    members = {api.url(n) for n in NODES}
    key = fresh()
    answers = [
        ("PUT", key_path(key), b'{"value": "v"}', 200),
        ("GET", key_path(key), None, 200),
        ("GET", key_path(key) + "?consistency=stale", None, 200),
        ("DELETE", key_path(key), None, 200),
        ("GET", key_path(key), None, 404),  # not_found
        ("PUT", key_path(key), b"{nope", 400),  # invalid_json
        ("PUT", "/v1/kv/", b'{"value": "x"}', 400),  # invalid_key
        ("PUT", key_path(key), json.dumps({"value": "v" * (VALUE_MAX + 1)}).encode(), 413),
        ("PUT", key_path(key), b'{"value": "' + b"x" * (13 * VALUE_MAX) + b'"}', 413),  # aiohttp's limit
        ("GET", "/v1/nothing-here", None, 404),  # no_route
        ("POST", key_path(key), b"{}", 405),
        ("GET", "/v1/kv?prefix=k", None, 200),
        ("POST", "/v1/batch", json.dumps({"ops": [{"op": "put", "key": key, "value": "b"}]}).encode(), 200),
        ("GET", "/v1/status", None, 200),
        ("GET", "/v1/members", None, 200),
        ("GET", "/metrics", None, 200),
        ("GET", "/v1/snapshot", None, 200),  # streamed
        ("GET", "/", None, 200),  # the dashboard's page
        ("GET", "/v1/dashboard", None, 200),
        ("OPTIONS", key_path(key), None, 403),  # a preflight from no member's page
        ("GET", "/v1/events?interval_ms=100", None, 200),  # streamed, never ends: headers only
    ]
    for node in NODES:
        for method, path, raw, status in answers:
            conn = http.client.HTTPConnection("127.0.0.1", api.ports[node], timeout=30)
            try:
                conn.request(method, path, body=raw, headers={"Origin": "http://elsewhere.example",
                                                              "Content-Type": "application/json"})
                resp = conn.getresponse()
                headers = {k.lower(): v for k, v in resp.getheaders()}
                assert resp.status == status, (node, method, path, resp.status, resp.read()[:200])
                # The leader this node knows: the one found above, unless an election came between.
                assert headers.get("x-kv-leader") in members, (node, method, path, headers)
                readable = method == "GET" and path.startswith(("/v1/kv", "/v1/status", "/v1/events", "/v1/dash"))
                assert headers.get("access-control-allow-origin") == ("*" if readable else None), (node, path)
            finally:
                conn.close()


def test_answers_name_the_leader_and_the_client_writes_there(api):
    """Every answer carries X-Kv-Leader (the leader's URL); a client given every node
    sends its writes there after its first answer, so no follower forwards them."""
    import urllib.request

    from kvpaxos.client import Client

    leader = api.wait_for_leader()
    wait_until(lambda: all(api.status(n)["leader"] == leader for n in NODES), 10,
               "every node to follow the leader")
    for node in NODES:
        with urllib.request.urlopen(f"{api.url(node)}/v1/status", timeout=5) as resp:
            assert resp.headers["X-Kv-Leader"] == api.url(leader)

    def forwarded() -> dict[int, float]:
        out = {}
        for n in NODES:
            with urllib.request.urlopen(f"{api.url(n)}/metrics", timeout=5) as resp:
                text = resp.read().decode()
            out[n] = next(float(line.split()[-1]) for line in text.splitlines()
                          if line.startswith("kvpaxos_requests_forwarded_total"))
        return out

    follower = next(n for n in NODES if n != leader)
    endpoints = [api.url(follower)] + [api.url(n) for n in NODES if n != follower]
    with Client(endpoints, timeout_s=10) as kv:
        kv.put(fresh("routed"), "first")  # the follower forwards this one and names the leader
        before = forwarded()
        for i in range(20):
            kv.put(fresh("routed"), str(i))
        assert forwarded() == before, "writes still went through a follower"
    with Client([api.url(follower)], timeout_s=10) as kv:  # one endpoint: it stays there
        before = forwarded()[follower]
        kv.put(fresh("pinned"), "x")
        kv.put(fresh("pinned"), "y")
        assert forwarded()[follower] == before + 2


def _answers(sock, count: int) -> list[tuple[str, dict[str, str], bytes]]:
    """Read `count` HTTP answers from sock: status line, headers (lower-case names), body."""
    data, out = b"", []
    while len(out) < count:
        head_end = data.find(b"\r\n\r\n")
        if head_end >= 0:
            status, *lines = data[:head_end].decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
            end = head_end + 4 + int(headers["content-length"])
            if len(data) >= end:
                out.append((status, headers, data[head_end + 4:end]))
                data = data[end:]
                continue
        chunk = sock.recv(65536)
        assert chunk, f"the node closed the connection after {len(out)} answer(s): {data!r}"
        data += chunk
    assert not data, data
    return out


def _put_request(key: str, value: str, version: str = "HTTP/1.1", extra: str = "") -> bytes:
    body = json.dumps({"value": value}).encode()
    return (f"PUT {key_path(key)} {version}\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n").encode() + body


@pytest.mark.parametrize("node", [1, 3])
def test_a_puts_answer_on_the_wire(api, node):
    """A PUT's answer is written in one block (http.PutAnswer): on one keep-alive connection,
    pipelined, it must be a complete HTTP/1.1 answer each time (status, Date, JSON type, exact
    length, the leader), honour Connection: close, and leave HTTP/1.0 and cross-origin
    requests to aiohttp's own answers."""
    import socket
    from email.utils import parsedate_to_datetime
    from datetime import datetime, timezone

    keys = [fresh("wire") for _ in range(3)]
    with socket.create_connection(("127.0.0.1", api.ports[node]), timeout=30) as sock:
        sock.sendall(_put_request(keys[0], "a"))
        sock.sendall(_put_request(keys[1], "b") + _put_request(keys[2], "c"))  # pipelined
        answers = _answers(sock, 3)
        sock.sendall(_put_request(keys[0], "d", extra="Connection: close\r\n"))
        [closing] = _answers(sock, 1)
        assert sock.recv(1) == b""  # closed, as asked
    versions = []
    for (status, headers, body), key in zip(answers + [closing], keys + keys[:1]):
        assert status == "HTTP/1.1 200 OK", (status, headers)
        assert headers["content-type"] == "application/json; charset=utf-8", headers
        assert "server" not in headers, headers  # PutAnswer's, not aiohttp's
        assert headers["x-kv-leader"] in [api.url(i) for i in NODES], headers
        age = datetime.now(timezone.utc) - parsedate_to_datetime(headers["date"])
        assert abs(age.total_seconds()) < 60, headers
        doc = json.loads(body)
        assert doc["key"] == key and set(doc) == {"key", "version"}, doc
        versions.append(doc["version"])
    assert versions == sorted(versions) and len(set(versions)) == 4, versions
    assert "connection" not in answers[0][1] and closing[1]["connection"] == "close"
    assert api.get(node, keys[0]).body["value"] == "d"

    with socket.create_connection(("127.0.0.1", api.ports[node]), timeout=30) as sock:
        sock.sendall(_put_request(keys[1], "e", version="HTTP/1.0"))
        [(status, headers, body)] = _answers(sock, 1)
        assert status == "HTTP/1.0 200 OK" and json.loads(body)["key"] == keys[1], (status, body)
    with socket.create_connection(("127.0.0.1", api.ports[node]), timeout=30) as sock:
        sock.sendall(_put_request(keys[2], "f", extra="Origin: http://example.test\r\n"))
        [(status, headers, body)] = _answers(sock, 1)
        assert status == "HTTP/1.1 200 OK" and json.loads(body)["key"] == keys[2], (status, body)
        assert "x-kv-leader" in headers and "server" in headers, headers  # aiohttp's own answer
