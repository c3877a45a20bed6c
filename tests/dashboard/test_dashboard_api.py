"""The dashboard's server side against a real cluster: the page, /v1/events, /v1/dashboard, CORS.

Fast (no browser): a few seconds. The pure parts (write statistics, the
origin rule) are tested first without any cluster.
"""
from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.parse

import aiohttp
import pytest

from kvpaxos.dashboard.routes import member_origin
from kvpaxos.dashboard.stats import LATENCY_BINS, WriteStats, bin_upper_ms, latency_bin
from kvpaxos.dashboard.views import clip
from support.cluster import wait_until


# -- pure parts --------------------------------------------------------------------


def test_latency_bins_cover_each_latency_with_its_upper_bound():
    for ms in (0.01, 0.25, 0.3, 1, 7.5, 42, 999, 5000, 1e9):
        b = latency_bin(ms)
        assert 0 <= b < LATENCY_BINS
        if b < LATENCY_BINS - 1:
            assert ms <= bin_upper_ms(b) * (1 + 1e-9)
        if b > 0:
            assert ms > bin_upper_ms(b - 1)


def test_write_stats_keep_per_second_buckets_for_the_window():
    stats = WriteStats(keep_s=10)
    stats.record(100.2, 3.0, True)
    stats.record(100.7, 5.0, True)
    stats.record(101.1, 900.0, False)
    buckets = stats.since(None, 101.5)
    assert [b[:3] for b in buckets] == [[100, 2, 0], [101, 0, 1]]
    assert sum(buckets[0][3].values()) == 2
    assert stats.since(100, 101.5) == [buckets[1]]
    stats.record(200.0, 1.0, True)  # 100 and 101 fall out of the 10 s window
    assert [b[0] for b in stats.since(None, 200.0)] == [200]
    assert (stats.total_ok, stats.total_failed) == (3, 1)


def test_cross_origin_writes_only_from_cluster_members():
    cluster = {1: ("127.0.0.1", 7001), 2: ("127.0.0.1", 7002), 3: ("10.0.0.5", 7003)}
    assert member_origin("http://127.0.0.1:7001", cluster)
    assert member_origin("http://localhost:7002", cluster)  # a loopback alias of a member
    assert member_origin("http://10.0.0.5:7003", cluster)
    assert not member_origin("http://127.0.0.1:8080", cluster)
    assert not member_origin("http://10.0.0.6:7003", cluster)
    assert not member_origin("https://evil.example", cluster)
    assert not member_origin("null", cluster)
    assert not member_origin("http://127.0.0.1:notaport", cluster)


def test_clip_marks_what_it_cuts():
    assert clip("short", 10) == "short"
    assert clip("x" * 30, 10) == "x" * 9 + "…"


