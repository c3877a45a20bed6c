"""Replica behaviour, driven by hand: elections, takeover, choosing, learning, reads, batching.

`Net` routes each Ready the way the runtime must: persist its writes to the node's
disk first, then queue its messages. Tests deliver, drop or forge messages one by
one, so each protocol rule is checked in isolation (PAXOS_NOTES rules in brackets).
"""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import pytest

from kvpaxos.core import messages as m
from kvpaxos.core.ballot import ZERO, Ballot
from kvpaxos.core.commands import NOOP, PUT, Batch, Command
from kvpaxos.core.replica import CoreConfig, Ready, Replica, Role

# Partial batches pipelined freely: these tests count on every proposal opening a slot.
CONFIG = CoreConfig(election_ticks=10, heartbeat_ticks=2, retry_ticks=4, window_slots=8,
                    batch_count_max=16, catchup_entries_max=4, partial_in_flight=0)

Envelope = tuple[int, int, m.Message]  # (src, dst, message)


@dataclass
class Disk:
    promised: Ballot = ZERO
    accepted: dict[int, tuple[Ballot, Batch]] = field(default_factory=dict)
    chosen: dict[int, Batch] = field(default_factory=dict)


class Net:
    def __init__(self, n: int = 3, config: CoreConfig = CONFIG, seed: int = 0,
                 disks: dict[int, Disk] | None = None) -> None:
        self.members = tuple(range(1, n + 1))
        self.config = config
        self.seed = seed
        self.disks = disks or {i: Disk() for i in self.members}
        self.nodes = {i: self._boot(i) for i in self.members}
        self.queue: list[Envelope] = []
        self.readies: dict[int, list[Ready]] = {i: [] for i in self.members}
        self.reads: dict[int, list[tuple[int, int | None]]] = {i: [] for i in self.members}
        self.applied: dict[int, list[tuple[int, Batch]]] = {i: [] for i in self.members}

    def _boot(self, i: int) -> Replica:
        d = self.disks[i]
        return Replica(i, self.members, self.config, random.Random(self.seed * 1000 + i),
                       promised=d.promised, accepted=dict(d.accepted), chosen=dict(d.chosen))

    def restart(self, i: int) -> Replica:
        """Crash node i (dropping messages queued to it) and boot it from its disk."""
        self.queue = [e for e in self.queue if e[1] != i]
        self.nodes[i] = self._boot(i)
        return self.nodes[i]

    def flush(self, i: int) -> Ready:
        """Persist node i's Ready, check persist-before-send [3], then queue its messages."""
        ready = self.nodes[i].take_ready()
        d = self.disks[i]
        if ready.promised is not None:
            assert ready.promised >= d.promised, "a persisted promise went backwards"
            d.promised = ready.promised
        d.accepted.update(ready.accepted)
        d.chosen.update(ready.chosen)
        for dst, msg in ready.messages:
            if isinstance(msg, m.Promise):
                assert d.promised >= msg.ballot, f"node {i} sent {msg} before persisting it"
            if isinstance(msg, m.Accepted):
                assert d.accepted[msg.slot][0] == msg.ballot, f"node {i} sent {msg} before persisting it"
            self.queue.append((i, dst, msg))
        self.readies[i].append(ready)
        self.reads[i].extend(ready.reads)
        self.applied[i].extend(ready.apply)
        return ready

    def flush_all(self) -> None:
        for i in self.members:
            self.flush(i)

    def take(self, match: Callable[[int, int, m.Message], bool]) -> list[Envelope]:
        """Remove and return the queued messages that match."""
        out = [e for e in self.queue if match(*e)]
        self.queue = [e for e in self.queue if not match(*e)]
        return out

    def deliver(self, match: Callable[[int, int, m.Message], bool] = lambda s, d, x: True,
                drop: Callable[[int, int, m.Message], bool] = lambda s, d, x: False,
                rounds: int = 50) -> None:
        """Flush, then deliver matching messages (and what they cause) until none are left."""
        self.flush_all()
        for _ in range(rounds):
            batch = self.take(match)
            if not batch:
                return
            for src, dst, msg in batch:
                if not drop(src, dst, msg):
                    self.nodes[dst].step(src, msg)
            self.flush_all()
        raise AssertionError("messages still flowing after many rounds")

    def tick(self, i: int, n: int = 1) -> None:
        for _ in range(n):
            self.nodes[i].tick()

    def campaign(self, i: int) -> Ballot:
        """Tick node i (only) until it starts an election; returns its ballot. Nothing is sent."""
        r = self.nodes[i]
        for _ in range(2 * self.config.election_ticks + 1):
            if r.role is Role.CANDIDATE:
                return r.ballot
            r.tick()
        raise AssertionError(f"node {i} never started an election")

    def elect(self, i: int) -> Ballot:
        ballot = self.campaign(i)
        self.deliver()
        assert self.nodes[i].role is Role.LEADER
        return ballot

    def queued(self, match: Callable[[int, int, m.Message], bool]) -> list[Envelope]:
        return [e for e in self.queue if match(*e)]


def put(key: str, value: str, cmd_id: str = "") -> Command:
    return Command(PUT, key, value, cmd_id=cmd_id or f"{key}={value}")


def is_type(*types: type) -> Callable[[int, int, m.Message], bool]:
    return lambda src, dst, msg: isinstance(msg, types)


def between(a: int, b: int) -> Callable[[int, int, m.Message], bool]:
    return lambda src, dst, msg: {src, dst} == {a, b} or src == dst == a


# -- elections ----------------------------------------------------------------------


def test_a_follower_campaigns_after_its_randomized_timeout_in_ticks() -> None:
    timeouts = set()
    for seed in range(30):
        r = Replica(1, (1, 2, 3), CONFIG, random.Random(seed))
        limit = r.election_timeout
        assert CONFIG.election_ticks <= limit < 2 * CONFIG.election_ticks
        for _ in range(limit - 1):
            r.tick()
        assert r.role is Role.FOLLOWER and r.take_ready().is_empty()
        r.tick()
        assert r.role is Role.CANDIDATE
        timeouts.add(limit)
    assert len(timeouts) > 3  # randomised, so two nodes rarely duel [15]


def test_a_live_leader_keeps_followers_from_campaigning() -> None:
    net = Net()
    net.elect(1)
    for _ in range(10 * CONFIG.election_ticks):
        for i in net.members:
            net.tick(i)
        net.deliver()
    assert [net.nodes[i].role for i in net.members] == [Role.LEADER, Role.FOLLOWER, Role.FOLLOWER]
    assert net.nodes[2].leader_id == net.nodes[3].leader_id == 1


