"""Transactions: compare keys, then apply one list of writes or the other, atomically.

A transaction is ONE command (op `txn`) whose value holds, as compact JSON:

    {"if":   [[key, "version", n] | [key, "value", text] | [key, "exists", bool], ...]
             (a fourth element "!=", "<" or ">" compares otherwise than equal),
     "then": [["put", key, value, ttl_ms or null] | ["put", key, value, null, lease]
              | ["delete", key, null, null] | ["get", key, null, null], ...],
     "else": [...]}

The state machine applies it in one step of one slot: every comparison is made
against the state as the slot reaches the command; if all hold, the `then` writes
are applied in order, else the `else` writes. No other command sees a state
between them, on any replica, because each replica does the same at the same
point of the log. Each write is a change of its own (the next revision), so
watches see them one by one, with consecutive revisions. A get in a branch reads
the key as the writes before it in that branch left it (etcd's range in a Txn).

A comparison is equality unless its fourth element says "!=", "<" or ">" (as
etcd's Compare results NOT_EQUAL, LESS, GREATER): a version compares as a
number (0 for an absent key: `version > 0` is "exists"), a value as text in code
point order (UTF-8 byte order); a value comparison of an absent key fails
whatever its operator, as in etcd; `exists` takes "=" and "!=" only. The form
with three elements is the only one nodes from before these operators read, so
equality keeps it.

The result (Result.detail) holds the versions the compared keys had (0: absent)
and, per write applied, (ok, error, version): a delete of a missing key is
(False, "not_found", 0) and changes nothing; the others cannot fail. A get's is
(ok, error, version, value): (False, "not_found", 0, None) for a missing key. The
values the gets return are kept with the result in the client's exactly-once
record (a retry answers the same), so they are bounded in all: a get that would
take them past GETS_CHARS_MAX characters answers (False, "answer_too_large",
version, None) instead. Nodes from before gets cannot apply a transaction with
one.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kvpaxos.core.commands import DELETE, KEY_BYTES_MAX, LEASE_ID_MAX, PUT, TTL_MS_MAX, VALUE_BYTES_MAX, Command

VERSION, VALUE, EXISTS = "version", "value", "exists"
KINDS = (VERSION, VALUE, EXISTS)
EQ, NE, LT, GT = "=", "!=", "<", ">"
CMPS = (EQ, NE, LT, GT)  # how a comparison compares: equal (the default), not equal, less, greater
CONDITIONS_MAX = 64  # comparisons in one transaction
WRITES_MAX = 128  # writes (and gets) in each branch
GET = "get"  # a read in a branch: not a command of its own anywhere else
GETS_CHARS_MAX = VALUE_BYTES_MAX  # characters of values all of a transaction's gets may return


@dataclass(frozen=True, slots=True)
class Txn:
    conditions: tuple[tuple[str, str, Any, str], ...]  # (key, kind, argument, operator)
    then: tuple[Command, ...]
    otherwise: tuple[Command, ...]

    def holds(self, data: dict[str, tuple[str, int]]) -> tuple[bool, tuple[int, ...]]:
        """Whether every comparison holds against data; the compared keys' versions."""
        ok, versions = True, []
        for key, kind, arg, cmp in self.conditions:
            current = data.get(key)
            version = current[1] if current is not None else 0
            versions.append(version)
            if kind == VERSION:
                ok = ok and compare(version, cmp, arg)
            elif kind == VALUE:
                ok = ok and current is not None and compare(current[0], cmp, arg)
            else:
                ok = ok and compare(current is not None, cmp, arg)
        return ok, tuple(versions)


def compare(have: Any, cmp: str, want: Any) -> bool:
    if cmp == EQ:
        return have == want
    if cmp == NE:
        return have != want
    return have < want if cmp == LT else have > want


