"""Crashes of real node processes (SIGKILL) while clients write.

Every write a node acknowledged (200) must survive any crash of a minority and
a crash of everyone at once; without a majority, writes must fail fast with
503/504 rather than hang, and work again once the majority is back.
"""
from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from support.cluster import REPO_ROOT, Cluster, free_ports, request, wait_until

REQUEST_TIMEOUT_S = 5.0  # the node's request_timeout_s default
SLACK_S = 4.0  # scheduling and slow fsyncs on a busy CI box
HTTP_TIMEOUT_S = REQUEST_TIMEOUT_S + SLACK_S


class Writers:
    """Threads writing distinct keys, each key once, recording every acknowledged write.

    Each thread is one client (client_id) with increasing seq; a request that
    fails is retried with the same seq (through the next node) until it is
    acknowledged or the writers stop, so retries exercise exactly-once too.
    """

    def __init__(self, cluster: Cluster, targets: list[int], threads: int = 4) -> None:
        self.cluster = cluster
        self.targets = list(targets)  # nodes to write through; the test may change it
        self.prefix = f"w{uuid.uuid4().hex[:6]}"
        self.acked: dict[str, tuple[str, int, float]] = {}  # key -> (value, version, ack time)
        self.outcomes: Counter[str] = Counter()
        self.slowest_s = 0.0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(t,), daemon=True)
                        for t in range(threads)]

    def start(self) -> "Writers":
        for t in self.threads:
            t.start()
        return self

    def _run(self, t: int) -> None:
        client = f"{self.prefix}-client{t}"
        attempt = 0
        seq = 0
        while not self.stopping.is_set():
            seq += 1
            key, value = f"{self.prefix}/{t}/{seq:05d}", f"value-{t}-{seq}"
            while not self.stopping.is_set():
                attempt += 1
                targets = self.targets
                node = targets[(t + attempt) % len(targets)]
                started = time.monotonic()
                try:
                    resp = self.cluster.put(node, key, value, timeout=HTTP_TIMEOUT_S,
                                            client_id=client, seq=seq)
                    outcome = f"{resp.status} {resp.error or ''}".strip()
                except (OSError, http.client.HTTPException) as exc:
                    resp, outcome = None, type(exc).__name__
                elapsed = time.monotonic() - started
                with self.lock:
                    self.outcomes[outcome] += 1
                    self.slowest_s = max(self.slowest_s, elapsed)
                    if resp is not None and resp.status == 200:
                        assert resp.body["key"] == key
                        self.acked[key] = (value, resp.body["version"], time.monotonic())
                        break
                time.sleep(0.02)

    def acked_since(self, t0: float) -> int:
        with self.lock:
            return sum(1 for _, _, at in self.acked.values() if at > t0)

    def wait_acks(self, count: int, since: float = 0.0, timeout: float = 20.0) -> None:
        wait_until(lambda: self.acked_since(since) >= count, timeout,
                   f"{count} acknowledged writes (outcomes so far: {dict(self.outcomes)})")

    def stop(self) -> dict[str, tuple[str, int, float]]:
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=HTTP_TIMEOUT_S + 5)
            assert not t.is_alive(), "a writer is stuck in a request"
        print(f"writers: {len(self.acked)} acknowledged, outcomes {dict(self.outcomes)}, "
              f"slowest {self.slowest_s:.2f}s")
        # Nothing answered 500, nothing hung past the node's own request timeout.
        assert not any(o.startswith("5") and not o.startswith(("503", "504")) for o in self.outcomes), \
            self.outcomes
        assert self.outcomes["TimeoutError"] == 0, self.outcomes
        assert self.slowest_s < HTTP_TIMEOUT_S, self.slowest_s
        return dict(self.acked)


