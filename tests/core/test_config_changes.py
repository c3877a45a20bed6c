"""Membership changes: the configuration as replicated state, and replicas driven through
joins, promotions and removals by hand (the Net harness of test_replica.py)."""
from __future__ import annotations

import random

import pytest

from kvpaxos.core import messages as m
from kvpaxos.core.commands import NOOP, Batch, Command
from kvpaxos.core.membership import (MEMBER_ADD, MEMBER_PROMOTE, MEMBER_REMOVE, Config, Membership)
from kvpaxos.core.replica import Replica, Role
from test_replica import CONFIG, Disk, Net, is_type, put

ALPHA = CONFIG.window_slots


def add(node: int, address: str = "", cmd_id: str = "") -> Command:
    return Command(MEMBER_ADD, str(node), address or f"127.0.0.1:{7000 + node}",
                   cmd_id=cmd_id or f"add.{node}")


def promote(node: int) -> Command:
    return Command(MEMBER_PROMOTE, str(node), cmd_id=f"promote.{node}")


def remove(node: int) -> Command:
    return Command(MEMBER_REMOVE, str(node), cmd_id=f"remove.{node}")


def run(ms: Membership, slot: int, *cmds: Command) -> tuple[Membership, list[tuple[bool, str | None]]]:
    ms, results = ms.apply(slot, Batch(cmds))
    return ms, [(r.ok, r.error) for _, r in results]


# -- the configuration as a state machine ----------------------------------------------


def test_a_change_chosen_in_slot_s_governs_slots_from_s_plus_alpha() -> None:
    ms = Membership.initial((1, 2, 3), alpha=4)
    ms, results = run(ms, 10, add(4))
    assert results == [(True, None)]
    assert ms.at(13).learners == () and ms.at(14).learners == (4,)
    assert ms.between(11, 20) == [ms.at(11), ms.at(14)]
    assert not ms.settled(13) and ms.settled(14)
    ms, results = run(ms, 14, promote(4))
    assert results == [(True, None)]
    assert ms.at(17).voters == (1, 2, 3) and ms.at(18).voters == (1, 2, 3, 4)
    assert ms.latest.quorum == 3


def test_at_most_one_change_is_in_flight() -> None:
    ms = Membership.initial((1, 2, 3), alpha=4)
    ms, results = run(ms, 5, add(4), add(5))
    assert results == [(True, None), (False, "change_in_progress")]
    ms, results = run(ms, 8, remove(3))
    assert results == [(False, "change_in_progress")]
    ms, results = run(ms, 9, remove(3))
    assert results == [(True, None)]


@pytest.mark.parametrize(("cmds", "error"), [
    ((remove(2), add(2)), "id_reused"),  # a removed id never comes back
    ((add(1, "10.0.0.9:1"),), "already_member"),
    ((add(4, "h:2"),), "address_in_use"),
    ((promote(2),), None),  # already a voter: nothing to do
    ((promote(9),), "not_a_learner"),
    ((remove(9),), "not_a_member"),
    ((add(4, "no-port"),), "bad_address"),
    ((add(4, "host:99999"),), "bad_address"),
    ((Command(MEMBER_ADD, "x", "h:1", cmd_id="x"),), "bad_member_id"),
    ((Command(MEMBER_ADD, "0", "h:1", cmd_id="x"),), "bad_member_id"),
])
def test_bad_changes_fail_with_a_reason_and_change_nothing(cmds: tuple[Command, ...], error: str | None) -> None:
    ms = Membership.initial((1, 2, 3), alpha=1, addresses={1: "h:1", 2: "h:2", 3: "h:3"})
    for i, cmd in enumerate(cmds[:-1]):
        ms, _ = run(ms, 10 * (i + 1), cmd)
    before = ms
    after, results = run(ms, 100, cmds[-1])
    assert results == [(error is None, error)]
    assert after.latest == before.latest


