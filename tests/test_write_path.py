"""The write path's economies, through real SQLite files and real peer links.

- A chosen record is not worth an fsync of its own: it is committed with the next
  promise or acceptance (or on the next tick), so a steady stream of writes costs each
  node one group commit per slot, not two.
- A leader's Commit that no client waits for rides in the next frame to its peer
  instead of a frame of its own (PeerLink.send_lazy).
- A plain put skips the field-by-field checks, and must come out as they would.
- A slot carries the leader's clock as it was when the slot was formed, not at its
  last tick: a key's deadline is never before its put was asked plus its ttl.
"""
from __future__ import annotations

import asyncio
import itertools
import time

from aiohttp import web

from kvpaxos import http

from kvpaxos.config import NodeConfig
from kvpaxos.core import messages as m
from kvpaxos.core.ballot import Ballot
from kvpaxos.core.commands import DELETE, PUT, Batch, Command
from kvpaxos.core.replica import Role
from kvpaxos.errors import KvError
from kvpaxos.node import Node
from kvpaxos.transport import PeerTransport
from storage.base import Writes
from storage.sqlite import SqliteStorage
from support.cluster import free_ports


class RecordingStorage(SqliteStorage):
    """SQLite storage that remembers every group of writes it was handed."""

    def __init__(self, data_dir: str, node_id: int) -> None:
        super().__init__(data_dir, node_id)
        self.groups: list[Writes] = []

    def submit(self, writes, on_durable) -> None:  # noqa: ANN001 - as SqliteStorage.submit
        self.groups.append(Writes(writes.promised, dict(writes.accepted), dict(writes.chosen)))
        super().submit(writes, on_durable)


async def lone_leader(tmp_path, storage: SqliteStorage | None = None, **config) -> Node:  # noqa: ANN001
    """The node of a one-node cluster in tmp_path, started and leading (stop it when done);
    its storage SqliteStorage unless given, `config` more NodeConfig fields."""
    node = Node(NodeConfig(1, {1: ("127.0.0.1", free_ports(1)[0])}, str(tmp_path), election_ticks=2, **config),
                storage or SqliteStorage(str(tmp_path), 1), fresh=True)
    await node.start()
    try:
        async with asyncio.timeout(20):
            while node.replica.role is not Role.LEADER:
                await asyncio.sleep(0.02)
    except BaseException:
        await node.stop()
        raise
    return node


def test_chosen_records_ride_with_the_next_acceptance(tmp_path) -> None:
    async def main() -> None:
        storage = RecordingStorage(str(tmp_path), 1)
        node = await lone_leader(tmp_path, storage)
        try:
            # From here no tick runs, so nothing but a write can carry a chosen record.
            assert node._ticker is not None
            node._ticker.cancel()
            await node.submit(Command("put", "a", "1", cmd_id="t.1"))
            await node.submit(Command("put", "b", "2", cmd_id="t.2"))
            async with asyncio.timeout(5):
                while node._committing:
                    await asyncio.sleep(0.005)
            groups = list(storage.groups)
            assert groups, "no group commit at all"
            assert all(not g.only_chosen() for g in groups), \
                f"a group commit held only chosen records: {[sorted(g.chosen) for g in groups]}"
            def carrying(key: str) -> tuple[int, int]:  # (group index, slot) accepting key
                return next((i, s) for i, g in enumerate(groups) for s, (_, v) in g.accepted.items()
                            if any(c.key == key for c in v.commands))

            _, a_slot = carrying("a")
            b_group, b_slot = carrying("b")
            assert a_slot in groups[b_group].chosen, "slot of 'a' was not committed with the next acceptance"
            assert b_slot not in {s for g in groups for s in g.chosen}
        finally:
            await node.stop()  # commits the chosen records still open
        reopened = SqliteStorage(str(tmp_path), 1)
        try:
            chosen = reopened.load().chosen
            assert a_slot in chosen and b_slot in chosen
        finally:
            reopened.close()

    asyncio.run(main())


def _accept(slot: int) -> m.Accept:
    return m.Accept(Ballot(1, 1), slot, Batch((Command("put", f"k{slot}", "v", cmd_id=f"c{slot}"),)))


def test_a_lazy_message_rides_in_the_next_frame_or_goes_on_flush() -> None:
    async def main() -> None:
        frames: list[list[m.Message]] = []
        port_a, port_b = free_ports(2)
        cluster_b = {2: ("127.0.0.1", port_b)}
        receiver = PeerTransport(2, cluster_b, lambda src, msgs: frames.append(list(msgs)))
        app = web.Application()
        app.router.add_get("/v1/peer", receiver.handle_inbound)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port_b).start()
        sender = PeerTransport(1, {1: ("127.0.0.1", port_a), 2: ("127.0.0.1", port_b)}, lambda src, msgs: None)
        await sender.start()
        try:
            async with asyncio.timeout(10):
                while not sender.reachable().get(2):
                    await asyncio.sleep(0.01)

            async def settle() -> None:
                await asyncio.sleep(0.2)  # long enough for any frame on loopback

            assert sender.send_lazy(2, m.Commit(Ballot(1, 1), 1))
            assert sender.send_lazy(2, m.Commit(Ballot(1, 1), 2))  # replaces the first
            await settle()
            assert frames == [], "a lazy message went out in a frame of its own"
            assert sender.send(2, _accept(3))
            await settle()
            assert frames == [[_accept(3), m.Commit(Ballot(1, 1), 2)]]
            frames.clear()
            sender.flush_lazy()  # nothing held: no frame
            await settle()
            assert frames == []
            assert sender.send_lazy(2, m.Commit(Ballot(1, 1), 3))
            sender.flush_lazy()
            await settle()
            assert frames == [[m.Commit(Ballot(1, 1), 3)]]
        finally:
            await sender.stop()
            await receiver.stop()
            await runner.cleanup()

    asyncio.run(main())


