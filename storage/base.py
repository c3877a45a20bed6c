"""The storage interface: what an acceptor must find again after a crash.

A Storage keeps the promised ballot, the accepted (slot, ballot, value) records
and the chosen values this node learned. `save` returns only once the writes
are durable (fsynced); it is called from a worker thread, never the event loop.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from kvpaxos.core.ballot import ZERO, Ballot
from kvpaxos.core.commands import Batch


class StorageError(RuntimeError):
    """The data directory cannot be used (damaged, foreign or unreadable)."""


@dataclass
class Writes:
    """A group of changes committed together in one transaction and one fsync."""

    promised: Ballot | None = None
    accepted: dict[int, tuple[Ballot, Batch]] = field(default_factory=dict)
    chosen: dict[int, Batch] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.promised is not None or bool(self.accepted) or bool(self.chosen)

    def only_chosen(self) -> bool:
        """Whether these writes are chosen records only (nothing any peer waits for)."""
        return self.promised is None and not self.accepted

    def merge(self, later: "Writes") -> None:
        if later.promised is not None and (self.promised is None or later.promised > self.promised):
            self.promised = later.promised
        self.accepted.update(later.accepted)
        self.chosen.update(later.chosen)


class Pacer:
    """Sizes the steps of a long job (compaction) so that each takes about target_s:
    the step doubles while steps take under a quarter of that, halves past it."""

    def __init__(self, target_s: float, step: int = 1, most: int = 1 << 20) -> None:
        self.target_s, self.step, self.most = target_s, step, most

    def took(self, elapsed_s: float) -> None:
        if elapsed_s < self.target_s / 4:
            self.step = min(self.step * 2, self.most)
        elif elapsed_s > self.target_s:
            self.step = max(self.step // 2, 1)


@dataclass
class DurableState:
    promised: Ballot = ZERO
    accepted: dict[int, tuple[Ballot, Batch]] = field(default_factory=dict)
    chosen: dict[int, Batch] = field(default_factory=dict)


class Storage(Protocol):
    def load(self) -> DurableState: ...

    def save(self, writes: Writes) -> None: ...

    def compact(self, through_slot: int) -> None:
        """Durably drop accepted and chosen records at or below through_slot."""
        ...

    def rebuilding(self) -> int | None:
        """The round this node started rebuilding at after losing its state, if it still is."""
        ...

    def set_rebuilding(self, round_: int | None) -> None: ...

    def genesis(self) -> dict | None:
        """The cluster's initial membership (Membership.to_json), once recorded."""
        ...

    def set_genesis(self, membership: dict) -> None: ...

    def close(self) -> None: ...

    def describe(self) -> dict: ...
