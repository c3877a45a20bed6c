"""A leader that defers its own vote (CoreConfig.defer_self_vote).

The leader's acceptance is one vote like any other: it may come late or not at
all, as long as it is never counted before it is durable (rules 3 and 7). A
deferring leader writes no acceptance when its followers can make a majority
alone; once its vote is the one missing it casts it (cast_self_votes, the
runtime's timer) or, at the latest, two ticks after proposing.
"""
from __future__ import annotations

from dataclasses import replace

import pytest

from kvpaxos.core import messages as m
from kvpaxos.core.ballot import Ballot
from kvpaxos.core.replica import Role
from test_replica import CONFIG, Net, put

DEFER = replace(CONFIG, defer_self_vote=True)


def proposed(net: Net, key: str = "k") -> int:
    assert net.nodes[1].propose(put(key, "v"))
    [slot] = net.flush(1).proposed.values()
    return slot


def own_accepted(net: Net, ballot: Ballot, slot: int) -> list:
    return net.queued(lambda s, d, x: s == d == 1 and x == m.Accepted(ballot, slot))


def test_followers_alone_choose_a_slot_the_leader_never_wrote() -> None:
    net = Net(n=3, config=DEFER)
    ballot = net.elect(1)
    assert net.nodes[1].propose(put("k", "v"))
    ready = net.flush(1)
    [slot] = ready.proposed.values()
    assert slot not in ready.accepted and not own_accepted(net, ballot, slot)
    assert sorted(d for d, x in ready.messages if isinstance(x, m.Accept)) == [2, 3]
    net.deliver()
    assert slot in net.nodes[1].learner.chosen
    assert slot not in net.disks[1].accepted
    assert all(net.disks[i].accepted[slot][0] == ballot for i in (2, 3))
    assert not net.nodes[1].has_due_self_votes()


def test_one_follower_vote_waits_for_the_leaders_own_durable_vote() -> None:
    net = Net(n=3, config=DEFER)
    ballot = net.elect(1)
    leader = net.nodes[1]
    slot = proposed(net)
    net.take(lambda s, d, x: d == 3)  # node 3 never hears of it
    net.deliver()
    # One follower and no leader vote: not a majority, whatever the leader knows.
    assert slot not in leader.learner.chosen
    assert leader.has_due_self_votes()
    leader.cast_self_votes()  # due since this round: waits one more
    assert slot not in net.flush(1).accepted
    leader.cast_self_votes()
    ready = net.flush(1)  # Net.flush checks that the Accepted leaves only once durable
    assert ready.accepted == {slot: (ballot, ready.accepted[slot][1])}
    assert own_accepted(net, ballot, slot) and slot not in leader.learner.chosen
    net.deliver()
    assert slot in leader.learner.chosen
    assert not leader.has_due_self_votes()


def test_the_tick_casts_a_deferred_vote_that_no_follower_answers() -> None:
    net = Net(n=3, config=DEFER)
    ballot = net.elect(1)
    slot = proposed(net)
    net.take(lambda s, d, x: True)  # every Accept is lost
    net.tick(1)
    assert slot not in net.flush(1).accepted
    net.tick(1)
    assert net.flush(1).accepted[slot][0] == ballot
    assert own_accepted(net, ballot, slot)


def test_a_leader_votes_at_once_once_its_followers_went_quiet() -> None:
    net = Net(n=3, config=DEFER)
    ballot = net.elect(1)
    for _ in range(2 * DEFER.heartbeat_ticks + 1):
        net.tick(1)
        net.flush(1)
        net.take(lambda s, d, x: True)  # heartbeats unanswered
    slot = proposed(net)
    assert net.disks[1].accepted[slot][0] == ballot and own_accepted(net, ballot, slot)


@pytest.mark.parametrize("n", [1, 2])
def test_a_leader_whose_followers_cannot_make_a_majority_alone_votes_at_once(n: int) -> None:
    net = Net(n=n, config=DEFER)
    ballot = net.elect(1)
    slot = proposed(net)
    assert net.disks[1].accepted[slot][0] == ballot
    net.deliver()
    assert slot in net.nodes[1].learner.chosen


def test_a_leader_that_steps_down_casts_nothing() -> None:
    net = Net(n=3, config=DEFER)
    ballot = net.elect(1)
    leader = net.nodes[1]
    slot = proposed(net)
    net.take(lambda s, d, x: d == 3)
    net.deliver(match=lambda s, d, x: d == 2)  # node 2 accepts; its vote stays queued
    assert slot not in leader.learner.chosen
    leader.step(3, m.Reject(ballot, Ballot(ballot.round + 1, 3)))
    assert leader.role is Role.FOLLOWER
    leader.cast_self_votes()
    leader.cast_self_votes()
    net.tick(1, 3)
    assert slot not in net.flush(1).accepted and slot not in net.disks[1].accepted
    assert not leader.has_due_self_votes()


def test_without_deferring_the_leader_votes_in_the_proposing_ready() -> None:
    net = Net(n=3)
    ballot = net.elect(1)
    slot = proposed(net)
    assert net.disks[1].accepted[slot][0] == ballot and own_accepted(net, ballot, slot)
    assert not net.nodes[1].has_due_self_votes()