def test_election_makes_one_leader_that_everyone_follows() -> None:
    net = Net(n=5)
    ballot = net.elect(3)
    assert ballot == Ballot(1, 3)
    assert net.nodes[3].role is Role.LEADER
    for i in (1, 2, 4, 5):
        assert net.nodes[i].role is Role.FOLLOWER
        assert net.nodes[i].leader_id == 3
        assert net.nodes[i].acceptor.promised == ballot


def test_candidate_persists_its_own_promise_in_the_ready_that_sends_the_prepares() -> None:
    net = Net()
    ballot = net.campaign(1)
    ready = net.nodes[1].take_ready()
    assert ready.promised == ballot
    assert (1, m.Promise(ballot, 1, ())) in ready.messages  # our vote, after our write [3]
    assert sorted(dst for dst, msg in ready.messages if isinstance(msg, m.Prepare)) == [2, 3]


def test_leader_persists_its_own_accept_in_the_ready_that_sends_the_accepts() -> None:
    net = Net()
    ballot = net.elect(1)
    leader = net.nodes[1]
    assert leader.propose(put("k", "v"))
    ready = net.flush(1)
    [slot] = ready.proposed.values()
    value = ready.accepted[slot][1]
    assert ready.accepted == {slot: (ballot, value)}
    assert (1, m.Accepted(ballot, slot)) in ready.messages
    assert sorted(dst for dst, msg in ready.messages if isinstance(msg, m.Accept)) == [2, 3]


def test_the_leader_counts_its_own_vote_only_when_its_accepted_message_arrives() -> None:
    net = Net(n=3)
    ballot = net.elect(1)
    net.nodes[1].propose(put("k", "v"))
    [slot] = net.flush(1).proposed.values()
    net.deliver(match=lambda s, d, x: d == 2 and isinstance(x, m.Accept))  # a peer votes
    net.deliver(match=lambda s, d, x: s == 2 and isinstance(x, m.Accepted))
    assert slot not in net.nodes[1].learner.chosen  # one vote of two: own write not yet reported
    net.deliver(match=lambda s, d, x: s == d == 1 and x == m.Accepted(ballot, slot))
    assert slot in net.nodes[1].learner.chosen


@pytest.mark.parametrize("persisted", [Ballot(7, 3), Ballot(7, 1), Ballot(0, 0)])
def test_restarted_node_campaigns_above_its_persisted_promise(persisted: Ballot) -> None:
    net = Net(disks={1: Disk(promised=persisted), 2: Disk(), 3: Disk()})
    ballot = net.campaign(1)
    assert ballot == Ballot(persisted.round + 1, 1)  # rule 4: never a ballot it may have used


def test_restart_never_reuses_a_ballot_of_a_previous_life() -> None:
    net = Net()
    first = net.elect(1)
    net.restart(1)
    second = net.campaign(1)
    assert second > first
    net.deliver()
    net.restart(1)
    assert net.campaign(1) > second


def test_ballots_seen_in_messages_raise_the_next_ballot() -> None:
    net = Net()
    r = net.nodes[1]
    r.step(2, m.Reject(Ballot(1, 1), Ballot(9, 3)))
    assert net.campaign(1) == Ballot(10, 1)


# -- leader takeover (rule 6) -------------------------------------------------------

X, Y, Z, W = (Batch((put("k", v),), ts_ms=1) for v in "XYZW")


def takeover(promises: dict[int, m.Promise], n: int = 5, chosen: dict[int, Batch] | None = None,
             ) -> tuple[Net, Ballot]:
    """Node 1 campaigns at round 5 (it had promised 4.4) and gets the given promises."""
    disks = {i: Disk() for i in range(1, n + 1)}
    disks[1] = Disk(promised=Ballot(4, 4), chosen=dict(chosen or {}))
    net = Net(n=n, disks=disks)
    ballot = net.campaign(1)
    assert ballot == Ballot(5, 1)
    net.deliver(match=lambda s, d, x: s == d == 1)  # our own promise
    net.take(lambda s, d, x: True)  # the Prepares are answered below, by hand
    for src, promise in promises.items():
        net.nodes[1].step(src, promise)
    net.flush(1)
    return net, ballot


def accepts_sent(net: Net, ballot: Ballot) -> dict[int, Batch]:
    out: dict[int, Batch] = {}
    for _, _, msg in net.queued(lambda s, d, x: s == 1 and d == 2 and isinstance(x, m.Accept)):
        assert msg.ballot == ballot  # every proposal under the NEW ballot
        out[msg.slot] = msg.value
    return out


def test_takeover_proposes_the_highest_ballot_value_and_fills_holes_with_noops() -> None:
    b = Ballot(5, 1)
    net, ballot = takeover({
        2: m.Promise(b, 1, (m.AcceptedEntry(1, Ballot(2, 2), X), m.AcceptedEntry(3, Ballot(3, 3), Y))),
        3: m.Promise(b, 1, (m.AcceptedEntry(1, Ballot(3, 3), Z), m.AcceptedEntry(3, Ballot(2, 2), W))),
    })
    leader = net.nodes[1]
    assert leader.role is Role.LEADER
    proposed = accepts_sent(net, ballot)
    assert proposed[1] == Z  # accepted at 3.3 beats 2.2
    assert proposed[2] == NOOP  # a hole no promise mentions
    assert proposed[3] == Y
    # One fresh empty slot above: the new leader's barrier, marked so (Batch.lead).
    assert [v.lead and not v.commands for s, v in proposed.items() if s > 3] == [True]
    assert not any(v.lead for s, v in proposed.items() if s <= 3)
    assert {s: leader.acceptor.accepted[s] for s in (1, 2, 3)} == {1: (ballot, Z), 2: (ballot, NOOP),
                                                                   3: (ballot, Y)}


def test_takeover_gives_new_commands_only_fresh_slots_after_the_range() -> None:
    b = Ballot(5, 1)
    net, ballot = takeover({
        2: m.Promise(b, 1, (m.AcceptedEntry(4, Ballot(2, 2), X),)),
        3: m.Promise(b, 1, ()),
    })
    leader = net.nodes[1]
    leader.propose(put("new", "1", cmd_id="n1"))
    leader.propose(put("new", "2", cmd_id="n2"))
    ready = net.flush(1)
    assert min(ready.proposed.values()) > 4
    proposed = accepts_sent(net, ballot)
    assert proposed[4] == X and all(proposed[s] == NOOP for s in (1, 2, 3))