def test_lazy_sends_on_a_link_that_is_down_are_dropped() -> None:
    async def main() -> None:
        port_a, port_b = free_ports(2)
        sender = PeerTransport(1, {1: ("127.0.0.1", port_a), 2: ("127.0.0.1", port_b)}, lambda src, msgs: None)
        await sender.start()
        try:
            assert not sender.send_lazy(2, m.Commit(Ballot(1, 1), 1))  # nobody listens on port_b
            assert not sender.send_lazy(3, m.Commit(Ballot(1, 1), 1))  # no such peer
        finally:
            await sender.stop()

    asyncio.run(main())



class StallingStorage(SqliteStorage):
    """SQLite storage whose group commits, once `stalled`, wait until release()."""

    def __init__(self, data_dir: str, node_id: int) -> None:
        super().__init__(data_dir, node_id)
        self.stalled = False
        self.held: list = []

    def submit(self, writes, on_durable) -> None:  # noqa: ANN001 - as SqliteStorage.submit
        if self.stalled:
            self.held.append((writes, on_durable))
        else:
            super().submit(writes, on_durable)

    def release(self) -> None:
        self.stalled = False
        for writes, on_durable in self.held:
            super().submit(writes, on_durable)
        self.held.clear()


def test_a_write_that_is_never_chosen_is_resent_then_times_out(tmp_path) -> None:
    """Requests wait without a timer of their own (the tick sweeps them): a command
    with a client id is proposed again every few election timeouts and at once on a
    leader change; one without is proposed once; both end at the request timeout."""
    from kvpaxos.errors import OutcomeUnknown

    async def main() -> None:
        config = NodeConfig(1, {1: ("127.0.0.1", free_ports(1)[0])}, str(tmp_path), election_ticks=2,
                            request_timeout_s=1.0)
        storage = StallingStorage(str(tmp_path), 1)
        node = Node(config, storage, fresh=True)
        await node.start()
        proposed: list[str] = []
        propose = node.replica.propose

        def counting(cmds):  # noqa: ANN001, ANN202 - as Replica.propose
            proposed.extend(c.cmd_id for c in cmds)
            return propose(cmds)

        try:
            async with asyncio.timeout(20):
                while node.replica.role is not Role.LEADER:
                    await asyncio.sleep(0.02)
            node.replica.propose = counting
            storage.stalled = True
            loop = asyncio.get_running_loop()
            for cmd, low, high in ((Command("put", "a", "1", client_id="c", seq=1, cmd_id="t.1"), 4, 8),
                                   (Command("put", "b", "2", cmd_id="t.2"), 1, 1)):
                started = loop.time()
                async with asyncio.timeout(3):
                    try:
                        await node.submit(cmd)
                    except OutcomeUnknown:
                        pass
                    else:
                        raise AssertionError("a write that was never chosen succeeded")
                waited = loop.time() - started
                assert 1.0 <= waited < 1.5, waited
                assert low <= proposed.count(cmd.cmd_id) <= high, (cmd, proposed)
                assert cmd.cmd_id not in node._waiters

            # A leader change sends a waiting command with a client id again at once.
            task = asyncio.ensure_future(node.submit(Command("put", "c", "3", client_id="c", seq=2,
                                                             cmd_id="t.3")))
            await asyncio.sleep(0.05)
            assert proposed.count("t.3") == 1
            node._last_leader = 99  # as if another node had led meanwhile
            node._note_leader()
            await asyncio.sleep(0.01)
            assert proposed.count("t.3") == 2
            task.cancel()
        finally:
            storage.release()
            await node.stop()

    asyncio.run(main())


def test_a_read_index_that_never_comes_is_asked_again_then_gives_up(tmp_path) -> None:
    """Linearizable reads wait without timers too: the tick wakes an unanswered ask for
    a read index after two election timeouts (to ask again) and ends the read at the
    request timeout with 503 no_quorum."""
    from kvpaxos.errors import NoQuorum

    async def main() -> None:
        node = await lone_leader(tmp_path, request_timeout_s=1.0)
        try:
            await node.linearizable_point()  # answered: nothing to wait for
            asked: list[int] = []
            node.replica.read_index = asked.append  # a leader that never answers
            loop = asyncio.get_running_loop()
            started = loop.time()
            async with asyncio.timeout(3):
                try:
                    await node.linearizable_point()
                except NoQuorum:
                    pass
                else:
                    raise AssertionError("a read without a read index succeeded")
            assert 1.0 <= loop.time() - started < 1.5
            assert 5 <= len(asked) <= 12, asked  # every 80 ms and a tick
            await asyncio.sleep(0.15)  # the last ask's retry time: the tick forgets it
            assert not node._read_waiters
        finally:
            await node.stop()

    asyncio.run(main())