def check_all_present(cluster: Cluster, acked: dict, nodes: list[int], stale: bool = False) -> None:
    """Every acknowledged write is there with its value and version, read through each node."""
    assert acked
    prefix = next(iter(acked)).split("/")[0] + "/"
    for node in nodes:
        listed = cluster.list(node, prefix, limit=10_000, stale=stale)
        assert listed.status == 200, listed
        found = {item["key"]: (item["value"], item["version"]) for item in listed.body["items"]}
        missing = {k: v for k, (v, _, _) in acked.items() if k not in found}
        assert not missing, f"node {node} lost {len(missing)} acknowledged writes: {sorted(missing)[:10]}"
        wrong = {k: (found[k], (v, ver)) for k, (v, ver, _) in acked.items() if found[k] != (v, ver)}
        assert not wrong, f"node {node} has wrong values: {list(wrong.items())[:10]}"
    # And single-key reads, spread over the nodes (each key read through one of them).
    for n, (key, (value, version, _)) in enumerate(sorted(acked.items())[:60]):
        got = cluster.get(nodes[n % len(nodes)], key, stale=stale)
        assert got.status == 200 and got.body == {"key": key, "value": value, "version": version}, got


def test_leader_killed_under_writes_then_restarted_catches_up(make_cluster):
    cluster = make_cluster(3)
    leader = cluster.wait_for_leader()
    followers = [i for i in cluster.ids if i != leader]
    writers = Writers(cluster, followers).start()
    try:
        writers.wait_acks(30)
        cluster.kill(leader, signal.SIGKILL)
        killed_at = time.monotonic()
        new_leader = cluster.wait_for_leader(not_=leader)
        assert new_leader in followers
        writers.wait_acks(30, since=killed_at)  # writes carry on under the new leader
    finally:
        acked = writers.stop()
    check_all_present(cluster, acked, followers)

    cluster.restart(leader)
    cluster.wait_caught_up(leader)
    check_all_present(cluster, acked, [leader], stale=True)  # its own copy, no leader involved
    check_all_present(cluster, acked, cluster.ids)
    assert cluster.put(leader, "after-restart", "ok").status == 200


def test_all_nodes_killed_at_once_keep_every_acknowledged_write(make_cluster):
    cluster = make_cluster(3)
    cluster.wait_for_leader()
    writers = Writers(cluster, cluster.ids, threads=6).start()
    try:
        writers.wait_acks(60)
        cluster.kill_many(cluster.ids, signal.SIGKILL)  # in the middle of writes
    finally:
        acked = writers.stop()
    assert writers.outcomes["200"] >= 60

    cluster.start()
    cluster.wait_for_leader()
    check_all_present(cluster, acked, cluster.ids)
    for node in cluster.ids:
        resp = wait_until(lambda: (r := cluster.put(node, f"after/{node}", "ok")).status == 200 and r,
                          15, f"a write through node {node}")
        assert cluster.get(node % 3 + 1, f"after/{node}").body["version"] == resp.body["version"]


def test_minority_down_writes_continue(make_cluster):
    cluster = make_cluster(3)
    leader = cluster.wait_for_leader()
    victim = next(i for i in cluster.ids if i != leader)
    cluster.kill(victim)
    survivors = [i for i in cluster.ids if i != victim]
    acked = {}
    for n in range(20):
        node = survivors[n % 2]
        resp = cluster.put(node, f"minority/{n:03d}", f"v{n}", timeout=HTTP_TIMEOUT_S)
        assert resp.status == 200, resp
        assert resp.elapsed_s < 4.0, resp  # no election needed: the leader still has a majority
        acked[f"minority/{n:03d}"] = (f"v{n}", resp.body["version"], 0.0)
    check_all_present(cluster, acked, survivors)

    cluster.restart(victim)
    cluster.wait_caught_up(victim)
    check_all_present(cluster, acked, [victim], stale=True)


