"""Ballots: (round, node id), totally ordered, compared round first."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, order=True)
class Ballot:
    round: int
    node_id: int

    def __str__(self) -> str:
        return f"{self.round}.{self.node_id}"

    def next_for(self, node_id: int) -> "Ballot":
        """The smallest ballot owned by node_id that is higher than this one."""
        return Ballot(self.round + 1, node_id)


ZERO = Ballot(0, 0)