# -- against a real cluster ---------------------------------------------------------


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One 3-node cluster for the tests that only read and write keys."""
    from support.cluster import Cluster

    cluster = Cluster(tmp_path_factory.mktemp("dashboard-api"), n=3).start()
    try:
        yield cluster
    finally:
        cluster.stop_all()


async def read_events(url: str, count: int, headers: dict | None = None,
                      timeout_s: float = 15.0) -> tuple[aiohttp.ClientResponse, list[dict]]:
    """Open a server-sent event stream and parse `count` snapshot events."""
    events: list[dict] = []
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers=headers,
                               timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            assert resp.status == 200, await resp.text()
            fields: dict[str, str] = {}
            async for raw in resp.content:
                line = raw.decode("utf-8").rstrip("\n")
                if line:
                    name, _, value = line.partition(":")
                    fields[name] = fields.get(name, "") + value.lstrip(" ")
                    continue
                if fields.get("event") == "snapshot":
                    events.append(json.loads(fields["data"]))
                    if len(events) == count:
                        return resp, events
                fields = {}
    return resp, events


def test_page_and_static_files_are_served(shared):
    cluster = shared
    page = cluster.request(1, "GET", "/")
    assert page.status == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "/dashboard/app.js" in page.text and "Try it" in page.text
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css"), ("favicon.svg", "svg")):
        resp = cluster.request(2, "GET", f"/dashboard/{name}")
        assert resp.status == 200 and kind in resp.headers["content-type"], (name, resp)
    missing = cluster.request(1, "GET", "/dashboard/../../etc/passwd")
    assert missing.status == 404
    assert cluster.request(1, "GET", "/dashboard/secret.py").error == "not_found"


def test_events_stream_snapshots_with_log_batches_and_counters(shared):
    cluster = shared
    cluster.wait_for_leader()
    put = cluster.put(2, "stream-key", "v" * 100, client_id="test-client", seq=1)
    assert put.status == 200, put
    url = cluster.url(1) + "/v1/events?interval_ms=100"
    started = time.monotonic()
    resp, events = asyncio.run(read_events(url, 3, headers={"Origin": "http://elsewhere.example"}))
    assert time.monotonic() - started < 5
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert len(events) == 3
    first, last = events[0], events[-1]
    assert first["node"] == 1 and first["status"]["id"] == 1
    assert first["status"]["role"] in ("leader", "follower")
    assert set(first["status"]["peers"]) == {"2", "3"}
    assert last["now_ms"] >= first["now_ms"]
    slots = {s["slot"]: s for s in last["log"]["slots"]}
    found = [s for s in slots.values() if s["batch"] and any(
        c["key"] == "stream-key" for c in s["batch"]["cmds"])]
    assert len(found) == 1, last["log"]
    cmd = found[0]["batch"]["cmds"][0]
    assert cmd["op"] == "put" and cmd["client"] == "test-client" and cmd["seq"] == 1
    assert len(cmd["value"]) <= 24 and cmd["value"].endswith("…")  # values are cut short
    assert found[0]["state"] == "applied" and found[0]["slot"] <= last["status"]["applied"]
    counters = last["counters"]
    assert counters.get("recv_Accept", 0) + counters.get("recv_Accepted", 0) > 0, counters
    assert any(name.startswith("sent_") for name in counters)


def test_snapshot_find_and_write_series(shared):
    cluster = shared
    leader = cluster.wait_for_leader()
    for seq in range(1, 6):
        assert cluster.put(3, f"series-{seq}", "x", client_id="writer", seq=seq).status == 200
    doc = cluster.request(3, "GET", "/v1/dashboard?slots=5").body
    assert doc["node"] == 3 and len(doc["log"]["slots"]) <= 5
    assert sum(b[1] for b in doc["series"]) >= 5  # five writes answered by node 3
    assert doc["writes"]["ok"] >= 5
    found = cluster.request(1, "GET", "/v1/dashboard/find?client_id=writer&seq=4")
    assert found.status == 200, found
    slot = found.body["slot"]
    view = cluster.request(leader, "GET", "/v1/dashboard").body
    (entry,) = [s for s in view["log"]["slots"] if s["slot"] == slot]
    assert entry["batch"]["cmds"][0]["key"] == "series-4"
    assert cluster.request(1, "GET", "/v1/dashboard/find?client_id=writer&seq=99").status == 404
    assert cluster.request(1, "GET", "/v1/dashboard/find?client_id=writer").status == 400
    assert cluster.request(1, "GET", "/v1/dashboard?slots=0").error == "bad_request"
    assert cluster.request(1, "GET", "/v1/events?interval_ms=1").error == "bad_request"


def test_snapshot_carries_the_configuration(shared):
    """/v1/dashboard and /v1/events carry the configuration as the node applied it."""
    cluster = shared
    leader = cluster.wait_for_leader()
    doc = cluster.request(2, "GET", "/v1/dashboard").body
    members = doc["members"]
    assert members["voters"] == [1, 2, 3] and members["learners"] == [] and members["removed"] == []
    assert [(m["id"], m["role"]) for m in members["members"]] == [(1, "voter"), (2, "voter"), (3, "voter")]
    assert {m["id"]: m["address"] for m in members["members"]} == {
        i: cluster.url(i).removeprefix("http://") for i in (1, 2, 3)}
    assert members["alpha"] >= 1 and members["pending"] is None
    assert members["history"][0]["what"] == "initial" and members["history"][0]["voters"] == [1, 2, 3]
    assert members["applied"] == doc["status"]["applied"]
    wait_for = time.monotonic() + 10
    while cluster.request(2, "GET", "/v1/dashboard").body["members"]["leader"] != leader:
        assert time.monotonic() < wait_for, "node 2 does not name the leader"
        time.sleep(0.1)
    _, events = asyncio.run(read_events(cluster.url(3) + "/v1/events?interval_ms=100&count=1", 1))
    assert events[0]["members"]["voters"] == [1, 2, 3]


def test_cors_reads_from_anywhere_writes_only_from_member_pages(shared):
    cluster = shared
    import http.client

    def call(node: int, method: str, path: str, origin: str, body: bytes | None = None,
             extra: dict | None = None) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", cluster.ports[node], timeout=10)
        try:
            conn.request(method, path, body=body, headers={"Origin": origin, **(extra or {})})
            resp = conn.getresponse()
            resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()

    cluster.wait_for_leader()
    member_page = cluster.url(1)
    status, headers = call(2, "GET", "/v1/status", "http://unrelated.example")
    assert status == 200 and headers["access-control-allow-origin"] == "*"
    status, headers = call(2, "GET", "/v1/watch?prefix=&timeout=0", "http://unrelated.example")
    assert status == 200 and headers["access-control-allow-origin"] == "*"  # as a read of the keys
    status, headers = call(2, "OPTIONS", "/v1/kv/k", member_page,
                           extra={"Access-Control-Request-Method": "PUT"})
    assert status == 204
    assert headers["access-control-allow-origin"] == member_page
    assert "PUT" in headers["access-control-allow-methods"]
    assert "authorization" in headers["access-control-allow-headers"].lower()  # a page with a token
    # A page with a client token sends Authorization on its GETs too, so the browser asks first:
    # yes for member pages, no for other sites (except the open /v1/status).
    for path in ("/v1/events", "/v1/dashboard", "/v1/dashboard/find", "/v1/status", "/v1/watch"):
        status, headers = call(2, "OPTIONS", path, member_page,
                               extra={"Access-Control-Request-Method": "GET",
                                      "Access-Control-Request-Headers": "authorization"})
        assert status == 204, path
        assert headers["access-control-allow-origin"] == member_page, path
        assert headers["access-control-allow-headers"].lower() == "authorization", path
    for path in ("/v1/events", "/v1/dashboard", "/v1/dashboard/find", "/v1/watch"):
        status, headers = call(2, "OPTIONS", path, "http://unrelated.example",
                               extra={"Access-Control-Request-Method": "GET"})
        assert status == 403 and "access-control-allow-origin" not in headers, path
    status, headers = call(2, "OPTIONS", "/v1/status", "http://unrelated.example",
                           extra={"Access-Control-Request-Method": "GET"})
    assert status == 204 and headers["access-control-allow-origin"] == "http://unrelated.example"
    status, headers = call(2, "OPTIONS", "/v1/kv/k", "http://unrelated.example")
    assert status == 403 and "access-control-allow-origin" not in headers
    body = json.dumps({"value": "v"}).encode()
    status, headers = call(2, "PUT", "/v1/kv/" + urllib.parse.quote("k"), member_page, body,
                           {"Content-Type": "application/json"})
    assert status == 200 and headers["access-control-allow-origin"] == member_page
    status, headers = call(2, "PUT", "/v1/kv/k", "http://unrelated.example", body,
                           {"Content-Type": "application/json"})
    assert "access-control-allow-origin" not in headers  # the browser hides the answer


def test_open_event_stream_does_not_hold_up_shutdown(cluster):
    """SIGTERM with a dashboard connected: the node ends its streams and exits by itself."""
    async def hold_stream() -> None:
        async with aiohttp.ClientSession() as session:
            async with session.get(cluster.url(3) + "/v1/events",
                                   timeout=aiohttp.ClientTimeout(total=30)) as resp:
                await resp.content.readline()
                proc = cluster.procs[3]
                # Cluster.kill escalates to SIGKILL after 15 s; the server's own grace
                # period for open requests is 60 s, so a stream left open shows as -9.
                await asyncio.get_running_loop().run_in_executor(
                    None, cluster.kill, 3, signal.SIGTERM)
                assert proc.returncode != -signal.SIGKILL, "node 3 waited for the open stream"
                try:  # what was sent before the end, then the end of the stream
                    while await asyncio.wait_for(resp.content.readline(), 5):
                        pass
                except aiohttp.ClientError:
                    pass

    asyncio.run(hold_stream())


def test_the_log_view_shows_a_commands_time_to_live(shared):
    cluster = shared
    assert cluster.put(2, "ttl-shown", "x", ttl=30, client_id="ttl-writer", seq=1).status == 200
    assert cluster.request(2, "PUT", "/v1/kv/ttl-shown", {"refresh": True, "ttl": 40, "client_id": "ttl-writer",
                                                          "seq": 2}).status == 200
    cmds = {}
    for seq in (1, 2):
        slot = cluster.request(2, "GET", f"/v1/dashboard/find?client_id=ttl-writer&seq={seq}").body["slot"]
        view = cluster.request(2, "GET", "/v1/dashboard").body
        (entry,) = [s for s in view["log"]["slots"] if s["slot"] == slot]
        cmds[seq] = next(c for c in entry["batch"]["cmds"] if c["key"] == "ttl-shown")
    assert cmds[1]["op"] == "put" and cmds[1]["ttl_ms"] == 30_000
    assert cmds[2]["op"] == "refresh" and cmds[2]["ttl_ms"] == 40_000 and "value" not in cmds[2]


def test_the_log_view_shows_lease_commands_and_a_puts_lease(shared):
    cluster = shared
    granted = cluster.request(2, "POST", "/v1/leases", {"ttl": 30, "client_id": "lease-writer", "seq": 1})
    assert granted.status == 200, granted
    lease = granted.body["id"]
    assert cluster.put(2, "lease-shown", "x", lease=lease, client_id="lease-writer", seq=2).status == 200
    assert cluster.request(2, "POST", f"/v1/leases/{lease}/keepalive",
                           {"client_id": "lease-writer", "seq": 3}).status == 200
    cmds = {}
    for seq in (1, 2, 3):
        slot = cluster.request(2, "GET", f"/v1/dashboard/find?client_id=lease-writer&seq={seq}").body["slot"]
        view = cluster.request(2, "GET", "/v1/dashboard").body
        (entry,) = [s for s in view["log"]["slots"] if s["slot"] == slot]
        cmds[seq] = next(c for c in entry["batch"]["cmds"] if c.get("client") == "lease-writer")
    assert cmds[1]["op"] == "lease_grant" and cmds[1]["key"] == "0" and cmds[1]["ttl_ms"] == 30_000
    assert cmds[2]["op"] == "put" and cmds[2]["lease"] == lease
    assert cmds[3]["op"] == "lease_keepalive" and cmds[3]["key"] == str(lease)


def test_the_log_view_shows_the_clocks_empty_slot_that_expires_a_key(shared):
    cluster = shared
    leader = cluster.wait_for_leader()
    assert cluster.put(leader, "ttl-clock", "x", ttl=0.3).status == 200
    wait_until(lambda: cluster.get(leader, "ttl-clock").status == 404, 10, "the key to expire")
    view = cluster.request(leader, "GET", "/v1/dashboard?slots=20").body
    clock = [s for s in view["log"]["slots"] if s["batch"] and s["batch"]["n"] == 0 and s["batch"]["ts_ms"] > 0
             and not s["batch"].get("lead")]
    assert clock, view["log"]["slots"]  # the page labels such a slot "clock", a no-op (ts 0) "no-op"
