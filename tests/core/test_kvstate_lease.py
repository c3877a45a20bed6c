"""Leases: grant, keepalive and revoke through the log, keys attached to a lease,
and a lease's end (its deadline by the cluster clock, or a revoke) deleting all its
keys in one slot, the same on every replica; snapshots and the wire. The whole
system's lease behaviour: tests/integration/test_lease.py and the simulation."""
from __future__ import annotations

import random

import pytest

from kvpaxos import snapshot
from kvpaxos.core import codec
from kvpaxos.core import txn as txns
from kvpaxos.core.commands import (DELETE, LEASE_GRANT, LEASE_ID_MAX, LEASE_KEEPALIVE, LEASE_KEYS_MAX, LEASE_REVOKE,
                                   PUT, REFRESH, TXN, Batch, Command, Result)
from kvpaxos.core.kvstate import EXPIRE_PER_SLOT, Export, KVState, import_rows, result_from_wire, result_to_wire


def apply(state: KVState, ts_ms: int, *cmds: Command) -> list[tuple[Command, Result]]:
    return state.apply(state.applied_slot + 1, Batch(cmds, ts_ms))


def grant(ttl_ms: int, lease_id: int = 0, **kw) -> Command:
    return Command(LEASE_GRANT, str(lease_id), ttl_ms=ttl_ms, **kw)


def keepalive(lease_id: int, **kw) -> Command:
    return Command(LEASE_KEEPALIVE, str(lease_id), **kw)


def revoke(lease_id: int, **kw) -> Command:
    return Command(LEASE_REVOKE, str(lease_id), **kw)


def put(key: str, value: str = "v", lease: int | None = None, **kw) -> Command:
    return Command(PUT, key, value, lease=lease, **kw)


def granted(state: KVState, ts_ms: int, ttl_ms: int, lease_id: int = 0) -> int:
    [(_, result)] = apply(state, ts_ms, grant(ttl_ms, lease_id))
    assert result.ok, result
    return int(result.value)


def test_a_grant_makes_a_lease_with_the_next_id_and_no_change() -> None:
    s = KVState()
    assert granted(s, 1_000, 500) == 1 and granted(s, 1_000, 500) == 2
    assert s.revision == 0  # no key changed: nothing for watches
    assert s.leases[1].deadline == 1_500 and s.next_deadline() == 1_500
    assert granted(s, 1_000, 500, lease_id=10) == 10 and granted(s, 1_000, 500) == 11


def test_an_id_is_granted_once_only() -> None:
    s = KVState()
    granted(s, 0, 100, lease_id=5)
    [(_, again)] = apply(s, 0, grant(100, 5))
    [(_, below)] = apply(s, 0, grant(100, 3))  # never granted, but below one that was
    assert again == Result(False, "lease_exists") and below == Result(False, "lease_exists")
    apply(s, 0, revoke(5))
    [(_, revoked)] = apply(s, 0, grant(100, 5))
    assert revoked == Result(False, "lease_exists") and granted(s, 0, 100) == 6


def test_a_lease_ends_at_its_deadline_with_all_its_keys_in_one_slot() -> None:
    s = KVState()
    lease = granted(s, 1_000, 500)
    apply(s, 1_100, put("b", lease=lease), put("a", lease=lease), put("other"))
    assert s.key_lease == {"a": lease, "b": lease} and s.leases[lease].keys == {"a", "b"}
    assert apply(s, 1_499) == []
    out = apply(s, 1_500, put("c"))
    # Its keys in key order, each a delete of its own (the next revisions), before the slot's commands.
    assert [(c.op, c.key, c.client_id, r.version) for c, r in out] == [
        (DELETE, "a", None, 4), (DELETE, "b", None, 5), (PUT, "c", None, 6)]
    assert s.leases == {} and s.key_lease == {} and s.next_deadline() is None
    assert s.last_leases_expired == 1 and s.last_expired == 2
    assert sorted(s.data) == ["c", "other"]