def test_takeover_prefers_a_value_known_to_be_chosen_here_or_at_a_promiser() -> None:
    # Slot 1 is known here from before the campaign, so the campaign starts at slot 2.
    # Slot 3 is known chosen here and slot 4 at node 3: the accepted values reported
    # for them (possible only after a disk loss) are not proposed.
    b = Ballot(5, 1)
    net, ballot = takeover({
        2: m.Promise(b, 2, (m.AcceptedEntry(3, Ballot(3, 3), Y), m.AcceptedEntry(4, Ballot(3, 3), Y))),
        3: m.Promise(b, 2, (), chosen=(m.ChosenEntry(4, Z),)),
    }, chosen={1: X, 3: W})
    proposed = accepts_sent(net, ballot)
    assert 1 not in proposed
    assert proposed[2] == NOOP and proposed[3] == W and proposed[4] == Z


def test_promise_entries_below_the_campaign_start_are_ignored() -> None:
    b = Ballot(5, 1)
    net, ballot = takeover({
        2: m.Promise(b, 3, (m.AcceptedEntry(2, Ballot(2, 2), Y), m.AcceptedEntry(3, Ballot(2, 2), X))),
        3: m.Promise(b, 3, ()),
    }, chosen={1: W, 2: W})
    proposed = accepts_sent(net, ballot)
    assert min(proposed) == 3 and proposed[3] == X
    assert net.nodes[1].learner.chosen[2] == W


def test_takeover_waits_for_a_majority_of_promises() -> None:
    b = Ballot(5, 1)
    net, _ = takeover({2: m.Promise(b, 1, ())})  # with our own: 2 of 5
    assert net.nodes[1].role is Role.CANDIDATE
    net.nodes[1].step(2, m.Promise(b, 1, ()))  # a duplicate is not a new vote
    assert net.nodes[1].role is Role.CANDIDATE
    net.nodes[1].step(3, m.Promise(Ballot(4, 1), 1, ()))  # nor is a promise for another ballot
    assert net.nodes[1].role is Role.CANDIDATE
    net.nodes[1].step(4, m.Promise(b, 1, ()))
    assert net.nodes[1].role is Role.LEADER


# -- choosing (rule 7) ---------------------------------------------------------------


def test_a_slot_is_chosen_only_with_a_majority_at_the_current_ballot() -> None:
    net = Net(n=5)
    old = net.elect(1)
    # Node 1 campaigns again: its second ballot is higher; late votes for the first do not count.
    net.nodes[1].step(2, m.Reject(old, Ballot(old.round + 1, 2)))
    assert net.nodes[1].role is Role.FOLLOWER
    net.flush(1)
    net.queue.clear()
    new = net.campaign(1)
    net.deliver(match=lambda s, d, x: isinstance(x, (m.Prepare, m.Promise)))
    leader = net.nodes[1]
    assert leader.role is Role.LEADER and new > old
    net.take(lambda s, d, x: True)
    leader.propose(put("k", "v"))
    [slot] = net.flush(1).proposed.values()
    chosen_before = dict(leader.learner.chosen)
    for src in (1, 2, 3, 4, 5):
        leader.step(src, m.Accepted(old, slot))  # votes for the old ballot
    net.flush(1)
    assert slot not in leader.learner.chosen
    for src in (1, 2):
        leader.step(src, m.Accepted(new, slot))
        leader.step(src, m.Accepted(new, slot))  # a duplicate vote is one vote
    net.flush(1)
    assert slot not in leader.learner.chosen
    leader.step(5, m.Accepted(new, slot))
    ready = net.flush(1)
    assert slot in ready.chosen and set(leader.learner.chosen) - set(chosen_before) >= {slot}


# -- stepping down (rule 8) ---------------------------------------------------------


def leader_with_pending_commands() -> tuple[Net, Ballot, list[Command]]:
    config = CoreConfig(election_ticks=10, heartbeat_ticks=2, retry_ticks=4, window_slots=1,
                        batch_count_max=1, partial_in_flight=0)
    net = Net(n=3, config=config)
    ballot = net.elect(1)
    leader = net.nodes[1]
    cmds = [put("k", str(i)) for i in range(4)]
    for c in cmds:
        leader.propose(c)
    net.flush(1)  # one slot in flight (window of 1); the others wait
    return net, ballot, cmds[1:]


def higher(b: Ballot, node: int = 2) -> Ballot:
    return Ballot(b.round + 1, node)


STEP_DOWN_CASES: dict[str, Callable[[Ballot], tuple[int, m.Message]]] = {
    "reject": lambda b: (2, m.Reject(b, higher(b))),
    "accept": lambda b: (2, m.Accept(higher(b), 9, NOOP)),
    "heartbeat": lambda b: (2, m.Heartbeat(higher(b), 0, 1)),
    "commit": lambda b: (2, m.Commit(higher(b), 0)),
}


@pytest.mark.parametrize("case", STEP_DOWN_CASES, ids=str)
def test_leader_steps_down_on_a_higher_ballot_and_hands_back_pending_commands(case: str) -> None:
    net, ballot, waiting = leader_with_pending_commands()
    leader = net.nodes[1]
    leader.read_index(77)
    src, msg = STEP_DOWN_CASES[case](ballot)
    leader.step(src, msg)
    assert leader.role is Role.FOLLOWER and leader.lead is None
    ready = net.flush(1)
    assert ready.dropped == waiting
    assert (77, None) in ready.reads  # its pending reads are refused, not left hanging
    assert not leader.propose(put("k", "late"))


def test_leader_ignores_lower_or_equal_ballots() -> None:
    net, ballot, _ = leader_with_pending_commands()
    leader = net.nodes[1]
    lower = Ballot(ballot.round - 1, 2)
    leader.step(2, m.Reject(ballot, lower))
    leader.step(2, m.Reject(ballot, ballot))
    leader.step(2, m.Heartbeat(lower, 0, 1))
    leader.step(2, m.Commit(lower, 0))
    leader.step(2, m.Accept(lower, 9, NOOP))
    assert leader.role is Role.LEADER
    ready = net.flush(1)
    assert ready.dropped == []
    assert (2, m.Reject(lower, ballot)) in ready.messages  # the stale leader learns of us


def test_candidate_steps_down_on_a_higher_prepare_and_promises_it() -> None:
    net = Net()
    ballot = net.campaign(1)
    net.flush(1)
    r = net.nodes[1]
    rival = higher(ballot, 3)
    r.step(3, m.Prepare(rival, 1))
    assert r.role is Role.FOLLOWER and r.lead is None
    ready = net.flush(1)
    assert ready.promised == rival
    assert (3, m.Promise(rival, 1, ())) in ready.messages


def test_candidate_steps_down_on_a_higher_reject() -> None:
    net = Net()
    ballot = net.campaign(1)
    net.nodes[1].step(2, m.Reject(ballot, higher(ballot)))
    assert net.nodes[1].role is Role.FOLLOWER


