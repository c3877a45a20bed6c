"""The watch history (kvpaxos/watch.py) against a model: every change ever made, kept in full.

Seeded: a failure names its seed, and the same seed replays it.
"""
from __future__ import annotations

import asyncio
import random

import pytest

from kvpaxos.core.commands import DELETE, PUT, Batch, Command
from kvpaxos.core.kvstate import KVState
from kvpaxos.watch import CHANGE_OVERHEAD, Compacted, History

KEYS = ["a", "ab", "abc", "b", "ba", "c"]


answered: dict[int, object] = {}


def _changes(kv: KVState, history: History, model: list, rng: random.Random, n: int) -> None:
    """Apply n random commands as a node does (kvpaxos/node.py _apply_slot), and model the
    changes they make independently of the history's own rule."""
    cmds = []
    for _ in range(n):
        key = rng.choice(KEYS)
        if rng.random() < 0.3:
            cmds.append(Command(DELETE, key, client_id="c", seq=rng.randint(1, 3)))
        else:
            cmds.append(Command(PUT, key, "v" * rng.randint(0, 20), client_id=rng.choice([None, "c"]),
                                seq=rng.randint(1, 3), if_version=rng.choice([None, None, 0, 3])))
    applied = kv.apply(kv.applied_slot + 1, Batch(tuple(cmds)))
    history.record_applied(applied)
    for cmd, result in applied:
        # The model: a write that succeeded, unless its result is one answered before (a
        # repeat of an exactly-once request gets its first result again, the same object).
        if result.ok and cmd.op in (PUT, DELETE) and id(result) not in answered:
            model.append((len(model) + 1, cmd.op, cmd.key, cmd.value))
        answered[id(result)] = result  # kept, so that the id is not reused


@pytest.mark.parametrize("seed", range(30))
def test_pages_match_the_model(seed: int) -> None:
    rng = random.Random(seed)
    kv = KVState()
    history = History(0, max_changes=rng.choice([5, 40, 1000]), max_chars=rng.choice([200, 10**6]))
    model: list = []
    for _ in range(60):
        _changes(kv, history, model, rng, rng.randint(0, 6))
        assert history.revision == kv.revision == len(model)
        held = [c for c in model if c[0] >= history.first]
        # Dropped oldest first, within both bounds, and never the newest change.
        assert len(held) <= history.max_changes
        assert sum(len(c[2]) + len(c[3] or "") + CHANGE_OVERHEAD for c in held) <= history.max_chars or len(held) == 1
        assert not model or held
        start = rng.randint(max(1, history.first - 2), kv.revision + 2)
        key = prefix = None
        if rng.random() < 0.5:
            key = rng.choice(KEYS)
        else:
            prefix = rng.choice(["", "a", "ab", "b", "z"])
        limit = rng.choice([1, 2, 1000])
        if start < history.first:
            with pytest.raises(Compacted) as e:
                history.page(start, key, prefix, limit)
            assert e.value.details["oldest"] == history.first
            continue
        page = history.page(start, key, prefix, limit)
        want = [c for c in model if c[0] >= start and (c[2] == key if key is not None else c[2].startswith(prefix))]
        got = [(c.revision, c.op, c.key, c.value) for c in page.changes]
        assert got == want[:limit], seed
        if len(want) > limit:
            assert page.next == want[limit - 1][0] + 1
        else:
            assert page.next == max(start, kv.revision + 1)
        # Following `next` from there sees the rest exactly once, however few changes
        # each page may look at.
        scan = rng.choice([1, 3, 10**6])
        at, rest = page.next, []
        for _ in range(len(model) + 2):
            more = history.page(at, key, prefix, 10**6, max_scan=scan)
            rest += [(c.revision, c.op, c.key, c.value) for c in more.changes]
            assert more.next > at or more.next == kv.revision + 1 or at > kv.revision
            at = more.next
            if at > kv.revision:
                break
        assert got + rest == want


def test_a_page_ends_before_the_change_that_passes_max_chars() -> None:
    history = History(0)
    for r in range(1, 6):
        history.record(r, PUT, f"k{r}", "x" * 100)
    page = history.page(1, None, "", 100, max_chars=2 * (2 + 100 + CHANGE_OVERHEAD))
    assert [c.revision for c in page.changes] == [1, 2] and page.next == 3
    page = history.page(1, None, "", 100, max_chars=1)  # one change at the least
    assert [c.revision for c in page.changes] == [1] and page.next == 2


def test_restart_after_a_snapshot_forgets_what_came_before() -> None:
    history = History(0)
    for r in range(1, 4):
        history.record(r, PUT, "k", str(r))
    history.restart(10)
    with pytest.raises(Compacted):
        history.page(4, "k", None, 10)
    assert history.page(11, "k", None, 10).changes == []
    history.record(11, DELETE, "k", None)
    assert [c.to_wire() for c in history.page(11, "k", None, 10).changes] == [
        {"revision": 11, "type": "delete", "key": "k"}]
    with pytest.raises(AssertionError):
        history.record(13, PUT, "k", "gap")  # revisions have no gaps