@pytest.mark.parametrize("survivor_role", ["leader", "follower"])
def test_no_majority_fails_fast_then_recovers(make_cluster, survivor_role):
    cluster = make_cluster(3)
    leader = cluster.wait_for_leader()
    assert cluster.put(leader, "before", "v0").status == 200
    if survivor_role == "leader":
        survivor = leader
    else:
        survivor = next(i for i in cluster.ids if i != leader)
        wait_until(lambda: cluster.get(survivor, "before", stale=True).status == 200, 10, "replication")
    dead = [i for i in cluster.ids if i != survivor]
    cluster.kill_many(dead)

    with ThreadPoolExecutor(3) as pool:
        put = pool.submit(cluster.put, survivor, "no-quorum", "x", timeout=HTTP_TIMEOUT_S)
        get = pool.submit(cluster.get, survivor, "before", timeout=HTTP_TIMEOUT_S)
        delete = pool.submit(cluster.delete, survivor, "before", timeout=HTTP_TIMEOUT_S)
        put, get, delete = put.result(), get.result(), delete.result()
    for resp in (put, get, delete):
        assert (resp.status, resp.error) in ((503, "no_quorum"), (504, "timeout")), resp
        assert resp.elapsed_s < HTTP_TIMEOUT_S, resp
        if resp.status == 503:
            assert resp.headers.get("retry-after"), resp.headers
    stale = cluster.get(survivor, "before", stale=True)  # the local copy still answers
    assert stale.status == 200 and stale.body["value"] == "v0", stale
    assert cluster.status(survivor)["id"] == survivor

    for i in dead:
        cluster.restart(i)
    cluster.wait_for_leader()
    resp = wait_until(lambda: (r := cluster.put(survivor, "after", "v1")).status == 200 and r,
                      15, "writes to work again")
    for node in cluster.ids:
        assert cluster.get(node, "after").body["version"] == resp.body["version"]
    if put.status == 503:  # certainly not applied
        assert cluster.get(survivor, "no-quorum").status == 404
    # 504: it may or may not have been applied; either way the store answers.
    assert cluster.get(survivor, "no-quorum").status in (200, 404)
    if delete.status == 503:
        assert cluster.get(survivor, "before").body["value"] == "v0"


def test_five_nodes_two_killed_writes_continue(make_cluster):
    cluster = make_cluster(5)
    leader = cluster.wait_for_leader()
    victims = [leader, next(i for i in cluster.ids if i != leader)]
    survivors = [i for i in cluster.ids if i not in victims]
    writers = Writers(cluster, survivors).start()
    try:
        writers.wait_acks(30)
        cluster.kill_many(victims)
        killed_at = time.monotonic()
        assert cluster.wait_for_leader(not_=leader) in survivors
        writers.wait_acks(30, since=killed_at)
    finally:
        acked = writers.stop()
    check_all_present(cluster, acked, survivors)

    for i in victims:
        cluster.restart(i)
    for i in victims:
        cluster.wait_caught_up(i)
        check_all_present(cluster, acked, [i], stale=True)
    check_all_present(cluster, acked, cluster.ids)


def test_a_follower_back_after_a_while_does_not_depose_the_leader(make_cluster):
    """The leader's link to a follower that is down retries once a second at most; a
    follower back up dials the leader at once, and the leader must dial back then,
    not at its next retry, or the follower hears nothing for longer than its election
    timeout (200-400 ms), elects itself and deposes a leader that was fine (each time
    with a write or two failing over). Three rounds: with the leader waiting for its
    next retry, the follower wins most rounds."""
    cluster = make_cluster(3)
    leader = cluster.wait_for_leader()
    ballot = cluster.status(leader)["ballot"]
    follower = next(i for i in cluster.ids if i != leader)
    for n in range(3):
        cluster.kill(follower)
        time.sleep(2.5)  # the leader's link to it is at its longest wait between attempts
        cluster.spawn(follower)
        cluster.wait_ready(follower)
        time.sleep(1.2)  # three of the longest election timeouts
        status = cluster.status(follower)
        assert status["elections"] == 0, f"round {n}: the follower ran for leader:\n{cluster.log_tail(follower)}"
        assert cluster.status(leader)["ballot"] == ballot and status["leader"] == leader
        assert cluster.put(follower, f"back/{n}", "v", timeout=HTTP_TIMEOUT_S).status == 200