def encode(conditions: list[tuple], then: list[Command], otherwise: list[Command]) -> str:
    """The command value for a transaction: conditions as (key, kind, argument) or (key,
    kind, argument, operator), the writes as put/delete Commands."""
    def condition(c: tuple) -> list:
        return list(c[:3]) if len(c) == 3 or c[3] == EQ else list(c)

    def writes(cmds: list[Command]) -> list[list]:
        return [[c.op, c.key, c.value, c.ttl_ms] if c.lease is None else [c.op, c.key, c.value, None, c.lease]
                for c in cmds]
    return json.dumps({"if": [condition(c) for c in conditions], "then": writes(then), "else": writes(otherwise)},
                      separators=(",", ":"), ensure_ascii=False)


def operator_fits(kind: str, cmp: Any) -> bool:
    """Whether a comparison of kind may use operator cmp (exists: equal or not only)."""
    return cmp in (EQ, NE) if kind == EXISTS else cmp in CMPS


def decode(text: str | None) -> Txn | None:
    """The transaction a command value holds, or None if it is malformed (checked in
    full: the state machine must never fail on what the log holds)."""
    try:
        doc = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return None
    if not isinstance(doc, dict) or set(doc) != {"if", "then", "else"}:
        return None
    conditions, branches = doc["if"], (doc["then"], doc["else"])
    if not isinstance(conditions, list) or len(conditions) > CONDITIONS_MAX:
        return None
    parsed: list[tuple[str, str, Any, str]] = []
    for c in conditions:
        if not (isinstance(c, list) and len(c) in (3, 4) and _key(c[0]) and c[1] in KINDS):
            return None
        arg, cmp = c[2], c[3] if len(c) == 4 else EQ
        if not ((c[1] == VERSION and type(arg) is int and arg >= 0) or (c[1] == VALUE and type(arg) is str)
                or (c[1] == EXISTS and type(arg) is bool)) or not operator_fits(c[1], cmp):
            return None
        parsed.append((c[0], c[1], arg, cmp))
    out: list[tuple[Command, ...]] = []
    for branch in branches:
        if not isinstance(branch, list) or len(branch) > WRITES_MAX:
            return None
        cmds = []
        for w in branch:
            if not (isinstance(w, list) and len(w) in (4, 5) and w[0] in (PUT, DELETE, GET) and _key(w[1])):
                return None
            op, key, value, ttl_ms = w[:4]
            lease = w[4] if len(w) == 5 else None
            if len(w) == 5 and not (op == PUT and ttl_ms is None and type(lease) is int and 0 < lease <= LEASE_ID_MAX):
                return None
            if op == PUT and (type(value) is not str or not (ttl_ms is None or (type(ttl_ms) is int
                                                                               and 0 < ttl_ms <= TTL_MS_MAX))):
                return None
            if op != PUT and (value is not None or ttl_ms is not None):
                return None
            cmds.append(Command(op, key, value, ttl_ms=ttl_ms, lease=lease))
        out.append(tuple(cmds))
    return Txn(tuple(parsed), out[0], out[1])


def _key(key: Any) -> bool:
    return type(key) is str and 0 < len(key.encode("utf-8", "surrogatepass")) <= KEY_BYTES_MAX


def detail_to_wire(detail: tuple) -> list:
    compared, results = detail
    return [list(compared), [list(r) for r in results]]


def detail_from_wire(x: Any) -> tuple:
    """A transaction's result detail from an exactly-once record; ValueError if malformed."""
    if not (isinstance(x, list) and len(x) == 2 and isinstance(x[0], list) and isinstance(x[1], list)):
        raise ValueError(f"bad transaction result {x!r}")
    if not all(type(v) is int and v >= 0 for v in x[0]):
        raise ValueError(f"bad transaction result {x!r}")
    results = []
    for r in x[1]:  # (ok, error, version), and a get's value
        if not (isinstance(r, list) and len(r) in (3, 4) and type(r[0]) is bool
                and (r[1] is None or type(r[1]) is str) and type(r[2]) is int
                and (len(r) == 3 or r[3] is None or type(r[3]) is str)):
            raise ValueError(f"bad transaction result {x!r}")
        results.append(tuple(r))
    return tuple(x[0]), tuple(results)