def test_the_last_voter_cannot_be_removed_and_removal_is_idempotent() -> None:
    ms = Membership.initial((1, 2), alpha=1)
    ms, results = run(ms, 1, remove(2))
    assert results == [(True, None)]
    ms, results = run(ms, 2, remove(2), )
    assert results == [(True, None)]  # a retried removal succeeds without a change
    ms, results = run(ms, 3, remove(1))
    assert results == [(False, "last_voter")]
    assert ms.latest.voters == (1,) and ms.removed == (2,)


def test_membership_round_trips_through_json_and_refuses_garbage() -> None:
    ms = Membership.initial((1, 2, 3), alpha=8, addresses={1: "a:1", 2: "b:2", 3: "c:3"})
    ms, _ = run(ms, 4, add(4, "d:4"))
    ms, _ = run(ms, 12, remove(2))
    assert Membership.from_json(ms.to_json()) == ms
    for bad in [None, {}, {"alpha": 0, "removed": [], "history": []},
                {"alpha": 1, "removed": [], "history": [{"slot": 0, "effective": 1, "what": "x",
                                                          "voters": [], "learners": [], "addresses": {}}]},
                {**ms.to_json(), "history": list(reversed(ms.to_json()["history"]))}]:
        with pytest.raises(ValueError):
            Membership.from_json(bad)


# -- replicas through changes ------------------------------------------------------------


class GrowingNet(Net):
    """A Net whose nodes can join: a new node boots from a member's applied membership."""

    def join(self, new: int, donor: int) -> Replica:
        ms = self.readies[donor][-1].membership
        assert ms is not None
        self.members = (*self.members, new)
        self.disks[new] = Disk()
        self.readies[new], self.reads[new], self.applied[new] = [], [], []
        base = len(self.applied[donor])
        self.nodes[new] = Replica(new, ms, self.config, random.Random(new), applied_through=base)
        return self.nodes[new]

    def take(self, match):  # noqa: ANN001, ANN201 - as Net.take; nodes not started yet hear nothing
        return [e for e in super().take(match) if e[1] in self.nodes]

    def settle(self, rounds: int = 200) -> None:
        for _ in range(rounds):
            for i in self.members:
                self.nodes[i].tick()
            self.deliver()


def results(net: Net, i: int) -> dict:
    return {k: (v.ok, v.error) for r in net.readies[i] for k, v in r.member_results.items()}


def test_a_learner_catches_up_is_promoted_and_then_its_vote_counts() -> None:
    net = GrowingNet()
    net.elect(1)
    for k in range(5):
        net.nodes[1].propose(put(f"k{k}", "v"))
    net.nodes[1].propose(add(4))
    net.deliver()
    assert results(net, 1)["add.4"] == (True, None)
    learner = net.join(4, donor=1)
    assert learner.membership.latest.learners == (4,)
    net.settle(rounds=3 * CONFIG.election_ticks)
    leader = net.nodes[1]
    assert leader.membership.latest.voters == (1, 2, 3, 4)
    assert learner.learner.chosen_through == leader.learner.chosen_through
    promoted_at = next(c for c in leader.membership.history if c.what == "promote 4").effective
    # With 3 cut off, a majority of the four voters needs the new voter's vote.
    net.nodes[1].propose(put("after", "promotion"))
    net.deliver(drop=lambda s, d, x: 3 in (s, d))
    assert leader.learner.chosen_through >= promoted_at
    chosen = {s: v for r in net.readies[4] for s, v in r.apply}
    assert any(c.key == "after" for v in chosen.values() for c in v.commands)


def test_a_learner_makes_no_promises() -> None:
    net = GrowingNet()
    net.elect(1)
    net.nodes[1].propose(add(4))
    net.deliver()
    net.join(4, donor=1)
    net.nodes[4].step(2, m.Prepare(m.Ballot(9, 2), 1))
    assert not [x for _, x in net.nodes[4].take_ready().messages if isinstance(x, m.Promise)]