_ABSENT = object()
_FIELD_CHOICES = {  # each field absent, valid, or wrong in each way the checks know
    "value": [_ABSENT, None, "", "v", "x" * 8, "x" * 9, "é", "\ud800", 5, True],
    "client_id": [_ABSENT, None, "", "c", "é", "\ud800", 3],
    "seq": [_ABSENT, None, -1, 0, 1, True, 1.0, "1"],
    "if_value": [_ABSENT, None, "v", 3],
    "if_version": [_ABSENT, None, 0, 2, -1, True],
}


def test_the_plain_put_shortcut_agrees_with_the_full_checks() -> None:
    """_command takes a shortcut for a plain ASCII put; for every body built from the
    choices above (absent, valid or wrong fields), it must give the command, or the
    error, that _checked_command gives."""
    class _Node:
        config = NodeConfig(1, {1: ("127.0.0.1", 1)}, "/unused", value_bytes_max=8)

        def new_cmd_id(self) -> str:
            return "1.x.1"

    def outcome(check, op: str, body: dict):  # noqa: ANN001, ANN202 - either command builder
        try:
            return check(_Node(), op, "k", body)
        except KvError as e:
            return type(e), e.message

    names = list(_FIELD_CHOICES)
    for values in itertools.product(*_FIELD_CHOICES.values()):
        body = {name: v for name, v in zip(names, values) if v is not _ABSENT}
        for op in (PUT, DELETE):
            assert outcome(http._command, op, body) == outcome(http._checked_command, op, body), (op, body)


def test_a_slot_carries_the_clock_of_its_forming_not_of_the_last_tick(tmp_path) -> None:
    """Ticks a second apart: a put with a ttl asked between two of them gets a deadline of
    at least the moment it was asked plus the ttl (by the last tick's reading it would be
    up to a second earlier, and a lock's holder would think it held a lock already gone)."""
    async def main() -> list[tuple[int, int]]:
        node = await lone_leader(tmp_path, tick_ms=1000)
        seen = []
        try:
            async with asyncio.timeout(20):
                for n in range(4):
                    await asyncio.sleep(0.3)
                    asked_ms = int(time.time() * 1000)
                    await node.submit(Command(PUT, f"k{n}", "v", cmd_id=f"t.{n}", ttl_ms=5_000))
                    seen.append((asked_ms, node.kv.expiry[f"k{n}"] - 5_000))
        finally:
            await node.stop()
        return seen

    for asked_ms, stamped_ms in asyncio.run(main()):
        assert stamped_ms >= asked_ms, (asked_ms, stamped_ms)


def test_the_snapshot_schedule_counts_a_slots_commands_not_the_changes_they_make(tmp_path) -> None:
    """A transaction's writes are in its one command's value: its slot adds that command's
    bytes to what the log holds since the last snapshot, not those bytes and its writes'
    again (snapshots would come early, and compaction would keep too little)."""
    from kvpaxos.core import txn as txns
    from kvpaxos.core.commands import TXN

    async def main() -> None:
        node = await lone_leader(tmp_path)
        try:
            writes = [Command(PUT, f"k{i}", "v" * 1000) for i in range(8)]
            t = Command(TXN, "t", txns.encode([], writes, []), cmd_id="t.1")
            before = node.snapshots.applied_bytes
            result = await node.submit(t)
            assert result.ok and node.kv.data["k7"][0] == "v" * 1000
            assert node.snapshots.applied_bytes - before == t.size_bytes()
        finally:
            await node.stop()

    asyncio.run(main())


def test_a_failed_group_commit_stops_the_node_once(tmp_path, caplog) -> None:
    """The tick's check and the commit's own report can both find a failed commit before
    the node is down: it is logged, and the node told to stop, once."""
    import logging

    from storage.base import StorageError

    config = NodeConfig(1, {1: ("127.0.0.1", free_ports(1)[0])}, str(tmp_path))
    storage = SqliteStorage(str(tmp_path), 1)
    node = Node(config, storage, fresh=True)
    stopped: list[BaseException] = []
    node.on_fatal = stopped.append

    def full() -> None:
        raise StorageError("acceptor.sqlite: a write failed: database or disk is full")
    storage.check = full  # type: ignore[method-assign]
    try:
        with caplog.at_level(logging.CRITICAL, logger="kvpaxos.node"):
            node._on_committed(None, [], time.perf_counter())
            node._on_committed(None, [], time.perf_counter())
        assert len(stopped) == 1 and isinstance(node.storage_failure, StorageError)
        assert [r.levelname for r in caplog.records if "storage write failed" in r.getMessage()] == ["CRITICAL"]
    finally:
        storage.close()
