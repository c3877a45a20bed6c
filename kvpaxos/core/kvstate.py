"""The replicated key-value state machine: deterministic, applied slot by slot.

Owns the map key -> (value, version), the revision counter (every change gets
the next revision, which becomes the key's version, so versions only grow, even
across delete and re-create), the cluster clock (the highest leader timestamp
seen in applied batches) and the exactly-once table.

Exactly-once rule: a command with a client id and sequence number n is applied
only if n is above the client's last applied number; a repeat of the last number
gets the recorded result again; an older one gets `stale_sequence`. A client's
record expires when the cluster clock passes its last use by session_ttl_ms
(10 minutes by default): all replicas expire it at the same slot because the
clock is part of the log.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from kvpaxos.core.commands import DELETE, PUT, Batch, Command, Result

SESSION_TTL_MS = 10 * 60 * 1000


@dataclass
class Session:
    seq: int
    result: Result
    last_ms: int


class KVState:
    def __init__(self, session_ttl_ms: int = SESSION_TTL_MS) -> None:
        self.data: dict[str, tuple[str, int]] = {}
        self.revision = 0
        self.applied_slot = 0
        self.cluster_ms = 0
        self.session_ttl_ms = session_ttl_ms
        self.sessions: OrderedDict[str, Session] = OrderedDict()

    def apply(self, slot: int, batch: Batch) -> list[tuple[Command, Result]]:
        assert slot == self.applied_slot + 1, f"slot {slot} applied out of order after {self.applied_slot}"
        self.applied_slot = slot
        self.cluster_ms = max(self.cluster_ms, batch.ts_ms)
        self._expire_sessions()
        return [(cmd, self._apply_once(cmd)) for cmd in batch.commands]

    def get(self, key: str) -> tuple[str, int] | None:
        return self.data.get(key)

    def scan(self, prefix: str, limit: int) -> tuple[list[tuple[str, str, int]], bool]:
        keys = sorted(k for k in self.data if k.startswith(prefix))
        return [(k, *self.data[k]) for k in keys[:limit]], len(keys) > limit

    def _apply_once(self, cmd: Command) -> Result:
        if cmd.client_id is None:
            return self._execute(cmd)
        session = self.sessions.get(cmd.client_id)
        if session is not None and cmd.seq <= session.seq:
            if cmd.seq == session.seq:
                return session.result
            return Result(False, "stale_sequence")
        result = self._execute(cmd)
        self.sessions[cmd.client_id] = Session(cmd.seq, result, self.cluster_ms)
        self.sessions.move_to_end(cmd.client_id)
        return result

    def _expire_sessions(self) -> None:
        horizon = self.cluster_ms - self.session_ttl_ms
        while self.sessions:
            client_id, session = next(iter(self.sessions.items()))
            if session.last_ms >= horizon:
                break
            del self.sessions[client_id]

    def _execute(self, cmd: Command) -> Result:
        current = self.data.get(cmd.key)
        version = current[1] if current else 0
        if cmd.if_version is not None and cmd.if_version != version:
            return Result(False, "precondition_failed", version=version)
        if cmd.if_value is not None and (current is None or current[0] != cmd.if_value):
            return Result(False, "precondition_failed", version=version)
        if cmd.op == PUT:
            assert cmd.value is not None
            self.revision += 1
            self.data[cmd.key] = (cmd.value, self.revision)
            return Result(True, version=self.revision)
        assert cmd.op == DELETE
        if current is None:
            return Result(False, "not_found")
        self.revision += 1
        del self.data[cmd.key]
        return Result(True, version=self.revision)
