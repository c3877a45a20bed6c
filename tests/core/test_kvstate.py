"""The replicated state machine: operations, versions, exactly-once, session expiry, scan."""
from __future__ import annotations

import pytest

from kvpaxos.core.commands import DELETE, NOOP, PUT, Batch, Command, Result
from kvpaxos.core.kvstate import KVState


class Log:
    """Applies one command per slot, as the learner hands them out, and returns its result."""

    def __init__(self, state: KVState | None = None) -> None:
        self.state = state or KVState()

    def run(self, cmd: Command, ts_ms: int = 0) -> Result:
        [(applied, result)] = self.state.apply(self.state.applied_slot + 1, Batch((cmd,), ts_ms))
        assert applied == cmd
        return result

    def noop(self, ts_ms: int) -> None:
        assert self.state.apply(self.state.applied_slot + 1, Batch((), ts_ms)) == []


def put(key: str, value: str, **kw) -> Command:
    return Command(PUT, key, value, **kw)


def delete(key: str, **kw) -> Command:
    return Command(DELETE, key, **kw)


# -- plain operations -----------------------------------------------------------


def test_put_then_get() -> None:
    log = Log()
    assert log.run(put("a", "1")) == Result(True, version=1)
    assert log.state.get("a") == ("1", 1)
    assert log.state.get("b") is None


def test_overwrite_gets_a_new_version() -> None:
    log = Log()
    log.run(put("a", "1"))
    assert log.run(put("a", "2")) == Result(True, version=2)
    assert log.state.get("a") == ("2", 2)


def test_versions_are_a_cluster_wide_revision() -> None:
    log = Log()
    assert log.run(put("a", "x")).version == 1
    assert log.run(put("b", "x")).version == 2
    assert log.run(put("a", "y")).version == 3


def test_delete_removes_the_key() -> None:
    log = Log()
    log.run(put("a", "1"))
    assert log.run(delete("a")) == Result(True, version=2)
    assert log.state.get("a") is None


def test_delete_of_a_missing_key_is_not_found_and_changes_nothing() -> None:
    log = Log()
    assert log.run(delete("a")) == Result(False, "not_found")
    assert log.state.revision == 0


def test_versions_strictly_increase_across_delete_and_re_create() -> None:
    log = Log()
    seen = [log.run(put("a", "1")).version, log.run(delete("a")).version,
            log.run(put("a", "1")).version, log.run(delete("a")).version,
            log.run(put("a", "2")).version]
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    assert log.state.get("a") == ("2", seen[-1])


def test_noop_batches_advance_the_slot_and_the_clock_only() -> None:
    log = Log()
    log.run(put("a", "1"))
    assert log.state.apply(2, NOOP) == []
    assert log.state.applied_slot == 2
    assert log.state.get("a") == ("1", 1)


def test_a_batch_applies_its_commands_in_order() -> None:
    state = KVState()
    batch = Batch((put("a", "1"), put("a", "2", if_value="1"), delete("a"), delete("a")))
    results = [r for _, r in state.apply(1, batch)]
    assert results == [Result(True, version=1), Result(True, version=2),
                       Result(True, version=3), Result(False, "not_found")]


# -- compare-and-set ------------------------------------------------------------


def test_cas_on_value() -> None:
    log = Log()
    log.run(put("a", "1"))
    assert log.run(put("a", "2", if_value="1")) == Result(True, version=2)
    assert log.run(put("a", "3", if_value="1")) == Result(False, "precondition_failed", version=2)
    assert log.state.get("a") == ("2", 2)


def test_cas_on_value_of_a_missing_key_fails() -> None:
    log = Log()
    assert log.run(put("a", "1", if_value="")) == Result(False, "precondition_failed", version=0)
    assert log.state.get("a") is None


def test_cas_on_version() -> None:
    log = Log()
    v = log.run(put("a", "1")).version
    assert log.run(put("a", "2", if_version=v + 5)) == Result(False, "precondition_failed", version=v)
    assert log.run(put("a", "2", if_version=v)) == Result(True, version=v + 1)


def test_cas_on_version_zero_creates_only_if_absent() -> None:
    log = Log()
    assert log.run(put("a", "1", if_version=0)).ok
    assert log.run(put("a", "2", if_version=0)) == Result(False, "precondition_failed", version=1)
    assert log.state.get("a") == ("1", 1)


def test_conditional_delete() -> None:
    log = Log()
    log.run(put("a", "1"))
    assert log.run(delete("a", if_value="2")).error == "precondition_failed"
    assert log.run(delete("a", if_version=7)).error == "precondition_failed"
    assert log.run(delete("a", if_value="1", if_version=1)).ok
    assert log.state.get("a") is None


def test_failed_precondition_does_not_bump_the_revision() -> None:
    log = Log()
    log.run(put("a", "1"))
    log.run(put("a", "2", if_value="nope"))
    assert log.state.revision == 1
    assert log.run(put("b", "1")).version == 2


# -- exactly-once ---------------------------------------------------------------


def test_repeat_of_the_last_sequence_returns_the_first_result_without_re_applying() -> None:
    log = Log()
    first = log.run(put("a", "1", client_id="c", seq=1))
    log.run(put("a", "other"))  # someone else changes the key in between
    again = log.run(put("a", "1", client_id="c", seq=1))
    assert again == first
    assert log.state.get("a") == ("other", 2)
    assert log.state.revision == 2


