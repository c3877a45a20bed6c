"""Keys with a time to live: deadlines by the cluster clock, expiry as a change of
its own at the same slot on every replica, and snapshots. The leader's empty slot
that carries its clock into the log when no one writes: tests/core/test_replica.py
(and the simulation's invariant (f))."""
from __future__ import annotations

import random

import pytest

from kvpaxos import snapshot
from kvpaxos.core.commands import DELETE, PUT, REFRESH, Batch, Command, Result
from kvpaxos.core.kvstate import EXPIRE_PER_SLOT, Export, KVState, import_rows


def apply(state: KVState, ts_ms: int, *cmds: Command) -> list[tuple[Command, Result]]:
    return state.apply(state.applied_slot + 1, Batch(cmds, ts_ms))


def put(key: str, value: str = "v", ttl_ms: int | None = None, **kw) -> Command:
    return Command(PUT, key, value, ttl_ms=ttl_ms, **kw)


def test_a_key_expires_at_the_first_slot_whose_clock_reaches_its_deadline() -> None:
    s = KVState()
    apply(s, 1_000, put("a", ttl_ms=500))
    assert s.expiry == {"a": 1_500} and s.next_deadline() == 1_500
    assert apply(s, 1_499) == []  # the clock short of the deadline: nothing happens
    assert s.get("a") == ("v", 1)
    [(cmd, result)] = apply(s, 1_500)
    assert (cmd.op, cmd.key, cmd.client_id) == (DELETE, "a", None)
    assert result == Result(True, version=2)  # a change of its own: the next revision
    assert s.get("a") is None and s.expiry == {} and s.next_deadline() is None
    assert s.revision == 2 and "a" not in list(s.keys.with_prefix(""))


def test_the_deadline_counts_from_the_cluster_clock_not_the_slot_stamp() -> None:
    s = KVState()
    apply(s, 5_000)
    apply(s, 4_000, put("a", ttl_ms=100))  # a leader whose clock is behind: the cluster clock stays
    assert s.expiry == {"a": 5_100}


def test_expiry_comes_before_the_slots_own_commands() -> None:
    s = KVState()
    apply(s, 0, put("a", ttl_ms=10), put("b", ttl_ms=10), put("c", ttl_ms=5))
    # A create-if-absent in the slot that expires "a" sees it gone.
    out = apply(s, 10, put("a", "new", if_version=0))
    assert [(c.op, c.key, r.version) for c, r in out] == [(DELETE, "c", 4), (DELETE, "a", 5), (DELETE, "b", 6),
                                                           (PUT, "a", 7)]
    assert s.get("a") == ("new", 7) and s.expiry == {}


def test_a_slot_expires_at_most_its_share_and_the_next_slots_the_rest() -> None:
    s = KVState()
    many = EXPIRE_PER_SLOT + 10
    apply(s, 0, *(put(f"k{i:05}", ttl_ms=5) for i in range(many)))
    first = apply(s, 5)
    assert len(first) == EXPIRE_PER_SLOT and [c.key for c, _ in first] == [f"k{i:05}" for i in range(len(first))]
    assert len(s.data) == 10 and s.next_deadline() == 5  # still due: the leader nudges again
    assert len(apply(s, 5)) == 10 and s.data == {} and s.next_deadline() is None


def test_a_put_replaces_the_deadline_and_one_without_a_ttl_keeps_the_key() -> None:
    s = KVState()
    apply(s, 0, put("a", ttl_ms=10))
    apply(s, 5, put("a", ttl_ms=10))  # refreshed: due at 15, not 10
    assert apply(s, 12) == [] and s.get("a") is not None
    apply(s, 13, put("a", "forever"))
    assert s.expiry == {} and s.next_deadline() is None
    assert apply(s, 10**9) == [] and s.get("a") == ("forever", 3)


def test_a_delete_ends_the_deadline_and_a_new_key_of_that_name_does_not_expire() -> None:
    s = KVState()
    apply(s, 0, put("a", ttl_ms=10))
    apply(s, 1, Command(DELETE, "a"), put("a", "again"))
    assert s.expiry == {} and apply(s, 50) == [] and s.get("a") == ("again", 3)


def test_a_failed_cas_leaves_the_deadline_alone() -> None:
    s = KVState()
    apply(s, 0, put("a", ttl_ms=10))
    [(_, r)] = apply(s, 1, put("a", "x", if_value="wrong", ttl_ms=1_000))
    assert not r.ok and s.expiry == {"a": 10}


def test_a_retried_put_answered_from_the_exactly_once_record_does_not_refresh() -> None:
    s = KVState()
    apply(s, 0, put("a", ttl_ms=10, client_id="c", seq=1))
    apply(s, 8, put("a", ttl_ms=10, client_id="c", seq=1))  # the same request again
    assert s.expiry == {"a": 10}


def test_keys_put_again_and_again_keep_the_deadline_heap_bounded() -> None:
    s = KVState()
    for i in range(5_000):
        apply(s, i, put(f"k{i % 7}", ttl_ms=1_000_000))
    assert len(s.expiry) == 7 and len(s._deadlines) <= 2 * 7 + 65
    assert s.next_deadline() == min(s.expiry.values())


