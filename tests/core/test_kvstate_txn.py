"""Transactions in the state machine: comparisons, then one branch of writes, in one
step; each write a change of its own; the result kept for exactly-once retries and in
snapshots; and the wire's checks (kvpaxos/core/txn.py). Then prefix deletes, which
report their deletes the same way."""
from __future__ import annotations

import operator
import random

import pytest

from kvpaxos import snapshot
from kvpaxos.core import codec, txn as txns
from kvpaxos.core.commands import DELETE, DELETE_PREFIX, DELETE_PREFIX_MAX, PUT, TXN, Batch, Command, Result
from kvpaxos.core.kvstate import Export, KVState, import_rows
from kvpaxos.core.codec import WireError


def apply(state: KVState, *cmds: Command, ts_ms: int = 0) -> list[tuple[Command, Result]]:
    return state.apply(state.applied_slot + 1, Batch(cmds, ts_ms))


def put(key: str, value: str = "v", ttl_ms: int | None = None) -> Command:
    return Command(PUT, key, value, ttl_ms=ttl_ms)


def txn(conditions=(), then=(), otherwise=(), **kw) -> Command:  # noqa: ANN001 - lists of tuples / Commands
    return Command(TXN, "t", txns.encode(list(conditions), list(then), list(otherwise)), **kw)


def test_all_comparisons_holding_apply_then_each_write_a_change_of_its_own() -> None:
    s = KVState()
    apply(s, put("a", "1"), put("b", "2"))
    t = txn([("a", "version", 1), ("b", "value", "2"), ("c", "exists", False)],
            [put("a", "x"), Command(DELETE, "b"), put("c", "new", ttl_ms=500), Command(DELETE, "zz")],
            [put("a", "else")])
    out = apply(s, t, put("d"), ts_ms=100)
    assert [(c.op, c.key, c.value, r.version) for c, r in out] == [
        (PUT, "a", "x", 3), (DELETE, "b", None, 4), (PUT, "c", "new", 5),  # the changes, in order ...
        (TXN, "t", t.value, 5), (PUT, "d", "v", 6)]  # ... then the transaction's own result
    result = out[3][1]
    assert result.ok and result.error is None and result.version == 5
    assert result.detail == ((1, 2, 0), ((True, None, 3), (True, None, 4), (True, None, 5), (False, "not_found", 0)))
    assert s.get("a") == ("x", 3) and s.get("b") is None and s.expiry == {"c": 600}


def test_a_comparison_failing_applies_the_other_branch() -> None:
    s = KVState()
    apply(s, put("a", "1"))
    out = apply(s, txn([("a", "version", 7), ("a", "exists", True)], [put("a", "then")], [put("b", "else")]))
    (change, changed), (_, result) = out
    assert (change.key, change.value, changed.version) == ("b", "else", 2)
    assert not result.ok and result.error == "compare_failed" and result.detail == ((1, 1), ((True, None, 2),))
    assert s.get("a") == ("1", 1)
    out = apply(s, txn([("a", "value", "nope")], [put("a", "then")]))  # no else: nothing changes
    assert [(c.op, r.ok, r.version, r.detail) for c, r in out] == [(TXN, False, 2, ((1,), ()))]
    out = apply(s, txn([("gone", "value", "x")]))  # a value comparison of a missing key fails
    assert not out[0][1].ok


def test_a_transaction_without_comparisons_always_applies_then() -> None:
    s = KVState()
    [_, _, (_, result)] = apply(s, txn((), [put("a"), put("b")]))
    assert result.ok and result.version == 2 and s.revision == 2


def test_a_retried_transaction_answers_from_the_exactly_once_record() -> None:
    s = KVState()
    t = txn([("a", "exists", False)], [put("a", "1")], [put("a", "2")], client_id="c", seq=1, cmd_id="x")
    first = apply(s, t)[-1][1]
    again = apply(s, t)  # the same request retried: nothing applied again, the same answer
    assert again == [(t, first)] and s.get("a") == ("1", 1) and s.revision == 1