def test_a_keepalive_moves_the_deadline_by_the_lease_ttl_from_its_slot() -> None:
    s = KVState()
    lease = granted(s, 0, 100)
    apply(s, 0, put("a", lease=lease))
    [(_, result)] = apply(s, 90, keepalive(lease))
    assert result == Result(True, version=1, value="100") and s.leases[lease].deadline == 190
    assert apply(s, 150) == [] and s.get("a") == ("v", 1)
    assert [c.key for c, _ in apply(s, 190)] == ["a"]
    [(_, late)] = apply(s, 200, keepalive(lease))
    assert late == Result(False, "lease_not_found")


def test_a_revoke_deletes_the_keys_now_as_the_commands_changes() -> None:
    s = KVState()
    lease = granted(s, 0, 10_000)
    apply(s, 0, put("a", lease=lease), put("b", lease=lease))
    out = apply(s, 5, revoke(lease, client_id="c", seq=1))
    assert [(c.op, c.key) for c, _ in out] == [(DELETE, "a"), (DELETE, "b"), (LEASE_REVOKE, str(lease))]
    assert out[-1][1] == Result(True, version=4, value="2")
    assert s.data == {} and s.leases == {} and s.next_deadline() is None
    [(_, twice)] = apply(s, 6, revoke(lease))
    assert twice == Result(False, "lease_not_found")


def test_a_new_leaders_first_slot_starts_every_leases_ttl_again() -> None:
    s = KVState()
    short, long = granted(s, 0, 100), granted(s, 0, 10_000)
    apply(s, 0, put("a", lease=short), put("t", ttl_ms=100))
    # No leader for a while: the next slot is a new leader's barrier, stamped at 500,
    # past the short lease's deadline. Every lease lives on, a ttl from then; a key's own
    # ttl gets no such grace.
    out = s.apply(s.applied_slot + 1, Batch((), 500, lead=True))
    assert [c.key for c, _ in out] == ["t"]
    assert s.leases[short].deadline == 600 and s.leases[long].deadline == 10_500 and s.get("a") is not None
    assert s.next_deadline() == 600
    assert [c.key for c, _ in apply(s, 600)] == ["a"] and short not in s.leases
    plain = apply(s, 20_000)  # an ordinary slot late: the long lease ends
    assert long not in s.leases and plain == []


def test_a_put_moves_its_key_between_leases_and_off_them() -> None:
    s = KVState()
    one, two = granted(s, 0, 100), granted(s, 0, 1_000)
    apply(s, 0, put("a", lease=one))
    apply(s, 0, put("a", "x", lease=two))
    assert s.key_lease == {"a": two} and s.leases[one].keys == set()
    assert [c.key for c, _ in apply(s, 100)] == []  # lease one ends with nothing to delete
    assert one not in s.leases and s.get("a") == ("x", 2)
    apply(s, 100, put("a", "plain"))  # a put without a lease detaches the key
    assert s.key_lease == {} and s.leases[two].keys == set()
    apply(s, 100, put("b", lease=two), Command(DELETE, "b"))
    assert s.leases[two].keys == set() and s.key_lease == {}
    apply(s, 100, put("c", lease=two), put("c", "t", ttl_ms=50))  # a ttl of its own detaches it too
    assert s.key_lease == {} and s.expiry == {"c": 150}
    apply(s, 100, put("c", "l", lease=two))  # and a lease ends its own ttl
    assert s.expiry == {} and s.key_lease == {"c": two}


def test_a_put_to_a_missing_or_full_lease_changes_nothing() -> None:
    s = KVState()
    [(_, missing)] = apply(s, 0, put("a", lease=9))
    assert missing == Result(False, "lease_not_found") and s.data == {} and s.revision == 0
    lease = granted(s, 0, 100)
    s.leases[lease].keys.update(f"x{i}" for i in range(LEASE_KEYS_MAX))  # full, as far as the check goes
    [(_, full)] = apply(s, 0, put("a", lease=lease))
    assert full == Result(False, "lease_full") and "a" not in s.data