def test_expiry_matches_a_brute_force_model() -> None:
    rng = random.Random(7)
    s, model, clock = KVState(), {}, 0  # model: key -> (value, deadline or None)
    for step in range(3_000):
        clock += rng.randrange(3)
        key = f"k{rng.randrange(20)}"
        roll = rng.random()
        cmd = (Command(DELETE, key) if roll < 0.2 else
               put(key, str(step), ttl_ms=1 + rng.randrange(30) if roll < 0.7 else None))
        apply(s, clock, cmd)
        model = {k: v for k, v in model.items() if v[1] is None or v[1] > clock}
        if cmd.op == PUT:
            model[key] = (cmd.value, None if cmd.ttl_ms is None else clock + cmd.ttl_ms)
        else:
            model.pop(key, None)
        assert {k: v for k, (v, _) in s.data.items()} == {k: v for k, (v, _) in model.items()}
        assert s.expiry == {k: d for k, (_, d) in model.items() if d is not None}


def test_ttl_left_by_a_clock_reading() -> None:
    s = KVState()
    apply(s, 100, put("a", ttl_ms=1_000), put("b"))
    assert s.ttl_left_ms("a", 600) == 500 and s.ttl_left_ms("a", 5_000) == 0
    assert s.ttl_left_ms("b", 600) is None and s.ttl_left_ms("zz", 600) is None


def test_a_snapshot_keeps_the_deadlines(tmp_path) -> None:
    s = KVState()
    apply(s, 100, put("a", ttl_ms=1_000), put("b"), put("c", ttl_ms=50))
    path = str(tmp_path / "snap")
    snapshot.write(path, s)
    back = snapshot.read(path)
    assert back.expiry == {"a": 1_100, "c": 150} and back.next_deadline() == 150
    [(cmd, _)] = apply(back, 150)
    assert cmd.key == "c" and back.get("c") is None


def test_an_export_holds_the_deadlines_of_its_slot() -> None:
    s = KVState()
    apply(s, 0, put("a", ttl_ms=100), put("b", ttl_ms=100))
    export = Export(s)
    apply(s, 10, put("a", "x", ttl_ms=500), Command(DELETE, "b"), put("c", ttl_ms=5))
    rows, sessions = list(export.rows()), list(export.session_rows())
    export.close()
    back = import_rows(export.header, rows, sessions)
    assert back.expiry == {"a": 100, "b": 100} and back.get("a") == ("v", 1)


@pytest.mark.parametrize("expiry", [["a", 1], {"a": "soon"}, {"gone": 5}])
def test_a_snapshot_with_a_bad_deadline_record_is_refused(expiry) -> None:
    header = {"slot": 1, "revision": 1, "cluster_ms": 0, "expiry": expiry}
    with pytest.raises(ValueError):
        import_rows(header, [["a", "v", 1]], [])


def test_the_wire_gives_a_ttl_a_tenth_field_only_where_there_is_one() -> None:
    from kvpaxos.core import codec

    plain, expiring = put("a"), put("a", ttl_ms=250)
    assert len(codec.command_to_wire(plain)) == 9  # what a log written before reads back as
    assert codec.command_from_wire(codec.command_to_wire(expiring)) == expiring
    for bad in (0, -5, "5", 1.5, codec.TTL_MS_MAX + 1):
        with pytest.raises(codec.WireError):
            codec.command_from_wire([*codec.command_to_wire(plain), bad])
    with pytest.raises(codec.WireError):  # a delete has no time to live
        codec.command_from_wire([*codec.command_to_wire(Command(DELETE, "a")), 250])


# -- refresh: a new deadline, nothing else --------------------------------------------


def refresh(key: str, ttl_ms: int, **kw) -> Command:
    return Command(REFRESH, key, ttl_ms=ttl_ms, **kw)


def test_a_refresh_gives_a_new_deadline_and_changes_nothing_else() -> None:
    s = KVState()
    apply(s, 0, put("a", "v", ttl_ms=10), put("b", "w"))
    [(_, r)] = apply(s, 8, refresh("a", 100))
    assert r == Result(True, version=1) and s.revision == 2  # no revision: nothing for watches
    assert s.get("a") == ("v", 1) and s.expiry == {"a": 108}
    assert apply(s, 50) == []
    [(_, r)] = apply(s, 60, refresh("b", 5))  # a key put for good can be given one too
    assert r.ok and s.expiry == {"a": 108, "b": 65}
    out = apply(s, 108)
    assert [(c.key, res.version) for c, res in out] == [("b", 3), ("a", 4)]


def test_a_refresh_of_a_missing_key_is_not_found_and_makes_nothing() -> None:
    s = KVState()
    [(_, r)] = apply(s, 0, refresh("ghost", 10))
    assert r == Result(False, "not_found") and s.data == {} and s.expiry == {}


def test_a_refresh_checks_its_preconditions() -> None:
    s = KVState()
    apply(s, 0, put("lock", "me", ttl_ms=10))
    [(_, r)] = apply(s, 1, refresh("lock", 100, if_value="someone else"))
    assert not r.ok and r.error == "precondition_failed" and s.expiry == {"lock": 10}
    [(_, r)] = apply(s, 2, refresh("lock", 100, if_value="me", if_version=1))
    assert r.ok and s.expiry == {"lock": 102}


def test_the_wire_checks_a_refresh() -> None:
    from kvpaxos.core import codec

    r = refresh("a", 250, client_id="c", seq=3)
    assert codec.command_from_wire(codec.command_to_wire(r)) == r
    with pytest.raises(codec.WireError):  # without a time to live
        codec.command_from_wire(["refresh", "a", None, None, None, None, 0, "", 0])
    with pytest.raises(codec.WireError):  # with a value
        codec.command_from_wire(["refresh", "a", "v", None, None, None, 0, "", 0, 250])
