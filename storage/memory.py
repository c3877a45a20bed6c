"""In-memory storage for tests: same contract as SqliteStorage, nothing on disk."""
from __future__ import annotations

from storage.base import DurableState, Writes


class MemoryStorage:
    def __init__(self) -> None:
        self.state = DurableState()
        self.saves = 0

    def load(self) -> DurableState:
        s = self.state
        return DurableState(s.promised, dict(s.accepted), dict(s.chosen))

    def save(self, writes: Writes) -> None:
        if writes.promised is not None and writes.promised > self.state.promised:
            self.state.promised = writes.promised
        self.state.accepted.update(writes.accepted)
        self.state.chosen.update(writes.chosen)
        self.saves += 1

    def close(self) -> None:
        pass

    def describe(self) -> dict:
        return {"engine": "memory"}
