"""The acceptor: the only Paxos state that must survive a crash.

Owns the promised ballot (one promise covers every slot) and the accepted
(slot, ballot, value) records. Invariants:
- promised never decreases; an accepted record's ballot never exceeds promised;
- every change is written to `pending` so the runtime persists it before any
  reply produced after the change leaves the node (persist-before-send);
- records at or below `compacted_through` are gone; those slots are chosen and
  applied into a durable snapshot, and every Promise says so, so a candidate
  that is behind knows it must catch up instead of re-proposing them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from kvpaxos.core import messages as m
from kvpaxos.core.ballot import ZERO, Ballot
from kvpaxos.core.commands import Batch


@dataclass
class AcceptorWrites:
    """Durable changes not yet handed to the runtime."""

    promised: Ballot | None = None
    accepted: dict[int, tuple[Ballot, Batch]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.promised is not None or bool(self.accepted)


class Acceptor:
    def __init__(self, promised: Ballot = ZERO,
                 accepted: dict[int, tuple[Ballot, Batch]] | None = None) -> None:
        self.promised = promised
        self.accepted: dict[int, tuple[Ballot, Batch]] = dict(accepted or {})
        self.pending = AcceptorWrites()
        self.compacted_through = 0

    def _promise(self, ballot: Ballot) -> None:
        if ballot > self.promised:
            self.promised = ballot
            self.pending.promised = ballot

    def on_prepare(self, msg: m.Prepare) -> m.Promise | m.Reject:
        if msg.ballot < self.promised:
            return m.Reject(msg.ballot, self.promised)
        self._promise(msg.ballot)
        entries = tuple(
            m.AcceptedEntry(slot, b, v)
            for slot, (b, v) in sorted(self.accepted.items())
            if slot >= msg.from_slot
        )
        return m.Promise(msg.ballot, msg.from_slot, entries, self.compacted_through)

    def on_accept(self, msg: m.Accept) -> m.Accepted | m.Reject:
        if msg.ballot < self.promised:
            return m.Reject(msg.ballot, self.promised)
        self._promise(msg.ballot)
        if msg.slot <= self.compacted_through:
            return m.Accepted(msg.ballot, msg.slot)  # chosen long ago; a re-proposal carries its value
        if self.accepted.get(msg.slot, (None, None))[0] != msg.ballot:
            self.accepted[msg.slot] = (msg.ballot, msg.value)
            self.pending.accepted[msg.slot] = (msg.ballot, msg.value)
        return m.Accepted(msg.ballot, msg.slot)

    def accepted_at(self, slot: int, ballot: Ballot) -> Batch | None:
        """The value accepted for slot under exactly `ballot`, if any."""
        rec = self.accepted.get(slot)
        return rec[1] if rec is not None and rec[0] == ballot else None

    def compact(self, through_slot: int) -> None:
        """Forget accepted records up to through_slot (chosen and captured in a snapshot)."""
        if through_slot <= self.compacted_through:
            return
        self.compacted_through = through_slot
        for slot in [s for s in self.accepted if s <= through_slot]:
            del self.accepted[slot]

    def take_writes(self) -> AcceptorWrites:
        out, self.pending = self.pending, AcceptorWrites()
        return out
