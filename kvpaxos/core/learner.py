"""The learner: which slots are chosen, and which are ready to apply.

Owns the chosen values it knows (slot -> batch), `chosen_through` (every slot
up to it is chosen and known here) and `applied_through` (handed out for
applying, strictly in slot order, each exactly once). Values at or below
`compacted_through` live only in a snapshot. Values learned out of
order wait until the gap below them is filled from a peer, never guessed.
"""
from __future__ import annotations

from kvpaxos.core.commands import Batch


class ConflictingChoice(AssertionError):
    """Two different values were learned as chosen for one slot: safety is broken."""


class Learner:
    def __init__(self, chosen: dict[int, Batch] | None = None, applied_through: int = 0) -> None:
        self.chosen: dict[int, Batch] = dict(chosen or {})
        self.applied_through = applied_through
        self.chosen_through = applied_through
        self.compacted_through = applied_through
        self.new_chosen: dict[int, Batch] = {}
        self._advance()

    def _advance(self) -> None:
        while self.chosen_through + 1 in self.chosen:
            self.chosen_through += 1

    def learn(self, slot: int, value: Batch) -> bool:
        """Record that `value` is chosen for `slot`; True if this is news."""
        known = self.chosen.get(slot)
        if known is not None:
            if known != value:
                raise ConflictingChoice(f"slot {slot}: {known!r} != {value!r}")
            return False
        if slot <= self.applied_through:
            return False
        self.chosen[slot] = value
        self.new_chosen[slot] = value
        self._advance()
        return True

    def missing_below(self, upto: int) -> tuple[int, int] | None:
        """The first run of unknown slots at or below `upto`, as (from, to)."""
        start = self.chosen_through + 1
        if start > upto:
            return None
        end = start
        while end < upto and end + 1 not in self.chosen:
            end += 1
        return start, end

    def take_applicable(self) -> list[tuple[int, Batch]]:
        out = []
        while self.applied_through < self.chosen_through:
            self.applied_through += 1
            out.append((self.applied_through, self.chosen[self.applied_through]))
        return out

    def compact(self, through_slot: int) -> None:
        """Forget chosen values up to through_slot, which must already be applied."""
        assert through_slot <= self.applied_through
        for slot in [s for s in self.chosen if s <= through_slot]:
            del self.chosen[slot]
        self.compacted_through = max(self.compacted_through, through_slot)

    def install_snapshot(self, slot: int) -> None:
        """The state machine now holds everything up to slot: continue after it."""
        if slot <= self.applied_through:
            return
        self.applied_through = slot
        self.chosen_through = max(self.chosen_through, slot)
        for s in [s for s in self.chosen if s <= slot]:
            del self.chosen[s]
            self.new_chosen.pop(s, None)
        self.compacted_through = slot
        self._advance()

    def take_new_chosen(self) -> dict[int, Batch]:
        out, self.new_chosen = self.new_chosen, {}
        return out