def test_repeat_returns_the_recorded_failure_too() -> None:
    log = Log()
    log.run(put("a", "1"))
    failed = log.run(put("a", "2", if_value="x", client_id="c", seq=1))
    assert failed.error == "precondition_failed"
    log.run(put("a", "x"))  # the precondition would now hold
    assert log.run(put("a", "2", if_value="x", client_id="c", seq=1)) == failed
    assert log.state.get("a") == ("x", 2)


def test_a_repeated_delete_does_not_turn_into_not_found() -> None:
    log = Log()
    log.run(put("a", "1"))
    first = log.run(delete("a", client_id="c", seq=1))
    assert first.ok
    assert log.run(delete("a", client_id="c", seq=1)) == first


def test_older_sequence_is_stale() -> None:
    log = Log()
    log.run(put("a", "1", client_id="c", seq=1))
    log.run(put("a", "2", client_id="c", seq=2))
    assert log.run(put("a", "late", client_id="c", seq=1)) == Result(False, "stale_sequence")
    assert log.state.get("a") == ("2", 2)


def test_sequences_may_skip_but_are_per_client() -> None:
    log = Log()
    log.run(put("a", "1", client_id="c", seq=5))
    assert log.run(put("a", "2", client_id="d", seq=1)).ok  # another client's numbering
    assert log.run(put("a", "3", client_id="c", seq=9)).ok
    assert log.run(put("a", "4", client_id="c", seq=6)).error == "stale_sequence"


def test_commands_without_a_client_id_apply_every_time() -> None:
    log = Log()
    log.run(put("a", "1"))
    log.run(put("a", "1"))
    assert log.state.revision == 2


# -- session expiry by cluster time -----------------------------------------------


def test_cluster_clock_is_the_highest_batch_timestamp() -> None:
    log = Log()
    log.noop(ts_ms=500)
    log.noop(ts_ms=200)  # an older leader's clock never moves time backwards
    assert log.state.cluster_ms == 500


def test_session_expires_only_when_cluster_time_passes_its_ttl() -> None:
    log = Log(KVState(session_ttl_ms=1000))
    log.run(put("a", "1", client_id="c", seq=1), ts_ms=100)
    log.noop(ts_ms=1100)  # exactly the ttl later: still kept
    assert "c" in log.state.sessions
    assert log.run(put("a", "1", client_id="c", seq=1), ts_ms=1100).version == 1
    log.noop(ts_ms=1101)
    assert "c" not in log.state.sessions
    # Forgotten: the same request now applies as new (the documented cost of expiry).
    assert log.run(put("a", "1", client_id="c", seq=1), ts_ms=1101).version == 2


def test_use_refreshes_a_session_and_expiry_goes_oldest_first() -> None:
    log = Log(KVState(session_ttl_ms=1000))
    log.run(put("a", "1", client_id="old", seq=1), ts_ms=0)
    log.run(put("a", "1", client_id="busy", seq=1), ts_ms=0)
    log.run(put("a", "1", client_id="busy", seq=2), ts_ms=900)
    log.noop(ts_ms=1500)
    assert list(log.state.sessions) == ["busy"]
    assert log.run(put("b", "1", client_id="busy", seq=1), ts_ms=1500).error == "stale_sequence"


def test_wall_clock_plays_no_part_replicas_expire_at_the_same_slot() -> None:
    batches = [Batch((put("a", "1", client_id="c", seq=1),), 0), Batch((), 400),
               Batch((put("a", "2", client_id="c", seq=1),), 2000)]
    outcomes = []
    for _ in range(2):
        state = KVState(session_ttl_ms=1000)
        outcomes.append([state.apply(slot, b) for slot, b in enumerate(batches, 1)])
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][2][0][1].ok  # expired at slot 3 on every replica, so re-applied


# -- scan -----------------------------------------------------------------------------


def test_scan_with_prefix_and_limit_in_key_order() -> None:
    log = Log()
    for key in ["b/2", "a/1", "b/10", "b/1", "c", "b"]:
        log.run(put(key, key.upper()))
    items, more = log.state.scan("b/", 2)
    assert items == [("b/1", "B/1", 4), ("b/10", "B/10", 3)]
    assert more is True
    items, more = log.state.scan("b/", 10)
    assert [k for k, _, _ in items] == ["b/1", "b/10", "b/2"]
    assert more is False
    assert [k for k, _, _ in log.state.scan("", 100)[0]] == ["a/1", "b", "b/1", "b/10", "b/2", "c"]
    assert log.state.scan("zzz", 5) == ([], False)


def test_scan_limit_exactly_the_count_has_no_more() -> None:
    log = Log()
    log.run(put("k1", "v"))
    log.run(put("k2", "v"))
    assert log.state.scan("k", 2) == ([("k1", "v", 1), ("k2", "v", 2)], False)


def test_scan_does_not_show_deleted_keys() -> None:
    log = Log()
    log.run(put("k1", "v"))
    log.run(put("k2", "v"))
    log.run(delete("k1"))
    assert log.state.scan("k", 10) == ([("k2", "v", 2)], False)


# -- apply order ------------------------------------------------------------------------


@pytest.mark.parametrize("slot", [0, 2, 3])
def test_out_of_order_apply_asserts(slot: int) -> None:
    state = KVState()
    with pytest.raises(AssertionError):
        state.apply(slot, NOOP)
    assert state.applied_slot == 0


def test_reapplying_a_slot_asserts() -> None:
    state = KVState()
    state.apply(1, Batch((put("a", "1"),)))
    with pytest.raises(AssertionError):
        state.apply(1, Batch((put("a", "1"),)))
    assert state.revision == 1
