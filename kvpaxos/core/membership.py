"""Cluster membership as replicated state: which nodes vote on which slot.

The configuration (voters, learners and their addresses) changes only through
commands chosen in the log, like any write:
  member_add(id, address)  adds a learner: it follows the log, never votes (an
                           address another member has is refused);
  member_promote(id)       makes a learner a voter (the leader sends it once
                           the learner has caught up);
  member_remove(id)        removes a voter or a learner; the id is never
                           accepted again, so a node that forgot its promises
                           can never come back under an old name.

Lamport's alpha rule: a change chosen in slot s governs slots s + alpha
onwards, so the configuration of slot i is a function of the log up to
i - alpha. A leader proposes slot i only once it knows every chosen value up
to i - alpha; it therefore always knows which acceptors decide each slot it
proposes, and every slot stays an ordinary single-decree Paxos instance over
one fixed set of acceptors. No two configurations ever decide the same slot,
so no joint majorities are needed; alpha equals the leader's pipeline depth
(window_slots), which it bounds anyway.

At most one change is in flight: a change chosen before the previous one
governs the next slot fails with `change_in_progress`. Every replica applies
the same commands in the same order, so all agree on every result.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from typing import Any, Iterable

from kvpaxos.core.commands import Batch, Command, Result

MEMBER_ADD = "member_add"
MEMBER_PROMOTE = "member_promote"
MEMBER_REMOVE = "member_remove"
MEMBER_OPS = (MEMBER_ADD, MEMBER_PROMOTE, MEMBER_REMOVE)
HISTORY_MAX = 32  # changes kept for display; only the last two ever govern open slots
ADDRESS_CHARS_MAX = 255


@dataclass(frozen=True, slots=True)
class Config:
    voters: tuple[int, ...]
    learners: tuple[int, ...] = ()
    addresses: tuple[tuple[int, str], ...] = ()  # (id, "host:port") for every member

    @property
    def members(self) -> tuple[int, ...]:
        return tuple(sorted(self.voters + self.learners))

    @property
    def quorum(self) -> int:
        return len(self.voters) // 2 + 1

    def is_quorum(self, ids: Iterable[int]) -> bool:
        """Whether `ids` include a majority of this configuration's voters."""
        return len(set(ids).intersection(self.voters)) >= self.quorum

    def address(self, node_id: int) -> str | None:
        return dict(self.addresses).get(node_id)


@dataclass(frozen=True, slots=True)
class Change:
    slot: int        # the slot the change was chosen in (0: the initial configuration)
    effective: int   # the first slot the new configuration governs
    config: Config
    what: str        # "initial", "add 4", "promote 4", "remove 2"


