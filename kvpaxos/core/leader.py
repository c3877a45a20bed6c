"""Leader-side bookkeeping: phase-1 promises, phase-2 proposals and read rounds.

A LeaderState exists only while its node is a candidate or the leader of
`ballot`; stepping down throws it away. It owns:
- the promises gathered in phase 1 and the merge rule for them (rule 6: for each
  slot, the value accepted with the highest ballot; holes become no-ops);
- the proposals in flight and the votes for each, counted only for `ballot`;
- commands waiting for a slot, packed into batches bounded in count and bytes
  (a group of commands from one request always lands whole in one slot), with
  their running count and size, so the replica can tell a full batch waiting;
- read-index rounds: reads wait for a heartbeat round acknowledged by a
  majority at `ballot`, and for the leader's first own-ballot slot to be chosen.
Majorities are always counted in one configuration (kvpaxos/core/membership.py),
passed in by the replica: the configuration of the slot voted on, or for phase 1
and reads, each configuration that governs an open slot.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from kvpaxos.core import messages as m
from kvpaxos.core.ballot import Ballot
from kvpaxos.core.commands import NOOP, Batch, Command
from kvpaxos.core.membership import Config


@dataclass
class Proposal:
    value: Batch
    votes: set[int] = field(default_factory=set)
    idle_ticks: int = 0
    backoff: int = 1  # resends wait retry_ticks * backoff; it doubles, so big values do not flood
    # The leader's own vote, when deferred (CoreConfig.defer_self_vote): WAITING until
    # its vote is the one missing, then the self-vote round it became due in; None once
    # cast, or if never deferred.
    deferred: int | None = None


WAITING = -1  # Proposal.deferred: the other voters may still make a majority alone


@dataclass
class PendingRead:
    origin: int
    read_id: int
    index: int


class LeaderState:
    def __init__(self, ballot: Ballot, from_slot: int) -> None:
        self.ballot = ballot
        self.from_slot = from_slot
        self.promises: dict[int, m.Promise] = {}
        self.top = 0  # the highest slot any promise mentioned
        self._merged: dict[int, Batch] | None = None
        self._quorum_memo: dict[int, tuple[Config, bool]] = {}  # id(config) -> (config, has_promises)
        self.prepare_sent: dict[int, int] = {}  # peer -> tick of the last Prepare sent to it
        self.proposals: dict[int, Proposal] = {}
        self.vote_round = 0  # advanced by each Replica.cast_self_votes()
        self.next_slot = from_slot
        self.barrier_slot = 0  # the first fresh slot of this ballot, once proposed
        # (group, its size in bytes): a group is never split across slots.
        self.pending: deque[tuple[tuple[Command, ...], int]] = deque()
        self.pending_count = 0  # commands in pending
        self.pending_bytes = 0  # their size_bytes()
        self.idle_ticks = 0
        self.hb_seq = 0
        self.acked_seq: dict[int, int] = {}
        self.heard_tick: dict[int, int] = {}
        self.progress: dict[int, int] = {}  # peer -> chosen_through it last reported
        self.promoting: tuple[int, int] | None = None  # (learner, tick) of the last promotion sent
        self.farewells: set[int] = set()  # removed nodes to tell so, once they are not needed
        self.unsent_reads: list[PendingRead] = []
        self.reads_by_seq: dict[int, list[PendingRead]] = {}

    # -- phase 1 --------------------------------------------------------------

    def add_promise(self, src: int, promise: m.Promise) -> None:
        """Record a promise for this ballot (promises may keep arriving after phase 1,
        from voters of a configuration that took effect since)."""
        self.promises[src] = promise
        self._merged = None
        self._quorum_memo.clear()
        slots = [e.slot for e in promise.accepted] + [c.slot for c in promise.chosen]
        self.top = max([self.top, *slots])

    def has_promises(self, config: Config) -> bool:
        # Asked several times a slot, while the promises change only in phase 1.
        memo = self._quorum_memo.get(id(config))
        if memo is None or memo[0] is not config:
            if len(self._quorum_memo) >= 64:
                self._quorum_memo.clear()  # configurations of long ago
            memo = self._quorum_memo[id(config)] = (config, config.is_quorum(self.promises))
        return memo[1]

    def merged_values(self) -> dict[int, Batch]:
        """For each slot any promise mentions, the value known chosen there, else the
        value accepted with the highest ballot. Promises from more than a majority only
        add values that a higher ballot already had to propose, so they never hurt."""
        if self._merged is not None:
            return self._merged
        best: dict[int, tuple[Ballot, Batch]] = {}
        for promise in self.promises.values():
            for e in promise.accepted:
                if e.slot >= self.from_slot and (e.slot not in best or e.ballot > best[e.slot][0]):
                    best[e.slot] = (e.ballot, e.value)
        merged = {slot: value for slot, (_, value) in best.items()}
        for promise in self.promises.values():
            for c in promise.chosen:
                if c.slot >= self.from_slot:
                    merged[c.slot] = c.value  # known chosen: no other value is possible
        self._merged = merged
        return merged

    # -- phase 2 --------------------------------------------------------------

    def add_vote(self, src: int, slot: int, config: Config) -> Batch | None:
        """Count an Accepted for this ballot; the value once a majority of the slot's
        configuration accepted it."""
        proposal = self.proposals.get(slot)
        if proposal is None or src not in config.voters:
            return None
        proposal.votes.add(src)
        if len(proposal.votes) < config.quorum:
            return None
        del self.proposals[slot]
        return proposal.value

    def add_pending(self, group: tuple[Command, ...]) -> None:
        """Queue a group of commands for the next fresh slot (all in one)."""
        size = sum(c.size_bytes() for c in group)
        self.pending.append((group, size))
        self.pending_count += len(group)
        self.pending_bytes += size

    def full_batch_waiting(self, count_max: int, bytes_max: int) -> bool:
        return self.pending_count >= count_max or self.pending_bytes >= bytes_max

    def next_batch(self, count_max: int, bytes_max: int, ts_ms: int, force: bool = False,
                   lead: bool = False) -> Batch | None:
        """The commands for the next fresh slot (a no-op if forced and none wait), or None.
        With lead (the leader's barrier), a batch marked so, and carrying the clock even
        with no command (Batch.lead)."""
        if not (self.pending or force):
            return None
        commands: list[Command] = []
        size = 0
        took = False
        while self.pending:
            group, group_size = self.pending[0]
            if commands and (size + group_size > bytes_max or len(commands) + len(group) > count_max):
                break
            self.pending.popleft()
            commands.extend(group)
            size += group_size
            took = True
        self.pending_count -= len(commands)
        self.pending_bytes -= size
        if lead:
            return Batch(tuple(commands), ts_ms, True)
        # An empty group (Replica.nudge_clock) is a slot for the clock reading alone.
        return Batch(tuple(commands), ts_ms) if took else NOOP

    # -- reads and liveness ---------------------------------------------------

    def heard(self, src: int, tick: int) -> None:
        self.heard_tick[src] = tick

    def has_quorum_contact(self, self_id: int, tick: int, window_ticks: int, configs: list[Config]) -> bool:
        recent = {p for p, t in self.heard_tick.items() if tick - t <= window_ticks} | {self_id}
        return all(c.is_quorum(recent) for c in configs)

    def ack(self, src: int, hb_seq: int) -> None:
        if hb_seq > self.acked_seq.get(src, 0):
            self.acked_seq[src] = hb_seq

    def confirmed_seq(self, self_id: int, config: Config) -> int:
        """The highest heartbeat round acknowledged by a majority of config's voters
        (this node included, if it votes)."""
        seqs = sorted(((self.hb_seq if p == self_id else self.acked_seq.get(p, 0)) for p in config.voters),
                      reverse=True)
        return seqs[config.quorum - 1]

    def barrier_chosen(self, chosen_through: int) -> bool:
        """Whether this ballot's first fresh slot, and every slot any promise mentioned,
        is chosen and known here."""
        return self.barrier_slot > 0 and chosen_through >= max(self.barrier_slot, self.top)

    def releasable_reads(self, self_id: int, chosen_through: int, config: Config) -> list[PendingRead]:
        """Reads whose heartbeat round a majority of `config` acknowledged; each is
        answered with the current chosen_through as its read point."""
        if not self.reads_by_seq or not self.barrier_chosen(chosen_through) or not self.has_promises(config):
            return []
        confirmed = self.confirmed_seq(self_id, config)
        out: list[PendingRead] = []
        for seq in sorted(s for s in self.reads_by_seq if s <= confirmed):
            for read in self.reads_by_seq.pop(seq):
                read.index = max(read.index, chosen_through)
                out.append(read)
        return out

    def all_reads(self) -> list[PendingRead]:
        out = list(self.unsent_reads)
        for reads in self.reads_by_seq.values():
            out.extend(reads)
        self.unsent_reads, self.reads_by_seq = [], {}
        return out