def test_a_malformed_transaction_changes_nothing() -> None:
    s = KVState()
    apply(s, put("a"))
    for value in ("{", "[]", '{"if": [], "then": []}', '{"if": [["a", "size", 1]], "then": [], "else": []}',
                  '{"if": [], "then": [["put", "a", 5, null]], "else": []}',
                  '{"if": [], "then": [["delete", "a", "v", null]], "else": []}',
                  '{"if": [["a", "version", -1]], "then": [], "else": []}',
                  '{"if": [], "then": [["put", "", "v", null]], "else": []}',
                  '{"if": [["a", "version", 1, "<="]], "then": [], "else": []}',
                  '{"if": [["a", "exists", true, "<"]], "then": [], "else": []}',
                  '{"if": [["a", "value", "v", "!=", 1]], "then": [], "else": []}',
                  '{"if": [], "then": [["get", "a", "v", null]], "else": []}',
                  '{"if": [], "then": [["get", "a", null, 5]], "else": []}'):
        [(_, result)] = apply(s, Command(TXN, "t", value))
        assert result == Result(False, "bad_txn"), value
    assert s.revision == 1


def test_transactions_match_a_brute_force_model() -> None:
    rng = random.Random(11)
    s, model, revision = KVState(), {}, 0  # model: key -> (value, version)
    keys = [f"k{i}" for i in range(6)]
    for step in range(2_000):
        conditions = []
        for key in rng.sample(keys, rng.randrange(3)):
            kind = rng.choice(txns.KINDS)
            current = model.get(key)
            arg = {"version": rng.choice([0, current[1] if current else 0, rng.randrange(1, 50)]),
                   "value": rng.choice(["x", current[0] if current else "y"]),
                   "exists": rng.random() < 0.5}[kind]
            cmp = rng.choice(txns.CMPS[:2] if kind == "exists" else txns.CMPS)
            conditions.append((key, kind, arg) if cmp == "=" and rng.random() < 0.5 else (key, kind, arg, cmp))

        def writes() -> list[Command]:
            return [put(k, f"{step}") if rng.random() < 0.6 else Command(DELETE, k) if rng.random() < 0.6 else
                    Command(txns.GET, k) for k in rng.sample(keys, rng.randrange(4))]
        then, otherwise = writes(), writes()
        out = apply(s, txn(conditions, then, otherwise))
        ops = {"=": operator.eq, "!=": operator.ne, "<": operator.lt, ">": operator.gt}
        holds = all(ops[c[3] if len(c) == 4 else "="](model.get(k, (None, 0))[1], a) if kind == "version" else
                    k in model and ops[c[3] if len(c) == 4 else "="](model[k][0], a) if kind == "value" else
                    ops[c[3] if len(c) == 4 else "="](k in model, a)
                    for c in conditions for k, kind, a in [c[:3]])
        expected, reads = [], []
        for w in then if holds else otherwise:
            if w.op == txns.GET:  # what the writes before it in the branch left
                reads.append((True, None, model[w.key][1], model[w.key][0]) if w.key in model else
                             (False, "not_found", 0, None))
            elif w.op == PUT:
                revision += 1
                model[w.key] = (w.value, revision)
                expected.append((PUT, w.key, revision))
            elif w.key in model:
                revision += 1
                del model[w.key]
                expected.append((DELETE, w.key, revision))
        assert [(c.op, c.key, r.version) for c, r in out[:-1]] == expected
        assert out[-1][1].ok == holds and s.revision == revision
        assert [r for r in out[-1][1].detail[1] if len(r) == 4] == reads
        assert s.data == model


