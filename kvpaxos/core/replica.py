"""A replica: acceptor, learner and (when elected) leader, driven by three inputs.

Inputs: step(src, message), propose(command), read_index(read_id), tick(now_ms),
and cast_self_votes() (a leader deferring its own votes: see CoreConfig.defer_self_vote).
Output: take_ready() returns one Ready batch. The caller must persist the
Ready's promised/accepted state durably BEFORE sending its messages (and before
delivering any message addressed to this node itself), then apply its chosen
slots in order. Nothing here does I/O; randomness comes from the Random passed in.

Roles are follower, candidate and leader. Candidate and leader share a
LeaderState for their ballot; a higher ballot seen anywhere ends it (rule 8),
except that while a leader is alive, it and its followers refuse a rival's
Prepare instead of promising it (leader stickiness); the rival's ballot, once
in use, reaches the leader in an Accept, Commit, Heartbeat or Reject and ends it.

Snapshots: compact(slot) forgets log below a durable snapshot; a peer asking
for forgotten slots is told to install a snapshot (Ready.snapshot_from), and
install_snapshot(slot) continues the log after one.

A replica built with voting=False (its acceptor state was lost) neither
promises, accepts nor acknowledges heartbeats; it learns chosen values by
catch-up until it sees a slot chosen under a ballot of a round above
rebuild_round, proposed fresh after that ballot began (Paxos Made Live, 5.1).
Then it votes again (Ready.became_voter tells the runtime to record that).
This is safe only if rebuild_round is at least every round the node may have
promised before it lost its state. Every peer must be asked, not a majority: a
candidate may hold the lost promise while no member of some majority has seen
its round, and then win phase 1 with it after this node voted under a lower
ballot (tests/core/test_replica.py has the five-node case).

Membership (kvpaxos/core/membership.py) advances with chosen_through: the
replica always knows the configuration of every slot up to chosen_through +
alpha, and never proposes beyond. A slot is proposed only once a majority of
its own configuration has promised this ballot (a leader asks the voters of a
configuration that takes effect later as soon as it learns of them), and its
votes are counted in that configuration only. Learners follow the log but make
no promises. Reads are served only while no change is in flight. A replica the
configuration no longer names stops once every slot its old configuration
governs is chosen (Ready.removed); a leader first names a successor (Resign).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from typing import NamedTuple, Protocol

from kvpaxos.core import messages as m
from kvpaxos.core.acceptor import Acceptor
from kvpaxos.core.ballot import ZERO, Ballot
from kvpaxos.core.commands import Batch, Command, Result
from kvpaxos.core.leader import WAITING, LeaderState, PendingRead, Proposal
from kvpaxos.core.learner import Learner
from kvpaxos.core.membership import MEMBER_PROMOTE, Config, Membership

# Messages a leader or candidate sends carry its own ballot; answers carry the asker's.
_FROM_SENDER = (m.Prepare, m.PreVote, m.Accept, m.Commit, m.Heartbeat)
_ANSWERS = (m.Promise, m.Accepted, m.HeartbeatAck, m.Reject, m.PreVoteReply)


class _Shape(NamedTuple):
    """What step() checks of a message type."""

    from_sender: bool  # carries its sender's ballot
    answer: bool  # carries ours
    ballots: tuple[str, ...]  # its ballot fields
    slots: tuple[str, ...]  # its slot fields
    raises: bool  # its ballots raise max_round (a question raises nothing)


class _Shapes(dict):
    """_Shape per message type, worked out on first sight."""

    def __missing__(self, t: type) -> _Shape:
        names = set(getattr(t, "__dataclass_fields__", ()))
        shape = self[t] = _Shape(issubclass(t, _FROM_SENDER), issubclass(t, _ANSWERS),
                                 tuple(n for n in ("ballot", "promised") if n in names),
                                 tuple(n for n in ("slot", "from_slot") if n in names),
                                 not issubclass(t, (m.PreVote, m.PreVoteReply)))
        return shape


_SHAPES = _Shapes()


class Rng(Protocol):
    """The randomness a replica uses: a seeded random.Random in tests and the simulator."""

    def randrange(self, stop: int) -> int: ...


class Role(str, Enum):
    FOLLOWER = "follower"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True)
class CoreConfig:
    election_ticks: int = 10
    heartbeat_ticks: int = 2
    retry_ticks: int = 4
    window_slots: int = 64
    batch_count_max: int = 1024
    batch_bytes_max: int = 4 * 1024 * 1024
    # A fresh slot whose batch is not full opens only while fewer than this many of the
    # leader's proposals are in flight (0: no limit); commands arriving meanwhile wait
    # and share the next slot. See _flush_proposals.
    partial_in_flight: int = 1
    # A leader does not accept its own proposal at once when enough of the slot's other
    # voters answered lately to make a majority without it: that saves it a group commit
    # per slot. Once all but one of the votes a majority needs are in, its own vote is
    # due: cast at the caller's next-but-one cast_self_votes() (a timer of the runtime),
    # or after two ticks in any case. A slow follower costs that grace plus the
    # leader's group commit; a lost one, never liveness. Off here; nodes switch it on
    # (kv serve --self-vote-delay-ms).
    defer_self_vote: bool = False
    # A node whose election timeout runs out first asks the voters whether they would
    # promise a higher ballot (PreVote: nothing changes anywhere), and runs for leader
    # only once a majority says yes: they refuse while they hear a live leader. A node
    # cut off from the others so never raises its ballot, and once back cannot depose a
    # leader with it (Raft's pre-vote, section 9.6 of Ongaro's thesis). Off here; nodes
    # switch it on.
    pre_vote: bool = False
    catchup_entries_max: int = 256
    catchup_bytes_max: int = 512 * 1024
    learn_scan_max: int = 4096


class Ready:
    """What the runtime must do now, in order: persist, send, apply, answer.

    A plain slotted class, built on every take_ready(): a dataclass's default
    factories cost a call per field."""

    __slots__ = ("promised", "accepted", "chosen", "messages", "apply", "reads", "proposed", "dropped",
                 "snapshot_from", "became_voter", "membership", "member_results", "removed")

    def __init__(self) -> None:
        self.promised: Ballot | None = None
        self.accepted: dict[int, tuple[Ballot, Batch]] = {}
        self.chosen: dict[int, Batch] = {}
        self.messages: list[tuple[int, m.Message]] = []
        self.apply: list[tuple[int, Batch]] = []
        self.reads: list[tuple[int, int | None]] = []
        self.proposed: dict[str, int] = {}
        self.dropped: list[Command] = []
        self.snapshot_from: int | None = None
        self.became_voter = False
        self.membership: Membership | None = None  # as of the end of `apply`
        self.member_results: dict[str, Result] = {}  # by cmd_id
        self.removed = False  # this node is no longer a member: stop it

    def must_persist(self) -> bool:
        return self.promised is not None or bool(self.accepted)

    def is_empty(self) -> bool:
        return not (self.must_persist() or self.chosen or self.messages or self.apply
                    or self.reads or self.proposed or self.dropped or self.snapshot_from
                    or self.became_voter or self.removed)


class Replica:
    def __init__(self, node_id: int, members: tuple[int, ...] | Membership, config: CoreConfig,
                 rng: Rng, *, promised: Ballot = ZERO,
                 accepted: dict[int, tuple[Ballot, Batch]] | None = None,
                 chosen: dict[int, Batch] | None = None, applied_through: int = 0,
                 voting: bool = True, rebuild_round: int = 0) -> None:
        """`members`: the initial voters, or the membership as of applied_through."""
        self.id = node_id
        self.membership = (members if isinstance(members, Membership)
                           else Membership.initial(members, config.window_slots))
        self.member_through = applied_through  # the membership covers the log up to here
        self.peers: tuple[int, ...] = ()
        self._peers_for: tuple[Membership, bool] | None = None
        self.removed = False
        self.leave_after: int | None = None  # removed: stop once the new voters know the log to here
        self.config = config
        self.rng = rng
        self.acceptor = Acceptor(promised, accepted)
        self.learner = Learner(chosen, applied_through)
        self.acceptor.compact(applied_through)
        self.voting = voting
        self.rebuild_round = rebuild_round
        self.rebuild_asked = 0
        self.fresh_slot = 0
        self.snapshot_pending = False
        self.role = Role.FOLLOWER
        self.leader_id: int | None = None
        self.leader_ballot = ZERO
        self.lead: LeaderState | None = None
        self.max_round = promised.round  # rule 4: next ballots come from durable state
        self.ticks = 0
        self.clock_ms = 0
        self.election_elapsed = 0
        self.election_timeout = self._random_timeout()
        self.commit_ballot = ZERO
        self.leader_commit = 0
        self.commit_source: int | None = None
        self.catchup_idle: int | None = None
        self.commit_sent = 0
        self.malformed = 0
        self.elections = 0
        self.pre_votes = 0  # times it asked whether it may run (CoreConfig.pre_vote)
        self.pre_vote: tuple[Ballot, set[int]] | None = None  # the ballot asked about, who said yes
        self.pre_vote_asked = 0  # the tick it last asked
        self._ready = Ready()
        self._advance_membership()

    # -- inputs ---------------------------------------------------------------

    def tick(self, now_ms: int | None = None) -> None:
        if self.removed:
            return
        self.ticks += 1
        if now_ms is not None:
            self.clock_ms = max(self.clock_ms, now_ms)
        if self.role is Role.LEADER:
            self._tick_leader()
        elif self.voting:
            self.election_elapsed += 1
            if self.role is Role.CANDIDATE:
                self._tick_candidate()
            elif self.pre_vote is not None and self.ticks - self.pre_vote_asked >= self.config.retry_ticks:
                self._ask_pre_votes()
            if self.election_elapsed >= self.election_timeout:
                if self._may_lead():
                    self._campaign()
                else:
                    # No leader heard for a whole timeout: stop deferring to it (a node that
                    # may not lead must not keep refusing the candidates that may).
                    self.leader_id = None
                    self.election_elapsed = 0
                    self._probe()
        if self.catchup_idle is not None:
            self.catchup_idle += 1
            if self.catchup_idle >= self.config.retry_ticks:
                self.catchup_idle = None
        self._maybe_catch_up()

    def propose(self, cmd: Command | tuple[Command, ...]) -> bool:
        """Queue a command, or a group that must share one slot; False when not the leader."""
        if self.role is not Role.LEADER:
            return False
        assert self.lead is not None
        self.lead.add_pending(cmd if isinstance(cmd, tuple) else (cmd,))
        return True

    def observe_clock(self, now_ms: int) -> None:
        """The wall clock now, in ms: slots formed from now on carry at least this reading.
        tick() takes one too; a leader's node gives it again before slots are formed, so
        that a slot's reading is never a tick older than the commands it carries (a key's
        deadline, its clock reading plus the ttl, is then never before the client asked
        plus the ttl)."""
        if now_ms > self.clock_ms:
            self.clock_ms = now_ms

    def nudge_clock(self, deadline: int | None) -> bool:
        """Leader only: when `deadline` (the earliest of a key with a time to live, in the
        applied state; None: there is none) is past by the clock this replica stamps its
        slots with, queue an empty slot, which carries that clock into the log (keys expire
        by it: kvpaxos/core/kvstate.py); not while a slot is already on its way or commands
        wait (they carry it too). By the stamping clock, not the wall clock now: a slot
        stamped with the last tick's reading would not reach a deadline passed since.
        Whether one was queued."""
        lead = self.lead
        if (deadline is None or deadline > self.clock_ms or self.role is not Role.LEADER or lead is None
                or lead.pending or lead.proposals):
            return False
        lead.add_pending(())
        return True

    def read_index(self, read_id: int) -> None:
        """Ask for a linearizable read point; answered in Ready.reads as (read_id, slot or None)."""
        if self.role is Role.LEADER:
            assert self.lead is not None
            self.lead.unsent_reads.append(PendingRead(self.id, read_id, self.learner.chosen_through))
        elif self.leader_id is not None and self.leader_id != self.id:
            self._send(self.leader_id, m.ReadIndexRequest(read_id))
        else:
            self._ready.reads.append((read_id, None))

    def cast_self_votes(self) -> None:
        """The leader accepts its own proposals whose vote became due before the previous
        call (so each waits between one and two intervals of the caller's timer); a vote
        due since is cast on the next call."""
        lead = self.lead
        if self.role is not Role.LEADER or lead is None:
            return
        for slot, proposal in list(lead.proposals.items()):
            if proposal.deferred is not None and WAITING < proposal.deferred < lead.vote_round:
                self._vote_self(slot, proposal)
                if self.lead is not lead:
                    return
        lead.vote_round += 1

    def has_due_self_votes(self) -> bool:
        """Whether the leader has deferred votes that cast_self_votes() will cast."""
        lead = self.lead
        return (self.role is Role.LEADER and lead is not None
                and any(p.deferred is not None and p.deferred > WAITING for p in lead.proposals.values()))

    def step(self, src: int, msg: m.Message) -> None:
        if self.removed:
            return
        if src < 1 or (src in self.membership.removed and src not in self.peers and src != self.id
                       and src != self.leader_id and not isinstance(msg, m.Resign)):
            self._on_removed_node(src)
            return
        shape = _SHAPES[type(msg)]
        if not self._well_formed(src, msg, shape):
            self.malformed += 1
            return
        if shape.raises:
            for name in shape.ballots:
                b = getattr(msg, name)
                if b is not None and b.round > self.max_round:
                    self.max_round = b.round
        match msg:
            case m.Prepare() if not self.voting:
                pass  # a rebuilding node makes no promises
            case m.Accept() if not self.voting:
                self._hear_leader(msg.ballot)  # follow the leader, but do not vote
            case m.Prepare():
                self._on_prepare(src, msg)
            case m.Promise():
                self._on_promise(src, msg)
            case m.Accept():
                self._on_accept(src, msg)
            case m.Accepted():
                self._on_accepted(src, msg)
            case m.Reject():
                self._on_reject(msg)
            case m.PreVote():
                self._on_pre_vote(src, msg)
            case m.PreVoteReply():
                self._on_pre_vote_reply(src, msg)
            case m.Commit():
                self._on_commit(src, msg.ballot, msg.commit_through, msg.first_slot)
            case m.Heartbeat():
                self._on_heartbeat(src, msg)
            case m.HeartbeatAck():
                self._on_heartbeat_ack(src, msg)
            case m.CatchUpRequest():
                self._on_catchup_request(src, msg)
            case m.CatchUpReply():
                self._on_catchup_reply(src, msg)
            case m.ReadIndexRequest():
                self._on_read_request(src, msg)
            case m.ReadIndexReply():
                self._ready.reads.append((msg.read_id, msg.index))
            case m.Rebuilding():
                if self.role is Role.LEADER and self.ballot.round <= msg.round:
                    self.max_round = max(self.max_round, msg.round)
                    self._start_election()  # a new ballot above the rebuilding node's horizon
            case m.Resign():
                self._on_resign(src, msg)
            case m.Removed():
                if self.role is Role.LEADER and self.lead is not None and self.leave_after is not None:
                    # The sender knows every slot of the old configuration: a leader leaves
                    # once a majority of the new voters does (_tick_leader).
                    self.lead.progress[src] = max(self.lead.progress.get(src, 0), self.leave_after)
                else:
                    self._leave()

    def compact(self, through_slot: int) -> None:
        """Forget log entries up to through_slot; a durable snapshot covers them."""
        self.acceptor.compact(min(through_slot, self.learner.applied_through))
        self.learner.compact(min(through_slot, self.learner.applied_through))

    def install_snapshot(self, slot: int, membership: Membership | None = None) -> None:
        """The runtime installed a snapshot taken at `slot`, with the membership as of
        that slot; continue the log after it."""
        self.snapshot_pending = False
        if membership is not None and slot > self.member_through:
            self.membership, self.member_through = membership, slot
        self.learner.install_snapshot(slot)
        self.acceptor.compact(self.learner.applied_through)
        self._advance_membership()
        self._learn_committed(self.commit_ballot, self.leader_commit)

    def adopt_membership(self, membership: Membership) -> None:
        """Count from another membership as of the same point in the log: a node that
        rebuilds takes its cluster's first configuration instead of the one its own
        options gave it. Only before it has learned anything (it is not voting)."""
        assert not self.voting and self.learner.chosen_through == self.member_through
        self.membership = membership
        self._advance_membership()

    def snapshot_failed(self) -> None:
        self.snapshot_pending = False
        self.catchup_idle = 0  # retry after a pause

    def take_ready(self) -> Ready:
        """Everything produced since the last call; see the module docstring for the contract."""
        if self.role is Role.LEADER:
            self._flush_proposals()
            self._flush_reads()
            if self.learner.chosen_through > self.commit_sent:
                self.commit_sent = self.learner.chosen_through
                lead = self.lead
                assert lead is not None
                self._broadcast(m.Commit(lead.ballot, self.commit_sent, lead.barrier_slot))
        self._maybe_catch_up()
        ready, self._ready = self._ready, Ready()
        writes = self.acceptor.take_writes()
        ready.promised, ready.accepted = writes.promised, writes.accepted
        ready.chosen = self.learner.take_new_chosen()
        ready.apply = self.learner.take_applicable()
        ready.membership = self.membership
        return ready

    # -- views ----------------------------------------------------------------

    @property
    def ballot(self) -> Ballot:
        return self.lead.ballot if self.lead is not None else self.leader_ballot

    def window_configs(self) -> list[Config]:
        """The configurations of the slots a leader may propose now."""
        ct = self.learner.chosen_through
        return self.membership.between(ct + 1, ct + self.membership.alpha)

    # -- helpers --------------------------------------------------------------

    def _random_timeout(self) -> int:
        n = self.config.election_ticks
        return n + self.rng.randrange(n)

    def _send(self, dst: int, msg: m.Message) -> None:
        self._ready.messages.append((dst, msg))

    def _broadcast(self, msg: m.Message) -> None:
        for p in self.peers:
            self._send(p, msg)

    def _may_lead(self) -> bool:
        return self.voting and self.id in self.membership.latest.voters

    def _votes_now(self) -> bool:
        """Whether this node is an acceptor of some slot a leader may propose now."""
        return self.voting and any(self.id in c.voters for c in self.window_configs())

    def _advance_membership(self) -> None:
        """Run the member commands of newly chosen slots, in order."""
        ct = self.learner.chosen_through
        ms = self.membership
        for slot in range(self.member_through + 1, ct + 1):
            batch = self.learner.chosen.get(slot)
            if batch is not None and batch.commands:
                ms, results = ms.apply(slot, batch)
                for cmd, result in results:
                    self._ready.member_results[cmd.cmd_id] = result
        self.member_through = max(self.member_through, ct)
        self.membership = ms
        settled = ms.settled(ct + 1)
        if self._peers_for is None or self._peers_for[0] is not ms or self._peers_for[1] != settled:
            self._peers_for = (ms, settled)
            contacts = set(ms.latest.members).union(ms.at(ct + 1).members)
            gone = [p for p in self.peers if p not in contacts and p in ms.removed]
            self.peers = tuple(sorted(contacts - {self.id}))
            if self.lead is not None:
                self.lead.farewells.update(gone)
            if settled and self.id in ms.removed and not self.removed and self.leave_after is None:
                # The last slot it has a vote in: it stops once a majority of the new voters
                # knows the log that far (a leader sees that itself; others are told, Removed).
                self.leave_after = ms.history[-1].effective - 1

    def _leave(self) -> None:
        """No configuration from the next slot on names this node: hand over and stop.

        A removed leader first waits until a majority of the new voters has learned the
        log up to its removal (they may hold the accepted values without knowing they
        were chosen, and could not elect anyone under the old configuration without it)."""
        self.removed = True
        self._ready.removed = True
        if self.role is Role.LEADER and self.lead is not None:
            voters = self.membership.latest.voters
            progress = self.lead.progress
            successor = max(voters, key=lambda p: (progress.get(p, -1), -p))
            resign = m.Resign(self.lead.ballot, successor)
            for p in self.peers:
                self._send(p, resign)
        self._step_down()

    def _probe(self) -> None:
        """Ask a random peer for the log after ours. A node that hears no leader may have
        missed configuration changes (its leader may be a node it does not know yet, whose
        messages it drops); the log tells it. A member tells a removed node so (Removed)."""
        if self.peers:
            ct = self.learner.chosen_through
            peer = self.peers[self.rng.randrange(len(self.peers))]
            self._send(peer, m.CatchUpRequest(ct + 1, ct + self.config.catchup_entries_max))

    def _on_removed_node(self, src: int) -> None:
        ms = self.membership
        if src in ms.removed and self.role is Role.LEADER and self._new_voters_know_old_slots():
            self._send(src, m.Removed(ms.history[-1].slot))
        else:
            self.malformed += 1

    def _new_voters_know_old_slots(self) -> bool:
        """Whether a majority of the latest voters knows every slot an older configuration
        governs: from then on, no node the configuration removed is ever needed again."""
        lead = self.lead
        ms = self.membership
        assert lead is not None
        last_old = ms.history[-1].effective - 1
        if self.learner.chosen_through < last_old:
            return False
        knows = {p for p, through in lead.progress.items() if through >= last_old} | {self.id}
        return ms.latest.is_quorum(knows)

    def _on_resign(self, src: int, msg: m.Resign) -> None:
        if self.leader_id == src and self.leader_ballot == msg.ballot:
            self.leader_id = None  # no longer sticky to it: its successor's Prepare may win
            self.election_elapsed = 0
        if msg.successor == self.id and self.role is not Role.LEADER and self._may_lead():
            self._start_election()

    def _well_formed(self, src: int, msg: m.Message, shape: _Shape) -> bool:
        """Reject forged or impossible messages: a leader's messages carry its own ballot."""
        if shape.from_sender and msg.ballot.node_id != src:
            return False
        if shape.answer and msg.ballot.node_id != self.id:
            return False  # these answer a message of ours, so they carry our own ballot
        for name in shape.ballots:
            b = getattr(msg, name)
            if b is not None and b != ZERO and b.node_id < 1:
                return False
        # Slots are numbered from 1: a slot-0 Accept would persist a record no one can learn.
        for name in shape.slots:
            if getattr(msg, name) < 1:
                return False
        return True

    def _leader_alive(self) -> bool:
        if self.role is Role.LEADER:
            return True
        return self.leader_id is not None and self.election_elapsed < self.config.election_ticks

    def _hear_leader(self, ballot: Ballot) -> None:
        """A live leader of `ballot` (>= our promise) spoke: follow it."""
        if self.lead is not None and ballot > self.lead.ballot:
            self._step_down()
        if self.lead is None and ballot >= self.leader_ballot:
            self.leader_id = ballot.node_id
            self.leader_ballot = ballot
            self.election_elapsed = 0
            self.pre_vote = None  # late yeses must not start an election against it

    def _step_down(self) -> None:
        lead = self.lead
        if lead is not None:
            for group, _ in lead.pending:
                self._ready.dropped.extend(group)
            for read in lead.all_reads():
                self._answer_read(read.origin, read.read_id, None)
        self.lead = None
        self.role = Role.FOLLOWER
        self.leader_id = None
        self.election_elapsed = 0
        self.election_timeout = self._random_timeout()
        if self.leave_after is not None and not self.removed:
            self._leave()  # a removed leader that lost its leadership has nothing left to do

    def _answer_read(self, origin: int, read_id: int, index: int | None) -> None:
        if origin == self.id:
            self._ready.reads.append((read_id, index))
        else:
            self._send(origin, m.ReadIndexReply(read_id, index))

    # -- elections ------------------------------------------------------------

    def _campaign(self) -> None:
        """The election timeout ran out: run for leader, or first ask (CoreConfig.pre_vote).
        A candidate whose election found no majority asks again too: raising its ballot
        round after round while cut off is what pre-voting is there to prevent."""
        if not self.config.pre_vote:
            self._start_election()
            return
        if self.lead is not None:
            self._step_down()
        ballot = self._next_ballot()
        self.pre_vote = (ballot, {self.id})
        self.pre_votes += 1
        self.leader_id = None
        self.election_elapsed = 0
        self.election_timeout = self._random_timeout()
        self._ask_pre_votes()
        self._check_pre_vote()  # a configuration of one voter needs nobody's yes

    def _next_ballot(self) -> Ballot:
        """A ballot of ours above every round seen or promised."""
        return Ballot(max(self.max_round, self.acceptor.promised.round) + 1, self.id)

    def _ask_pre_votes(self) -> None:
        """Ask the voters of every configuration an election must win that have not said
        yes (again every retry_ticks: a lost question must not cost a whole timeout)."""
        assert self.pre_vote is not None
        ballot, yes = self.pre_vote
        self.pre_vote_asked = self.ticks
        for p in sorted({v for c in self.window_configs() for v in c.voters} - yes):
            self._send(p, m.PreVote(ballot))

    def _check_pre_vote(self) -> None:
        pv = self.pre_vote
        if pv is not None and self._may_lead() and all(c.is_quorum(pv[1]) for c in self.window_configs()):
            self._start_election()

    def _on_pre_vote(self, src: int, msg: m.PreVote) -> None:
        # The same tests as a Prepare's (_on_prepare), with nothing promised or persisted.
        granted = (self._votes_now() and msg.ballot > self.acceptor.promised
                   and not self._defers_to_leader(src))
        self._send(src, m.PreVoteReply(msg.ballot, int(granted)))

    def _on_pre_vote_reply(self, src: int, msg: m.PreVoteReply) -> None:
        pv = self.pre_vote
        if pv is not None and msg.ballot == pv[0] and msg.granted == 1:
            pv[1].add(src)
            self._check_pre_vote()

    def _start_election(self) -> None:
        if self.lead is not None:
            self._step_down()
        self.pre_vote = None
        self.elections += 1
        ballot = self._next_ballot()
        self.max_round = ballot.round
        self.role = Role.CANDIDATE
        self.leader_id = None
        self.lead = LeaderState(ballot, self.learner.chosen_through + 1)
        self.election_elapsed = 0
        self.election_timeout = self._random_timeout()
        prepare = m.Prepare(ballot, self.lead.from_slot)
        # Our own promise is persisted in this Ready, so the ballot is durable before
        # any Prepare leaves (rule 4), and our vote arrives only after it is durable.
        self._send(self.id, self.acceptor.on_prepare(prepare))
        self._broadcast(prepare)
        for p in self.peers:
            self.lead.prepare_sent[p] = self.ticks
        self._probe()

    def _tick_candidate(self) -> None:
        for config in self.window_configs():
            self._ask_promises(config)

    def _ask_promises(self, config: Config) -> None:
        """Send this ballot's Prepare to config's voters that have not promised it
        (again after retry_ticks)."""
        lead = self.lead
        assert lead is not None
        prepare = None
        for p in config.voters:
            if p != self.id and p not in lead.promises and \
                    self.ticks - lead.prepare_sent.get(p, -self.config.retry_ticks) >= self.config.retry_ticks:
                lead.prepare_sent[p] = self.ticks
                prepare = prepare or m.Prepare(lead.ballot, lead.from_slot)
                self._send(p, prepare)

    def _on_prepare(self, src: int, msg: m.Prepare) -> None:
        if not self._votes_now():
            return  # a learner, or a member on its way out: its promise would count nowhere
        if self._defers_to_leader(src):
            # A live leader exists: refusing keeps a rejoining node from deposing it.
            self._send(src, m.Reject(msg.ballot, max(self.acceptor.promised, self.ballot)))
            return
        reply = self.acceptor.on_prepare(msg)
        if isinstance(reply, m.Promise):
            if self.lead is not None and msg.ballot > self.lead.ballot:
                self._step_down()
            known = tuple(m.ChosenEntry(s, v) for s, v in sorted(self.learner.chosen.items())
                          if s >= msg.from_slot)
            reply = replace(reply, chosen=known)
        self._send(src, reply)

    def _defers_to_leader(self, src: int) -> bool:
        """Whether a live leader other than src exists here, so that src's bid to lead
        (a Prepare, or a PreVote asking about one) is refused. Leader stickiness."""
        return src != self.id and self._leader_alive() and src != self.leader_id

    def _on_promise(self, src: int, msg: m.Promise) -> None:
        lead = self.lead
        if lead is None or msg.ballot != lead.ballot or src in lead.promises:
            return
        if msg.compacted_through > self.learner.chosen_through:
            # Slots we have not learned were compacted away there: we cannot know
            # their values, so we must not lead. Catch up from that peer instead.
            self._step_down()
            if msg.compacted_through > self.leader_commit:
                # No leader's Commit vouches for these slots, so our accepted values
                # under commit_ballot say nothing about them: fetch them, never infer.
                self.leader_commit, self.commit_ballot = msg.compacted_through, ZERO
            self.commit_source = src
            return
        lead.add_promise(src, msg)
        lead.heard(src, self.ticks)
        if self.role is Role.CANDIDATE and all(lead.has_promises(c) for c in self.window_configs()):
            self._become_leader()

    def _on_reject(self, msg: m.Reject) -> None:
        if self.lead is not None and msg.promised > self.lead.ballot:
            self._step_down()

    def _become_leader(self) -> None:
        lead = self.lead
        assert lead is not None and self.acceptor.promised == lead.ballot
        self.role = Role.LEADER
        self.leader_id = self.id
        self.leader_ballot = lead.ballot
        lead.top = max([lead.top, *(s for s in self.learner.chosen if s >= lead.from_slot)])
        self._flush_proposals()
        self.commit_sent = self.learner.chosen_through
        self._send_heartbeat()

    # -- leader ---------------------------------------------------------------

    def _propose_slot(self, slot: int, value: Batch, config: Config) -> None:
        lead = self.lead
        assert lead is not None and self.role is Role.LEADER
        lead.proposals[slot] = proposal = Proposal(value)
        if self.config.defer_self_vote and self._others_make_quorum(config):
            proposal.deferred = WAITING
        else:
            self._vote_self(slot, proposal)
        self._broadcast(m.Accept(lead.ballot, slot, value))

    def _others_make_quorum(self, config: Config) -> bool:
        """Whether this node votes in `config` and enough of its other voters answered
        within the last few ticks to make a majority without this node."""
        lead = self.lead
        assert lead is not None
        if self.id not in config.voters:
            return False
        recent = self.ticks - 2 * self.config.heartbeat_ticks
        heard = sum(1 for p in config.voters if p != self.id and lead.heard_tick.get(p, -1) >= recent)
        return heard >= config.quorum

    def _vote_self(self, slot: int, proposal: Proposal) -> None:
        lead = self.lead
        assert lead is not None
        proposal.deferred = None
        reply = self.acceptor.on_accept(m.Accept(lead.ballot, slot, proposal.value))
        if isinstance(reply, m.Accepted):
            self._send(self.id, reply)  # delivered once the acceptance is durable
        else:
            # Unreachable while this node leads (promising a higher ballot ends that),
            # but if it were so: another leader exists, so stop.
            self._step_down()

    def _flush_proposals(self) -> None:
        """Propose slots in order while their configuration is known and has promised.

        Rule 6 for each slot: the chosen value if known, else the highest-ballot value
        phase 1 found, else fresh commands (or a no-op where the slot must be filled:
        up to the highest slot any promise mentioned, the first fresh slot of the
        ballot, and every slot before a configuration change takes effect). Fresh
        commands that do not fill a batch wait while partial_in_flight proposals
        are in flight.
        """
        lead = self.lead
        assert lead is not None
        c = self.config
        ms = self.membership
        limit = self.learner.chosen_through + ms.alpha  # alpha: configurations known up to here
        fill_below = ms.history[-1].effective
        merged: dict[int, Batch] | None = None
        # Slots known chosen here need no proposal (and may be compacted away already).
        lead.next_slot = max(lead.next_slot, self.learner.chosen_through + 1)
        while (slot := lead.next_slot) <= limit:
            config = ms.at(slot)
            if not lead.has_promises(config):
                self._ask_promises(config)
                return
            if merged is None:
                merged = lead.merged_values()
            value = self.learner.chosen.get(slot) or merged.get(slot)
            if value is None:
                must = slot <= lead.top or lead.barrier_slot == 0 or slot < fill_below
                if (not must and 0 < c.partial_in_flight <= len(lead.proposals)
                        and not lead.full_batch_waiting(c.batch_count_max, c.batch_bytes_max)):
                    # Nagle for slots: a partial batch waits for a proposal in flight to be
                    # chosen, gathering what arrives meanwhile. Fewer, fuller slots cost every
                    # node less (messages, group commits, wake-ups) and, on a busy machine,
                    # less queueing than they add; a lone command finds nothing in flight.
                    return
                # The first fresh slot above everything phase 1 found: once it is chosen, a
                # slot was chosen under this ballot (for reads and rebuilding nodes); applied,
                # it starts the leases' ttls again (Batch.lead).
                barrier = lead.barrier_slot == 0 and slot > lead.top
                value = lead.next_batch(c.batch_count_max, c.batch_bytes_max, self.clock_ms, must, barrier)
                if value is None:
                    return
                if barrier:
                    lead.barrier_slot = slot
                for cmd in value.commands:
                    self._ready.proposed[cmd.cmd_id] = slot
            lead.next_slot += 1
            self._propose_slot(slot, value, config)

    def _on_accepted(self, src: int, msg: m.Accepted) -> None:
        lead = self.lead
        if self.role is not Role.LEADER or lead is None or msg.ballot != lead.ballot:
            return
        lead.heard(src, self.ticks)
        config = self.membership.at(msg.slot)
        value = lead.add_vote(src, msg.slot, config)
        if value is not None:
            self.learner.learn(msg.slot, value)
            self._advance_membership()
            return
        proposal = lead.proposals.get(msg.slot)
        if proposal is not None and proposal.deferred == WAITING and len(proposal.votes) >= config.quorum - 1:
            proposal.deferred = lead.vote_round  # only our vote is missing now: it is due

    def _tick_leader(self) -> None:
        lead = self.lead
        assert lead is not None
        lead.idle_ticks += 1
        if lead.idle_ticks >= self.config.heartbeat_ticks:
            self._send_heartbeat()
        for slot, proposal in list(lead.proposals.items()):
            proposal.idle_ticks += 1
            if proposal.deferred is not None and proposal.idle_ticks >= 2:
                self._vote_self(slot, proposal)  # its followers are slow: vote after all
                if self.lead is not lead:
                    return
            if proposal.idle_ticks >= self.config.retry_ticks * proposal.backoff:
                proposal.idle_ticks = 0
                proposal.backoff = min(2 * proposal.backoff, 8)
                accept = m.Accept(lead.ballot, slot, proposal.value)
                for p in self.membership.at(slot).voters:
                    if p not in proposal.votes and p != self.id:
                        self._send(p, accept)
        window = 2 * self.config.election_ticks
        if self.ticks % window == 0 and not lead.has_quorum_contact(self.id, self.ticks, window,
                                                                    self.window_configs()):
            self._step_down()  # check quorum: a leader cut off from a majority stops leading
            return
        if self.leave_after is not None:
            if self._new_voters_know_old_slots():
                self._leave()
            return
        if lead.farewells and self._new_voters_know_old_slots():
            for p in lead.farewells:  # no one needs them any more: tell them to stop
                self._send(p, m.Removed(self.membership.history[-1].slot))
            lead.farewells.clear()
        self._maybe_promote()

    def _maybe_promote(self) -> None:
        """Propose making a learner a voter once it has caught up with the log."""
        lead = self.lead
        assert lead is not None
        ct = self.learner.chosen_through
        ms = self.membership
        if not ms.settled(ct + 1) or not ms.latest.learners:
            return
        if lead.promoting is not None and self.ticks - lead.promoting[1] < 4 * self.config.election_ticks:
            return
        recent = 2 * self.config.election_ticks
        for learner in ms.latest.learners:
            heard = lead.heard_tick.get(learner)
            if heard is not None and self.ticks - heard <= recent and lead.progress.get(learner, -1) + ms.alpha >= ct:
                lead.promoting = (learner, self.ticks)
                cmd_id = f"promote.{learner}.{lead.ballot.round}.{lead.ballot.node_id}.{self.ticks}"
                lead.add_pending((Command(MEMBER_PROMOTE, str(learner), cmd_id=cmd_id),))
                return

    def _send_heartbeat(self) -> None:
        lead = self.lead
        assert lead is not None
        lead.idle_ticks = 0
        lead.hb_seq += 1
        self._broadcast(m.Heartbeat(lead.ballot, self.learner.chosen_through, lead.hb_seq,
                                    lead.barrier_slot))

    def _flush_reads(self) -> None:
        lead = self.lead
        assert lead is not None
        if lead.unsent_reads:
            self._send_heartbeat()
            lead.reads_by_seq[lead.hb_seq] = lead.unsent_reads
            lead.unsent_reads = []
        ct = self.learner.chosen_through
        if self.membership.settled(ct + 1):  # reads wait while a configuration change is in flight
            for read in lead.releasable_reads(self.id, ct, self.membership.latest):
                self._answer_read(read.origin, read.read_id, read.index)

    def _on_heartbeat_ack(self, src: int, msg: m.HeartbeatAck) -> None:
        lead = self.lead
        if self.role is Role.LEADER and lead is not None and msg.ballot == lead.ballot:
            lead.heard(src, self.ticks)
            lead.ack(src, msg.hb_seq)
            lead.progress[src] = msg.chosen_through
            if self.leave_after is not None and self._new_voters_know_old_slots():
                self._leave()

    def _on_read_request(self, src: int, msg: m.ReadIndexRequest) -> None:
        if self.role is Role.LEADER and self.lead is not None:
            self.lead.unsent_reads.append(PendingRead(src, msg.read_id, self.learner.chosen_through))
        else:
            self._send(src, m.ReadIndexReply(msg.read_id, None))

    # -- follower and learning ------------------------------------------------

    def _on_accept(self, src: int, msg: m.Accept) -> None:
        reply = self.acceptor.on_accept(msg)
        if isinstance(reply, m.Accepted):
            self._hear_leader(msg.ballot)
        self._send(src, reply)

    def _on_heartbeat(self, src: int, msg: m.Heartbeat) -> None:
        if not self.voting:
            pass  # an ack would vouch for promises this node may have forgotten
        elif msg.ballot < self.acceptor.promised:
            self._send(src, m.Reject(msg.ballot, self.acceptor.promised))
        else:
            self._hear_leader(msg.ballot)
            self._send(src, m.HeartbeatAck(msg.ballot, msg.hb_seq, self.learner.chosen_through))
        self._on_commit(src, msg.ballot, msg.commit_through, msg.first_slot)

    def _on_commit(self, src: int, ballot: Ballot, commit_through: int, first_slot: int = 0) -> None:
        if ballot >= self.acceptor.promised:
            self._hear_leader(ballot)
        if not self.voting and ballot.round <= self.rebuild_round and self.ticks >= self.rebuild_asked:
            self.rebuild_asked = self.ticks + self.config.election_ticks
            self._send(ballot.node_id, m.Rebuilding(self.rebuild_round))
        if not self.voting and ballot.round > self.rebuild_round and 0 < first_slot <= commit_through:
            self.fresh_slot = max(self.fresh_slot, first_slot)
        if commit_through > self.leader_commit or (commit_through == self.leader_commit
                                                   and ballot > self.commit_ballot):
            self.leader_commit, self.commit_ballot, self.commit_source = commit_through, ballot, src
        self._learn_committed(ballot, commit_through)

    def _learn_committed(self, ballot: Ballot, commit_through: int) -> None:
        # A leader of `ballot` proposes one value per slot, so anything we accepted
        # under that ballot at or below its commit index is the chosen value.
        first = self.learner.chosen_through + 1
        for slot in range(first, min(commit_through, first + self.config.learn_scan_max) + 1):
            if slot not in self.learner.chosen:
                value = self.acceptor.accepted_at(slot, ballot)
                if value is not None:
                    self.learner.learn(slot, value)
        self._advance_membership()
        if not self.voting and 0 < self.fresh_slot <= self.learner.chosen_through:
            # A slot proposed fresh under a ballot begun after our rebuild is chosen, and we
            # know every chosen value up to it (so our promises can report them): vote again.
            self.voting = True
            self._ready.became_voter = True

    def _maybe_catch_up(self) -> None:
        if self.catchup_idle is not None or self.commit_source is None or self.snapshot_pending:
            return
        gap = self.learner.missing_below(self.leader_commit)
        if gap is None:
            return
        lo, hi = gap
        hi = min(hi, lo + self.config.catchup_entries_max - 1)
        self.catchup_idle = 0
        self._send(self.commit_source, m.CatchUpRequest(lo, hi))

    def _on_catchup_request(self, src: int, msg: m.CatchUpRequest) -> None:
        if msg.from_slot <= self.learner.compacted_through:
            self._send(src, m.CatchUpReply((), self.learner.compacted_through))
            return
        entries = []
        size = 0
        hi = min(msg.to_slot, msg.from_slot + self.config.catchup_entries_max - 1)
        for slot in range(msg.from_slot, hi + 1):
            value = self.learner.chosen.get(slot)
            if value is None or (entries and size >= self.config.catchup_bytes_max):
                break  # bounded in bytes too: encoding a huge reply would stall the sender
            entries.append(m.ChosenEntry(slot, value))
            size += sum(c.size_bytes() for c in value.commands)
        self._send(src, m.CatchUpReply(tuple(entries)))

    def _on_catchup_reply(self, src: int, msg: m.CatchUpReply) -> None:
        if msg.snapshot_slot > self.learner.chosen_through and not self.snapshot_pending:
            self.snapshot_pending = True
            self._ready.snapshot_from = src
            return
        for e in msg.entries:
            self.learner.learn(e.slot, e.value)
        self._advance_membership()
        self.catchup_idle = None
        self._learn_committed(self.commit_ballot, self.leader_commit)

