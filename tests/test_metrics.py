"""GET /metrics on live `kv serve` processes: the exposition parses, and its numbers move."""
from __future__ import annotations

import pytest

from secure_cluster import Nodes, parse_metrics, wait_until


@pytest.fixture
def nodes(tmp_path):
    made = Nodes(tmp_path / "cluster", n=3)
    try:
        yield made.start()
    finally:
        made.stop_all()
        print(made.logs())  # shown only if the test failed


def sample(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def scrape_all(nodes: Nodes) -> dict[int, dict]:
    return {i: parse_metrics(nodes.metrics(i))[1] for i in nodes.ids}


def total(scrapes: dict[int, dict], name: str, **labels: str) -> float:
    # A labelled sample appears once it is first counted (a follower sends no Accept).
    return sum(s.get((name, frozenset(labels.items())), 0.0) for s in scrapes.values())


def test_metrics_parse_and_move_with_writes(nodes: Nodes) -> None:
    leader = nodes.wait_leader()
    follower = next(i for i in nodes.ids if i != leader)
    types, _ = parse_metrics(nodes.metrics(follower))
    expected_types = {
        "kvpaxos_is_leader": "gauge", "kvpaxos_applied_slot": "gauge", "kvpaxos_chosen_slot": "gauge",
        "kvpaxos_commands_proposed_total": "counter", "kvpaxos_slots_chosen_total": "counter",
        "kvpaxos_elections_total": "counter", "kvpaxos_leader_changes_total": "counter",
        "kvpaxos_pre_votes_total": "counter",
        "kvpaxos_requests_forwarded_total": "counter", "kvpaxos_messages_sent_total": "counter",
        "kvpaxos_messages_received_total": "counter", "kvpaxos_malformed_total": "counter",
        "kvpaxos_peer_auth_failures_total": "counter", "kvpaxos_snapshots_taken_total": "counter",
        "kvpaxos_batch_size_commands": "histogram", "kvpaxos_commit_latency_seconds": "histogram",
        "kvpaxos_fsync_latency_seconds": "histogram", "kvpaxos_gc_full_pause_seconds": "histogram",
        "kvpaxos_watch_waiting": "gauge", "kvpaxos_watch_history_changes": "gauge",
        "kvpaxos_watch_history_first": "gauge",
        "kvpaxos_keys_with_ttl": "gauge", "kvpaxos_keys_expired_total": "counter",
        "kvpaxos_leases": "gauge", "kvpaxos_keys_with_lease": "gauge", "kvpaxos_leases_expired_total": "counter",
        "kvpaxos_transactions_total": "counter", "kvpaxos_prefix_deletes_total": "counter",
        "kvpaxos_prefix_deleted_keys_total": "counter",
    }
    for name, kind in expected_types.items():
        assert types.get(name) == kind, (name, types.get(name))

    before = scrape_all(nodes)
    writes = 30
    for k in range(writes):  # through a follower: forwarded to the leader
        assert nodes.put_retry(follower, f"key-{k}", f"value-{k}").status == 200
    for k in range(5):  # and through the leader itself
        assert nodes.put_retry(leader, f"direct-{k}", "v").status == 200
    after = scrape_all(nodes)

    # Counters move. Sums over the nodes, so that an election on a loaded machine
    # (which moves the leader) does not break the test.
    def moved(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert moved("kvpaxos_commands_proposed_total") >= writes + 5
    assert moved("kvpaxos_requests_forwarded_total") >= 1
    assert sample(after[follower], "kvpaxos_requests_forwarded_total") >= 1
    assert moved("kvpaxos_messages_sent_total", type="Accept") > 0
    assert moved("kvpaxos_messages_received_total", type="Accepted") > 0
    assert moved("kvpaxos_slots_chosen_total") >= 1
    assert moved("kvpaxos_fsync_latency_seconds_count") > 0
    # The node collected and froze what it had loaded once it started (kvpaxos/gcpause.py).
    assert all(sample(s, "kvpaxos_gc_full_pause_seconds_count") >= 1 for s in after.values())
    assert moved("kvpaxos_batch_size_commands_sum") >= writes + 5
    assert total(after, "kvpaxos_elections_total") >= 1
    assert total(after, "kvpaxos_pre_votes_total") >= 1  # nodes ask before they run
    assert sample(after[follower], "kvpaxos_leader_changes_total") >= 1
    # Every write the follower answered was timed, from its submission to its application.
    latency = "kvpaxos_commit_latency_seconds"
    assert sample(after[follower], latency + "_count") - sample(before[follower], latency + "_count") >= writes
    assert sample(after[follower], latency + "_sum") > 0
    # Gauges: one leader at most; applied slots grew.
    assert total(after, "kvpaxos_is_leader") <= 1
    current = nodes.wait_leader()
    assert sample(parse_metrics(nodes.metrics(current))[1], "kvpaxos_is_leader") == 1
    assert sample(after[follower], "kvpaxos_applied_slot") - sample(before[follower], "kvpaxos_applied_slot") >= 1

    # Histograms: buckets are cumulative and end at +Inf == count.
    for scrape in after.values():
        for hist in (latency, "kvpaxos_fsync_latency_seconds", "kvpaxos_batch_size_commands"):
            buckets = sorted(((float(dict(labels)["le"]), v) for (name, labels), v in scrape.items()
                              if name == hist + "_bucket"))
            assert buckets and buckets[-1][0] == float("inf")
            assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:])), buckets
            assert buckets[-1][1] == sample(scrape, hist + "_count")

    # Every write is a change held for watches on every node that applied it.
    assert sample(after[leader], "kvpaxos_watch_history_changes") - \
        sample(before[leader], "kvpaxos_watch_history_changes") >= writes + 5
    assert sample(after[leader], "kvpaxos_watch_history_first") == 1
    assert sample(after[leader], "kvpaxos_watch_waiting") == 0

    # Transactions and prefix deletes are counted where they were answered.
    txn = {"if": [{"key": "key-0", "exists": True}], "then": [{"op": "put", "key": "t", "value": "1"}]}
    for body in (txn, {**txn, "if": [{"key": "key-0", "exists": False}]}):
        assert nodes.request(follower, "POST", "/v1/txn", body).status == 200
    assert nodes.request(follower, "DELETE", "/v1/kv?prefix=direct-").status == 200
    counted = parse_metrics(nodes.metrics(follower))[1]
    assert sample(counted, "kvpaxos_transactions_total", outcome="succeeded") == 1
    assert sample(counted, "kvpaxos_transactions_total", outcome="failed") == 1
    assert sample(counted, "kvpaxos_prefix_deletes_total") == 1
    assert sample(counted, "kvpaxos_prefix_deleted_keys_total") == 5

    # The followers' applied_slot gauges reach the leader's.
    target = sample(parse_metrics(nodes.metrics(current))[1], "kvpaxos_applied_slot")
    for i in nodes.ids:
        wait_until(lambda: sample(parse_metrics(nodes.metrics(i))[1], "kvpaxos_applied_slot") >= target,
                   15, f"node {i}'s applied_slot gauge to catch up")


def test_a_batch_forwarded_by_a_follower_gets_one_client_reply(nodes: Nodes) -> None:
    """A group of commands lands whole in one slot, so the leader tells the forwarding
    node that slot once per forwarded request, not once per command."""
    leader = nodes.wait_leader()
    follower = next(i for i in nodes.ids if i != leader)
    ops = [{"op": "put", "key": f"batch-{k}", "value": "v"} for k in range(50)]
    before = scrape_all(nodes)
    for seq in (1, 2, 3):
        reply = nodes.request(follower, "POST", "/v1/batch", {"ops": ops, "client_id": "one-reply", "seq": seq})
        assert reply.status == 200, reply
    after = scrape_all(nodes)
    replies = (total(after, "kvpaxos_messages_sent_total", type="ClientReply")
               - total(before, "kvpaxos_messages_sent_total", type="ClientReply"))
    proposed = (total(after, "kvpaxos_commands_proposed_total")
                - total(before, "kvpaxos_commands_proposed_total"))
    assert proposed >= 150
    assert 3 <= replies <= 6, replies  # one per request (a leader change may add a resend's)


def test_metrics_content_type_and_open_route(nodes: Nodes) -> None:
    reply = nodes.request(1, "GET", "/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