def test_live_leader_refuses_a_higher_prepare_but_yields_to_the_ballot_in_use() -> None:
    # A leader in contact with a majority does not promise a rival's higher ballot (leader
    # stickiness: a rejoining node must not depose it); its refusal names its own ballot,
    # so the rival does not mistake it for a higher promise. Once the rival's ballot is
    # used (an Accept, heartbeat or rejection), the leader steps down (rule 8).
    net = Net()
    ballot = net.elect(1)
    leader = net.nodes[1]
    rival = higher(ballot, 3)
    leader.step(3, m.Prepare(rival, 1))
    assert leader.role is Role.LEADER and leader.acceptor.promised == ballot
    ready = net.flush(1)
    assert (3, m.Reject(rival, ballot)) in ready.messages
    leader.step(3, m.Accept(rival, 5, NOOP))
    assert leader.role is Role.FOLLOWER


# -- pre-vote (CoreConfig.pre_vote, on in nodes) -----------------------------------

PRE_VOTE = replace(CONFIG, pre_vote=True)


def elect_asking_first(net: Net, i: int) -> Ballot:
    """Tick node i until it asks for pre-votes, then let everything through."""
    r = net.nodes[i]
    for _ in range(2 * net.config.election_ticks + 1):
        if r.pre_vote is not None:
            break
        r.tick()
    assert r.pre_vote is not None and r.role is Role.FOLLOWER and r.elections == 0
    net.deliver()
    assert r.role is Role.LEADER
    return r.ballot


def cut_off(net: Net, node: int, ticks: int) -> None:
    """Tick everyone for `ticks`, with every message to or from `node` lost."""
    for _ in range(ticks):
        for i in net.members:
            net.tick(i)
        net.deliver(drop=lambda src, dst, msg: node in (src, dst) and src != dst)


@pytest.mark.parametrize("pre_vote", [True, False])
def test_pre_vote_a_node_cut_off_raises_nothing_and_cannot_depose_the_leader(pre_vote: bool) -> None:
    # Cut off, a node runs for leader timeout after timeout. Without pre-voting each
    # attempt raises its ballot (and persists the promise), and once back, its refusal
    # of the leader's Accepts with that ballot deposes a leader that was fine. With it,
    # nobody answers yes while the leader is alive, so nothing is raised.
    config = PRE_VOTE if pre_vote else CONFIG
    net = Net(config=config)
    ballot = elect_asking_first(net, 1) if pre_vote else net.elect(1)
    cut_off(net, 3, 6 * CONFIG.election_ticks)
    cut = net.nodes[3]
    if not pre_vote:
        assert cut.acceptor.promised > ballot  # why pre-voting exists
        return
    assert cut.elections == 0 and cut.role is Role.FOLLOWER and cut.acceptor.promised == ballot
    assert cut.pre_votes >= 3  # it asked after every timeout (what the metric shows)
    assert net.disks[3].promised == ballot
    for _ in range(3 * CONFIG.election_ticks):  # back
        for i in net.members:
            net.tick(i)
        net.deliver()
    assert net.nodes[1].role is Role.LEADER and net.nodes[1].ballot == ballot
    assert cut.leader_id == 1 and cut.elections == 0


def test_pre_vote_is_refused_while_a_live_leader_is_heard_and_changes_nothing() -> None:
    net = Net(config=PRE_VOTE)
    ballot = elect_asking_first(net, 1)
    asked = Ballot(ballot.round + 1, 3)
    for i in (1, 2):  # the leader itself, and a follower that hears it
        net.nodes[i].step(3, m.PreVote(asked))
        ready = net.flush(i)
        assert (3, m.PreVoteReply(asked, 0)) in ready.messages
        assert ready.promised is None and net.nodes[i].acceptor.promised == ballot
    follower = net.nodes[2]
    for _ in range(CONFIG.election_ticks):  # no word from the leader for a whole timeout
        follower.tick()
    net.flush(2)
    follower.step(3, m.PreVote(asked))
    ready = net.flush(2)
    assert (3, m.PreVoteReply(asked, 1)) in ready.messages
    assert ready.promised is None and follower.acceptor.promised == ballot
    assert follower.max_round == ballot.round  # not even the round a question names
    lower = Ballot(ballot.round - 1, 3)
    follower.step(3, m.PreVote(lower))  # not above the promise: no
    assert (3, m.PreVoteReply(lower, 0)) in net.flush(2).messages


def test_pre_vote_a_yes_that_comes_after_the_leader_spoke_starts_nothing() -> None:
    net = Net(config=PRE_VOTE)
    ballot = elect_asking_first(net, 1)
    node = net.nodes[3]
    for _ in range(2 * CONFIG.election_ticks + 1):  # the leader's heartbeats are lost meanwhile
        node.tick()
        if node.pre_vote is not None:
            break
    asked = node.pre_vote[0]
    net.flush(3)
    net.queue.clear()
    node.step(1, m.Heartbeat(ballot, 0, 99, 0))
    node.step(2, m.PreVoteReply(asked, 1))  # late, from before the heartbeat
    assert node.role is Role.FOLLOWER and node.elections == 0 and node.leader_id == 1


def test_pre_vote_a_lone_voter_needs_nobody() -> None:
    net = Net(n=1, config=PRE_VOTE)
    node = net.nodes[1]
    for _ in range(2 * CONFIG.election_ticks):
        node.tick()
    net.deliver()
    assert node.role is Role.LEADER and node.elections == 1


def test_pre_vote_lost_questions_are_asked_again_before_the_next_timeout() -> None:
    net = Net(config=PRE_VOTE)
    node = net.nodes[1]
    while node.pre_vote is None:
        node.tick()
    net.flush(1)
    net.queue.clear()  # lost
    for _ in range(CONFIG.retry_ticks):
        node.tick()
    asked = [dst for _, dst, msg in net.queued(is_type(m.PreVote))] + \
        [dst for dst, msg in node._ready.messages if isinstance(msg, m.PreVote)]
    assert sorted(asked) == [2, 3]
    assert node.election_elapsed < node.election_timeout
    net.deliver()
    assert node.role is Role.LEADER


def test_check_quorum_a_leader_cut_off_from_a_majority_steps_down() -> None:
    net = Net()
    net.elect(1)
    leader = net.nodes[1]
    for _ in range(4 * CONFIG.election_ticks):
        leader.tick()
        net.flush(1)
        net.queue.clear()  # nobody hears it, it hears nobody
    assert leader.role is not Role.LEADER


# -- learning -------------------------------------------------------------------------


def test_follower_learns_from_commit_via_its_own_accepted_value_at_that_ballot() -> None:
    net = Net()
    ballot = net.elect(1)
    net.nodes[1].propose(put("k", "v"))
    [slot] = net.flush(1).proposed.values()
    value = net.nodes[1].acceptor.accepted[slot][1]
    net.deliver(match=lambda s, d, x: d == 2 and isinstance(x, m.Accept))  # node 2 accepts
    net.queue.clear()
    follower = net.nodes[2]
    assert slot not in follower.learner.chosen
    follower.step(1, m.Commit(ballot, slot))
    ready = net.flush(2)
    assert ready.chosen == {slot: value}
    assert ready.apply[-1] == (slot, value)