def test_a_new_cluster_waits_for_enough_nodes_and_says_why(make_cluster):
    """Nodes with new data directories vote only once ceil(n/2) peers have said the cluster
    holds no state: three of five are not enough. Until then their status, `kv status` and
    a refused write say what they wait for; a fourth node lets them begin."""
    cluster = make_cluster(5, start=False)
    cluster.start([1, 2, 3])
    wait_until(lambda: all(cluster.status(i).get("deciding_heard") == [2, 3] for i in (1, 2, 3)), 15,
               "nodes 1-3 to hear from each other")
    assert all(cluster.status(i)["deciding"] and cluster.status(i)["leader"] is None for i in (1, 2, 3))
    env = dict(os.environ)
    env.pop("KV_ENDPOINTS", None)
    shown = subprocess.run([sys.executable, "-m", "cli.main", "status", "--endpoints",
                            ",".join(cluster.url(i) for i in cluster.ids)],
                           cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert "deciding: 3 node(s)" in shown.stdout and "node 1: 2 of 3" in shown.stdout, shown.stdout
    refused = cluster.put(2, "early", "v", timeout=HTTP_TIMEOUT_S)
    assert refused.status == 503 and refused.body["error"] == "no_quorum", refused
    assert "node 2 has a new data directory" in refused.body["message"], refused
    assert "3 of its peers" in refused.body["message"], refused
    assert "waiting for peers to answer before voting" in cluster.log_tail(1, 200)

    cluster.start([4])
    cluster.wait_for_leader(ids=[1, 2, 3, 4])
    assert cluster.put(2, "early", "v", timeout=HTTP_TIMEOUT_S).status == 200
    assert all(cluster.status(i)["deciding_heard"] is None for i in (1, 2, 3, 4))


def test_a_new_cluster_started_with_different_lists_does_not_vote_and_says_why(tmp_path):
    """Node 1 started with a 3-node list, nodes 2 and 3 with a 4-node one (node 4 never
    starts): they would count different majorities, which Paxos does not allow. Every node
    hears a peer name other voters before it may call the cluster new, so none votes, and
    each says why: in its status and log, in `kv status`, and in a refused write."""
    ports = free_ports(4)
    spec = [f"{i}=127.0.0.1:{p}" for i, p in enumerate(ports, start=1)]
    env = dict(os.environ)
    env.pop("KV_ENDPOINTS", None)
    procs = []
    try:
        for i, listed in ((1, spec[:3]), (2, spec), (3, spec)):
            with open(tmp_path / f"node-{i}.log", "ab") as log:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "cli.main", "serve", "--id", str(i), "--cluster", ",".join(listed),
                     "--data-dir", str(tmp_path / f"node-{i}"), "--request-timeout", "1"], cwd=REPO_ROOT,
                    env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

        def problems() -> dict[int, str] | None:
            try:
                told = {i: request(ports[i - 1], "GET", "/v1/status", timeout=2).body.get("deciding_problem")
                        for i in (1, 2, 3)}
            except (OSError, http.client.HTTPException, AttributeError):
                return None
            return told if all(told.values()) else None
        told = wait_until(problems, 30, "every node to say why it does not vote", interval=0.2)
        assert "peer(s) 2 (voters 1,2,3,4), 3 (voters 1,2,3,4) were started with another --cluster list " \
               "than node 1 (voters 1,2,3)" in told[1], told
        assert "peer(s) 1 (voters 1,2,3) were started with another --cluster list than node 2" in told[2], told
        out = subprocess.run([sys.executable, "-m", "cli.main", "status", "--endpoints",
                              ",".join(f"http://127.0.0.1:{p}" for p in ports)],
                             cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60).stdout
        assert "node 1 does not vote: peer(s) 2 (voters 1,2,3,4)" in out, out
        refused = request(ports[1], "PUT", "/v1/kv/k", {"value": "v"}, timeout=HTTP_TIMEOUT_S)
        assert refused.status == 503 and "another --cluster list" in refused.body["message"], refused
        assert all(request(p, "GET", "/v1/status").body["promised"] == "0.0" for p in ports[:3])  # no one voted
        assert "not voting: peer(s)" in (tmp_path / "node-1.log").read_text()
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=30)