def test_the_leader_never_proposes_beyond_chosen_through_plus_alpha() -> None:
    net = Net()
    net.elect(1)
    leader = net.nodes[1]
    base = leader.learner.chosen_through
    for k in range(3 * ALPHA):
        leader.propose(put(f"k{k}", "v"))
        net.deliver(drop=lambda s, d, x: isinstance(x, m.Accepted))  # nothing gets chosen
    assert leader.learner.chosen_through == base
    assert max(leader.lead.proposals) == base + ALPHA


def test_a_removed_leader_waits_for_the_new_voters_then_names_a_successor() -> None:
    net = Net()
    net.elect(1)
    net.nodes[1].propose(remove(1))
    net.deliver()
    leader = net.nodes[1]
    assert results(net, 1)["remove.1"] == (True, None)
    # The change fills the slots its old configuration governs with no-ops at once.
    assert leader.membership.settled(leader.learner.chosen_through + 1)
    for _ in range(CONFIG.heartbeat_ticks + 1):
        net.tick(1)
    net.deliver(match=lambda s, d, x: not isinstance(x, m.Resign))
    resigns = net.queued(is_type(m.Resign))
    assert resigns and leader.removed and leader.role is Role.FOLLOWER
    successor = resigns[0][2].successor
    assert successor in (2, 3)
    net.deliver()
    assert net.nodes[successor].role is Role.LEADER  # at once: no election timeout
    assert net.nodes[5 - successor].leader_id == successor
    # The removed node ignores everything from now on.
    leader.step(successor, m.Heartbeat(net.nodes[successor].ballot, 1, 1))
    assert leader.take_ready().is_empty()


def test_a_removed_node_is_told_so_once_the_new_voters_know_the_old_log() -> None:
    net = Net()
    net.elect(1)
    net.nodes[1].propose(remove(3))
    net.deliver(drop=lambda s, d, x: d == 3)  # node 3 never hears of it
    assert 3 in net.nodes[1].membership.removed and not net.nodes[3].removed
    net.nodes[1].step(3, m.CatchUpRequest(1, 2))
    assert not [x for d, x in net.nodes[1].take_ready().messages if d == 3]  # node 2 may need it still
    net.tick(1, CONFIG.heartbeat_ticks)  # node 2 acknowledges that it knows the whole old log
    net.deliver(drop=lambda s, d, x: d == 3)
    net.nodes[1].step(3, m.CatchUpRequest(1, 2))
    replies = [x for d, x in net.nodes[1].take_ready().messages if d == 3]
    assert [type(x) for x in replies] == [m.Removed]
    net.nodes[3].step(1, replies[0])
    assert net.nodes[3].removed and net.nodes[3].take_ready().removed


def test_reads_wait_while_a_change_is_in_flight() -> None:
    net = GrowingNet()
    net.elect(1)
    leader = net.nodes[1]
    leader.propose(add(4))
    # The add is chosen, but no slot after it: the change is in flight.
    net.deliver(drop=lambda s, d, x: isinstance(x, m.Accepted) and x.slot > leader.learner.chosen_through + 1)
    in_flight = not leader.membership.settled(leader.learner.chosen_through + 1)
    assert in_flight
    leader.read_index(7)
    net.deliver(drop=lambda s, d, x: isinstance(x, m.Accepted))
    assert (7, None) not in net.reads[1] and not [r for r in net.reads[1] if r[0] == 7]
    for _ in range(3 * CONFIG.retry_ticks):  # the filler no-ops are chosen, the change takes
        net.tick(1)                          # effect, and then the read goes through
        net.deliver()
    assert [r for r in net.reads[1] if r[0] == 7 and r[1] is not None]


def test_config_counts_only_voters() -> None:
    c = Config((1, 2, 3), (4, 5))
    assert c.is_quorum({1, 2}) and not c.is_quorum({1, 4, 5})
    assert c.members == (1, 2, 3, 4, 5) and c.quorum == 2
    assert NOOP.is_noop