def test_follower_learns_from_heartbeat_commit_index_too() -> None:
    net = Net()
    ballot = net.elect(1)
    net.nodes[1].propose(put("k", "v"))
    [slot] = net.flush(1).proposed.values()
    net.deliver(match=lambda s, d, x: d == 3 and isinstance(x, m.Accept))
    net.queue.clear()
    net.nodes[3].step(1, m.Heartbeat(ballot, slot, 99))
    assert slot in net.flush(3).chosen


def test_a_value_accepted_under_another_ballot_is_not_taken_as_chosen() -> None:
    net = Net()
    r = net.nodes[2]
    r.step(1, m.Accept(Ballot(1, 1), 1, X))
    net.flush(2)
    net.queue.clear()
    r.step(3, m.Commit(Ballot(2, 3), 1))  # slot 1 chosen under 2.3: value unknown here
    ready = net.flush(2)
    assert ready.chosen == {} and ready.apply == []
    assert (3, m.CatchUpRequest(1, 1)) in ready.messages  # fetched, never guessed [10]


def test_follower_fetches_a_gap_with_catch_up_and_applies_in_order() -> None:
    net = Net()
    r = net.nodes[2]
    b = Ballot(1, 1)
    r.step(1, m.Accept(b, 1, X))
    r.step(1, m.Accept(b, 6, W))
    r.step(1, m.Commit(b, 6))
    ready = net.flush(2)
    assert ready.apply == [(1, X)]
    requests = [msg for dst, msg in ready.messages if isinstance(msg, m.CatchUpRequest)]
    assert requests == [m.CatchUpRequest(2, 5)]  # bounded by catchup_entries_max
    r.step(1, m.CatchUpReply((m.ChosenEntry(2, Y), m.ChosenEntry(3, Z), m.ChosenEntry(4, NOOP),
                              m.ChosenEntry(5, X))))
    ready = net.flush(2)
    assert ready.apply == [(2, Y), (3, Z), (4, NOOP), (5, X), (6, W)]


def test_catch_up_requests_are_served_from_chosen_values_up_to_the_first_unknown() -> None:
    net = Net()
    r = Replica(1, (1, 2, 3), CONFIG, random.Random(0), chosen={1: X, 2: Y, 3: Z, 5: W})
    net.nodes[1] = r
    r.step(2, m.CatchUpRequest(2, 9))
    ready = r.take_ready()
    assert ready.messages == [(2, m.CatchUpReply((m.ChosenEntry(2, Y), m.ChosenEntry(3, Z))))]


def test_catch_up_retries_after_silence() -> None:
    net = Net()
    r = net.nodes[2]
    r.step(1, m.Commit(Ballot(1, 1), 2))
    first = [msg for _, msg in net.flush(2).messages if isinstance(msg, m.CatchUpRequest)]
    assert first == [m.CatchUpRequest(1, 2)]
    net.queue.clear()
    again: list[m.Message] = []
    for _ in range(CONFIG.retry_ticks + 1):
        r.tick()
        again += [msg for _, msg in net.flush(2).messages if isinstance(msg, m.CatchUpRequest)]
        net.queue.clear()
    assert again == first


def test_a_whole_cluster_converges_on_the_same_log() -> None:
    net = Net(n=5)
    net.elect(2)
    for k in range(12):
        net.nodes[2].propose(put(f"k{k % 3}", str(k)))
        net.deliver()
    for i in net.members:
        net.tick(i, CONFIG.heartbeat_ticks)
    net.deliver()
    logs = {i: net.applied[i] for i in net.members}
    assert len({repr(v) for v in logs.values()}) == 1
    commands = [c.value for _, b in logs[1] for c in b.commands]
    assert commands == [str(k) for k in range(12)]


# -- reads (rule 13, 14) ------------------------------------------------------------------


def test_leader_answers_a_read_only_after_a_majority_acks_a_round_and_its_first_slot_is_chosen() -> None:
    net = Net()
    ballot = net.campaign(1)
    net.deliver(match=is_type(m.Prepare, m.Promise))  # leader, but nothing of its own chosen
    leader = net.nodes[1]
    assert leader.role is Role.LEADER
    leader.read_index(5)  # the Accepts for its first slot stay queued for now
    net.flush(1)
    beats = net.queued(lambda s, d, x: isinstance(x, m.Heartbeat))
    assert beats, "a read starts a heartbeat round"
    net.deliver(match=is_type(m.Heartbeat, m.HeartbeatAck))
    assert net.reads[1] == []  # a majority acked, but no slot of this ballot is chosen yet
    net.deliver()
    assert len(net.reads[1]) == 1
    read_id, index = net.reads[1][0]
    assert read_id == 5 and index is not None
    assert index >= leader.lead.barrier_slot  # type: ignore[union-attr]
    assert all(s in leader.learner.chosen for s in range(1, index + 1))
    assert ballot == leader.ballot


def test_leader_read_waits_for_acks_at_its_own_ballot() -> None:
    net = Net()
    ballot = net.elect(1)
    leader = net.nodes[1]
    net.queue.clear()
    leader.read_index(6)
    net.flush(1)
    [(_, _, beat)] = net.queued(lambda s, d, x: d == 2 and isinstance(x, m.Heartbeat))
    net.queue.clear()
    stale = Ballot(ballot.round - 1, 1) if ballot.round > 1 else Ballot(0, 1)
    leader.step(2, m.HeartbeatAck(stale, beat.hb_seq, 0))  # an ack for another ballot
    leader.step(3, m.HeartbeatAck(ballot, beat.hb_seq - 1, 0))  # an ack for an earlier round
    net.flush(1)
    assert net.reads[1] == []
    leader.step(2, m.HeartbeatAck(ballot, beat.hb_seq, 0))
    net.flush(1)
    assert [r for r, _ in net.reads[1]] == [6]


def test_read_index_covers_every_slot_chosen_before_the_read() -> None:
    net = Net()
    net.elect(1)
    for k in range(3):
        net.nodes[1].propose(put("k", str(k)))
        net.deliver()
    chosen_before = net.nodes[1].learner.chosen_through
    net.nodes[1].read_index(8)
    net.deliver()
    [(_, index)] = net.reads[1]
    assert index is not None and index >= chosen_before


