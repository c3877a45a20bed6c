"""Unit tests of the client and the `kv` command against fake nodes (no real cluster).

The fake nodes are aiohttp apps on loopback ports, run by an event loop in a
background thread; each answers from a script of canned responses and records
what it was asked. Every client here has a timeout of a few seconds at most.
"""
from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import click
import pytest
from aiohttp import web
from click.testing import CliRunner

from cli.cluster import check_ports_free, plan_cluster
from cli.common import CliError, resolve_endpoints
from cli.main import cli
from kvpaxos.aioclient import AsyncClient
from kvpaxos.client import (
    BadRequest, Client, Conflict, Entry, KvError, LeaseInfo, NotFound, OutcomeUnknown, PreconditionFailed,
    Unavailable, _peer_closed,
)
from kvpaxos.client_support import (
    BACKOFF_BASE_S, Attempts, Sessions, normalize_endpoint, parse_endpoints,
)

DROP = "drop"  # script action: close the connection without answering


@dataclass
class Hang:
    """A FakeNode action: take the request and answer only after this long."""
    seconds: float


class FakeNode:
    """A scripted node: pops one action per request, else answers `default`."""

    def __init__(self) -> None:
        self.port = 0
        self.script: list[Any] = []
        self.default: Any = (200, {"key": "k", "value": "v", "version": 1})
        self.requests: list[dict[str, Any]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> None:
        self.script.clear()
        self.requests.clear()
        self.default = (200, {"key": "k", "value": "v", "version": 1})

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.requests.append({"method": request.method, "path": request.raw_path,
                              "body": json.loads(raw) if raw else None})
        action = self.script.pop(0) if self.script else self.default
        if isinstance(action, Hang):
            await asyncio.sleep(action.seconds)
            action = self.default
        if action == DROP:
            request.transport.close()
            return web.Response()
        status, body, *headers = action
        return web.json_response(body, status=status, headers=headers[0] if headers else None)


class FakeCluster:
    """Two fake nodes plus one port where nothing listens."""

    def __init__(self) -> None:
        self.a, self.b = FakeNode(), FakeNode()
        self.refused = f"http://127.0.0.1:{unused_port()}"
        self.loop = asyncio.new_event_loop()
        self.runners: list[web.AppRunner] = []
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(10), "fake nodes did not start"

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        for node in (self.a, self.b):
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", node.handle)
            runner = web.AppRunner(app, access_log=None)
            self.loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0)
            self.loop.run_until_complete(site.start())
            node.port = runner.addresses[0][1]
            self.runners.append(runner)
        ready.set()
        self.loop.run_forever()

    def close(self) -> None:
        async def cleanup() -> None:
            for runner in self.runners:
                await runner.cleanup()
        asyncio.run_coroutine_threadsafe(cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def fakes() -> Iterator[FakeCluster]:
    cluster = FakeCluster()
    yield cluster
    cluster.close()


@pytest.fixture
def fake(fakes: FakeCluster) -> FakeCluster:
    fakes.a.reset()
    fakes.b.reset()
    return fakes


def err(status: int, code: str, headers: dict[str, str] | None = None) -> tuple:
    return (status, {"error": code, "message": f"{code} message"}, headers or {})


# -- endpoints ------------------------------------------------------------------


@pytest.mark.parametrize("given,expected", [
    ("127.0.0.1:7001", "http://127.0.0.1:7001"),
    ("http://127.0.0.1:7001/", "http://127.0.0.1:7001"),
    (" localhost:80 ", "http://localhost:80"),
    ("https://kv.example:8443", "https://kv.example:8443"),
    ("[::1]:7001", "http://[::1]:7001"),
])
def test_normalize_endpoint(given: str, expected: str) -> None:
    assert normalize_endpoint(given) == expected


@pytest.mark.parametrize("bad", ["127.0.0.1", "http://h", "ftp://h:1", "h:99999", "h:1/x", ":7001"])
def test_normalize_endpoint_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        normalize_endpoint(bad)


def test_parse_endpoints_accepts_lists_and_comma_strings() -> None:
    assert parse_endpoints("a:1, http://b:2/,a:1,") == ["http://a:1", "http://b:2"]
    assert parse_endpoints(["a:1", "b:2"]) == ["http://a:1", "http://b:2"]
    with pytest.raises(ValueError):
        parse_endpoints(" , ")


# -- retry policy, with a fake clock ---------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_attempts_round_robin_from_start_then_back_off() -> None:
    clock = Clock()
    attempts = Attempts(3, start=1, timeout_s=10, write=False, clock=clock)
    order = []
    for _ in range(3):
        index, delay = attempts.next()
        order.append(index)
        assert delay == 0  # no pause between the nodes of one round
        attempts.failed("refused", sent=False)
    assert order == [1, 2, 0]
    index, delay = attempts.next()
    assert index == 1 and BACKOFF_BASE_S * 0.8 <= delay <= BACKOFF_BASE_S * 1.2
    for _ in range(2):
        attempts.failed("refused", sent=False)
        attempts.next()
    attempts.failed("refused", sent=False)
    _, delay = attempts.next()
    assert BACKOFF_BASE_S * 2 * 0.8 <= delay <= BACKOFF_BASE_S * 2 * 1.2  # grows per round


def test_attempts_stop_at_the_deadline() -> None:
    clock = Clock()
    attempts = Attempts(2, start=0, timeout_s=1, write=False, clock=clock)
    assert attempts.next() is not None
    attempts.failed("x", sent=False)
    clock.now += 1.0
    assert attempts.next() is None


def test_attempts_can_be_limited_to_one_try() -> None:
    attempts = Attempts(3, start=0, timeout_s=10, write=False, clock=Clock(), max_tries=1)
    assert attempts.next() == (0, 0.0)
    attempts.failed("refused", sent=False)
    assert attempts.next() is None


def test_attempts_honour_retry_after_within_limits() -> None:
    clock = Clock()
    attempts = Attempts(1, start=0, timeout_s=30, write=True, clock=clock)
    attempts.next()
    attempts.failed("no quorum", sent=True, status=503, retry_after=0.5)
    _, delay = attempts.next()
    assert 0.4 <= delay <= 0.6


def test_attempts_track_whether_a_write_may_have_been_applied() -> None:
    write = Attempts(2, 0, 5, write=True, clock=Clock())
    write.failed("refused", sent=False)
    write.failed("no quorum", sent=True, status=503)
    assert not write.maybe_applied
    write.failed("timeout", sent=True, status=504)
    assert write.maybe_applied
    read = Attempts(2, 0, 5, write=False, clock=Clock())
    read.failed("reset", sent=True)
    assert not read.maybe_applied


def test_giving_up_names_the_last_refusal_behind_a_final_timeout() -> None:
    """A call cut off by its deadline says why the nodes refused before (a 503's message
    tells a user what to do; "timed out" does not)."""
    from kvpaxos.client import give_up
    from kvpaxos.client_support import retry_reason

    refusal = retry_reason("http://n2", 503, {"error": "no_quorum", "message": "node 2 waits for peers"})
    assert refusal == "http://n2: HTTP 503 no_quorum: node 2 waits for peers"
    assert retry_reason("http://n2", 504, {}) == "http://n2: HTTP 504"
    write = Attempts(1, 0, 5, write=True, clock=Clock())
    write.failed(refusal, sent=True, status=503)
    write.failed("http://n2: timed out", sent=True)
    error = give_up(write)
    assert isinstance(error, OutcomeUnknown)
    assert str(error).endswith("(last error: http://n2: timed out; before that: " + refusal + ")"), str(error)
    read = Attempts(1, 0, 5, write=False, clock=Clock())
    read.failed(refusal, sent=True, status=503)
    error = give_up(read)
    assert isinstance(error, Unavailable) and "before that" not in str(error)  # the refusal is the last error
    assert refusal in str(error)


def test_sessions_never_share_a_client_id_between_writes_in_flight() -> None:
    sessions = Sessions("c")
    first, second = sessions.acquire(), sessions.acquire()
    assert first == ["c", 1] and second[0] != "c" and second[1] == 1
    sessions.release(first)
    assert sessions.acquire() == ["c", 2]


# -- the synchronous client against fake nodes ------------------------------------


def test_failover_from_refused_and_503_reuses_the_seq(fake: FakeCluster) -> None:
    fake.a.script = [err(503, "no_quorum", {"Retry-After": "0"}), (200, {"key": "k", "version": 7})]
    with Client([fake.refused, fake.a.url], timeout_s=5) as kv:
        assert kv.put("k", "v") == 7
        kv.put("k", "w")  # a new write: a new seq
    bodies = [r["body"] for r in fake.a.requests]
    assert bodies[0] == bodies[1] == {"value": "v", "client_id": kv.client_id, "seq": 1}
    assert bodies[2]["seq"] == 2 and bodies[2]["client_id"] == kv.client_id


@pytest.mark.parametrize("failure", [err(504, "timeout"), DROP, err(500, "internal")])
def test_unknown_outcome_is_retried_elsewhere_with_the_same_seq(fake: FakeCluster, failure: Any) -> None:
    fake.a.script = [failure]
    fake.b.default = (200, {"key": "k", "version": 3})
    with Client([fake.a.url, fake.b.url], timeout_s=5) as kv:
        assert kv.delete("k", if_version=2) is None
    assert len(fake.a.requests) == 1 and len(fake.b.requests) == 1
    sent_a, sent_b = fake.a.requests[0]["body"], fake.b.requests[0]["body"]
    assert sent_a == sent_b == {"if_version": 2, "client_id": kv.client_id, "seq": 1}


def test_the_last_good_node_is_tried_first(fake: FakeCluster) -> None:
    fake.a.script = [err(503, "no_quorum")]
    with Client([fake.a.url, fake.b.url], timeout_s=5) as kv:
        kv.get("k")
        kv.get("k")
    assert len(fake.a.requests) == 1 and len(fake.b.requests) == 2


@pytest.mark.parametrize("status,code,exc", [
    (404, "not_found", NotFound), (412, "precondition_failed", PreconditionFailed),
    (400, "invalid_key", BadRequest), (413, "value_too_large", BadRequest),
    (409, "conflict", KvError), (409, "would_lose_quorum", Conflict),
])
def test_error_statuses_map_to_typed_errors_without_retry(fake: FakeCluster, status: int,
                                                          code: str, exc: type) -> None:
    fake.a.script = [err(status, code)]
    with Client([fake.a.url, fake.b.url], timeout_s=5) as kv, pytest.raises(exc) as info:
        kv.put("k", "v", if_value="old")
    assert (info.value.status, info.value.code) == (status, code)
    assert info.value.message == f"{code} message"
    assert len(fake.a.requests) == 1 and not fake.b.requests


def test_only_refused_connections_raise_unavailable_within_the_timeout(fake: FakeCluster) -> None:
    other = f"http://127.0.0.1:{unused_port()}"
    started = time.monotonic()
    with Client([fake.refused, other], timeout_s=1.0) as kv, pytest.raises(Unavailable) as info:
        kv.put("k", "v")  # a write that never left is certainly not applied
    assert time.monotonic() - started < 2.5
    assert info.value.status == 0 and "refused" in info.value.message.lower()


def test_a_write_that_only_timed_out_has_an_unknown_outcome(fake: FakeCluster) -> None:
    fake.a.default = err(504, "timeout")
    fake.b.default = err(503, "no_quorum", {"Retry-After": "1"})
    started = time.monotonic()
    with Client([fake.a.url, fake.b.url], timeout_s=1.0) as kv:
        with pytest.raises(OutcomeUnknown):
            kv.put("k", "v")
        with pytest.raises(Unavailable):
            kv.get("k")  # reads have no outcome to be unsure about
    assert time.monotonic() - started < 4


def test_only_503_means_unavailable(fake: FakeCluster) -> None:
    fake.a.default = err(503, "no_quorum")
    with Client([fake.a.url], timeout_s=0.5) as kv, pytest.raises(Unavailable) as info:
        kv.cas("k", "old", "new")
    assert info.value.status == 503


def test_request_shapes(fake: FakeCluster) -> None:
    fake.a.script = [
        (200, {"key": "a/b c?", "value": "x", "version": 4}),
        (200, {"key": "k", "value": "x", "version": 4}),
        (200, {"key": "k", "version": 5}),
        (200, {"items": [{"key": "p1", "value": "1", "version": 1},
                         {"key": "p2", "value": "2", "version": 2}], "more": True}),
    ]
    with Client(fake.a.url, timeout_s=5) as kv:
        assert kv.get("a/b c?") == Entry("a/b c?", "x", 4)
        kv.get("k", stale=True)
        assert kv.cas("k", "x", "y") == 5
        entries, more = kv.list_page("p", limit=2)
    paths = [r["path"] for r in fake.a.requests]
    assert paths[0] == "/v1/kv/a%2Fb%20c%3F"
    assert paths[1] == "/v1/kv/k?consistency=stale"
    assert fake.a.requests[2]["body"] == {"value": "y", "if_value": "x",
                                          "client_id": kv.client_id, "seq": 1}
    assert paths[3] == "/v1/kv?prefix=p&limit=2"
    assert [e.key for e in entries] == ["p1", "p2"] and more


def test_lease_request_shapes(fake: FakeCluster) -> None:
    """Lease writes carry the client's (client_id, seq), a retry the same one; leases()
    pages on with after=<the last id>; answers become LeaseInfo and Entry.lease."""
    lease = {"id": 7, "ttl": 30.0, "ttl_left": 29.5, "keys": 1}
    fake.a.script = [
        err(503, "no_quorum", {"Retry-After": "0"}), (200, {"id": 7, "ttl": 30.0, "revision": 4}),
        (200, {"version": 5}), (200, {"id": 7, "ttl": 30.0}), (200, {"id": 7, "deleted": 1, "revision": 6}),
        (200, {**lease, "keys": ["k"], "revision": 6}), (200, {"key": "k", "value": "v", "version": 5, "lease": 7}),
        (200, {"leases": [lease, {**lease, "id": 8}], "more": True, "revision": 6}),
        (200, {"leases": [{**lease, "id": 9, "keys": 0}], "more": False, "revision": 6}),
    ]
    with Client(fake.a.url, timeout_s=5) as kv:
        assert kv.grant(30, lease_id=7) == 7
        assert kv.put("k", "v", lease=7) == 5
        assert kv.keepalive(7) == 30.0
        assert kv.revoke(7) == 1
        assert kv.lease_info(7, keys=True, stale=True) == LeaseInfo(7, 30.0, 29.5, ["k"])
        assert kv.get("k") == Entry("k", "v", 5, None, 7)
        assert [x.id for x in kv.leases(page=2)] == [7, 8, 9]
    sent = [(r["method"], r["path"], r["body"]) for r in fake.a.requests]
    me = kv.client_id
    assert sent[:6] == [
        ("POST", "/v1/leases", {"ttl": 30, "id": 7, "client_id": me, "seq": 1}),
        ("POST", "/v1/leases", {"ttl": 30, "id": 7, "client_id": me, "seq": 1}),  # the retry: the same seq
        ("PUT", "/v1/kv/k", {"value": "v", "lease": 7, "client_id": me, "seq": 2}),
        ("POST", "/v1/leases/7/keepalive", {"client_id": me, "seq": 3}),
        ("DELETE", "/v1/leases/7", {"client_id": me, "seq": 4}),
        ("GET", "/v1/leases/7?keys=true&consistency=stale", None)]
    assert [path for _, path, _ in sent[7:]] == ["/v1/leases?limit=2", "/v1/leases?limit=2&after=8"]


def test_async_lease_calls_and_a_missing_lease(fake: FakeCluster) -> None:
    fake.a.script = [(200, {"id": 3, "ttl": 5.0, "revision": 1}), (200, {"id": 3, "ttl": 5.0}),
                     err(404, "lease_not_found"), err(409, "lease_exists")]

    async def scenario() -> None:
        async with AsyncClient([fake.a.url], timeout_s=2) as kv:
            assert await kv.grant(5) == 3
            assert await kv.keepalive(3) == 5.0
            with pytest.raises(NotFound) as missing:
                await kv.revoke(3)
            assert missing.value.code == "lease_not_found"
            with pytest.raises(Conflict) as taken:
                await kv.grant(5, lease_id=3)
            assert taken.value.code == "lease_exists"
            with pytest.raises(ValueError):
                await kv.keepalive(0)

    asyncio.run(asyncio.wait_for(scenario(), 10))
    bodies = [r["body"] for r in fake.a.requests]
    assert [b["seq"] for b in bodies] == [1, 2, 3, 4] and bodies[0]["ttl"] == 5 and "id" not in bodies[0]


def _status_script(fake: FakeCluster) -> str:
    refused_addr = fake.refused.removeprefix("http://")
    b_addr = fake.b.url.removeprefix("http://")
    fake.a.default = (200, {"id": 1, "address": fake.a.url.removeprefix("http://"), "role": "leader",
                            "peers": {"2": {"address": refused_addr, "reachable": False},
                                      "3": {"address": b_addr, "reachable": True}}})
    fake.b.default = (200, {"id": 3, "address": b_addr, "role": "follower", "peers": {}})
    return refused_addr


def test_cluster_status_marks_down_nodes_and_asks_named_peers(fake: FakeCluster) -> None:
    refused_addr = _status_script(fake)
    started = time.monotonic()
    with Client([fake.a.url], timeout_s=5) as kv:
        nodes = kv.cluster_status()
    assert time.monotonic() - started < 1.0  # a refused node is down at once, not after retries
    assert [(n.get("id"), n["up"]) for n in nodes] == [(1, True), (2, False), (3, True)]
    assert nodes[1]["address"] == refused_addr


def test_async_cluster_status(fake: FakeCluster) -> None:
    _status_script(fake)

    async def scenario() -> list[dict[str, Any]]:
        async with AsyncClient([fake.a.url, fake.refused], timeout_s=5) as kv:
            return await kv.cluster_status()

    nodes = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert [(n.get("id"), n["up"]) for n in nodes] == [(1, True), (2, False), (3, True)]


def test_an_idle_connection_closed_by_the_peer_is_noticed() -> None:
    left, right = socket.socketpair()
    try:
        assert not _peer_closed(left)
        right.close()
        assert _peer_closed(left)
    finally:
        left.close()


# -- membership ------------------------------------------------------------------------


def members_doc(voters: list[int], learners: list[int] = (), pending: dict | None = None,
                removed: list[int] = (), leader: int = 1) -> dict[str, Any]:
    members = [{"id": i, "address": f"127.0.0.1:{7000 + i}", "role": "voter"} for i in voters]
    members += [{"id": i, "address": f"127.0.0.1:{7000 + i}", "role": "learner"} for i in learners]
    return {"applied": 10, "leader": leader, "alpha": 64, "voters": list(voters),
            "members": sorted(members, key=lambda m: m["id"]), "learners": list(learners),
            "removed": list(removed), "pending": pending,
            "history": [{"slot": 0, "effective": 1, "what": "initial", "voters": [1, 2, 3],
                         "learners": []}]}


def test_member_request_shapes(fake: FakeCluster) -> None:
    fake.a.default = (200, members_doc([1, 2, 3]))
    with Client(fake.a.url, timeout_s=5) as kv:
        assert kv.members()["voters"] == [1, 2, 3]
        kv.members(stale=True)
        kv.add_member(4, "127.0.0.1:7004")
        kv.remove_member(2)
        kv.remove_member(3, force=True)
    assert [(r["method"], r["path"], r["body"]) for r in fake.a.requests] == [
        ("GET", "/v1/members", None),
        ("GET", "/v1/members?consistency=stale", None),
        ("POST", "/v1/members", {"id": 4, "address": "127.0.0.1:7004"}),
        ("DELETE", "/v1/members/2", None),
        ("DELETE", "/v1/members/3?force=true", None),
    ]
    with Client(fake.a.url, timeout_s=5) as kv:
        for bad in (0, -1, "4", True):
            with pytest.raises(ValueError):
                kv.remove_member(bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            kv.add_member(4, "")
    assert len(fake.a.requests) == 5  # nothing was sent for bad arguments


def test_a_change_in_progress_is_tried_again_other_refusals_are_not(fake: FakeCluster) -> None:
    fake.a.script = [err(409, "change_in_progress"), err(409, "change_in_progress"),
                     (200, members_doc([1, 2, 3], [4])), err(409, "id_reused")]
    with Client(fake.a.url, timeout_s=5) as kv:
        assert kv.add_member(4, "127.0.0.1:7004")["learners"] == [4]
        with pytest.raises(Conflict) as info:
            kv.add_member(2, "127.0.0.1:7002")
    assert info.value.code == "id_reused" and len(fake.a.requests) == 4
    fake.a.reset()
    fake.a.default = err(409, "change_in_progress")
    started = time.monotonic()
    with Client(fake.a.url, timeout_s=1.0) as kv, pytest.raises(Conflict):
        kv.remove_member(2)
    assert time.monotonic() - started < 2.0


def test_add_member_waits_until_the_node_votes(fake: FakeCluster) -> None:
    promoting = {"slot": 70, "effective": 134, "what": "promote 4", "voters": [1, 2, 3, 4],
                 "learners": []}
    fake.a.script = [(200, members_doc([1, 2, 3], [4])), (200, members_doc([1, 2, 3], [4])),
                     (200, members_doc([1, 2, 3, 4], pending=promoting)),
                     (200, members_doc([1, 2, 3, 4]))]
    with Client(fake.a.url, timeout_s=5) as kv:
        assert kv.add_member(4, "127.0.0.1:7004", wait=True)["voters"] == [1, 2, 3, 4]
    assert [r["method"] for r in fake.a.requests] == ["POST", "GET", "GET", "GET"]
    fake.a.reset()
    fake.a.default = (200, members_doc([1, 2, 3], [4]))
    with Client(fake.a.url, timeout_s=5) as kv, pytest.raises(OutcomeUnknown) as info:
        kv.add_member(4, "127.0.0.1:7004", wait=True, wait_timeout_s=0.5)
    assert "not a voter" in info.value.message
    fake.a.reset()
    fake.a.script = [(200, members_doc([1, 2, 3], [4])), (200, members_doc([1, 2, 3], removed=[4]))]
    with Client(fake.a.url, timeout_s=5) as kv, pytest.raises(NotFound):
        kv.add_member(4, "127.0.0.1:7004", wait=True)


def test_async_member_calls(fake: FakeCluster) -> None:
    fake.a.script = [(200, members_doc([1, 2, 3])), err(409, "change_in_progress"),
                     (200, members_doc([1, 2, 3], [4])), (200, members_doc([1, 2, 3, 4])),
                     err(404, "not_a_member")]

    async def scenario() -> None:
        async with AsyncClient([fake.a.url], timeout_s=5) as kv:
            assert (await kv.members(stale=True))["voters"] == [1, 2, 3]
            assert (await kv.add_member(4, "127.0.0.1:7004", wait=True))["voters"] == [1, 2, 3, 4]
            with pytest.raises(NotFound):
                await kv.remove_member(9, force=True)

    asyncio.run(asyncio.wait_for(scenario(), 10))
    assert [(r["method"], r["path"]) for r in fake.a.requests] == [
        ("GET", "/v1/members?consistency=stale"), ("POST", "/v1/members"), ("POST", "/v1/members"),
        ("GET", "/v1/members"), ("DELETE", "/v1/members/9?force=true")]


# -- writes go to the leader answers name ---------------------------------------------


def test_writes_follow_the_leader_an_answer_names(fake: FakeCluster) -> None:
    named_b = {"X-Kv-Leader": fake.b.url}
    fake.a.default = (200, {"key": "k", "version": 1}, named_b)
    fake.b.default = (200, {"key": "k", "version": 2}, named_b)
    with Client([fake.a.url, fake.b.url], timeout_s=3) as kv:
        assert kv.put("k", "v") == 1  # a answers and names b
        assert kv.put("k", "w") == 2  # straight to b
        assert kv.put("k", "x") == 2
    assert len(fake.a.requests) == 1 and len(fake.b.requests) == 2
    fake.a.reset()
    fake.a.default = (200, {"key": "k", "version": 1}, named_b)
    with Client([fake.a.url], timeout_s=3) as kv:  # b is not one of its endpoints: stay on a
        kv.put("k", "v")
        kv.put("k", "w")
    assert len(fake.a.requests) == 2
    fake.a.reset()
    fake.a.default = (200, {"key": "k", "version": 1}, {"X-Kv-Leader": "not a url"})
    with Client([fake.a.url, fake.b.url], timeout_s=3) as kv:
        kv.put("k", "v")
        kv.put("k", "w")
    assert len(fake.a.requests) == 2


def test_a_leader_that_cannot_be_reached_is_left_alone_for_a_while() -> None:
    from kvpaxos.client_support import LEADER_AVOID_S, LeaderHint

    now = [100.0]
    hint = LeaderHint(["http://h:1", "http://h:2"], clock=lambda: now[0])
    hint.heard("h:2")
    assert hint.index == 1
    hint.unreachable(1)
    assert hint.index is None
    hint.heard("http://h:2/")  # another node still names it
    assert hint.index is None
    now[0] += LEADER_AVOID_S
    hint.heard("http://h:2")
    assert hint.index == 1
    hint.heard(None)  # an answer that names no leader (an election is on)
    assert hint.index is None


def test_a_node_that_takes_a_write_and_never_answers_is_left_for_the_next_calls(fake: FakeCluster) -> None:
    # A leader cut off from its peers holds a write until its own timeout: the call that
    # waited on it gives up, and the next ones (a retry of it too) go elsewhere.
    named_a = {"X-Kv-Leader": fake.a.url}
    fake.a.default = (200, {"key": "k", "version": 1}, named_a)
    fake.b.default = (200, {"key": "k", "version": 2}, named_a)
    with Client([fake.a.url, fake.b.url], timeout_s=0.5) as kv:
        assert kv.put("k", "v") == 1  # a answers and names itself
        fake.a.script = [Hang(2.0)]
        with pytest.raises(OutcomeUnknown):
            kv.put("k", "w")
        assert kv.put("k", "x") == 2 and kv.put("k", "y") == 2  # b, though b still names a
    assert len(fake.a.requests) == 2

    fake.a.reset(), fake.b.reset()
    fake.a.default = (200, {"key": "k", "version": 1}, named_a)
    fake.b.default = (200, {"key": "k", "version": 2}, named_a)
    fake.a.script = [(200, {"key": "k", "version": 1}, named_a), Hang(2.0)]

    async def scenario() -> list[int]:
        async with AsyncClient([fake.a.url, fake.b.url], timeout_s=0.5) as kv:
            got = [await kv.put("k", "v")]
            with pytest.raises(OutcomeUnknown):
                await kv.put("k", "w")
            return got + [await kv.put("k", "x"), await kv.put("k", "y")]

    assert asyncio.run(asyncio.wait_for(scenario(), 10)) == [1, 2, 2]
    assert len(fake.a.requests) == 2


def test_a_silent_node_moves_where_calls_start() -> None:
    from kvpaxos.client_support import LeaderHint

    hint = LeaderHint(["http://h:1", "http://h:2", "http://h:3"])
    hint.heard("h:2")
    assert hint.silent(1, preferred=1) == 2 and hint.index is None
    assert hint.silent(2, preferred=0) == 0  # calls started elsewhere: they still do
    assert hint.silent(2, preferred=2) == 0


# -- the asyncio client -------------------------------------------------------------


def test_async_client_writes_follow_the_leader_an_answer_names(fake: FakeCluster) -> None:
    named_b = {"X-Kv-Leader": fake.b.url}
    fake.a.default = (200, {"key": "k", "version": 1}, named_b)
    fake.b.default = (200, {"key": "k", "version": 2}, named_b)

    async def scenario() -> list[int]:
        async with AsyncClient([fake.a.url, fake.b.url], timeout_s=3) as kv:
            return [await kv.put("k", str(i)) for i in range(3)]

    assert asyncio.run(asyncio.wait_for(scenario(), 10)) == [1, 2, 2]
    assert len(fake.a.requests) == 1


def test_async_client_fails_over_and_reuses_the_seq(fake: FakeCluster) -> None:
    fake.a.script = [err(504, "timeout")]
    fake.b.script = [(200, {"key": "k", "version": 9}), (200, {"key": "k", "value": "v", "version": 9})]

    async def scenario() -> tuple[int, Entry]:
        async with AsyncClient([fake.refused, fake.a.url, fake.b.url], timeout_s=5) as kv:
            return await kv.put("k", "v"), await kv.get("k")

    version, entry = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert version == 9 and entry == Entry("k", "v", 9)
    assert fake.a.requests[0]["body"] == fake.b.requests[0]["body"]
    assert fake.b.requests[0]["body"]["seq"] == 1


def test_async_client_raises_typed_errors(fake: FakeCluster) -> None:
    fake.a.script = [err(404, "not_found")]

    async def scenario() -> None:
        async with AsyncClient([fake.a.url], timeout_s=2) as kv:
            with pytest.raises(NotFound):
                await kv.get("missing")
        async with AsyncClient([fake.refused], timeout_s=0.5) as kv:
            with pytest.raises(Unavailable):
                await kv.delete("k")

    asyncio.run(asyncio.wait_for(scenario(), 10))


# -- the kv command ------------------------------------------------------------------


@pytest.mark.parametrize("args", [
    ["get"], ["--server", "0", "get", "k"], ["--endpoints", "http://nohost", "get", "k"],
    ["list", "--limit", "0"], ["put", "k"], ["serve", "--cluster", "1=a:1"],
    ["serve", "--id", "4", "--cluster", "1=127.0.0.1:1"], ["serve", "--id", "1", "--cluster", "junk"],
    ["cluster", "up", "--nodes", "0"], ["frobnicate"],
])
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = CliRunner().invoke(cli, args, env={"KV_ENDPOINTS": None})
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_not_found_is_one_line_and_exit_1(fake: FakeCluster) -> None:
    fake.a.script = [err(404, "not_found")]
    result = CliRunner().invoke(cli, ["--endpoints", fake.a.url, "get", "nope"])
    assert result.exit_code == 1
    assert result.stderr == "error: key 'nope' not found\n"


def test_unreachable_cluster_is_one_line_and_exit_1(fake: FakeCluster) -> None:
    result = CliRunner().invoke(cli, ["put", "k", "v", "--endpoints", fake.refused, "--timeout", "0.5"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1


def test_server_option_picks_one_endpoint_and_output(fake: FakeCluster) -> None:
    fake.b.script = [(200, {"key": "k", "value": "hello", "version": 2})] * 2
    env = {"KV_ENDPOINTS": f"{fake.a.url},{fake.b.url}"}
    result = CliRunner().invoke(cli, ["get", "k", "--server", "2"], env=env)
    assert (result.exit_code, result.stdout) == (0, "hello\n")
    result = CliRunner().invoke(cli, ["--server", "2", "get", "--json", "k"], env=env)
    assert json.loads(result.stdout) == {"key": "k", "value": "hello", "version": 2}
    assert not fake.a.requests and len(fake.b.requests) == 2


def test_resolve_endpoints(tmp_path: Any) -> None:
    assert resolve_endpoints(None, None, tmp_path) == [
        "http://127.0.0.1:7001", "http://127.0.0.1:7002", "http://127.0.0.1:7003"]
    assert resolve_endpoints(5, None, tmp_path) == ["http://127.0.0.1:7005"]
    (tmp_path / "cluster.json").write_text(json.dumps(
        {"nodes": {"1": "127.0.0.1:9001", "2": "127.0.0.1:9002"}}))
    assert resolve_endpoints(2, None, tmp_path) == ["http://127.0.0.1:9002"]
    assert resolve_endpoints(1, "h:1,h:2", tmp_path) == ["http://h:1"]
    with pytest.raises(click.BadParameter):
        resolve_endpoints(3, None, tmp_path)


def test_cluster_up_keeps_an_existing_layout_and_refuses_busy_ports(tmp_path: Any) -> None:
    (tmp_path / "cluster.json").write_text(json.dumps({"nodes": {"1": "127.0.0.1:9001"}}))
    assert plan_cluster(tmp_path, None, None, None) == {1: "127.0.0.1:9001"}
    with pytest.raises(CliError):
        plan_cluster(tmp_path, 3, None, None)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(CliError, match="already in use"):
            check_ports_free({1: f"127.0.0.1:{busy.getsockname()[1]}"})


# -- kv member against fake nodes -----------------------------------------------------


@pytest.mark.parametrize("args,message", [
    (["member", "add", "4"], "expected ID=HOST:PORT"),
    (["member", "add", "x=127.0.0.1:7004"], "a member id is a positive integer, not 'x'"),
    (["member", "add", "0=127.0.0.1:7004"], "a member id is a positive integer, not '0'"),
    (["member", "add", "4=127.0.0.1"], "must be HOST:PORT"),
    (["member", "add", "4=127.0.0.1:99999"], "must be HOST:PORT"),
    (["member", "add", "4=http://h:1"], "must be HOST:PORT"),
    (["member", "remove", "two"], "a member id is a positive integer, not 'two'"),
    (["member", "remove", "-3"], "a member id is a positive integer"),
])
def test_member_bad_input_is_one_line_and_exit_2(fake: FakeCluster, args: list[str],
                                                 message: str) -> None:
    result = CliRunner().invoke(cli, ["--endpoints", fake.a.url, *args])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr and not fake.a.requests


@pytest.mark.parametrize("args,answer,message", [
    (["member", "remove", "9"], err(404, "not_a_member"), "cannot remove node 9: no member has that id"),
    (["member", "remove", "1"], err(409, "last_voter"), "cannot remove node 1: it is the last voter"),
    (["member", "add", "2=h:2"], err(409, "id_reused"), "cannot add node 2: that id belonged to a removed"),
    (["member", "add", "3=h:9"], err(409, "already_member"),
     "cannot add node 3: that id is already a member with another address"),
    (["member", "remove", "2"],
     (409, {"error": "would_lose_quorum", "message": "only 1 of the 2 voters left answer (or force it)"}),
     "cannot remove node 2: only 1 of the 2 voters left answer (or pass --force)"),
])
def test_member_refusals_are_one_line_and_exit_1(fake: FakeCluster, args: list[str], answer: tuple,
                                                 message: str) -> None:
    fake.a.default = answer
    result = CliRunner().invoke(cli, ["--endpoints", fake.a.url, *args])
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(f"error: {message}") and result.stderr.count("\n") == 1, result.stderr


def test_member_list_add_and_remove_output(fake: FakeCluster) -> None:
    pending = {"slot": 70, "effective": 134, "what": "add 4", "voters": [1, 2, 3], "learners": [4]}
    fake.a.default = (200, members_doc([1, 2, 3], [4], pending=pending, removed=[5], leader=2))
    result = CliRunner().invoke(cli, ["--endpoints", fake.a.url, "member", "list"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ID", "ADDRESS", "ROLE"]
    assert lines[1].split() == ["1", "127.0.0.1:7001", "voter"]
    assert lines[2].split() == ["2", "127.0.0.1:7002", "voter", "(leader)"]
    assert lines[4].split() == ["4", "127.0.0.1:7004", "learner"]
    assert "pending: add 4 (chosen in slot 70; in effect from slot 134" in result.stdout
    assert "removed (ids never reused): 5" in result.stdout
    assert lines[-1].split() == ["0", "1", "initial", "1,2,3", "-"]
    result = CliRunner().invoke(cli, ["--endpoints", fake.a.url, "member", "list", "--json"])
    assert json.loads(result.stdout)["pending"] == pending

    fake.a.reset()
    fake.a.default = (200, members_doc([1, 2, 3], [4]))
    result = CliRunner().invoke(cli, ["--endpoints", fake.a.url, "member", "add", "4=127.0.0.1:7004"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "node 4 (127.0.0.1:7004) is a learner; voters 1,2,3, learners 4",
        "start it, if it is not running yet: kv serve --id 4 --join http://127.0.0.1:7001 "
        "--address 127.0.0.1:7004"]

    fake.a.reset()
    fake.a.script = [(200, members_doc([1, 2, 3], leader=1)), (200, members_doc([2, 3], removed=[1]))]
    result = CliRunner().invoke(cli, ["--endpoints", fake.a.url, "member", "remove", "1"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "removed node 1 (it led the cluster; a new leader takes over); voters 2,3\n"
    assert [r["method"] for r in fake.a.requests] == ["GET", "DELETE"]


def test_status_table_shows_member_roles() -> None:
    from cli.main import format_status_table
    nodes = [
        {"id": 1, "address": "h:1", "role": "leader", "leader": 1, "member": "voter",
         "voters": [1, 2], "applied": 9, "up": True},
        {"id": 2, "address": "h:2", "up": False},
        {"id": 3, "address": "h:3", "role": "follower", "leader": 1, "member": "learner",
         "voters": [1, 2], "applied": 5, "up": True},
        {"id": 4, "address": "h:4", "up": False},
    ]
    rows = [line.split() for line in format_status_table(nodes).splitlines()]
    assert rows[0][:5] == ["ID", "ADDRESS", "ROLE", "MEMBER", "LEADER"]
    assert [r[3] for r in rows[1:]] == ["voter", "voter", "learner", "-"]


def test_status_warns_when_nodes_at_one_slot_disagree_on_the_voters() -> None:
    """The configuration is a function of the log: two nodes that applied the same slot and
    name different voters were started with different --cluster lists."""
    from cli.main import format_config_mismatch, format_deciding
    node = {"up": True, "applied": 4, "voters": [1, 2, 3]}
    agreeing = [{**node, "id": 1}, {**node, "id": 2, "voters": [3, 2, 1]}, {**node, "id": 3, "applied": 2,
                                                                           "voters": [1, 2]}]
    assert format_config_mismatch(agreeing) is None  # at another slot the voters may differ
    assert format_config_mismatch([{**node, "id": 1}, {**node, "id": 4, "up": False, "voters": [9]}]) is None
    told = format_config_mismatch([{**node, "id": 1}, {**node, "id": 2, "voters": [1, 2, 3, 4]},
                                   {**node, "id": 3, "voters": [1, 2, 3, 4]}])
    assert told is not None and told.startswith("WARNING: at applied slot 4")
    assert "node(s) 1: voters 1,2,3; node(s) 2,3: voters 1,2,3,4" in told
    named = [{**node, "id": i, "cluster_id": c} for i, c in ((1, "aa"), (2, "aa"), (3, "bb"))]
    told = format_config_mismatch(named)
    assert told is not None and "different clusters (node(s) 1,2: cluster aa; node(s) 3: cluster bb)" in told
    assert format_config_mismatch([*named[:2], {**named[2], "deciding": True}]) is None  # still taking it
    assert format_deciding(agreeing) is None
    deciding = format_deciding([{**node, "id": 1, "deciding": True, "deciding_heard": [2, 3]}])
    assert deciding is not None and "(node 1: 2 of 3)" in deciding


def test_server_option_finds_a_node_that_joined_later(fake: FakeCluster, tmp_path: Any) -> None:
    a_addr = fake.a.url.removeprefix("http://")
    (tmp_path / "cluster.json").write_text(json.dumps({"nodes": {"1": a_addr}}))
    doc = members_doc([1])
    doc["members"] = [{"id": 1, "address": a_addr, "role": "voter"},
                      {"id": 4, "address": fake.b.url.removeprefix("http://"), "role": "learner"}]
    fake.a.default = (200, doc)
    assert resolve_endpoints(4, None, tmp_path) == [fake.b.url]
    with pytest.raises(click.BadParameter):
        resolve_endpoints(5, None, tmp_path)


def test_a_watch_streams_lines_make_changes_and_a_last_stop() -> None:
    """What a node sends on a watch stream (kvpaxos/http.py _watch_stream), read back:
    a retry hint, comments, ids, changes (data split over lines joins with newlines), and
    the last `event: stop` with its error document."""
    from kvpaxos.client_support import EventStream, stream_backoff

    reader = EventStream()
    lines = [b"retry: 1000\n", b"\n", b": nothing new\n", b"\n",
             b"id: 7\n", b'data: {"revision": 7, "type": "put",\n', b'data: "key": "a", "value": "x"}\n', b"\n",
             b"id: 8\r\n", b'data:{"revision": 8, "type": "delete", "key": "a"}\r\n', b"\r\n",
             b"event: stop\n", b'data: {"error": "compacted", "oldest": 9}\n', b"\n"]
    got = [x for x in (reader.feed(line) for line in lines) if x is not None]
    assert got == [("change", {"revision": 7, "type": "put", "key": "a", "value": "x"}),
                   ("change", {"revision": 8, "type": "delete", "key": "a"}),
                   ("stop", {"error": "compacted", "oldest": 9})]
    with pytest.raises(ValueError):
        for line in (b"data: {not json\n", b"\n"):
            reader.feed(line)
    assert [stream_backoff(n) for n in (1, 2, 3, 10)] == [0.05, 0.1, 0.2, 1.0]
    from kvpaxos.client import Event, WatchReader

    watching = WatchReader()
    events = [e for e in (watching.take(line) for line in lines) if e is not None]
    assert events == [Event(7, "put", "a", "x"), Event(8, "delete", "a", None)]
    assert watching.stop == {"error": "compacted", "oldest": 9}


def test_after_a_stream_ends_the_next_node_is_asked_and_compacted_everywhere_raises() -> None:
    from kvpaxos.client import Compacted, after_stream

    refused: list = []
    assert after_stream(None, refused, 2, 3) == 0  # ended or cut off: the next node round
    assert after_stream({"error": "no_quorum"}, refused, 0, 3) == 1 and refused == []
    stop = {"error": "compacted", "message": "gone", "oldest": 40, "revision": 90}
    assert after_stream(stop, refused, 1, 3) == 2 and refused[0].oldest == 40
    assert after_stream({**stop, "oldest": 30}, refused, 2, 3) == 0
    with pytest.raises(Compacted) as raised:
        after_stream({**stop, "oldest": 35}, refused, 0, 3)
    assert raised.value.oldest == 30  # the oldest any node held