def test_the_exactly_once_record_of_a_transaction_survives_a_snapshot(tmp_path) -> None:
    s = KVState()
    t = txn([("a", "exists", False)], [put("a", "1"), Command(DELETE, "b")], client_id="c", seq=4, cmd_id="x")
    first = apply(s, t, ts_ms=10)[-1][1]
    path = str(tmp_path / "snap")
    snapshot.write(path, s)
    back = snapshot.read(path)
    assert back.sessions["c"].results == [first]
    assert apply(back, t) == [(t, first)]
    export = Export(s)  # and through an export taken while the loop goes on
    apply(s, txn((), [put("a", "2")], client_id="c", seq=5))
    rows, sessions = list(export.rows()), list(export.session_rows())
    export.close()
    assert import_rows(export.header, rows, sessions).sessions["c"].results == [first]


def test_gets_in_a_branch_read_what_the_writes_before_left_and_a_retry_answers_the_same(tmp_path) -> None:
    s = KVState()
    apply(s, put("a", "old"))
    t = txn([("a", "value", "old")], [Command(txns.GET, "a"), put("a", "new"), Command(txns.GET, "a"),
                                      Command(txns.GET, "none")], client_id="c", seq=1, cmd_id="x")
    out = apply(s, t)
    assert [c.op for c, _ in out] == [PUT, TXN]  # a get is no change
    first = out[-1][1]
    assert first.detail[1] == ((True, None, 1, "old"), (True, None, 2), (True, None, 2, "new"),
                               (False, "not_found", 0, None))
    apply(s, put("a", "later"))
    assert apply(s, t) == [(t, first)]  # the retry: the values read then, from the record
    path = str(tmp_path / "snap")
    snapshot.write(path, s)
    assert snapshot.read(path).sessions["c"].results == [first]


def test_the_values_a_transactions_gets_return_are_bounded_in_all() -> None:
    s = KVState()
    half = txns.GETS_CHARS_MAX // 2
    apply(s, put("a", "x" * half), put("b", "y" * half), put("c", "z"))
    [(_, result)] = apply(s, txn((), [Command(txns.GET, k) for k in ("a", "b", "c", "a")]))
    assert [r[:2] for r in result.detail[1]] == [(True, None), (True, None), (False, "answer_too_large"),
                                                 (False, "answer_too_large")]
    assert result.detail[1][2] == (False, "answer_too_large", 3, None)


@pytest.mark.parametrize("record", [[True, None, 3, [[1], [[True, None]]]], [True, None, 3, [[-1], []]],
                                    [True, None, 3, [[1], [[True, None, 3, 5]]]],
                                    [True, None, 3, [[1], [[True, None, 3, "v", 1]]]],
                                    [True, None, 3, "detail"], [True, None, 3, [[1], [[1, None, 3]]]]])
def test_a_snapshot_with_a_bad_transaction_record_is_refused(record) -> None:
    header = {"slot": 1, "revision": 3, "cluster_ms": 0}
    with pytest.raises(ValueError):
        import_rows(header, [], [["c", 1, [record], 0]])


def test_the_wire_carries_a_transaction_and_checks_it() -> None:
    t = txn([("a", "version", 0)], [put("a", "1", ttl_ms=5)], client_id="c", seq=1, cmd_id="x")
    assert codec.command_from_wire(codec.command_to_wire(t)) == t
    for bad in (["txn", "t", None, None, None, None, 0, "x", 0],  # no value
                ["txn", "t", "{}", "v", None, None, 0, "x", 0],  # a precondition
                ["txn", "t", "{}", None, 3, None, 0, "x", 0],
                ["txn", "t", "{}", None, None, None, 0, "x", 0, 500]):  # a ttl of its own
        with pytest.raises(WireError):
            codec.command_from_wire(bad)


# -- deleting every key under a prefix ------------------------------------------------------

def delete_prefix(prefix: str, limit: int = 1000) -> Command:
    return Command(DELETE_PREFIX, prefix, str(limit))