def test_follower_forwards_read_index_to_the_leader_and_relays_the_answer() -> None:
    net = Net()
    net.elect(1)
    follower = net.nodes[3]
    follower.read_index(9)
    ready = net.flush(3)
    assert (1, m.ReadIndexRequest(9)) in ready.messages
    assert net.reads[3] == []  # never answered from its own copy [14]
    net.deliver()
    [(read_id, index)] = net.reads[3]
    assert read_id == 9 and index is not None
    assert index >= net.nodes[1].lead.barrier_slot  # type: ignore[union-attr]


def test_a_forwarded_read_also_waits_for_a_fresh_heartbeat_round() -> None:
    net = Net()
    ballot = net.elect(1)
    net.queue.clear()
    leader = net.nodes[1]
    leader.step(3, m.ReadIndexRequest(12))
    ready = net.flush(1)
    assert not [x for _, x in ready.messages if isinstance(x, m.ReadIndexReply)]
    beats = [x for _, x in ready.messages if isinstance(x, m.Heartbeat)]
    assert beats and all(b.ballot == ballot for b in beats)
    net.deliver(match=lambda s, d, x: isinstance(x, m.Heartbeat) and d == 2)
    net.deliver(match=lambda s, d, x: isinstance(x, m.HeartbeatAck))
    [(_, dst, reply)] = net.queued(lambda s, d, x: isinstance(x, m.ReadIndexReply))
    assert dst == 3 and reply.read_id == 12 and reply.index is not None


def test_node_without_a_leader_answers_none() -> None:
    net = Net()
    net.nodes[2].read_index(4)
    assert net.flush(2).reads == [(4, None)]
    net.campaign(2)  # a candidate is no leader either
    net.nodes[2].read_index(5)
    assert (5, None) in net.flush(2).reads


def test_a_non_leader_asked_for_a_read_index_refuses() -> None:
    net = Net()
    net.nodes[2].step(3, m.ReadIndexRequest(11))
    assert (3, m.ReadIndexReply(11, None)) in net.flush(2).messages


# -- forged and impossible messages (rule 9) ----------------------------------------------

FORGED: dict[str, tuple[int, m.Message]] = {
    "prepare whose ballot names another node": (2, m.Prepare(Ballot(5, 3), 1)),
    "accept whose ballot names another node": (2, m.Accept(Ballot(5, 3), 1, X)),
    "heartbeat whose ballot names another node": (2, m.Heartbeat(Ballot(5, 3), 1, 1)),
    "commit whose ballot names another node": (2, m.Commit(Ballot(5, 3), 1)),
    "promise for a ballot that is not ours": (2, m.Promise(Ballot(5, 3), 1, ())),
    "accepted for a ballot that is not ours": (2, m.Accepted(Ballot(5, 2), 1)),
    "sender id 0": (0, m.Prepare(Ballot(5, 0), 1)),
    "reject of a ballot that is not ours": (2, m.Reject(Ballot(1, 3), Ballot(5, 2))),
    "accept at slot 0": (2, m.Accept(Ballot(5, 2), 0, X)),
    "accepted at slot 0": (2, m.Accepted(Ballot(5, 1), 0)),
    "prepare from slot 0": (2, m.Prepare(Ballot(5, 2), 0)),
    "catch-up from slot 0": (2, m.CatchUpRequest(0, 3)),
}


@pytest.mark.parametrize("case", FORGED, ids=str)
def test_forged_messages_are_dropped_and_counted(case: str) -> None:
    net = Net()
    r = net.nodes[1]
    src, msg = FORGED[case]
    r.step(src, msg)
    assert r.malformed == 1
    assert r.take_ready().is_empty()
    assert r.acceptor.promised == ZERO and r.acceptor.accepted == {}
    assert r.max_round == 0  # a forged ballot does not even inflate the next election


# -- batching --------------------------------------------------------------------------


def batching_leader(window_slots: int, batch_count_max: int, batch_bytes_max: int = 1 << 20,
                    partial_in_flight: int = 0) -> tuple[Net, Replica]:
    config = CoreConfig(election_ticks=10, heartbeat_ticks=2, retry_ticks=4, window_slots=window_slots,
                        batch_count_max=batch_count_max, batch_bytes_max=batch_bytes_max,
                        partial_in_flight=partial_in_flight)
    net = Net(config=config)
    net.elect(1)
    return net, net.nodes[1]


def slots_of(ready: Ready) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for cmd_id, slot in ready.proposed.items():
        out.setdefault(slot, []).append(cmd_id)
    return out


def test_commands_waiting_when_a_slot_opens_share_one_slot() -> None:
    net, leader = batching_leader(window_slots=1, batch_count_max=100)
    for i in range(5):
        leader.propose(put("k", str(i), cmd_id=f"c{i}"))
    first = slots_of(net.flush(1))
    assert list(first.values()) == [["c0", "c1", "c2", "c3", "c4"]]


def test_batches_are_bounded_by_count_and_window() -> None:
    net, leader = batching_leader(window_slots=2, batch_count_max=3)
    for i in range(10):
        leader.propose(put("k", str(i), cmd_id=f"c{i}"))
    first = slots_of(net.flush(1))
    assert sorted(first.values()) == [["c0", "c1", "c2"], ["c3", "c4", "c5"]]
    assert len(leader.lead.proposals) == 2  # type: ignore[union-attr]
    assert net.flush(1).proposed == {}  # the window is full: the rest wait
    seen = len(net.readies[1])
    net.deliver(match=lambda s, d, x: isinstance(x, (m.Accept, m.Accepted)) and x.slot == min(first))
    later = [slots_of(r) for r in net.readies[1][seen:] if r.proposed]
    assert [list(s.values()) for s in later] == [[["c6", "c7", "c8"]]]  # one slot opened: one batch
    net.deliver()
    proposed = [cid for ready in net.readies[1] for cid in ready.proposed]
    assert proposed == [f"c{i}" for i in range(10)]


def test_batches_are_bounded_in_bytes_but_always_carry_one_command() -> None:
    big = "x" * 1000
    net, leader = batching_leader(window_slots=8, batch_count_max=100, batch_bytes_max=2500)
    for i in range(5):
        leader.propose(put("k", big, cmd_id=f"c{i}"))
    slots = slots_of(net.flush(1))
    assert sorted(slots.values()) == [["c0", "c1"], ["c2", "c3"], ["c4"]]
    net.deliver()
    _, leader2 = batching_leader(window_slots=8, batch_count_max=100, batch_bytes_max=10)
    leader2.propose(put("k", big, cmd_id="huge"))
    assert list(slots_of(leader2.take_ready()).values()) == [["huge"]]