def test_a_refresh_of_a_key_on_a_lease_is_refused() -> None:
    s = KVState()
    lease = granted(s, 0, 100)
    apply(s, 0, put("a", lease=lease))
    [(_, result)] = apply(s, 0, Command(REFRESH, "a", ttl_ms=5_000))
    assert result == Result(False, "key_has_lease", version=1) and s.expiry == {}


def test_a_transaction_puts_keys_on_a_lease() -> None:
    s = KVState()
    lease = granted(s, 0, 100)
    value = txns.encode([], [put("a", lease=lease), put("b", lease=lease + 1)], [])
    [*_, (_, result)] = apply(s, 0, Command(TXN, "a", value))
    assert result.detail[1] == ((True, None, 1), (False, "lease_not_found", 0))
    assert s.key_lease == {"a": lease}
    assert txns.decode(value).then[0].lease == lease


def test_many_leases_due_at_once_end_over_several_slots() -> None:
    s = KVState()
    ids = [granted(s, 0, 10) for _ in range(EXPIRE_PER_SLOT + 5)]
    apply(s, 0, *(put(f"k{i}", lease=i) for i in ids[:3]))
    apply(s, 10)
    first = s.last_leases_expired
    assert 0 < first < len(ids) and s.next_deadline() == 10  # still due: the leader nudges again
    while s.next_deadline() is not None:
        apply(s, 10)
    assert s.leases == {} and s.data == {}


def test_keepalives_keep_the_deadline_heap_bounded() -> None:
    s = KVState()
    lease = granted(s, 0, 1_000_000)
    for i in range(5_000):
        apply(s, i, keepalive(lease))
    assert len(s._lease_deadlines) <= 2 * 1 + 65 and s.next_deadline() == 4_999 + 1_000_000


def test_the_id_of_a_retried_grant_comes_from_the_exactly_once_record_even_after_a_snapshot(tmp_path) -> None:
    s = KVState()
    apply(s, 0, grant(100, client_id="c", seq=1))
    path = str(tmp_path / "snap")
    snapshot.write(path, s)
    back = snapshot.read(path)
    [(_, again)] = apply(back, 0, grant(100, client_id="c", seq=1))
    assert again == Result(True, version=0, value="1") and list(back.leases) == [1]
    assert result_from_wire(result_to_wire(again)) == again


def test_leases_matches_a_brute_force_model() -> None:
    rng = random.Random(11)
    s, clock = KVState(), 0
    leases: dict[int, list] = {}  # id -> [ttl, deadline]
    data: dict[str, tuple[str, int | None]] = {}  # key -> (value, lease)
    last = 0
    for step in range(4_000):
        clock += rng.randrange(3)
        for lid in sorted(leases, key=lambda i: (leases[i][1], i)):
            if leases[lid][1] <= clock:
                del leases[lid]
                data = {k: v for k, v in data.items() if v[1] != lid}
        roll, key, lid = rng.random(), f"k{rng.randrange(15)}", 1 + rng.randrange(last + 2)
        if roll < 0.1:
            cmd = grant(1 + rng.randrange(40))
        elif roll < 0.2:
            cmd = keepalive(lid)
        elif roll < 0.25:
            cmd = revoke(lid)
        elif roll < 0.35:
            cmd = Command(DELETE, key)
        else:
            cmd = put(key, str(step), lease=lid if rng.random() < 0.7 else None)
        apply(s, clock, cmd)
        if cmd.op == LEASE_GRANT:
            last += 1
            leases[last] = [cmd.ttl_ms, clock + cmd.ttl_ms]
        elif cmd.op == LEASE_KEEPALIVE and lid in leases:
            leases[lid][1] = clock + leases[lid][0]
        elif cmd.op == LEASE_REVOKE and lid in leases:
            del leases[lid]
            data = {k: v for k, v in data.items() if v[1] != lid}
        elif cmd.op == DELETE:
            data.pop(key, None)
        elif cmd.op == PUT and (cmd.lease is None or cmd.lease in leases):
            data[key] = (cmd.value, cmd.lease)
        assert {k: v for k, (v, _) in s.data.items()} == {k: v for k, (v, _) in data.items()}, step
        assert s.key_lease == {k: lease for k, (_, lease) in data.items() if lease is not None}
        assert {i: lease.deadline for i, lease in s.leases.items()} == {i: d for i, (_, d) in leases.items()}
        assert all(s.key_lease[k] == i for i, lease in s.leases.items() for k in lease.keys)