def test_a_prefix_delete_deletes_the_first_keys_in_order_each_a_change() -> None:
    s = KVState()
    apply(s, put("a/1"), put("a/2"), put("a/3"), put("ab"), put("b/1"), put("a", ttl_ms=50))
    out = apply(s, delete_prefix("a/", 2), put("a/9"))
    assert [(c.op, c.key, r.version) for c, r in out] == [
        (DELETE, "a/1", 7), (DELETE, "a/2", 8), (DELETE_PREFIX, "a/", 8), (PUT, "a/9", 9)]
    result = out[2][1]
    assert result.ok and result.error == "more" and result.value == "2"
    [(_, _), (_, _), (_, last)] = apply(s, delete_prefix("a/"))  # a/3 and a/9: none left
    assert last.ok and last.error is None and last.value == "2"
    assert sorted(s.data) == ["a", "ab", "b/1"] and s.expiry == {"a": 50}
    [(_, nothing)] = apply(s, delete_prefix("zz/"))
    assert nothing == Result(True, None, s.revision, value="0")
    out = apply(s, delete_prefix(""))  # every key
    assert [c.key for c, _ in out[:-1]] == ["a", "ab", "b/1"] and s.data == {} and s.expiry == {}


def test_a_prefix_delete_with_a_client_or_a_bad_limit_changes_nothing() -> None:
    s = KVState()
    apply(s, put("a/1"))
    for cmd in (Command(DELETE_PREFIX, "a/", "5", client_id="c", seq=1), Command(DELETE_PREFIX, "a/", "0"),
                Command(DELETE_PREFIX, "a/", "²"), Command(DELETE_PREFIX, "a/", None),
                Command(DELETE_PREFIX, "a/", str(DELETE_PREFIX_MAX + 1))):
        assert apply(s, cmd)[-1][1] == Result(False, "bad_command"), cmd
    assert s.get("a/1") == ("v", 1)


def test_the_wire_checks_a_prefix_delete() -> None:
    cmd = delete_prefix("a/", 500)
    assert codec.command_from_wire(codec.command_to_wire(cmd)) == cmd
    for bad in (["delete_prefix", "a/", None, None, None, None, 0, "x", 0],
                ["delete_prefix", "a/", "0", None, None, None, 0, "x", 0],
                ["delete_prefix", "a/", "x", None, None, None, 0, "x", 0],
                ["delete_prefix", "a/", "5", None, None, "client", 1, "x", 0],
                ["delete_prefix", "a/", "5", "v", None, None, 0, "x", 0],
                ["delete_prefix", "a/", str(DELETE_PREFIX_MAX + 1), None, None, None, 0, "x", 0]):
        with pytest.raises(WireError):
            codec.command_from_wire(bad)


def test_comparisons_other_than_equality() -> None:
    """!=, < and > on versions (0 for absent) and values (code point order); a value
    comparison of an absent key fails whatever its operator; exists != is its negation.
    Equality keeps the three-element form older nodes read."""
    s = KVState()
    apply(s, put("a", "m"), put("b", "m"))  # a at version 1, b at 2

    def holds(*conditions: tuple) -> bool:
        return apply(s, txn(conditions))[-1][1].ok

    assert holds(("a", "version", 2, "<"), ("b", "version", 1, ">"), ("a", "version", 2, "!="))
    assert not holds(("a", "version", 1, "<")) and not holds(("a", "version", 1, "!="))
    assert holds(("gone", "version", 0, "=")) and not holds(("gone", "version", 0, ">"))
    assert holds(("a", "value", "n", "<"), ("a", "value", "l", ">"), ("a", "value", "x", "!="))
    assert holds(("a", "value", "\u00e9", "<"))  # code point order, as UTF-8 bytes sort
    for cmp in txns.CMPS:
        assert not holds(("gone", "value", "x", cmp))
    assert holds(("gone", "exists", True, "!="), ("a", "exists", False, "!="))
    assert txns.encode([("a", "version", 1, "=")], [], []) == txns.encode([("a", "version", 1)], [], [])
    assert '["a","version",1,"<"]' in txns.encode([("a", "version", 1, "<")], [], [])
