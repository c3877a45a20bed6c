"""Leader-side bookkeeping: phase-1 promises, phase-2 proposals and read rounds.

A LeaderState exists only while its node is a candidate or the leader of
`ballot`; stepping down throws it away. It owns:
- the promises gathered in phase 1 and the merge rule for them (rule 6: for each
  slot, the value accepted with the highest ballot; holes become no-ops);
- the proposals in flight and the votes for each, counted only for `ballot`;
- commands waiting for a slot, packed into batches bounded in count and bytes
  (a group of commands from one request always lands whole in one slot);
- read-index rounds: reads wait for a heartbeat round acknowledged by a
  majority at `ballot`, and for the leader's first own-ballot slot to be chosen.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from kvpaxos.core import messages as m
from kvpaxos.core.ballot import Ballot
from kvpaxos.core.commands import NOOP, Batch, Command


@dataclass
class Proposal:
    value: Batch
    votes: set[int] = field(default_factory=set)
    idle_ticks: int = 0
    backoff: int = 1  # resends wait retry_ticks * backoff; it doubles, so big values do not flood


@dataclass
class PendingRead:
    origin: int
    read_id: int
    index: int


class LeaderState:
    def __init__(self, ballot: Ballot, from_slot: int, members: tuple[int, ...]) -> None:
        self.ballot = ballot
        self.from_slot = from_slot
        self.members = members
        self.quorum = len(members) // 2 + 1
        self.promises: dict[int, m.Promise] = {}
        self.proposals: dict[int, Proposal] = {}
        self.next_slot = from_slot
        self.barrier_slot = from_slot
        self.pending: deque[tuple[Command, ...]] = deque()  # groups never split across slots
        self.idle_ticks = 0
        self.hb_seq = 0
        self.acked_seq: dict[int, int] = {}
        self.heard_tick: dict[int, int] = {}
        self.unsent_reads: list[PendingRead] = []
        self.reads_by_seq: dict[int, list[PendingRead]] = {}

    # -- phase 1 --------------------------------------------------------------

    def add_promise(self, src: int, promise: m.Promise) -> bool:
        """Record a promise for this ballot; True once a majority has promised."""
        self.promises[src] = promise
        return len(self.promises) >= self.quorum

    def merged_values(self) -> dict[int, Batch]:
        """For each slot any promise mentions, the value known chosen there, else the
        value accepted with the highest ballot."""
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
        return merged

    # -- phase 2 --------------------------------------------------------------

    def add_vote(self, src: int, slot: int) -> Batch | None:
        """Count an Accepted for this ballot; the value once a majority accepted it."""
        proposal = self.proposals.get(slot)
        if proposal is None:
            return None
        proposal.votes.add(src)
        if len(proposal.votes) < self.quorum:
            return None
        del self.proposals[slot]
        return proposal.value

    def next_batch(self, window_slots: int, count_max: int, bytes_max: int,
                   ts_ms: int, force: bool = False) -> Batch | None:
        """The commands for the next fresh slot, or None when none fit or the window is full."""
        if len(self.proposals) >= window_slots or not (self.pending or force):
            return None
        commands: list[Command] = []
        size = 0
        while self.pending:
            group = self.pending[0]
            group_size = sum(c.size_bytes() for c in group)
            if commands and (size + group_size > bytes_max or len(commands) + len(group) > count_max):
                break
            commands.extend(self.pending.popleft())
            size += group_size
        return Batch(tuple(commands), ts_ms) if commands else NOOP

    # -- reads and liveness ---------------------------------------------------

    def heard(self, src: int, tick: int) -> None:
        self.heard_tick[src] = tick

    def has_quorum_contact(self, self_id: int, tick: int, window_ticks: int) -> bool:
        recent = sum(1 for p, t in self.heard_tick.items() if p != self_id and tick - t <= window_ticks)
        return recent + 1 >= self.quorum

    def ack(self, src: int, hb_seq: int) -> None:
        if hb_seq > self.acked_seq.get(src, 0):
            self.acked_seq[src] = hb_seq

    def confirmed_seq(self, self_id: int) -> int:
        """The highest heartbeat round acknowledged by a majority (this node included)."""
        seqs = sorted((s for p, s in self.acked_seq.items() if p != self_id), reverse=True)
        need = self.quorum - 1
        if need == 0:
            return self.hb_seq
        return seqs[need - 1] if len(seqs) >= need else 0

    def releasable_reads(self, self_id: int, chosen_through: int) -> list[PendingRead]:
        if chosen_through < self.barrier_slot:
            return []
        confirmed = self.confirmed_seq(self_id)
        out: list[PendingRead] = []
        for seq in sorted(s for s in self.reads_by_seq if s <= confirmed):
            for read in self.reads_by_seq.pop(seq):
                read.index = max(read.index, self.barrier_slot)
                out.append(read)
        return out

    def all_reads(self) -> list[PendingRead]:
        out = list(self.unsent_reads)
        for reads in self.reads_by_seq.values():
            out.extend(reads)
        self.unsent_reads, self.reads_by_seq = [], {}
        return out