@dataclass(frozen=True)
class Membership:
    alpha: int
    history: tuple[Change, ...]  # oldest first; the last may not govern any slot yet
    removed: tuple[int, ...] = ()

    @classmethod
    def initial(cls, voters: Iterable[int], alpha: int,
                addresses: dict[int, str] | None = None) -> "Membership":
        ids = tuple(sorted(voters))
        assert ids and alpha >= 1
        addr = tuple(sorted((addresses or {}).items()))
        return cls(alpha, (Change(0, 1, Config(ids, (), addr), "initial"),))

    # -- views ----------------------------------------------------------------

    @property
    def latest(self) -> Config:
        return self.history[-1].config

    def at(self, slot: int) -> Config:
        """The configuration governing `slot` (known for slots up to chosen_through + alpha)."""
        for change in reversed(self.history):
            if change.effective <= slot:
                return change.config
        return self.history[0].config

    def between(self, lo: int, hi: int) -> list[Config]:
        """The distinct configurations governing slots lo..hi, oldest first."""
        out = [self.at(lo)]
        for change in self.history:
            if lo < change.effective <= hi and change.config != out[-1]:
                out.append(change.config)
        return out

    def genesis(self) -> "Membership | None":
        """The configuration the log began with, while the history still holds it."""
        first = self.history[0]
        return Membership(self.alpha, (first,)) if first.slot == 0 else None

    def identity(self) -> str:
        """A digest of this membership's voters, learners and alpha, on which every majority
        it counts depends. Of a genesis it names the cluster: nodes of one cluster began their
        log from the same one. Addresses are left out: behind proxies or NAT, peers may each
        reach a node at another address."""
        doc = self.to_json()
        for change in doc["history"]:
            del change["addresses"]
        text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def settled(self, next_slot: int) -> bool:
        """Whether the latest configuration already governs `next_slot` (no change in flight)."""
        return self.history[-1].effective <= next_slot

    # -- changes --------------------------------------------------------------

    def apply(self, slot: int, batch: Batch) -> tuple["Membership", list[tuple[Command, Result]]]:
        """The membership after chosen `slot`, and the results of its member commands."""
        results: list[tuple[Command, Result]] = []
        current = self
        for cmd in batch.commands:
            if cmd.op in MEMBER_OPS:
                current, result = current._change(slot, cmd)
                results.append((cmd, result))
        return current, results

    def _change(self, slot: int, cmd: Command) -> tuple["Membership", Result]:
        node = int(cmd.key) if cmd.key.isdigit() and len(cmd.key) < 10 else 0
        if node < 1:
            return self, Result(False, "bad_member_id")
        if self.history[-1].effective > slot:
            return self, Result(False, "change_in_progress")
        cfg = self.latest
        addresses = dict(cfg.addresses)
        if cmd.op == MEMBER_ADD:
            if node in self.removed:
                return self, Result(False, "id_reused")
            if not _valid_address(cmd.value):
                return self, Result(False, "bad_address")
            if node in cfg.voters or node in cfg.learners:
                same = addresses.get(node) == cmd.value
                return self, Result(same, None if same else "already_member")
            if cmd.value in addresses.values():
                return self, Result(False, "address_in_use")  # two members cannot share one
            addresses[node] = cmd.value  # type: ignore[assignment]
            new = Config(cfg.voters, tuple(sorted(cfg.learners + (node,))), tuple(sorted(addresses.items())))
            return self._with(slot, new, f"add {node}"), Result(True)
        if cmd.op == MEMBER_PROMOTE:
            if node in cfg.voters:
                return self, Result(True)
            if node not in cfg.learners:
                return self, Result(False, "not_a_learner")
            new = Config(tuple(sorted(cfg.voters + (node,))),
                         tuple(p for p in cfg.learners if p != node), cfg.addresses)
            return self._with(slot, new, f"promote {node}"), Result(True)
        if node in self.removed:
            return self, Result(True)  # removing twice is a no-op, so retries are safe
        if node not in cfg.voters and node not in cfg.learners:
            return self, Result(False, "not_a_member")
        if cfg.voters == (node,):
            return self, Result(False, "last_voter")
        addresses.pop(node, None)
        new = Config(tuple(p for p in cfg.voters if p != node), tuple(p for p in cfg.learners if p != node),
                     tuple(sorted(addresses.items())))
        changed = self._with(slot, new, f"remove {node}")
        return replace(changed, removed=tuple(sorted(self.removed + (node,)))), Result(True)

    def _with(self, slot: int, config: Config, what: str) -> "Membership":
        history = (*self.history, Change(slot, slot + self.alpha, config, what))
        return replace(self, history=history[-HISTORY_MAX:])

    # -- encoding (snapshots, /v1/members, the joining node) -------------------

    def to_json(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "removed": list(self.removed), "history": [
            {"slot": c.slot, "effective": c.effective, "what": c.what, "voters": list(c.config.voters),
             "learners": list(c.config.learners),
             "addresses": {str(i): a for i, a in c.config.addresses}} for c in self.history]}

    @classmethod
    def from_json(cls, x: Any) -> "Membership":
        """Decode to_json output; ValueError on anything malformed."""
        try:
            alpha = _pos(x["alpha"])
            removed = tuple(sorted(_pos(i) for i in x["removed"]))
            history = []
            for c in x["history"]:
                voters = tuple(sorted(_pos(i) for i in c["voters"]))
                learners = tuple(sorted(_pos(i) for i in c["learners"]))
                addresses = tuple(sorted((_pos(int(i)), a) for i, a in c["addresses"].items()
                                         if _valid_address(a)))
                if not voters or set(voters) & set(learners):
                    raise ValueError("a configuration needs voters, each a voter or a learner")
                history.append(Change(_int(c["slot"]), _pos(c["effective"]),
                                      Config(voters, learners, addresses), str(c["what"])))
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"malformed membership: {e!r}") from None
        if not history or any(a.effective > b.effective for a, b in zip(history, history[1:])):
            raise ValueError("malformed membership: history out of order")
        return cls(alpha, tuple(history), removed)


def _valid_address(a: Any) -> bool:
    if type(a) is not str or not 0 < len(a) <= ADDRESS_CHARS_MAX:
        return False
    host, colon, port = a.rpartition(":")
    return bool(colon and host and port.isdigit() and 0 < int(port) < 65536
                and not any(ch in host for ch in " /,=@\\"))


def _int(x: Any) -> int:
    if type(x) is not int or x < 0:
        raise ValueError(f"expected a non-negative integer, got {x!r}")
    return x


def _pos(x: Any) -> int:
    if _int(x) < 1:
        raise ValueError(f"expected a positive integer, got {x!r}")
    return x