def test_polls_wake_on_a_matching_change_only() -> None:
    async def main() -> None:
        history = History(0)
        key_poll = asyncio.ensure_future(history.poll(1, "a", None, 10, 5))
        prefix_poll = asyncio.ensure_future(history.poll(1, None, "b", 10, 5))
        other = asyncio.ensure_future(history.poll(1, "zz", None, 10, 0.2))
        await asyncio.sleep(0)
        assert history.waiting == 3
        history.record(1, PUT, "ab", "x")  # matches none of them
        history.wake()
        await asyncio.sleep(0.01)
        assert not key_poll.done() and not prefix_poll.done()
        history.record(2, PUT, "a", "1")
        history.record(3, PUT, "bc", "2")
        history.wake()
        page = await asyncio.wait_for(key_poll, 1)
        assert [(c.revision, c.key) for c in page.changes] == [(2, "a")] and page.next == 4
        page = await asyncio.wait_for(prefix_poll, 1)
        assert [(c.revision, c.key) for c in page.changes] == [(3, "bc")]
        page = await asyncio.wait_for(other, 1)  # its timeout: nothing, and where to go on from
        assert page.changes == [] and page.next == 4
        assert history.waiting == 0

        late = asyncio.ensure_future(history.poll(4, None, "", 10, 5))
        await asyncio.sleep(0)
        history.close()  # the node stops: polls answer at once
        assert (await asyncio.wait_for(late, 1)).changes == []

    asyncio.run(main())


def test_a_restart_answers_polls_from_before_it_compacted() -> None:
    async def main() -> None:
        history = History(0)
        before = asyncio.ensure_future(history.poll(1, "a", None, 10, 5))
        after = asyncio.ensure_future(history.poll(21, "a", None, 10, 0.3))
        await asyncio.sleep(0)
        history.restart(20)
        with pytest.raises(Compacted):
            await asyncio.wait_for(before, 1)
        page = await asyncio.wait_for(after, 2)
        assert page.changes == [] and page.next == 21

    asyncio.run(main())


def test_an_interrupt_answers_the_polls_waiting_then_and_not_later_ones() -> None:
    async def main() -> None:
        history = History(0)
        waiting = asyncio.ensure_future(history.poll(1, "a", None, 10, 5))
        await asyncio.sleep(0)
        history.interrupt()  # the node lost its leader
        page = await asyncio.wait_for(waiting, 1)
        assert page.changes == [] and page.next == 1
        later = asyncio.ensure_future(history.poll(1, "a", None, 10, 5))
        await asyncio.sleep(0.05)
        assert not later.done()  # a poll begun after it waits as usual
        history.record(1, PUT, "a", "x")
        history.wake()
        assert [c.revision for c in (await asyncio.wait_for(later, 1)).changes] == [1]

    asyncio.run(main())


@pytest.mark.parametrize("seed", range(10))
def test_a_slot_wakes_exactly_the_polls_one_of_its_changes_matches(seed: int) -> None:
    """Many keys and prefixes at once (the sorted lookup), against testing every pair."""
    rng = random.Random(seed)
    alphabet = "ab\u00e9\U0001f600"

    def word(n: int) -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, n)))

    async def main() -> None:
        history = History(0)
        watched = [(None, word(3)) for _ in range(40)] + [(word(3) or "a", None) for _ in range(40)]
        polls = [asyncio.ensure_future(history.poll(1, key, prefix, 10**6, 5)) for key, prefix in watched]
        await asyncio.sleep(0)
        keys = [word(4) or "b" for _ in range(rng.randint(1, 30))]
        for revision, key in enumerate(keys, 1):
            history.record(revision, PUT, key, "v")
        history.wake()
        await asyncio.sleep(0)
        for (key, prefix), poll in zip(watched, polls):
            should = any(k == key if key is not None else k.startswith(prefix) for k in keys)
            assert poll.done() == should, (key, prefix, keys)
        history.close()
        await asyncio.gather(*polls)
        assert history.waiting == 0

    asyncio.run(main())


def test_a_poll_that_looked_at_its_share_answers_at_once_to_go_on() -> None:
    async def main() -> None:
        history = History(0)
        for r in range(1, 26):
            history.record(r, PUT, f"other{r}", "v")
        history.record(26, PUT, "wanted", "v")
        page = history.page(1, "wanted", None, 10, max_scan=10)
        assert page.changes == [] and page.next == 11
        # A poll does not wait on such a page: there is more to look at.
        answer = await asyncio.wait_for(history.poll(1, "wanted", None, 10, 30, max_scan=10), 1)
        assert answer.changes == [] and answer.next == 11
        answer = await asyncio.wait_for(history.poll(21, "wanted", None, 10, 30, max_scan=10), 1)
        assert [c.revision for c in answer.changes] == [26]

    asyncio.run(main())


def test_a_node_between_leaders_keeps_its_watchers_for_a_grace(monkeypatch) -> None:
    """kvpaxos/http.py's _need_leader: a leader found again within WATCH_LEADERLESS_S keeps
    the watch (no 503 at every election); none by then sends it elsewhere."""
    from types import SimpleNamespace

    from kvpaxos import http
    from kvpaxos.errors import NoQuorum

    monkeypatch.setattr(http, "WATCH_LEADERLESS_S", 0.3)
    node = SimpleNamespace(replica=SimpleNamespace(leader_id=None), history=History(0),
                           config=SimpleNamespace(tick_ms=10), why_alone=lambda: "")

    async def main() -> None:
        asyncio.get_running_loop().call_later(0.1, setattr, node.replica, "leader_id", 2)
        await asyncio.wait_for(http._need_leader(node), 1)  # elected in time: no error
        node.replica.leader_id = None
        with pytest.raises(NoQuorum):
            await asyncio.wait_for(http._need_leader(node), 1)

    asyncio.run(main())


def test_a_slot_larger_than_the_history_wakes_the_polls_it_may_have_matched() -> None:
    async def main() -> None:
        history = History(0, max_changes=3)
        poll = asyncio.ensure_future(history.poll(1, "a", None, 10, 5))
        await asyncio.sleep(0)
        history.record(1, PUT, "a", "x")  # dropped before the wake-up below
        for r in range(2, 6):
            history.record(r, PUT, "b", "y")
        history.wake()
        with pytest.raises(Compacted):  # woken: it cannot have all it asked for any more
            await asyncio.wait_for(poll, 1)

    asyncio.run(main())
