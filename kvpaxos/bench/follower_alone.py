"""A follower alone in one process, for counting what a slot costs it.

`python -m kvpaxos.bench.follower_alone SLOTS COMMANDS [TICK_MS]` runs a real
follower (Node, Replica, SqliteStorage with synchronous=FULL in a temporary
directory) fed by a stand-in leader in the same process, and prints one JSON
line: the process's CPU time per slot and per command over SLOTS measured slots
of COMMANDS puts each (100-byte values, a client id and sequence number each,
as `kv bench` sends them).

The stand-in leader does what a kvpaxos leader's link does for one slot in
flight: a Prepare first, then for each slot one frame holding the Commit of the
slot before and the Accept of this one, sent once the follower's Accepted for
the previous slot came back. Frames go both ways as text through the real codec
and are read as kvpaxos/transport.py reads them; the follower's answers are
framed once per event-loop turn, as its links do. The leader's own side costs
little (each Accept frame is a prepared text with the slot number put in), so
nearly everything counted is the follower's. Under callgrind, two runs with
SLOTS and 3 x SLOTS slots tell its instructions per slot (benchmarks/leader_cost.py
does it beside the leader's count).
"""
from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time

from kvpaxos.bench.cluster import free_ports
from kvpaxos.bench.leader_alone import HOST, TICK_MS, VALUE
from kvpaxos.core import messages as m
from kvpaxos.core.ballot import Ballot
from kvpaxos.core.codec import decode_frame, encode_message, frame_of
from kvpaxos.core.commands import PUT, Batch, Command

WARMUP_SLOTS = 50
LEADER, FOLLOWER = 1, 2
BALLOT = Ballot(1, LEADER)


def _frames(commands: int):  # noqa: ANN202 - a function of the slot
    """Slot number -> the leader's frame for it: the Commit through the slot before
    and the Accept of this one, as the leader's link sends them together."""
    cmds = tuple(Command(PUT, f"key{i}", VALUE, client_id=f"c{i}", seq=0, cmd_id=f"1.b.{i}")
                 for i in range(commands))
    # Each slot's commands differ in seq (a client's next write) and cmd_id; the
    # template marks where those go.
    batch = Batch(tuple(Command(c.op, c.key, c.value, client_id=c.client_id, seq=987654321,
                                cmd_id=f"{c.cmd_id}.876543210") for c in cmds), 1)
    accept = encode_message(m.Accept(BALLOT, 123456789, batch)).replace("123456789", "{slot}", 1)
    accept = accept.replace("987654321", "{slot}").replace("876543210", "{slot}")
    commit = encode_message(m.Commit(BALLOT, 123456789, 1)).replace("123456789", "{before}", 1)
    template = frame_of(LEADER, [commit, accept])

    def frame(slot: int) -> str:
        return template.replace("{before}", str(slot - 1)).replace("{slot}", str(slot))

    return frame


async def run(slots: int, commands: int, tick_ms: int = TICK_MS) -> dict:
    from kvpaxos.config import NodeConfig
    from kvpaxos.node import Node
    from kvpaxos.transport import TurnEncoder
    from storage.sqlite import SqliteStorage

    loop = asyncio.get_running_loop()
    frame_for = _frames(commands)
    with tempfile.TemporaryDirectory(prefix="kvfollower-") as data_dir:
        p1, p2, p3 = free_ports(3)
        config = NodeConfig(FOLLOWER, {1: (HOST, p1), 2: (HOST, p2), 3: (HOST, p3)}, data_dir, tick_ms=tick_ms)
        node = Node(config, SqliteStorage(data_dir, FOLLOWER), fresh=True)
        node.deciding, node.replica.voting = False, True  # a new cluster: no peers to ask
        encoder = TurnEncoder()
        outbox: list[m.Message] = []
        answered: dict[int, asyncio.Future] = {}
        prepared = loop.create_future()

        def leader_reads(text: str) -> None:
            _, msgs = decode_frame(text)
            for msg in msgs:
                if type(msg) is m.Accepted and msg.slot in answered:
                    answered.pop(msg.slot).set_result(None)
                elif type(msg) is m.Promise and not prepared.done():
                    prepared.set_result(None)

        def flush() -> None:
            msgs = outbox[:]
            outbox.clear()
            leader_reads(frame_of(FOLLOWER, [encoder.encode(x) for x in msgs]))

        def send(dst: int, msg: m.Message) -> bool:
            if dst == LEADER:
                if not outbox:
                    loop.call_soon(flush)  # one frame per turn, as a link sends
                outbox.append(msg)
            return True

        def follower_reads(text: str) -> None:
            src, msgs = decode_frame(text)
            node.deliver(src, [x for x in msgs if not isinstance(x, Exception)])

        node.send_peer = send
        node.send_peer_lazy = send
        await node.start()
        try:
            follower_reads(frame_of(LEADER, [encode_message(m.Prepare(BALLOT, 1))]))
            await prepared

            async def slots_from(first: int, count: int) -> None:
                for slot in range(first, first + count):
                    answered[slot] = done = loop.create_future()
                    loop.call_soon(follower_reads, frame_for(slot))  # arrives on a later turn
                    await done

            await slots_from(1, WARMUP_SLOTS)
            started_cpu, started = time.process_time(), time.perf_counter()
            await slots_from(WARMUP_SLOTS + 1, slots)
            cpu, wall = time.process_time() - started_cpu, time.perf_counter() - started
            applied = node.kv.applied_slot
        finally:
            await node.stop()
    if applied < WARMUP_SLOTS + slots - 1:
        raise RuntimeError(f"the follower applied only through slot {applied}")
    return {"target": "follower", "slots": slots, "commands": commands,
            "cpu_us_per_slot": round(1e6 * cpu / slots, 1),
            "cpu_us_per_write": round(1e6 * cpu / (slots * commands), 1),
            "slots_per_s": round(slots / wall), "applied": applied}


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3) or not all(a.isdigit() and int(a) > 0 for a in args):
        sys.exit("usage: python -m kvpaxos.bench.follower_alone SLOTS COMMANDS [TICK_MS]")
    tick_ms = int(args[2]) if len(args) == 3 else TICK_MS
    print(json.dumps(asyncio.run(run(int(args[0]), int(args[1]), tick_ms))))


if __name__ == "__main__":
    main()