def test_a_snapshot_keeps_the_leases_their_keys_and_the_last_id(tmp_path) -> None:
    s = KVState()
    one, two = granted(s, 100, 1_000), granted(s, 100, 50)
    apply(s, 100, put("a", lease=one), put("b", lease=one), put("c"))
    apply(s, 100, revoke(two))
    path = str(tmp_path / "snap")
    snapshot.write(path, s)
    back = snapshot.read(path)
    assert back.key_lease == {"a": one, "b": one} and back.lease_last == 2 and list(back.leases) == [one]
    assert back.leases[one].deadline == 1_100 and back.next_deadline() == 1_100
    assert granted(back, 200, 10) == 3  # not 2 again: the last id came with the snapshot
    assert [c.key for c, _ in apply(back, 1_100)] == ["a", "b"]


def test_an_export_holds_the_leases_of_its_slot() -> None:
    s = KVState()
    lease = granted(s, 0, 100)
    apply(s, 0, put("a", lease=lease))
    export = Export(s)
    apply(s, 10, revoke(lease), put("b", lease=None))
    rows, sessions = list(export.rows()), list(export.session_rows())
    export.close()
    back = import_rows(export.header, rows, sessions)
    assert back.key_lease == {"a": lease} and back.get("a") == ("v", 1)


@pytest.mark.parametrize("leases", [
    [[1, 100, 5, ["gone"]]],  # a key the snapshot does not hold
    [[1, 100, 5, ["a"]], [2, 100, 5, ["a"]]],  # one key on two leases
    [[3, 100, 5, []]],  # an id above the last granted
    [[1, 0, 5, []]],  # no time to live
    [[1, 100, "soon", []]],
    {"1": [100, 5, []]},
])
def test_a_snapshot_with_a_bad_lease_record_is_refused(leases) -> None:
    header = {"slot": 1, "revision": 2, "cluster_ms": 0, "lease_last": 2, "leases": leases}
    with pytest.raises(ValueError):
        import_rows(header, [["a", "v", 1]], [])


def test_the_wire_of_leases() -> None:
    assert codec.batch_from_wire(codec.batch_to_wire(Batch((), 5, lead=True))) == Batch((), 5, lead=True)
    assert "lead" not in codec.batch_to_wire(Batch((), 5))  # what a log written before reads back as
    with pytest.raises(codec.WireError):
        codec.batch_from_wire({"c": [], "ts": 5, "lead": 1})
    plain, leased = put("a"), put("a", lease=7)
    assert len(codec.command_to_wire(plain)) == 9  # what a log written before reads back as
    assert codec.command_to_wire(leased)[9:] == [None, 7]
    for cmd in (leased, grant(100), grant(100, 5), keepalive(5), revoke(5)):
        assert codec.command_from_wire(codec.command_to_wire(cmd)) == cmd
    bad = [
        [*codec.command_to_wire(plain), 100, 7],  # a lease beside a ttl
        [*codec.command_to_wire(Command(DELETE, "a")), None, 7],  # a lease is for a put
        [*codec.command_to_wire(plain), None, 0],
        [*codec.command_to_wire(plain), None, LEASE_ID_MAX + 1],
        codec.command_to_wire(Command(LEASE_GRANT, "1")),  # a grant without a ttl
        codec.command_to_wire(Command(LEASE_KEEPALIVE, "1", ttl_ms=5)),  # a keepalive with one
        codec.command_to_wire(Command(LEASE_REVOKE, "one")),
        codec.command_to_wire(Command(LEASE_REVOKE, "1", "value")),
        codec.command_to_wire(Command(LEASE_REVOKE, str(LEASE_ID_MAX + 1))),
    ]
    for wire in bad:
        with pytest.raises(codec.WireError):
            codec.command_from_wire(wire)
