"""Pre-vote through real processes and a real partition.

A follower cut off from both peers hears no leader, and after each election timeout
asks the voters whether it may run (PreVote). Nobody answers, so it starts no election
and raises no ballot, however long the partition lasts. Once the partition heals it
follows the leader it had, whose ballot has not moved: the leader was never deposed.
Without pre-voting, each timeout raises the cut-off node's ballot, and its first
refusal after the heal deposes a leader that was fine (tests/core/test_replica.py
shows the same run without pre-vote).
"""
from __future__ import annotations

import time

from support.cluster import wait_until

PARTITION_S = 3.0  # seven of the longest election timeouts (400 ms) and more


def test_a_follower_cut_off_rejoins_without_deposing_the_leader(fault_cluster):
    cluster = fault_cluster(3)
    assert cluster.net is not None
    leader = cluster.wait_for_leader()
    assert cluster.put(leader, "before", "0").status == 200
    ballot = cluster.status(leader)["ballot"]
    cut = next(i for i in cluster.ids if i != leader)
    others = [i for i in cluster.ids if i != cut]
    before = cluster.status(cut)

    cluster.net.partition([cut], others)
    time.sleep(PARTITION_S)
    during = cluster.status(cut)
    assert during["pre_votes"] >= before["pre_votes"] + 3, during  # it asked, timeout after timeout
    assert during["elections"] == before["elections"], during  # and never ran
    assert during["promised"] == before["promised"], during  # nor raised its ballot
    assert cluster.put(leader, "during", "1").status == 200  # the majority side goes on

    cluster.net.heal()
    wait_until(lambda: cluster.status(cut)["leader"] == leader, 10, f"node {cut} following node {leader} again")
    status = cluster.status(leader)
    assert status["role"] == "leader" and status["ballot"] == ballot, status
    assert cluster.status(cut)["elections"] == before["elections"]
    assert cluster.put(cut, "after", "2").status == 200
    assert cluster.get(cut, "during").body["value"] == "1"
    assert cluster.get(leader, "after").body["value"] == "2"