def test_a_partial_batch_waits_while_a_proposal_is_in_flight() -> None:
    """Nagle for slots (partial_in_flight=1, the nodes' default): a lone command goes at
    once; those arriving while its slot is in flight wait and share the next slot, which
    opens when that one is chosen."""
    net, leader = batching_leader(window_slots=8, batch_count_max=3, partial_in_flight=1)
    leader.propose(put("k", "0", cmd_id="c0"))
    first = slots_of(net.flush(1))
    assert list(first.values()) == [["c0"]]
    leader.propose(put("k", "1", cmd_id="c1"))
    leader.propose(put("k", "2", cmd_id="c2"))
    assert net.flush(1).proposed == {}  # c0's slot is in flight: c1 and c2 wait
    seen = len(net.readies[1])
    net.deliver(match=lambda s, d, x: isinstance(x, (m.Accept, m.Accepted)) and x.slot == min(first))
    assert leader.learner.chosen_through == min(first)
    later = [slots_of(r) for r in net.readies[1][seen:] if r.proposed]
    assert [list(s.values()) for s in later] == [[["c1", "c2"]]]  # one slot for both


def test_a_full_batch_opens_a_slot_even_while_one_is_in_flight() -> None:
    net, leader = batching_leader(window_slots=8, batch_count_max=3, partial_in_flight=1)
    leader.propose(put("k", "0", cmd_id="c0"))
    net.flush(1)
    for i in range(1, 8):
        leader.propose(put("k", str(i), cmd_id=f"c{i}"))
    # Two full batches go now (pipelined); the partial one waits for a slot to be chosen.
    assert sorted(slots_of(net.flush(1)).values()) == [["c1", "c2", "c3"], ["c4", "c5", "c6"]]
    assert len(leader.lead.proposals) == 3  # type: ignore[union-attr]
    net.deliver()
    proposed = [cid for ready in net.readies[1] for cid in ready.proposed]
    assert proposed == [f"c{i}" for i in range(8)]
    assert leader.lead.pending_count == leader.lead.pending_bytes == 0  # type: ignore[union-attr]


def test_with_more_partial_slots_in_flight_allowed_each_command_gets_its_own() -> None:
    net, leader = batching_leader(window_slots=8, batch_count_max=3, partial_in_flight=2)
    for i in range(3):
        leader.propose(put("k", str(i), cmd_id=f"c{i}"))
        net.flush(1)
    assert len(leader.lead.proposals) == 2  # type: ignore[union-attr]
    assert leader.lead.pending[0][0] == (put("k", "2", cmd_id="c2"),)  # type: ignore[union-attr]


def test_batch_carries_the_leader_clock_for_session_expiry() -> None:
    net, leader = batching_leader(window_slots=4, batch_count_max=4)
    leader.tick(now_ms=12345)
    leader.propose(put("k", "v"))
    ready = net.flush(1)
    [slot] = ready.proposed.values()
    assert ready.accepted[slot][1].ts_ms == 12345


# -- compaction, snapshots and rebuilding after a disk loss -------------------------------


def test_candidate_behind_a_compacted_log_steps_down_and_catches_up() -> None:
    net = Net()
    ballot = net.campaign(1)
    net.flush(1)
    net.queue.clear()
    r = net.nodes[1]
    r.step(2, m.Promise(ballot, 1, (), compacted_through=5))
    assert r.role is Role.FOLLOWER  # slots 1..5 are forgotten at node 2: it must not lead
    requests = [(d, x) for d, x in net.flush(1).messages if isinstance(x, m.CatchUpRequest)]
    assert requests and requests[0][0] == 2 and requests[0][1].from_slot == 1


def test_catch_up_below_the_compacted_log_is_answered_with_the_snapshot_slot() -> None:
    r = Replica(1, (1, 2, 3), CONFIG, random.Random(0), chosen={s: X for s in range(1, 7)})
    assert [s for s, _ in r.take_ready().apply] == [1, 2, 3, 4, 5, 6]
    r.compact(4)
    r.step(2, m.CatchUpRequest(2, 5))
    assert r.take_ready().messages == [(2, m.CatchUpReply((), 4))]
    r.step(2, m.CatchUpRequest(5, 9))
    assert r.take_ready().messages == [(2, m.CatchUpReply((m.ChosenEntry(5, X), m.ChosenEntry(6, X))))]


def test_a_snapshot_beyond_what_we_know_is_requested_then_installed() -> None:
    r = Replica(2, (1, 2, 3), CONFIG, random.Random(0))
    r.step(1, m.Commit(Ballot(1, 1), 12))
    r.take_ready()
    r.step(1, m.CatchUpReply((), 10))
    ready = r.take_ready()
    assert ready.snapshot_from == 1
    r.install_snapshot(10)
    assert r.learner.applied_through == 10
    r.step(1, m.CatchUpReply((m.ChosenEntry(11, X), m.ChosenEntry(12, Y))))
    assert r.take_ready().apply == [(11, X), (12, Y)]


def rebuilding_replica(rebuild_round: int = 3) -> Replica:
    return Replica(2, (1, 2, 3), CONFIG, random.Random(0), voting=False, rebuild_round=rebuild_round)


def test_a_rebuilding_node_neither_promises_accepts_acks_nor_campaigns() -> None:
    r = rebuilding_replica()
    b = Ballot(4, 1)
    r.step(1, m.Prepare(b, 1))
    r.step(1, m.Accept(b, 1, X))
    r.step(1, m.Heartbeat(b, 0, 1))
    ready = r.take_ready()
    assert not [x for _, x in ready.messages if isinstance(x, (m.Promise, m.Accepted, m.HeartbeatAck))]
    assert ready.promised is None and ready.accepted == {}
    assert r.acceptor.promised == ZERO and r.leader_id == 1  # it follows the leader all the same
    for _ in range(4 * CONFIG.election_ticks):
        r.tick()
    assert r.role is Role.FOLLOWER and r.elections == 0


def test_a_rebuilding_node_asks_a_leader_of_an_old_round_for_a_new_ballot() -> None:
    r = rebuilding_replica(rebuild_round=3)
    r.step(1, m.Heartbeat(Ballot(3, 1), 0, 1))
    assert (1, m.Rebuilding(3)) in r.take_ready().messages
    net = Net()
    old = net.elect(1)
    net.queue.clear()
    net.nodes[1].step(2, m.Rebuilding(old.round + 2))
    assert net.nodes[1].role is Role.CANDIDATE
    assert net.nodes[1].ballot.round > old.round + 2


def test_a_rebuilding_node_votes_again_once_it_knows_a_fresh_slot_chosen_under_a_newer_ballot() -> None:
    r = rebuilding_replica(rebuild_round=3)
    b = Ballot(4, 1)
    r.step(1, m.Commit(b, 2, 2))  # slot 2 was proposed fresh under 4.1 and is chosen
    ready = r.take_ready()
    assert not ready.became_voter and not r.voting  # it does not know slots 1..2 yet
    assert (1, m.CatchUpRequest(1, 2)) in ready.messages
    r.step(1, m.CatchUpReply((m.ChosenEntry(1, X), m.ChosenEntry(2, NOOP))))
    ready = r.take_ready()
    assert ready.became_voter and r.voting
    r.step(1, m.Prepare(Ballot(5, 1), 3))
    assert any(isinstance(x, m.Promise) for _, x in r.take_ready().messages)


