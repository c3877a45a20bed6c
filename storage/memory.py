"""In-memory storage for tests: same contract as SqliteStorage, nothing on disk."""
from __future__ import annotations

from storage.base import DurableState, Writes


class MemoryStorage:
    def __init__(self) -> None:
        self.state = DurableState()
        self.saves = 0
        self.rebuild_round: int | None = None
        self.initial: dict | None = None

    def load(self) -> DurableState:
        s = self.state
        return DurableState(s.promised, dict(s.accepted), dict(s.chosen))

    def save(self, writes: Writes) -> None:
        if writes.promised is not None and writes.promised > self.state.promised:
            self.state.promised = writes.promised
        self.state.accepted.update(writes.accepted)
        self.state.chosen.update(writes.chosen)
        self.saves += 1

    def compact(self, through_slot: int) -> None:
        st = self.state
        st.accepted = {s: v for s, v in st.accepted.items() if s > through_slot}
        st.chosen = {s: v for s, v in st.chosen.items() if s > through_slot}

    def rebuilding(self) -> int | None:
        return self.rebuild_round

    def set_rebuilding(self, round_: int | None) -> None:
        self.rebuild_round = round_

    def genesis(self) -> dict | None:
        return self.initial

    def set_genesis(self, membership: dict) -> None:
        self.initial = membership

    def close(self) -> None:
        pass

    def describe(self) -> dict:
        return {"engine": "memory"}
