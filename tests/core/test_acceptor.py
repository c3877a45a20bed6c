"""The acceptor's rules (PAXOS_NOTES 1-3, 9): promises, accepts, rejections and pending writes."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kvpaxos.core import messages as m
from kvpaxos.core.acceptor import Acceptor
from kvpaxos.core.ballot import ZERO, Ballot
from kvpaxos.core.commands import PUT, Batch, Command

B1 = Ballot(1, 1)
B2 = Ballot(2, 2)
B3 = Ballot(3, 1)


def batch(tag: str) -> Batch:
    return Batch((Command(PUT, "k", tag, cmd_id=tag),), ts_ms=1)


# -- Prepare ------------------------------------------------------------------


def test_fresh_acceptor_promises_and_records_the_write() -> None:
    a = Acceptor()
    reply = a.on_prepare(m.Prepare(B1, 1))
    assert reply == m.Promise(B1, 1, ())
    assert a.promised == B1
    writes = a.take_writes()
    assert writes.promised == B1 and writes.accepted == {}
    assert not a.take_writes()  # taken once


def test_prepare_with_a_lower_ballot_is_rejected_naming_the_promise() -> None:
    a = Acceptor(promised=B2)
    assert a.on_prepare(m.Prepare(B1, 1)) == m.Reject(B1, B2)
    assert a.promised == B2
    assert not a.take_writes()


def test_same_round_lower_node_id_is_a_lower_ballot() -> None:
    a = Acceptor(promised=Ballot(2, 2))
    assert isinstance(a.on_prepare(m.Prepare(Ballot(2, 1), 1)), m.Reject)
    assert isinstance(a.on_prepare(m.Prepare(Ballot(2, 3), 1)), m.Promise)


def test_equal_ballot_prepare_is_an_idempotent_re_promise() -> None:
    a = Acceptor()
    first = a.on_prepare(m.Prepare(B1, 1))
    a.take_writes()
    again = a.on_prepare(m.Prepare(B1, 1))
    assert again == first
    assert not a.take_writes()  # nothing new to persist


def test_promise_carries_accepted_entries_at_or_above_from_slot_only() -> None:
    accepted = {1: (B1, batch("a")), 2: (B2, batch("b")), 5: (B1, batch("c"))}
    a = Acceptor(promised=B2, accepted=accepted)
    reply = a.on_prepare(m.Prepare(B3, 2))
    assert isinstance(reply, m.Promise)
    assert reply.accepted == (
        m.AcceptedEntry(2, B2, batch("b")),
        m.AcceptedEntry(5, B1, batch("c")),
    )
    everything = a.on_prepare(m.Prepare(B3, 1))
    assert isinstance(everything, m.Promise)
    assert [e.slot for e in everything.accepted] == [1, 2, 5]
    beyond = a.on_prepare(m.Prepare(B3, 6))
    assert isinstance(beyond, m.Promise) and beyond.accepted == ()


def test_promise_reports_each_slot_at_the_ballot_it_was_last_accepted() -> None:
    a = Acceptor()
    a.on_accept(m.Accept(B1, 3, batch("old")))
    a.on_accept(m.Accept(B2, 3, batch("new")))
    reply = a.on_prepare(m.Prepare(B3, 1))
    assert isinstance(reply, m.Promise)
    assert reply.accepted == (m.AcceptedEntry(3, B2, batch("new")),)


# -- Accept -------------------------------------------------------------------


def test_accept_at_or_above_the_promise_is_taken_and_raises_the_promise() -> None:
    a = Acceptor(promised=B1)
    assert a.on_accept(m.Accept(B2, 1, batch("x"))) == m.Accepted(B2, 1)
    assert a.promised == B2
    assert a.accepted == {1: (B2, batch("x"))}
    writes = a.take_writes()
    assert writes.promised == B2
    assert writes.accepted == {1: (B2, batch("x"))}


def test_accept_at_exactly_the_promise_does_not_rewrite_the_promise() -> None:
    a = Acceptor(promised=B2)
    assert a.on_accept(m.Accept(B2, 4, batch("x"))) == m.Accepted(B2, 4)
    writes = a.take_writes()
    assert writes.promised is None
    assert writes.accepted == {4: (B2, batch("x"))}


def test_accept_below_the_promise_is_rejected_and_changes_nothing() -> None:
    a = Acceptor(promised=B2, accepted={1: (B1, batch("a"))})
    assert a.on_accept(m.Accept(B1, 1, batch("b"))) == m.Reject(B1, B2)
    assert a.on_accept(m.Accept(B1, 2, batch("b"))) == m.Reject(B1, B2)
    assert a.accepted == {1: (B1, batch("a"))}
    assert a.promised == B2
    assert not a.take_writes()


def test_repeated_accept_at_the_same_ballot_writes_nothing_new() -> None:
    a = Acceptor()
    a.on_accept(m.Accept(B1, 1, batch("x")))
    a.take_writes()
    assert a.on_accept(m.Accept(B1, 1, batch("x"))) == m.Accepted(B1, 1)
    assert not a.take_writes()


def test_higher_ballot_accept_overwrites_the_slot_and_is_written() -> None:
    a = Acceptor()
    a.on_accept(m.Accept(B1, 1, batch("x")))
    a.take_writes()
    a.on_accept(m.Accept(B2, 1, batch("y")))
    assert a.accepted[1] == (B2, batch("y"))
    assert a.take_writes().accepted == {1: (B2, batch("y"))}


def test_pending_writes_accumulate_until_taken() -> None:
    a = Acceptor()
    a.on_prepare(m.Prepare(B1, 1))
    a.on_accept(m.Accept(B1, 1, batch("x")))
    a.on_accept(m.Accept(B1, 2, batch("y")))
    a.on_prepare(m.Prepare(B2, 1))
    writes = a.take_writes()
    assert writes.promised == B2
    assert writes.accepted == {1: (B1, batch("x")), 2: (B1, batch("y"))}


def test_accepted_at_matches_the_exact_ballot_only() -> None:
    a = Acceptor()
    a.on_accept(m.Accept(B2, 1, batch("x")))
    assert a.accepted_at(1, B2) == batch("x")
    assert a.accepted_at(1, B1) is None
    assert a.accepted_at(2, B2) is None


def test_compacted_slots_are_acknowledged_without_a_record() -> None:
    a = Acceptor(accepted={1: (B1, batch("a")), 2: (B1, batch("b")), 3: (B1, batch("c"))})
    a.compact(2)
    assert sorted(a.accepted) == [3]
    reply = a.on_prepare(m.Prepare(B2, 1))
    assert isinstance(reply, m.Promise) and reply.compacted_through == 2
    a.take_writes()
    assert a.on_accept(m.Accept(B2, 1, batch("a"))) == m.Accepted(B2, 1)
    assert not a.take_writes().accepted


# -- invariants under any sequence of messages ---------------------------------

ballots = st.builds(Ballot, st.integers(0, 4), st.integers(1, 3))
values = st.sampled_from([batch("a"), batch("b"), Batch()])
inputs = st.one_of(
    st.builds(m.Prepare, ballots, st.integers(1, 4)),
    st.builds(m.Accept, ballots, st.integers(1, 4), values),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(inputs, max_size=30))
def test_invariants_hold_for_any_message_sequence(msgs: list) -> None:
    a = Acceptor()
    durable_promised, durable_accepted = ZERO, {}
    for msg in msgs:
        before_promised, before_accepted = a.promised, dict(a.accepted)
        reply = a.on_prepare(msg) if isinstance(msg, m.Prepare) else a.on_accept(msg)
        granted = msg.ballot >= before_promised
        if granted:
            assert a.promised == msg.ballot == max(before_promised, msg.ballot)
            if isinstance(msg, m.Prepare):
                assert reply == m.Promise(msg.ballot, msg.from_slot, tuple(
                    m.AcceptedEntry(s, b, v) for s, (b, v) in sorted(before_accepted.items())
                    if s >= msg.from_slot))
            else:
                assert reply == m.Accepted(msg.ballot, msg.slot)
                assert a.accepted[msg.slot][0] == msg.ballot
        else:
            assert reply == m.Reject(msg.ballot, before_promised)
            assert (a.promised, a.accepted) == (before_promised, before_accepted)
        assert a.promised >= before_promised  # promised never decreases
        assert all(b <= a.promised for b, _ in a.accepted.values())
        # Pending writes record exactly the changes: replaying them reproduces the state.
        writes = a.take_writes()
        if writes.promised is not None:
            assert writes.promised > durable_promised
            durable_promised = writes.promised
        for slot, rec in writes.accepted.items():
            assert durable_accepted.get(slot) != rec
        durable_accepted.update(writes.accepted)
        assert durable_promised == a.promised
        assert durable_accepted == a.accepted