def test_a_commit_under_the_rebuild_round_does_not_make_a_voter() -> None:
    r = rebuilding_replica(rebuild_round=3)
    r.step(1, m.Commit(Ballot(3, 1), 2, 2))
    r.step(1, m.CatchUpReply((m.ChosenEntry(1, X), m.ChosenEntry(2, NOOP))))
    assert not r.take_ready().became_voter and not r.voting


def forgotten_promise_scenario(horizon_from: tuple[int, ...]) -> dict[int, set[Batch]]:
    """Five nodes. Candidate 3 holds a promise from node 5; node 5 then loses its disk and
    rebuilds with a horizon taken from the promises of `horizon_from`. Node 1 leads at a
    lower ballot, node 5 votes again, and a command is proposed while node 2 is cut off.
    Node 2 then promises candidate 3, which completes phase 1 with node 5's lost promise.
    Returns every value any node learned as chosen, per slot."""
    net = Net(n=5)
    cand, wiped, lead, late = 3, 5, 1, 2
    ballot = net.campaign(cand)
    net.deliver(match=lambda s, d, x: (s == cand and d in (cand, wiped)) or (s == wiped and d == cand))
    net.take(lambda s, d, x: s == cand)
    horizon = max(net.disks[p].promised.round for p in horizon_from)
    net.disks[wiped] = Disk()
    net.nodes[wiped] = Replica(wiped, net.members, CONFIG, random.Random(5), voting=False,
                               rebuild_round=horizon)
    net.campaign(lead)
    cut = lambda s, d, x: cand in (s, d)  # noqa: E731
    for _ in range(4 * CONFIG.election_ticks):
        net.deliver(drop=cut)
        for i in (lead, late, 4, wiped):
            net.tick(i)
        if net.nodes[wiped].voting and net.nodes[lead].role is Role.LEADER:
            break
    net.nodes[late].election_timeout = 1000  # it stays a follower
    if net.nodes[lead].role is Role.LEADER:
        net.nodes[lead].propose(put("k", "v"))
    net.deliver(drop=lambda s, d, x: cand in (s, d) or late in (s, d))
    for _ in range(CONFIG.election_ticks):
        net.tick(late)  # its leader has gone quiet
    if net.nodes[cand].role is Role.CANDIDATE:
        net.nodes[late].step(cand, m.Prepare(ballot, 1))
    group = {cand, wiped, late}
    net.deliver(match=lambda s, d, x: s in group and d in group)
    chosen: dict[int, set[Batch]] = {}
    for i in net.members:
        for ready in net.readies[i]:
            for slot, value in ready.chosen.items():
                chosen.setdefault(slot, set()).add(value)
    return chosen


def test_rebuild_horizon_from_every_peer_covers_a_promise_the_node_forgot() -> None:
    # The candidate's own promise is durable, so asking every peer bounds the lost one:
    # node 5 votes only under a ballot above the candidate's, which then cannot win.
    chosen = forgotten_promise_scenario(horizon_from=(1, 2, 3, 4))
    assert all(len(values) == 1 for values in chosen.values()), chosen


def test_rebuild_horizon_from_a_majority_only_can_miss_a_forgotten_promise() -> None:
    # Why the horizon must come from every peer: a majority (1, 2, 4) never saw the
    # candidate's round, node 5 votes for the command under node 1's lower ballot, and the
    # candidate later chooses a different value for the same slot with node 5's old promise.
    chosen = forgotten_promise_scenario(horizon_from=(1, 2, 4))
    assert any(len(values) > 1 for values in chosen.values())


def test_a_compacted_promise_does_not_vouch_for_values_accepted_under_an_old_commit_ballot() -> None:
    # Found by the simulator (5 nodes, seed 895). Node 2 accepted V for slot 5 under 1.1, whose
    # leader committed only through slot 4; another leader then chose a different value there.
    # A promise saying "compacted through 9" raised the commit index to 9 but left the commit
    # ballot at 1.1, so the next catch-up reply made node 2 take its own V as chosen.
    r = Replica(2, (1, 2, 3), CONFIG, random.Random(0), chosen={s: NOOP for s in range(1, 5)})
    old = Ballot(1, 1)
    r.step(1, m.Accept(old, 5, X))
    r.step(1, m.Commit(old, 4))
    r.take_ready()
    for _ in range(2 * CONFIG.election_ticks):
        if r.role is Role.CANDIDATE:
            break
        r.tick()
    ballot = r.ballot
    assert r.role is Role.CANDIDATE and r.lead is not None and r.lead.from_slot == 5
    r.step(3, m.Promise(ballot, 5, (), compacted_through=9))
    assert r.role is Role.FOLLOWER
    r.step(3, m.CatchUpReply((), 9))  # asks the runtime for a snapshot
    r.step(3, m.CatchUpReply((), 9))  # a duplicate while the snapshot is pending
    r.step(3, m.CatchUpReply((m.ChosenEntry(6, Y),)))
    ready = r.take_ready()
    assert 5 not in r.learner.chosen and 5 not in ready.chosen
    r.install_snapshot(4)  # a snapshot that does not reach slot 5 must not vouch for it either
    assert 5 not in r.learner.chosen
    r.step(3, m.CatchUpReply((m.ChosenEntry(5, W),)))
    assert r.learner.chosen[5] == W


# -- the clock's empty slot (keys with a time to live) -------------------------------


def test_nudge_clock_sends_one_empty_slot_with_the_leaders_clock_and_only_when_idle() -> None:
    net = Net()
    ballot = net.elect(1)
    net.deliver()
    leader = net.nodes[1]
    assert not leader.lead.proposals
    assert not net.nodes[2].nudge_clock(0)  # a follower proposes nothing
    leader.tick(7_000)
    assert not leader.nudge_clock(None) and not leader.nudge_clock(7_001)  # nothing due by its clock
    assert leader.nudge_clock(7_000) and not leader.nudge_clock(7_000)  # one queued, not two
    net.flush(1)
    accepts = [msg for _, _, msg in net.queued(is_type(m.Accept))]
    assert len(accepts) == 2 and all(a.value == Batch((), 7_000) and a.ballot == ballot for a in accepts)
    assert not leader.nudge_clock(7_000)  # that slot is on its way: it carries the clock
    leader.propose(put("k", "v"))
    net.deliver()
    assert leader.learner.chosen_through == accepts[0].slot + 1
    assert leader.nudge_clock(7_000)  # chosen, nothing waiting: another may go
